"""logsumexp on 10^7 float64 values (a 10^4 × 10^3 array), along axis 0 and axis 1:
kexue (NumPy and torch paths) vs scipy.special.logsumexp vs torch.logsumexp, in one run.

Prints the best of R repeats for each and the ratios ours / reference. Run:
    .venv/bin/python benchmarks/bench_logsumexp.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.special import logsumexp as scipy_lse

from kexue.logsumexp import logsumexp as ours

R = 5


def best(f) -> float:
    f()  # warm up
    ts = []
    for _ in range(R):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> None:
    x = np.random.default_rng(0).standard_normal((10_000, 1_000)) * 30
    xt = torch.from_numpy(x)
    print(f"array {x.shape} float64, torch threads {torch.get_num_threads()}, best of {R}")
    print(f"{'axis':>4} {'kexue/np':>10} {'scipy':>10} {'kexue/torch':>12} {'torch':>10} {'np/scipy':>9} {'torch/torch':>11}")
    for axis in (0, 1):
        t_ours = best(lambda: ours(x, axis=axis))
        t_scipy = best(lambda: scipy_lse(x, axis=axis))
        t_ours_t = best(lambda: ours(xt, dim=axis))
        t_torch = best(lambda: torch.logsumexp(xt, dim=axis))
        np.testing.assert_allclose(ours(x, axis=axis), scipy_lse(x, axis=axis), rtol=1e-12)
        print(f"{axis:>4} {t_ours * 1e3:>8.1f}ms {t_scipy * 1e3:>8.1f}ms {t_ours_t * 1e3:>10.1f}ms {t_torch * 1e3:>8.1f}ms "
              f"{t_ours / t_scipy:>8.2f}x {t_ours_t / t_torch:>10.2f}x")


if __name__ == "__main__":
    main()
