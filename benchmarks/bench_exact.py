"""Forward+backward time of EXACTLoss against the paper's official implementation (SPEC 6.2, issue 14).

Batch 256, 16 Genz points, one thread, for 10 classes, 100 classes, and 100 classes truncated to
the 16 hardest — the sizes of issue 14. Contenders, timed interleaved (A B A B …, medians) in
this one process:

- ours: ``EXACTLoss`` with its defaults (batch standardisation and gradient normalisation
  included), value and analytic gradient from one Genz pass;
- ours, reference path: the same estimate with the gradient as C - 1 separate conditional
  Genz problems (``genz_orthant`` + ``conditional_orthant_grad``), the pre-issue-14 algorithm;
- cross-entropy, for scale;
- the official code (``exact_pytorch.EXACTLoss``) when it is importable. It is not on the package
  index; when it is absent the official column shows the timings issue 14 measured with it on
  this kind of machine (2 cores, one thread), marked "issue 14", not measured here.

    .venv/bin/python benchmarks/bench_exact.py [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from _bench import interleaved, load

from kexue.exact import EXACTLoss, conditional_orthant_grad, genz_orthant, logit_deltas

# issue 14's measurements of the official implementation (batch 256, 16 points, 1 thread), seconds
OFFICIAL_ISSUE14 = {(10, None): 4.6e-3, (100, None): 569e-3, (100, 16): 13.1e-3}


def _fwd_bwd(loss, logits, y):
    def f():
        logits.grad = None
        loss(logits, y).backward()
    return f


def _reference(logits, y, n_samples, truncate):
    """Value and gradient the pre-issue-14 way: sort, Genz value, per-class conditional problems."""
    def f():
        with torch.no_grad():
            z = (logits - logits.mean()) / logits.std()
            d = logit_deltas(z, y)
            if truncate is not None:
                d = d.topk(truncate, dim=1, largest=False).values
            genz_orthant(d, 1.0, n_samples)
            conditional_orthant_grad(d, 1.0, n_samples)
    return f


def _official(n_samples, truncate):
    try:
        from exact_pytorch import EXACTLoss as Official  # not on PyPI; only if the user installed it
    except ImportError:
        return None
    return Official(sample_size=n_samples, truncate_classes=truncate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-samples", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch}, {args.n_samples} Genz points, {args.threads} thread(s), median of {args.repeats}, "
          f"interleaved; {load()} (before)")
    print(f"{'classes':>7} {'trunc':>5} {'ours ms':>9} {'official ms':>12} {'source':>10} {'ours/off':>9} "
          f"{'reference ms':>13} {'ref/ours':>9} {'CE ms':>7}")
    for (C, k), issue_time in OFFICIAL_ISSUE14.items():
        logits = torch.randn(args.batch, C, requires_grad=True)
        y = torch.randint(0, C, (args.batch,))
        fns = {"ours": _fwd_bwd(EXACTLoss(truncate=k, n_samples=args.n_samples), logits, y),
               "reference": _reference(logits.detach(), y, args.n_samples, k),
               "ce": _fwd_bwd(torch.nn.CrossEntropyLoss(), logits, y)}
        official = _official(args.n_samples, k)
        if official is not None:
            fns["official"] = _fwd_bwd(lambda z, t, official=official: official(z, t, std=1.0), logits, y)
        t = interleaved(fns, repeats=args.repeats if C < 100 or k else max(5, args.repeats // 3))
        off, src = (t["official"], "measured") if official is not None else (issue_time, "issue 14")
        print(f"{C:>7} {str(k):>5} {1e3 * t['ours']:>9.2f} {1e3 * off:>12.2f} {src:>10} {t['ours'] / off:>8.2f}x "
              f"{1e3 * t['reference']:>13.2f} {t['reference'] / t['ours']:>8.2f}x {1e3 * t['ce']:>7.3f}")
    print(f"{load()} (after)")


if __name__ == "__main__":
    main()
