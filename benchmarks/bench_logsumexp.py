"""logsumexp on 10^7 float64 values (a 10^4 × 10^3 array), along axis 0 and axis 1:
kexue's NumPy path vs scipy.special.logsumexp, and kexue's torch path vs torch.logsumexp,
timed interleaved (A B A B …, medians) in one process, with the load average before and after.

Run (under the CPU lock on a shared machine):
    .venv/bin/python benchmarks/bench_logsumexp.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.special import logsumexp as scipy_lse

from _bench import interleaved, load, ratio_line
from kexue.logsumexp import logsumexp as ours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (NumPy's ufuncs use one)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x = np.random.default_rng(0).standard_normal((10_000, 1_000)) * 30
    xt = torch.from_numpy(x)
    print(f"array {x.shape} float64, torch threads {torch.get_num_threads()}, medians of {a.repeats} interleaved runs")
    print(f"before: {load()}")
    for axis in (0, 1):
        t = interleaved({"kexue/np": lambda axis=axis: ours(x, axis=axis),
                         "scipy": lambda axis=axis: scipy_lse(x, axis=axis),
                         "kexue/torch": lambda axis=axis: ours(xt, dim=axis),
                         "torch": lambda axis=axis: torch.logsumexp(xt, dim=axis)},
                        repeats=a.repeats)
        np.testing.assert_allclose(ours(x, axis=axis), scipy_lse(x, axis=axis), rtol=1e-13)
        torch.testing.assert_close(ours(xt, dim=axis), torch.logsumexp(xt, dim=axis), rtol=1e-13, atol=0)
        print(ratio_line(f"axis {axis}, NumPy path", t["kexue/np"], t["scipy"], "scipy"))
        print(ratio_line(f"axis {axis}, torch path", t["kexue/torch"], t["torch"], "torch"))
    # the case the torch path recomputes: |lse| small against log Σ e^(x−m) (rows shifted to lse ≈ 0)
    xs = x - scipy_lse(x, axis=1, keepdims=True)
    xst = torch.from_numpy(xs)
    t = interleaved({"kexue/np": lambda: ours(xs, axis=1), "scipy": lambda: scipy_lse(xs, axis=1),
                     "kexue/torch": lambda: ours(xst, dim=1), "torch": lambda: torch.logsumexp(xst, dim=1)},
                    repeats=a.repeats)
    print(ratio_line("axis 1, lse ≈ 0 rows, NumPy path", t["kexue/np"], t["scipy"], "scipy"))
    print(ratio_line("axis 1, lse ≈ 0 rows, torch path", t["kexue/torch"], t["torch"], "torch"))
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
