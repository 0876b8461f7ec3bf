"""Gaussian orthant probabilities for the covariance I + rho 11^T, and their gradients (SPEC 6.2).

``genz_orthant`` is Genz's sequential conditioning: write ``z = m + L eps`` with ``L`` the
Cholesky factor of ``I + rho 11^T``; for i = 1..n the condition ``z_i > 0`` bounds ``eps_i`` from
below given ``eps_{<i}``, the factor ``e_i = P(eps_i > a_i)`` is exact, and ``eps_i`` is drawn from
the truncated normal by inverse CDF of a (quasi-)uniform point; ``p = E[prod_i e_i]``. Every column
of ``L`` is constant below the diagonal, so the conditioning sum is a running sum: O(n) per point.

The gradient is analytic (no backpropagation through the sampler):

    dP/dm_i = f_{z_i}(0) * P(z_{-i} > 0 | z_i = 0).

Two ways to compute it, pinned to each other by the tests:

- :func:`conditional_orthant_grad` (the reference): given ``z_i = 0`` the others are
  ``N(m_{-i} - m_i rho/(1+rho), I + rho/(1+rho) 11^T)`` — the same structure, so n separate
  Genz problems of dimension n - 1;
- :func:`genz_orthant_grad` (the fast path, used in training): in Genz's own order, ``m_i`` enters
  only the bound of ``eps_i``, so ``dP/dm_i`` is the same sequential estimate with step i replaced
  by the density of the bound, ``phi(a_i) / D_i``, and ``eps_i`` pinned at the bound. Up to step i
  problem i coincides with the value estimate, so only problems k < i are carried at step i:
  n^2/2 element-steps in one pass that also yields the value, instead of n^2 in the reference.

Float32 inputs use ``erf``/``erfinv`` (vectorised in torch, ~10x faster than ``ndtr``/``ndtri``);
float64 inputs use ``ndtr``/``ndtri``.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import torch

from kexue import validate
from kexue.utils import KexueError, KexueTypeError

METHODS = ("sobol", "mc", "quadrature")
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


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


@lru_cache(maxsize=64)
def _sobol_net(dim: int, n_points: int) -> np.ndarray:
    """One scrambled Sobol net per (dim, n_points), built once: scrambling costs ~20 ms at dim 98,
    more than the whole integral. The per-row random shift of :func:`_uniforms` randomises it."""
    from scipy.stats import qmc

    with warnings.catch_warnings():  # non-power-of-2 sizes lose balance, not correctness
        warnings.simplefilter("ignore", UserWarning)
        net = qmc.Sobol(d=dim, scramble=True, seed=20220519).random(n_points)
    return net


@lru_cache(maxsize=64)
def _sobol_tensor(dim: int, n_points: int, dtype, device) -> torch.Tensor:
    """:func:`_sobol_net` as a (dim, 1, n_points) tensor, cached (only ever read)."""
    return torch.tensor(_sobol_net(dim, n_points).T[:, None, :], dtype=dtype, device=device)


def _uniforms(rows: int, n_points: int, dim: int, method: str, dtype, device) -> torch.Tensor | None:
    """(dim, 2, rows, n_points): ``1 - u`` and ``-u`` for uniforms u in [0, 1).

    ``sobol``: one scrambled Sobol net plus an independent Cranley–Patterson shift per row
    (drawn from torch's RNG, so the caller's seed decides it), so rows are independent unbiased
    estimates. ``mc``: plain pseudo-random points.
    """
    if dim == 0:
        return None
    if method == "mc":
        u = torch.rand(dim, rows, n_points, dtype=dtype, device=device)
    else:
        net = _sobol_tensor(dim, n_points, dtype, device)  # (dim, 1, N)
        u = torch.frac(net + torch.rand(dim, rows, 1, dtype=dtype, device=device))
    out = torch.empty(dim, 2, rows, n_points, dtype=dtype, device=device)
    torch.sub(1.0, u, out=out[:, 0])
    torch.neg(u, out=out[:, 1])
    return out


def _step(S: torch.Tensor, P: torch.Tensor, mi: torch.Tensor, Di: float, Ai: float, u: torch.Tensor | None,
          T: torch.Tensor, pin: tuple | None = None) -> None:
    """One conditioning step for the live rows, in place: P *= e_i = P(z_i > 0 | eps_<i), then
    S += A_i eps_i with eps_i drawn above its bound by inverse CDF of the uniform u.

    S, P, T are (rows, R, N), mi is (R, 1), u is (2, R, N): (1 - u, -u). ``pin`` = (P', S')
    receives the gradient problem of this step from row 0: P' = P_0 phi(x) / D_i (the density of
    the bound x = (m_i + S_0) / D_i) and S' = S_0 - A_i x (eps_i at its bound, z_i = 0).
    Float32 works in erf space: T = erf(x / sqrt 2) = 2 e_i - 1, and the draw's 2 q - 1 =
    2 e_i (1 - u) - 1 = T (1 - u) - u, one fused pass; float64 uses ndtr/ndtri (exact in the tails).
    """
    f64 = T.dtype == torch.float64
    torch.add(S, mi, out=T)
    T.div_(Di) if f64 else T.mul_(1.0 / (Di * _SQRT2))  # T_0 = x (float64) or x / sqrt 2
    if pin is not None:
        t0, half_sq = (T[0], -0.5) if f64 else (T[0], -1.0)  # -x^2 / 2 in either scaling
        torch.addcmul(torch.full((), math.log(_INV_SQRT_2PI / Di), dtype=T.dtype), t0, t0, value=half_sq,
                      out=pin[0]).exp_().mul_(P[0])
        if pin[1] is not None:
            torch.sub(S[0], t0, alpha=Ai if f64 else Ai * _SQRT2, out=pin[1])
    if f64:
        torch.special.ndtr(T, out=T)
        P.mul_(T)
        if u is not None:
            T.mul_(u[0]).clamp_(_TINY64, 1.0 - _EPS64)
            torch.special.ndtri(T, out=T)
            S.sub_(T, alpha=Ai)
        return
    T.erf_()
    P.addcmul_(P, T).mul_(0.5)
    if u is not None:
        # the clamp keeps erfinv finite where e_i is ~0 (such rows carry a ~0 weight anyway)
        torch.addcmul(u[1], T, u[0], out=T).clamp_(-_ONE32, _ONE32).erfinv_()
        S.add_(T, alpha=-_SQRT2 * Ai)


_TINY64, _EPS64 = torch.finfo(torch.float64).tiny, torch.finfo(torch.float64).eps
_ONE32 = 1.0 - 2.0 ** -24  # the float32 next to 1


@lru_cache(maxsize=256)
def _cholesky_lists(n: int, rho: float) -> tuple[list, list]:
    D, A = _structured_cholesky(n, rho)
    return D.tolist(), A.tolist()


def _genz(m: torch.Tensor, rho: float, n_samples: int, method: str, grad: bool) -> torch.Tensor:
    """Genz on rows of ``m`` (R, n) already sorted ascending (most restrictive first, as Genz
    recommends; the exchangeable covariance is unchanged by the order). Row 0 of the result is
    the value estimate; with ``grad``, row k + 1 is the gradient problem k. Returns
    (1 or n + 1, R), the means over the points."""
    R, n = m.shape
    D, A = _cholesky_lists(n, float(rho))
    N = 1 if n == 1 else n_samples  # one dimension is exact: no sampling
    u = _uniforms(R, N, n - 1, method, m.dtype, m.device)
    rows = n + 1 if grad else 1
    S = m.new_zeros(rows, R, N)  # sum_{j<i} L_ij eps_j per row
    P = m.new_ones(rows, R, N)
    T = torch.empty_like(S)
    for i in range(n):
        live = i + 1 if grad else 1
        pin = (P[i + 1], S[i + 1] if i < n - 1 else None) if grad else None
        _step(S[:live], P[:live], m[:, i, None], D[i], A[i], None if u is None or i >= n - 1 else u[i], T[:live], pin)
    return P.mean(dim=2)


def genz_orthant(m: torch.Tensor, rho: float = 1.0, n_samples: int = 16, method: str = "sobol") -> torch.Tensor:
    """P(z > 0) for z ~ N(m, I + rho 11^T), rows of ``m`` (R, n) independently (SPEC 6.2).

    Genz's sequential conditioning; variables are ordered by increasing mean (the most
    restrictive first), which Genz recommends to reduce variance. No autograd: see
    :func:`orthant_probability`.
    """
    R, n = m.shape
    if n == 0:
        return torch.ones(R, dtype=m.dtype, device=m.device)
    return _genz(m.sort(dim=1).values, rho, n_samples, method, grad=False)[0]


def genz_orthant_grad(m: torch.Tensor, rho: float = 1.0, n_samples: int = 16,
                      method: str = "sobol") -> tuple[torch.Tensor, torch.Tensor]:
    """P(z > 0) and dP/dm for z ~ N(m, I + rho 11^T) in one Genz pass: ((R,), (R, n)).

    The value is the same number :func:`genz_orthant` returns for the same random state. The
    gradient problem i follows the value estimate up to step i, takes the density of the bound
    ``phi(a_i) / D_i`` as its factor there and pins ``eps_i`` at the bound (see the module
    docstring); only problems already pinned are carried along, so step i works on i + 1 rows.
    """
    R, n = m.shape
    if n == 0:
        return torch.ones(R, dtype=m.dtype, device=m.device), m.new_zeros(R, 0)
    m, order = m.sort(dim=1)
    p = _genz(m, rho, n_samples, method, grad=True)
    grad = torch.empty(R, n, dtype=m.dtype, device=m.device).scatter_(1, order, p[1:].T)
    return p[0], grad


def conditional_orthant_grad(m: torch.Tensor, rho: float = 1.0, n_samples: int = 16,
                             method: str = "sobol") -> torch.Tensor:
    """dP/dm_i = f_{z_i}(0) * P(z_{-i} > 0 | z_i = 0) as n separate Genz problems: (R, n).

    The reference for :func:`genz_orthant_grad` (independent points, its own ordering per
    problem, about twice the work)."""
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
    """P(z > 0), z ~ N(m, I + 11^T) over the last dim of ``m``; analytic backward (SPEC 6.2).

    With a gradient wanted, value and gradient come from one pass of :func:`genz_orthant_grad`
    in forward (as the paper's code does); backward only scales the stored gradient."""

    @staticmethod
    def forward(ctx, m, n_samples, method, truncate):
        shape = m.shape
        flat = m.detach().reshape(-1, shape[-1])
        if truncate is not None and truncate < flat.shape[1]:
            # the smallest deltas are the competitive classes; the rest contribute factors ~ 1
            flat, order = flat.topk(truncate, dim=1, largest=False, sorted=True)
        else:
            flat, order = flat.sort(dim=1)
        rows = _genz(flat, 1.0, n_samples, method, grad=ctx.needs_input_grad[0])
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(flat.new_zeros(flat.shape[0], shape[-1]).scatter_(1, order, rows[1:].T))
        ctx.shape = shape
        return rows[0].reshape(shape[:-1])

    @staticmethod
    def backward(ctx, grad_p):
        g, = ctx.saved_tensors
        return (g * grad_p.reshape(-1, 1)).reshape(ctx.shape), None, None, None


def check_tensor_finite(x: torch.Tensor, name: str) -> None:
    """Raise the standard :func:`kexue.validate.finite` message if ``x`` has NaN or inf."""
    if not bool(torch.isfinite(x).all()):
        validate.finite(x.detach().cpu().numpy(), name)


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
    if not isinstance(d, torch.Tensor):
        raise KexueTypeError(f"orthant_probability needs a torch tensor d of shape (..., n); got {type(d).__name__}")
    if d.ndim < 1:
        raise KexueError("orthant_probability needs a tensor d of shape (..., n); got a scalar")
    if d.is_complex():
        raise KexueTypeError("deltas d are complex; pass real numbers")
    if not torch.is_floating_point(d):
        d = d.double()
    check_tensor_finite(d, "deltas d")
    validate.choice(method, METHODS, "method")
    n_samples = validate.integer(n_samples, "n_samples", lo=1)
    if truncate is not None:
        truncate = validate.integer(truncate, "truncate", lo=1)
    if isinstance(sigma, torch.Tensor):
        if not bool((sigma > 0).all()):
            raise KexueError(f"sigma must be positive; got {sigma}")
    else:
        validate.positive(sigma, "sigma")
    return orthant_unchecked(d, sigma, n_samples, method, truncate)


def orthant_unchecked(d: torch.Tensor, sigma, n_samples: int, method: str, truncate: int | None) -> torch.Tensor:
    """:func:`orthant_probability` without its input checks, for callers that validated already
    (the losses check their settings once, at construction, and the logits on every call)."""
    if method == "quadrature":
        m = d / sigma
        if truncate is not None and truncate < m.shape[-1]:
            m = m.gather(-1, m.detach().topk(truncate, dim=-1, largest=False).indices)
        return orthant_probability_quadrature(m, 1.0, max(n_samples, 8))
    return _Orthant.apply(d / sigma, n_samples, method, truncate)


def orthant_probability_quadrature(d: torch.Tensor, sigma: float = 1.0, n_nodes: int = 96) -> torch.Tensor:
    """The same probability as a 1-D integral, a near-exact reference for tests.

    With z = m + eps + t 1 (eps ~ N(0, I), t ~ N(0, 1)) the covariance is I + 11^T, hence
    P(z > 0) = E_t[prod_i Phi(m_i + t)], computed by Gauss–Hermite quadrature.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    t = torch.as_tensor(nodes, dtype=d.dtype, device=d.device)
    w = torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=d.dtype, device=d.device)
    logphi = torch.special.log_ndtr((d / sigma)[..., None, :] + t[:, None])  # (..., nodes, n)
    return (logphi.sum(-1).exp() * w).sum(-1)
