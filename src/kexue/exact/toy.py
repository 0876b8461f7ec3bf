"""SPEC 6.1: the three-point toy example, where cross-entropy and the hinge miss the
perfect-accuracy interval and a small-sigma EXACT loss finds it."""

from __future__ import annotations

import math

import numpy as np
import torch

from kexue.utils import KexueError

TOY_X = np.array([-0.25, 0.0, 0.25])
TOY_Y = np.array([-1.0, -1.0, 1.0])


class ToyThreshold(torch.nn.Module):
    """The SPEC 6.1 model f(x) = x - b as two-class logits [0, x - b] (class 1 = positive), so
    that the multi-class losses can be trained on the toy: ``x`` (n, 1) -> logits (n, 2)."""

    def __init__(self, b: float = 0.0):
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor([float(b)], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x - self.b], 1)


def toy_loss(b: float, kind: str, k: float = 1.0, sigma: float = 1.0, margin: float | None = None) -> float:
    """Mean loss of f(x) = k (x - b) on the three points of SPEC 6.1.

    ``kind``: 'ce' (sigmoid cross-entropy log(1 + e^{-y f})), 'hinge' (max(0, 1 - y f)),
    'exact' (1 - Phi(y f / sigma), the binary EXACT loss), 'error' (0-1 loss).
    """
    from scipy.special import ndtr

    yf = TOY_Y * k * (TOY_X - b)
    if kind == "ce":
        return float(np.mean(np.logaddexp(0.0, -yf)))
    if kind == "hinge":
        return float(np.mean(np.maximum(0.0, 1.0 - yf)))
    if kind == "exact":
        if margin is not None:
            yf = np.minimum(yf, margin)
        return float(1.0 - np.mean(ndtr(yf / sigma)))
    if kind == "error":
        return float(np.mean(yf <= 0))
    raise KexueError(f"unknown toy loss {kind!r}; use ce, hinge, exact or error")


def toy_optimum(kind: str, k: float = 1.0, sigma: float = 1.0, margin: float | None = None):
    """argmin_b of :func:`toy_loss` — a float, or for the hinge the interval (lo, hi) of minimisers.

    For EXACT with a large sigma the loss can keep falling as b grows (predict every point
    negative: 2/3 right); then +inf is returned.

    CE is smooth and convex in b (bounded Brent). The hinge is piecewise linear and convex
    with kinks at b = x - y/k, so its minimisers are exactly the kinks of least loss and the
    segment between them. EXACT is not convex: a grid, then Brent around the best cell.
    """
    from scipy.optimize import minimize_scalar

    if kind == "hinge":
        kinks = np.sort(TOY_X - TOY_Y / k)
        vals = np.array([toy_loss(b, "hinge", k) for b in kinks])
        best = kinks[np.isclose(vals, vals.min(), rtol=0, atol=1e-12)]
        return float(best.min()), float(best.max())
    if kind == "ce":
        return float(minimize_scalar(lambda b: toy_loss(b, "ce", k), bounds=(-2.0, 2.0), method="bounded",
                                     options={"xatol": 1e-10}).x)
    if kind == "exact":
        grid = np.linspace(-2.0, 3.0, 5001)
        vals = np.array([toy_loss(b, "exact", k, sigma, margin) for b in grid])
        i = int(vals.argmin())
        if i in (0, len(grid) - 1):  # still falling at the edge: the infimum is at b -> +-inf
            return math.copysign(math.inf, grid[i])
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        return float(minimize_scalar(lambda b: toy_loss(b, "exact", k, sigma, margin), bounds=(lo, hi),
                                     method="bounded", options={"xatol": 1e-10}).x)
    raise KexueError(f"toy_optimum supports ce, hinge and exact, not {kind!r}")
