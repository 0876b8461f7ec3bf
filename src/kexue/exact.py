"""EXACT: training for accuracy (SPEC 6), and the losses it is compared with.

SPEC 6.2. Give the scores Gaussian noise, ``s ~ N(mu(x), sigma^2 I)``. The probability that the
true class ``y`` wins is an orthant probability: with deltas ``d_i = mu_y - mu_i`` (i != y),

    p(y|x) = P(z > 0),   z ~ N(d / sigma, I + 11^T)      (dimension C - 1)

and the EXACT loss is ``1 - mean p``. The probability is estimated by Genz's sequential
conditioning (:func:`genz_orthant`): write ``z = m + L eps`` with ``L`` the Cholesky factor of
``I + rho 11^T``; for i = 1..n the condition ``z_i > 0`` bounds ``eps_i`` from below given
``eps_{<i}``, the factor ``e_i = P(eps_i > a_i)`` is exact, and ``eps_i`` is drawn from the
truncated normal by inverse CDF of a (quasi-)uniform point; ``p = E[prod_i e_i]``. For
``I + rho 11^T`` every column of ``L`` is constant below the diagonal, so the conditioning sum
is a running sum and one pass costs O(n) per point.

The gradient is analytic (no backpropagation through the sampler). For a Gaussian orthant,

    dP/dm_i = f_{z_i}(0) * P(z_{-i} > 0 | z_i = 0),

with ``z_i ~ N(m_i, 1 + rho)`` and, given ``z_i = 0``, ``z_{-i} ~ N(m_{-i} - m_i rho/(1+rho),
I + rho/(1+rho) 11^T)`` — again the same structured covariance, so the conditional orthant
probabilities come from the same routine in dimension n - 1.

SPEC 6.3: ``SmoothAccuracyLoss`` (-E[p] or -log E[p] with the softmax p), and the multi-class
hinge. SPEC 6.1: the three-point toy example (:func:`toy_optimum`).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from kexue.utils import KexueError

__all__ = [
    "orthant_probability", "orthant_probability_quadrature", "genz_orthant", "logit_deltas",
    "EXACTLoss", "SmoothAccuracyLoss", "MulticlassHingeLoss", "sigma_schedule",
    "toy_loss", "toy_optimum", "TOY_X", "TOY_Y",
]


# ---------------------------------------------------------------------------------------------
# Genz's sequential conditioning for covariance I + rho 11^T


def _structured_cholesky(n: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal ``D`` and below-diagonal column values ``A`` of chol(I + rho 11^T).

    ``L[i, i] = D[i]`` and ``L[k, i] = A[i]`` for every k > i (induction on the Cholesky
    recursion: Sigma_ki = rho for all k != i, so L[k, i] cannot depend on k).
    """
    D, A = np.empty(n), np.empty(n)
    s = 0.0  # sum_{k<i} A_k^2
    for i in range(n):
        D[i] = math.sqrt(1.0 + rho - s)
        A[i] = (rho - s) / D[i]
        s += A[i] ** 2
    return D, A


def _uniforms(rows: int, n_points: int, dim: int, method: str, dtype, device):
    """(rows, n_points, dim) uniforms in [0, 1), returned as a function of the column.

    ``sobol``: one scrambled Sobol net (seeded from torch's RNG, so the caller's seed decides
    it) plus an independent Cranley–Patterson shift per row, so rows are independent unbiased
    estimates. ``mc``: plain pseudo-random points.
    """
    if dim == 0:
        return lambda i: None
    if method == "mc":
        return lambda i: torch.rand(rows, n_points, dtype=dtype, device=device)
    from scipy.stats import qmc

    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    with warnings.catch_warnings():  # non-power-of-2 sizes lose balance, not correctness
        warnings.simplefilter("ignore", UserWarning)
        net = qmc.Sobol(d=dim, scramble=True, seed=seed).random(n_points)
    net = torch.as_tensor(net, dtype=dtype, device=device)  # (N, dim)
    shift = torch.rand(rows, 1, dim, dtype=dtype, device=device)
    return lambda i: torch.frac(net[:, i] + shift[:, :, i])


def genz_orthant(m: torch.Tensor, rho: float = 1.0, n_samples: int = 16, method: str = "sobol") -> torch.Tensor:
    """P(z > 0) for z ~ N(m, I + rho 11^T), rows of ``m`` (R, n) independently (SPEC 6.2).

    Genz's sequential conditioning; variables are ordered by increasing mean (the most
    restrictive first), which Genz recommends to reduce variance and which leaves the
    exchangeable covariance unchanged. No autograd: see :func:`orthant_probability`.
    """
    R, n = m.shape
    if n == 0:
        return torch.ones(R, dtype=m.dtype, device=m.device)
    m = m.sort(dim=1).values
    D, A = (torch.as_tensor(v, dtype=m.dtype, device=m.device) for v in _structured_cholesky(n, rho))
    N = 1 if n == 1 else n_samples  # one dimension is exact: no sampling
    u = _uniforms(R, N, n - 1, method, m.dtype, m.device)
    tiny, one_minus = torch.finfo(m.dtype).tiny, 1.0 - torch.finfo(m.dtype).eps
    S = torch.zeros(R, N, dtype=m.dtype, device=m.device)  # sum_{j<i} L_ij eps_j
    p = torch.ones(R, N, dtype=m.dtype, device=m.device)
    for i in range(n):
        e = torch.special.ndtr((m[:, i, None] + S) / D[i])  # P(z_i > 0 | eps_{<i})
        p = p * e
        if i < n - 1:
            # eps_i ~ N(0,1) truncated to eps_i > -(m_i + S)/D_i, by inverse CDF
            q = (e * (1.0 - u(i))).clamp(tiny, one_minus)
            S = S + A[i] * -torch.special.ndtri(q)
    return p.mean(dim=1)


def _orthant_grad(m: torch.Tensor, rho: float, n_samples: int, method: str) -> torch.Tensor:
    """dP/dm_i = f_{z_i}(0) * P(z_{-i} > 0 | z_i = 0) for every i; shape of ``m`` (R, n)."""
    R, n = m.shape
    v = 1.0 + rho
    density = torch.exp(-0.5 * m * m / v) / math.sqrt(2 * math.pi * v)
    if n == 1:
        return density
    others = torch.tensor([[j for j in range(n) if j != i] for i in range(n)], device=m.device)  # (n, n-1)
    c = rho / v
    cond_mean = m[:, others] - c * m[:, :, None]  # (R, n, n-1)
    cond = genz_orthant(cond_mean.reshape(R * n, n - 1), rho=c, n_samples=n_samples, method=method)
    return density * cond.reshape(R, n)


class _Orthant(torch.autograd.Function):
    """P(z > 0), z ~ N(m, I + 11^T) over the last dim of ``m``; analytic backward (SPEC 6.2)."""

    @staticmethod
    def forward(ctx, m, n_samples, method, truncate):
        shape = m.shape
        flat = m.detach().reshape(-1, shape[-1])
        keep = None
        if truncate is not None and truncate < flat.shape[1]:
            # the smallest deltas are the competitive classes; the rest contribute factors ~ 1
            keep = flat.topk(truncate, dim=1, largest=False).indices
            flat = flat.gather(1, keep)
        p = genz_orthant(flat, 1.0, n_samples, method)
        ctx.save_for_backward(flat, keep if keep is not None else torch.empty(0))
        ctx.info = (shape, n_samples, method, keep is not None)
        return p.reshape(shape[:-1])

    @staticmethod
    def backward(ctx, grad_p):
        flat, keep = ctx.saved_tensors
        shape, n_samples, method, truncated = ctx.info
        g = _orthant_grad(flat, 1.0, n_samples, method) * grad_p.reshape(-1, 1)
        if truncated:
            g = torch.zeros(flat.shape[0], shape[-1], dtype=g.dtype, device=g.device).scatter(1, keep, g)
        return g.reshape(shape), None, None, None


def _check_method(method: str) -> None:
    if method not in ("sobol", "mc", "quadrature"):
        raise KexueError(f"unknown method {method!r}; use 'sobol' (Genz, quasi-random), 'mc' (Genz, pseudo-random) "
                         "or 'quadrature' (1-D Gauss–Hermite)")


def orthant_probability(d: torch.Tensor, sigma: float | torch.Tensor = 1.0, n_samples: int = 16, *,
                        method: str = "sobol", truncate: int | None = None) -> torch.Tensor:
    """p = P(z > 0) with z ~ N(d / sigma, I + 11^T), batched over the leading dims of ``d`` (SPEC 6.2).

    ``d`` (..., n) are the deltas mu_y - mu_i; the result has shape (...). ``truncate=k`` keeps
    only the k smallest deltas (the hardest competitors). Differentiable in ``d`` (and
    ``sigma``) through the analytic gradient; the estimate itself is random (seeded by torch).

    ``method``: 'sobol' or 'mc' — Genz's sequential conditioning with quasi- or pseudo-random
    points (the paper's estimator); 'quadrature' — the deterministic one-factor integral of
    :func:`orthant_probability_quadrature` (``n_samples`` = number of nodes), differentiated by
    autograd through that closed formula. It only exists because I + 11^T is one-factor.
    """
    if not isinstance(d, torch.Tensor) or d.ndim < 1:
        raise KexueError("orthant_probability needs a tensor d of shape (..., n)")
    if not torch.is_floating_point(d):
        d = d.double()
    check_tensor_finite(d, "deltas d")
    _check_method(method)
    if n_samples < 1:
        raise KexueError(f"n_samples must be at least 1, got {n_samples}")
    if truncate is not None and truncate < 1:
        raise KexueError(f"truncate must be a positive number of classes, got {truncate}")
    if (torch.as_tensor(sigma) <= 0).any():
        raise KexueError(f"sigma must be positive, got {sigma}")
    if method == "quadrature":
        m = d / sigma
        if truncate is not None and truncate < m.shape[-1]:
            m = m.gather(-1, m.detach().topk(truncate, dim=-1, largest=False).indices)
        return orthant_probability_quadrature(m, 1.0, max(int(n_samples), 8))
    return _Orthant.apply(d / sigma, int(n_samples), method, truncate)


def orthant_probability_quadrature(d: torch.Tensor, sigma: float = 1.0, n_nodes: int = 96) -> torch.Tensor:
    """The same probability as a 1-D integral, a near-exact reference for tests.

    With z = m + eps + t 1 (eps ~ N(0, I), t ~ N(0, 1)) the covariance is I + 11^T, hence
    P(z > 0) = E_t[prod_i Phi(m_i + t)], computed by Gauss–Hermite quadrature.
    """
    t, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    t = torch.as_tensor(t, dtype=d.dtype, device=d.device)
    w = torch.as_tensor(w / math.sqrt(2 * math.pi), dtype=d.dtype, device=d.device)
    logphi = torch.special.log_ndtr((d / sigma)[..., None, :] + t[:, None])  # (..., nodes, n)
    return (logphi.sum(-1).exp() * w).sum(-1)


def check_tensor_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise KexueError(f"{what} contain NaN or inf; check the model outputs (lower the learning rate?)")


# ---------------------------------------------------------------------------------------------
# losses


def logit_deltas(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d_i = mu_y - mu_i for i != y: (B, C) logits, (B,) labels -> (B, C - 1)."""
    B, C = logits.shape
    d = logits.gather(1, target[:, None]) - logits
    mask = torch.ones_like(d, dtype=torch.bool).scatter(1, target[:, None], False)
    return d[mask].reshape(B, C - 1)


def _check_logits(logits: torch.Tensor, target: torch.Tensor, min_classes: int = 2) -> None:
    if logits.ndim != 2 or target.ndim != 1 or len(logits) != len(target):
        raise KexueError(f"expected logits (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(target.shape)}")
    if logits.shape[1] < min_classes:
        raise KexueError(f"need at least {min_classes} classes, got logits with {logits.shape[1]} columns")
    if len(target) and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise KexueError(f"labels must lie in 0..{logits.shape[1] - 1}")
    check_tensor_finite(logits, "logits")


class _NormalizeGrad(torch.autograd.Function):
    """Identity forward; backward divides the gradient by a running mean of its norm.

    The paper's gradient normalisation (divide by a moving average, momentum 0.9, of the
    gradient norm, floored at ``clip``) keeps the step size from vanishing when sigma is
    small and the expected accuracy saturates. Applied here to the gradient w.r.t. the
    logits, so the loss stays a self-contained nn.Module.
    """

    @staticmethod
    def forward(ctx, x, state, momentum, clip):
        ctx.state, ctx.momentum, ctx.clip = state, momentum, clip
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        state = ctx.state
        norm = g.detach().norm()
        first = bool(state["first"])
        mom = 0.0 if first else ctx.momentum
        state["moving_norm"].mul_(mom).add_((1 - mom) * norm.to(state["moving_norm"].dtype))
        state["first"].fill_(False)
        return g / state["moving_norm"].clamp(min=ctx.clip).to(g.dtype), None, None, None


class EXACTLoss(nn.Module):
    """EXACT loss 1 - mean_b P(s_y > s_i for all i != y), s ~ N(mu, sigma^2 I) (SPEC 6.2).

    Parameters
    ----------
    sigma : float or callable(step) -> float
        Noise scale; a callable is a schedule evaluated at the number of training-mode calls
        so far (see :func:`sigma_schedule`).
    margin : float or None
        Clip each delta at ``r`` before dividing by sigma: samples already won by ``r`` stop
        pulling.
    standardize : bool
        Batch standardisation of the logits, (mu - mean) / std over the whole batch — a
        shift and a positive scale, so the argmax is unchanged while sigma keeps a meaning.
    truncate : int or None
        Keep only the ``k`` hardest competing classes (the smallest deltas).
    grad_norm : bool
        Gradient normalisation (see :class:`_NormalizeGrad`).
    n_samples : int, method : 'sobol' | 'mc'
        Points of the Genz estimator.
    """

    def __init__(self, sigma: float | Callable[[int], float] = 1.0, margin: float | None = None,
                 standardize: bool = True, truncate: int | None = None, grad_norm: bool = True,
                 n_samples: int = 16, method: str = "sobol", momentum: float = 0.9, clip: float = 0.01):
        super().__init__()
        if not callable(sigma) and not sigma > 0:
            raise KexueError(f"sigma must be positive, got {sigma}")
        if margin is not None and not margin > 0:
            raise KexueError(f"margin must be positive or None, got {margin}")
        if truncate is not None and truncate < 1:
            raise KexueError(f"truncate must be a positive number of classes, got {truncate}")
        _check_method(method)
        self.sigma, self.margin, self.standardize, self.truncate = sigma, margin, standardize, truncate
        self.grad_norm, self.n_samples, self.method = grad_norm, n_samples, method
        self.momentum, self.clip = momentum, clip
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("moving_norm", torch.zeros((), dtype=torch.float64))
        self.register_buffer("first", torch.ones((), dtype=torch.bool))

    def current_sigma(self) -> float:
        return float(self.sigma(int(self.step))) if callable(self.sigma) else float(self.sigma)

    def expected_accuracy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample p(y|x) under the loss's settings, shape (B,)."""
        _check_logits(logits, target)
        if self.standardize and logits.numel() > 1:
            logits = (logits - logits.mean()) / logits.std().clamp(min=1e-12)
        d = logit_deltas(logits, target)
        if self.margin is not None:
            d = d.clamp(max=self.margin)
        return orthant_probability(d, self.current_sigma(), self.n_samples, method=self.method, truncate=self.truncate)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits(logits, target)
        if self.grad_norm and torch.is_grad_enabled() and logits.requires_grad:
            state = {"moving_norm": self.moving_norm, "first": self.first}
            logits = _NormalizeGrad.apply(logits, state, self.momentum, self.clip)
        p = self.expected_accuracy(logits, target)
        if self.training:
            self.step += 1
        return 1.0 - p.mean()


class SmoothAccuracyLoss(nn.Module):
    """The classic smoothed accuracy of SPEC 6.3 with the softmax p = softmax(mu)_y.

    ``log=False``: -E[p] (per-sample 1 - p in spirit: bounded, flat on confident errors);
    ``log=True``: -log E[p] over the batch (not the cross-entropy -E[log p]).
    """

    def __init__(self, log: bool = False):
        super().__init__()
        self.log = log

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits(logits, target)
        p = torch.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1).mean()
        return -torch.log(p) if self.log else -p


class MulticlassHingeLoss(nn.Module):
    """Crammer–Singer hinge mean_b max(0, margin - (mu_y - max_{i != y} mu_i))."""

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits(logits, target)
        return torch.relu(self.margin - logit_deltas(logits, target).min(dim=1).values).mean()


def sigma_schedule(start: float = 1.0, end: float = 0.1, steps: int = 1000, kind: str = "exp") -> Callable[[int], float]:
    """sigma(step) decaying from ``start`` to ``end`` over ``steps`` (then constant) (SPEC 6.2).

    ``kind``: 'exp' (geometric, as the paper's sigma *= const per step), 'linear' or 'cosine'.
    """
    if not (start > 0 and end > 0):
        raise KexueError(f"sigma schedule needs positive start and end, got {start} and {end}")
    if steps < 1:
        raise KexueError(f"sigma schedule needs steps >= 1, got {steps}")
    if kind not in ("exp", "linear", "cosine"):
        raise KexueError(f"unknown sigma schedule {kind!r}; use exp, linear or cosine")

    def sigma(step: int) -> float:
        t = min(max(step, 0), steps) / steps
        if kind == "exp":
            return start * (end / start) ** t
        if kind == "linear":
            return start + (end - start) * t
        return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))

    return sigma


# ---------------------------------------------------------------------------------------------
# SPEC 6.1: the toy example

TOY_X = np.array([-0.25, 0.0, 0.25])
TOY_Y = np.array([-1.0, -1.0, 1.0])


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
