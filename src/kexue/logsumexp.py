"""logsumexp, smooth max/min, and the inequalities of SPEC 4.

``logsumexp`` works on NumPy arrays and torch tensors (differentiably) with the semantics of
``scipy.special.logsumexp``: ``axis``/``dim`` (int, tuple or None), ``keepdims``, weights ``b``
(may be negative; zero weights drop their terms), ``return_sign``; +inf anywhere gives +inf,
NaN gives NaN, an empty reduction or all -inf gives -inf, a negative weighted sum gives NaN
unless ``return_sign``. Two deliberate differences from scipy 1.17, both where scipy's answer is
not the log of the sum: an empty reduction has sign 0 (scipy: -1), and weights whose terms cancel
exactly at a finite maximum (``a=[1000, 1000], b=[1, -1]``) give -inf with sign 0 (scipy: NaN).
Bool and integer input become float64 in NumPy (as scipy) and torch's default dtype in torch.

Numerics: with m = max x and the set M of positions attaining it,

    lse(x) = m + log(Σ_{i∈M} b_i) + log1p( Σ_{i∉M} b_i e^{x_i - m} / Σ_{i∈M} b_i ),

so the dominant term is exact and ``log1p`` keeps the small rest accurate (the rest is < n - 1
relative to the max terms, so nothing overflows). ``smooth_max`` shifts *before* dividing by τ,
so τ·lse(x/τ) is finite for |x| up to the float range and any τ > 0. Without weights, NumPy
arrays take a blocked one-pass path and torch tensors torch's kernel with its inexact outputs
recomputed (:func:`_lse_fast_numpy`, :func:`_lse_fast_torch`); both keep the formula above.

The bound functions take the last axis as the vector axis (batched rows of logits) and return
the bound's value, so that ``lower <= lse(x) <= upper`` can be checked or its gap measured.
They accept NumPy arrays (torch tensors are converted).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from kexue.utils import KexueError, KexueTypeError

__all__ = [
    "logsumexp", "smooth_max", "smooth_min", "renyi_entropy",
    "max_bounds", "smooth_max_bounds", "jensen_lower_bound", "collision_lower_bound",
    "holder_lower_bound", "entropy_lower_bound", "lipschitz_bound", "convexity_upper_bound",
]


def _is_torch(x: Any) -> bool:
    # a tensor exists only once torch is imported: never import torch (an extra) just to ask
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise KexueError(f"axis {ax} is out of bounds for an array of dimension {ndim}")
        out.append(int(ax) % ndim)
    if len(set(out)) != len(out):
        raise KexueError(f"repeated axis in {axis}; give each axis once")
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# logsumexp


def logsumexp(a, axis=None, b=None, keepdims: bool = False, return_sign: bool = False, *, dim=None):
    """log Σ b_i exp(a_i) over ``axis`` (NumPy) or ``dim`` (torch), computed stably (SPEC 4).

    Parameters follow ``scipy.special.logsumexp``; ``dim`` is an alias of ``axis`` for torch
    users. Returns ``out`` or ``(out, sign)`` with ``out = log|Σ b e^a|`` and sign ∈ {-1, 0, 1}.
    """
    if dim is not None:
        if axis is not None:
            raise KexueTypeError("give axis or dim, not both")
        axis = dim
    if _is_torch(a) or _is_torch(b):
        return _lse_torch(a, axis, b, keepdims, return_sign)
    return _lse_numpy(a, axis, b, keepdims, return_sign)


def _float_dtype(*arrays: np.ndarray) -> np.dtype:
    """The dtype scipy computes in: the arrays' promoted type, or float64 when that is not a
    float (bool and integer input, also bool promoted with a small integer)."""
    dtype = np.result_type(*arrays)
    if np.issubdtype(dtype, np.complexfloating) or dtype.kind not in "biuf":
        raise KexueTypeError(f"logsumexp needs real input, got {dtype}; pass the real part or abs()")
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _lse_numpy(a, axis, b, keepdims, return_sign):
    a = np.asarray(a)
    dtype = _float_dtype(a) if b is None else _float_dtype(a, np.asarray(b))
    a = np.atleast_1d(a.astype(dtype, copy=False))
    if b is not None:
        a, b = np.broadcast_arrays(a, np.asarray(b, dtype=dtype))
    axes = _axes(axis, a.ndim)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        if a.size == 0:
            shape = [1 if i in axes else s for i, s in enumerate(a.shape)]
            # an empty sum is 0: log 0 = -inf with sign 0, as for all -inf (scipy 1.17 says -1 here)
            out = np.full(shape, -np.inf, dtype=dtype)
            sign = np.zeros(shape, dtype=dtype)
        else:
            fast = _lse_fast_numpy(a, axes) if b is None and a.dtype in (np.float32, np.float64) else None
            out, sign = fast if fast is not None else _lse_core_numpy(a, b, axes)
        if not keepdims:
            out, sign = np.squeeze(out, axis=axes), np.squeeze(sign, axis=axes)
        if not return_sign:
            # a NaN of out's own type: NumPy 1.x would promote a 0-d float16/32 result to float64
            out = np.where(sign < 0, out.dtype.type(np.nan), out)
    out, sign = out[()], sign[()]
    return (out, sign) if return_sign else out


BLOCK = 1 << 15  # elements per block of the NumPy fast path: the block's temporaries stay in L2 cache


def _lse_fast_numpy(a: np.ndarray, axes: tuple[int, ...]):
    """The unweighted reduction in cache-sized blocks along the outermost axis, with the same
    split as :func:`_lse_core_numpy` (m + log c + log1p(R/c), c = #max terms, R = the rest).

    One pass over memory: each block's max, shifted exp (in place, in a block buffer) and sums are
    taken while the block is in cache. When the outermost axis is reduced too, blocks are merged
    online — (M, c, R) of the running max is rescaled by exp(M_old − M_new) when a larger max
    arrives. Returns None (the caller uses the reference core) if a block has +inf or NaN, whose
    IEEE semantics the reference handles."""
    if a.ndim and not a.flags.c_contiguous and a.flags.f_contiguous:
        out = _lse_fast_numpy(a.T, tuple(sorted(a.ndim - 1 - ax for ax in axes)))
        return None if out is None else (out[0].T, out[1].T)
    merge = 0 in axes
    step = max(1, BLOCK // max(1, a[0].size))
    kshape = tuple(1 if i in axes else s for i, s in enumerate(a.shape))
    M = np.full(kshape, -np.inf, dtype=a.dtype)
    C = np.zeros(kshape, dtype=a.dtype)
    R = np.zeros(kshape, dtype=a.dtype)
    buf = np.empty((min(step, a.shape[0]),) + a.shape[1:], dtype=a.dtype)
    for s in range(0, a.shape[0], step):
        blk = a[s:s + step]
        d = buf[:len(blk)]
        m = np.max(blk, axis=axes, keepdims=True)
        if np.isnan(m).any() or (m == np.inf).any():
            return None
        np.subtract(blk, np.where(m == -np.inf, 0, m), out=d)
        below = d < 0  # the rest; entries at the max are exactly 0 here (and -inf stays below)
        np.exp(d, out=d)
        np.multiply(d, below, out=d)
        r = np.sum(d, axis=axes, keepdims=True)
        c = math.prod(blk.shape[i] for i in axes) - np.sum(below, axis=axes, keepdims=True, dtype=a.dtype)
        c = np.where(m == -np.inf, 0, c)  # an all -inf block has no max terms: it adds nothing
        if not merge:
            M[s:s + step], C[s:s + step], R[s:s + step] = m, c, r
            continue
        up, same = m > M, m == M
        scale = np.exp(np.where(up, M - m, m - M), where=np.isfinite(M) & np.isfinite(m), out=np.zeros_like(M))
        R[...] = np.where(up, r + (R + C) * scale, np.where(same, R + r, R + (r + c) * scale))
        C[...] = np.where(up, c, np.where(same, C + c, C))
        M[...] = np.maximum(M, m)
    top = np.where(C > 0, C, 1)
    out = np.where(C > 0, np.log1p(R / top) + np.log(top) + M, -np.inf)
    return out, np.where(C > 0, 1, 0).astype(a.dtype)


def _lse_core_numpy(a, b, axes):
    """The reduction over ``axes`` (keepdims) and its sign; see the module docstring."""
    if b is not None:
        a = np.where(b == 0, -np.inf, a)  # a zero weight removes its term, even an infinite one
    w = np.ones_like(a) if b is None else b
    m = np.max(a, axis=axes, keepdims=True)
    shift = np.where(np.isfinite(m), m, 0)
    e = w * np.exp(a - shift)  # the max terms are w exactly
    at_max = a == m
    top = np.sum(np.where(at_max, e, 0), axis=axes, keepdims=True)
    rest = np.sum(np.where(at_max, 0, e), axis=axes, keepdims=True)
    # split the dominant terms off so that log1p keeps the rest accurate; when the max is not
    # finite or the max terms cancel (top = 0) the plain shifted sum is the exact answer
    split = np.isfinite(m) & (top != 0)
    ratio = rest / np.where(split, top, 1)
    out = np.where(split, np.log1p(np.where(ratio < -1, -ratio - 2, ratio)) + np.log(np.abs(top)),
                   np.log(np.abs(top + rest))) + shift
    sign = np.where(split, np.sign(ratio + 1) * np.sign(top), np.sign(top + rest))
    return out, sign


def _lse_torch(a, axis, b, keepdims, return_sign):
    import torch

    a = torch.as_tensor(a)
    if b is not None:
        b = torch.as_tensor(b, device=a.device)
    if a.is_complex() or (b is not None and b.is_complex()):
        raise KexueTypeError("logsumexp needs real input, got a complex tensor; pass its real part or abs()")
    if not a.is_floating_point():
        a = a.to(torch.get_default_dtype() if b is None or not b.is_floating_point() else b.dtype)
    if b is not None:
        dtype = torch.promote_types(a.dtype, b.dtype) if b.is_floating_point() else a.dtype
        a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    a = torch.atleast_1d(a)
    axes = _axes(axis, a.ndim)
    if a.numel() == 0:
        shape = [1 if i in axes else s for i, s in enumerate(a.shape)]
        out = torch.full(shape, -torch.inf, dtype=a.dtype, device=a.device)
        sign = torch.zeros_like(out)
    elif b is None and not return_sign:
        return _lse_fast_torch(a, axes, keepdims)
    else:
        out, sign = _lse_split_torch(a, b, axes)
    if not keepdims:
        out, sign = out.squeeze(axes), sign.squeeze(axes)
    if not return_sign:
        return torch.where(sign < 0, torch.full_like(out, torch.nan), out)
    return out, sign


def _lse_fast_torch(a, axes, keepdims):
    """torch's kernel, m + log Σ e^(x−m), with the outputs it cannot give to full relative accuracy
    recomputed by the split. Its absolute error is ~ε·(log₂ n + log S) with S = Σ e^(x−m), so it is
    accurate to a few ε relative unless |lse| < 1 + log S (e.g. lse([0, −40]) = 4.2e-18, where
    torch returns 0); only then is the split path taken, and only its values are used."""
    import torch

    y = torch.logsumexp(a, dim=axes, keepdim=True)
    yd = y.detach()
    n = math.prod(a.shape[i] for i in axes)
    maybe = torch.isfinite(yd) & (yd.abs() < 1 + math.log(n))  # log S <= log n: cheap pre-filter
    if bool(maybe.any()):
        m = torch.amax(a.detach(), dim=axes, keepdim=True)
        need = maybe & (yd.abs() < 1 + (yd - m))
        if bool(need.any()):
            y = torch.where(need, _lse_split_torch(a, None, axes)[0], y)
    return y if keepdims else y.squeeze(axes)


def _lse_split_torch(a, b, axes):
    """The torch twin of :func:`_lse_core_numpy`, differentiable: (out, sign) with keepdims."""
    import torch

    if b is not None:
        a = torch.where(b == 0, torch.full_like(a, -torch.inf), a)
    m = torch.amax(a, dim=axes, keepdim=True).detach()
    # the shift carries no gradient of its own: the derivative of lse is the softmax either way
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(a - shift) if b is None else b * torch.exp(a - shift)  # no weights: no full-size ones
    at_max = a.detach() == m
    top = torch.where(at_max, e, 0.0).sum(dim=axes, keepdim=True)
    rest = torch.where(at_max, 0.0, e).sum(dim=axes, keepdim=True)
    split = torch.isfinite(m) & (top.detach() != 0)
    one = torch.ones_like(top)
    safe_top = torch.where(split, top, one)  # keeps NaN out of the unused branch's gradient
    ratio = rest / safe_top
    folded = torch.where(ratio < -1, -ratio - 2, ratio)
    out_split = torch.log1p(torch.where(split, folded, torch.zeros_like(folded))) + torch.log(torch.abs(safe_top))
    total = torch.where(split, one, top + rest)
    out = torch.where(split, out_split, torch.log(torch.abs(total))) + shift
    sign = torch.where(split, torch.sign(ratio + 1) * torch.sign(safe_top), torch.sign(total))
    sign = torch.where(torch.isnan(out), out, sign)  # torch.sign(nan) is 0; NumPy and scipy say nan
    return out, sign


# ---------------------------------------------------------------------------------------------
# smooth max / min (SPEC 4.2)


def smooth_max(x, tau: float = 1.0, axis=-1, keepdims: bool = False):
    """τ·lse(x/τ): a smooth maximum with x_max < τ·lse(x/τ) ≤ x_max + τ log n (SPEC 4.2).

    Computed as m + τ·lse((x - m)/τ) with m = max x, so a small τ never overflows.
    """
    if tau <= 0:
        raise KexueError(f"temperature tau must be > 0, got {tau}")
    x = _as_float(x)
    if _is_torch(x):
        import torch

        m = torch.amax(x, dim=axis, keepdim=True).detach()
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        out = m + tau * logsumexp((x - m) / tau, axis=axis, keepdims=True)
        return out if keepdims else out.squeeze(axis)
    with np.errstate(invalid="ignore"):
        ma = np.max(x, axis=axis, keepdims=True)
        ma = np.where(np.isfinite(ma), ma, 0)
        res = ma + tau * logsumexp((x - ma) / tau, axis=axis, keepdims=True)
    return res if keepdims else np.squeeze(res, axis=axis)


def smooth_min(x, tau: float = 1.0, axis=-1, keepdims: bool = False):
    """-τ·lse(-x/τ): a smooth minimum, x_min - τ log n ≤ smooth_min < x_min (SPEC 4.2)."""
    return -smooth_max(-_as_float(x), tau, axis=axis, keepdims=keepdims)


def _as_float(x):
    """``x`` as a float array or tensor: bool and integers become float64 (NumPy, as scipy) or
    torch's default dtype (torch), so that negation and division behave."""
    if _is_torch(x):
        import torch

        return x if x.is_floating_point() or x.is_complex() else x.to(torch.get_default_dtype())
    x = np.asarray(x)
    return x.astype(_float_dtype(x), copy=False)


# ---------------------------------------------------------------------------------------------
# the inequalities (SPEC 4.1-4.8), along the last axis


def _np(x) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(np.result_type(x, np.float64), copy=False)


def _dot0(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Σ p_i x_i with the convention 0·(±inf) = 0 (a zero weight ignores its coordinate)."""
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(p > 0, p * x, 0.0), axis=-1)


def max_bounds(x) -> tuple[np.ndarray, np.ndarray]:
    """SPEC 4.1: (x_max, x_max + log n) with x_max < lse(x) ≤ x_max + log n."""
    x = _np(x)
    m = np.max(x, axis=-1)
    return m, m + np.log(x.shape[-1])


def smooth_max_bounds(x, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """SPEC 4.2: (x_max, x_max + τ log n) bracketing τ·lse(x/τ)."""
    x = _np(x)
    m = np.max(x, axis=-1)
    return m, m + tau * np.log(x.shape[-1])


def jensen_lower_bound(x) -> np.ndarray:
    """SPEC 4.3: x̄ + log n ≤ lse(x) (Jensen on the uniform distribution).

    NaN where a row holds both +inf and -inf (its mean is undefined).
    """
    x = _np(x)
    with np.errstate(invalid="ignore"):
        return np.mean(x, axis=-1) + np.log(x.shape[-1])


def renyi_entropy(p, t: float) -> np.ndarray:
    """Rényi entropy H_t(p) = log(Σ p_i^t)/(1 - t), with H_1 the Shannon entropy -Σ p log p.

    SPEC 4.4-4.6 are one inequality lse(x) ≥ Σ p_i x_i + H_t(p) for t = 2, t > 1 and t → 1.
    """
    p = _np(p)
    if np.any(p < 0):
        raise KexueError("p must be non-negative")
    if t == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)
    if t <= 0:
        raise KexueError(f"order t must be > 0, got {t}")
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(p > 0, np.log(p), -np.inf)
        if abs(t - 1) >= 0.5:
            # log Σ p^t as an lse of t·log p, so tiny p^t do not underflow to log 0
            return logsumexp(t * logp, axis=-1) / (1 - t)
        # near t = 1, log(Σ p^t)/(1-t) loses digits in proportion to 1/|t-1|; writing
        # Σ p^t = Σ p + Σ p·expm1((t-1) log p) keeps them
        s = np.sum(np.where(p > 0, p * np.expm1((t - 1) * logp), 0.0), axis=-1)
    return np.log1p((np.sum(p, axis=-1) - 1) + s) / (1 - t)


def _check_simplex(p: np.ndarray, x: np.ndarray) -> None:
    if p.shape[-1] != x.shape[-1]:
        raise KexueError(f"p has {p.shape[-1]} entries per row, x has {x.shape[-1]}")
    if np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, rtol=0, atol=1e-9 * p.shape[-1]):
        raise KexueError("p must lie on the probability simplex (p >= 0, sum 1)")


def collision_lower_bound(x, p) -> np.ndarray:
    """SPEC 4.4: Σ p_i x_i - log Σ p_i² ≤ lse(x) for p on the simplex."""
    return holder_lower_bound(x, p, 2.0)


def holder_lower_bound(x, p, t: float) -> np.ndarray:
    """SPEC 4.5: Σ p_i x_i - log(Σ p_i^t)/(t - 1) ≤ lse(x) for t > 1 (Hölder)."""
    if t <= 1:
        raise KexueError(f"Hölder's bound needs t > 1, got {t}; use entropy_lower_bound for t = 1")
    x, p = _np(x), _np(p)
    _check_simplex(p, x)
    return _dot0(p, x) + renyi_entropy(p, t)


def entropy_lower_bound(x, p) -> np.ndarray:
    """SPEC 4.6: Σ p_i x_i - Σ p_i log p_i ≤ lse(x), with equality at p = softmax(x)."""
    x, p = _np(x), _np(p)
    _check_simplex(p, x)
    return _dot0(p, x) + renyi_entropy(p, 1)


def lipschitz_bound(x, y) -> np.ndarray:
    """SPEC 4.7: ‖x - y‖_∞, an upper bound on |lse(x) - lse(y)|."""
    x, y = _np(x), _np(y)
    return np.max(np.abs(x - y), axis=-1)


def convexity_upper_bound(x, y, t: float) -> np.ndarray:
    """SPEC 4.8: t·lse(x) + (1 - t)·lse(y) ≥ lse(t x + (1 - t) y) for t ∈ [0, 1]."""
    if not 0 <= t <= 1:
        raise KexueError(f"t must be in [0, 1], got {t}")
    x, y = _np(x), _np(y)
    return t * logsumexp(x, axis=-1) + (1 - t) * logsumexp(y, axis=-1)
