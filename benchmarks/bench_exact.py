"""Forward+backward time of EXACTLoss vs torch.nn.CrossEntropyLoss (SPEC 6.2).

Batch 256 with 10 and 100 classes, and 100 classes truncated to the 16 hardest; all timings
from this one run, printed with their ratio. A last column times the same loss with
``method="quadrature"`` (the one-factor 1-D integral) for comparison. Single-threaded (the machine is shared), so the
numbers compare work, not thread scaling.

    .venv/bin/python benchmarks/bench_exact.py [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from kexue.exact import EXACTLoss


def time_fb(loss, logits, y, repeats: int) -> float:
    """Median seconds of one forward + backward."""
    loss(logits, y).backward()  # warm-up
    ts = []
    for _ in range(repeats):
        logits.grad = None
        t = time.perf_counter()
        loss(logits, y).backward()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-samples", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch}, {args.n_samples} Genz points, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'classes':>8} {'truncate':>8} {'EXACT ms':>10} {'CE ms':>8} {'ratio':>8} {'quad ms':>8} {'ratio':>8}")
    for C, k in [(10, None), (100, None), (100, 16)]:
        logits = torch.randn(args.batch, C, requires_grad=True)
        y = torch.randint(0, C, (args.batch,))
        t_ex = time_fb(EXACTLoss(truncate=k, n_samples=args.n_samples), logits, y, args.repeats)
        t_ce = time_fb(torch.nn.CrossEntropyLoss(), logits, y, args.repeats)
        # the same loss with the one-factor quadrature instead of Genz (64 nodes)
        t_q = time_fb(EXACTLoss(truncate=k, n_samples=64, method="quadrature"), logits, y, args.repeats)
        print(f"{C:>8} {str(k):>8} {1e3 * t_ex:>10.2f} {1e3 * t_ce:>8.3f} {t_ex / t_ce:>7.0f}x {1e3 * t_q:>8.2f} {t_q / t_ce:>7.0f}x")


if __name__ == "__main__":
    main()
