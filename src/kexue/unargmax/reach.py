"""The reachable probability (SPEC 3.8): for each class i a certified interval around

    P_i(R) = max_{‖h‖₂ ≤ R} softmax(Wh + b)_i = exp(−F_i),  F_i = min_{‖h‖ ≤ R} f_i(h),
    f_i(h) = lse(Wh + b) − (w_i·h + b_i)  (= lse_j((w_j − w_i)·h + b_j − b_i)), convex.

- **lower** (witness): any h with ‖h‖ ≤ R gives P_i ≥ exp(−f_i(h)).
- **upper** (dual bound): lse(z) = max_{λ ∈ simplex} λ·z + H(λ) (H the entropy), so by the
  minimax theorem F_i = max_λ [λ·(b − b_i) + H(λ) − R‖Wᵀλ − w_i‖]; any λ bounds F_i from below.
  With λ = softmax(Wh + b) the gap between the two is exactly v·h + R‖v‖, v = Wᵀλ − w_i = ∇f_i(h),
  which is also Frank–Wolfe's duality gap on the ball: it vanishes at the optimum.

So Frank–Wolfe runs on a block of classes at once: two matrix products per step (Wᵀλ for the
gradients, W s for the step towards the ball's point s = −R v/‖v‖), an exact line search on the
segment (1-D Newton, no more products: the logits move linearly), and it stops per class when
the probability interval is narrower than ``tol``. The start is the best of the audit's candidate
directions scaled to ‖h‖ = R, so most classes are decided by the first products (screening). The
steps run in float32 (on W's float32 copy), the classes still open after that in float64, and
every interval is recomputed in float64 with a bound on its rounding error before it is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kexue.parallel import opened
from kexue.unargmax.certificates import U64
from kexue.unargmax.config import LayerStats
from kexue.unargmax.stages import directions, logits


@dataclass
class ReachResult:
    """``lower[i] ≤ P_i(radius) ≤ upper[i]`` for the audited classes (NaN elsewhere); ``iters``
    Frank–Wolfe steps per class; ``witnesses`` (C, d) float32 inputs h with ‖h‖ ≤ radius that
    attain ``lower`` (kept on request); ``seconds`` compute time summed over workers."""

    radius: float
    lower: np.ndarray
    upper: np.ndarray
    iters: np.ndarray
    tol: float
    witnesses: np.ndarray | None = None
    seconds: float = 0.0
    audited: np.ndarray | None = field(default=None, repr=False)

    @property
    def width(self) -> np.ndarray:
        return self.upper - self.lower

    def below(self, p: float) -> np.ndarray:
        """Classes certified unable to reach probability ``p`` (upper < p)."""
        return np.flatnonzero(self._mask() & (self.upper < p))

    def reaches(self, p: float) -> np.ndarray:
        """Classes certified to reach ``p`` (lower ≥ p)."""
        return np.flatnonzero(self._mask() & (self.lower >= p))

    def unresolved(self, p: float) -> np.ndarray:
        """Classes whose interval contains ``p`` (neither of the above)."""
        return np.flatnonzero(self._mask() & (self.lower < p) & (self.upper >= p))

    def _mask(self):
        return np.isfinite(self.lower) if self.audited is None else self.audited

    def to_dict(self) -> dict:
        """{radius, tol, max_width, lower, upper}: ``lower``/``upper`` one entry per class (null for
        classes not audited)."""
        ids = np.flatnonzero(self._mask())

        def col(a):
            return [float(v) if np.isfinite(v) else None for v in a.tolist()]

        return {"radius": self.radius, "tol": self.tol, "max_width": float(self.width[ids].max()) if ids.size else 0.0,
                "lower": col(self.lower), "upper": col(self.upper)}


def _lse_cols(Z):
    """Column-wise log-sum-exp and softmax of Z (C, n)."""
    m = Z.max(0)
    E = np.exp(Z - m)
    s = E.sum(0)
    return m + np.log(s), E / s


def _line_search(Z, Zs, ks, iters=8):
    """γ ∈ [0, 1] minimising φ(γ) = lse(Z + γΔ) − (Z + γΔ)_k per column (Δ = Zs − Z): convex, so
    safeguarded Newton on φ' (= E_softmax[Δ] − Δ_k, φ'' = Var_softmax[Δ]) inside a bracket, a few
    steps (each costs one pass over the C × n logits; the matrix products cost d passes)."""
    n = Z.shape[1]
    cols = np.arange(n)
    D = Zs - Z
    dk = D[ks, cols]
    lo, hi = np.zeros(n), np.ones(n)
    g = np.ones(n)  # start at the full step (s is the ball's minimiser of the linearisation)
    act = cols
    for _ in range(iters):
        _, P = _lse_cols(Z[:, act] + g[act].astype(Z.dtype) * D[:, act])
        Da = D[:, act]
        mean = (P * Da).sum(0)
        d1 = mean - dk[act]
        d2 = np.maximum((P * Da * Da).sum(0) - mean * mean, 0)
        if act.size == n and (d1 <= 0).all():
            return g  # the full step is best for every column
        lo[act], hi[act] = np.where(d1 < 0, g[act], lo[act]), np.where(d1 > 0, g[act], hi[act])
        newton = g[act] - d1 / np.where(d2 > 0, d2, np.inf)
        step = np.where((newton > lo[act]) & (newton < hi[act]), newton, 0.5 * (lo[act] + hi[act]))
        moved = np.abs(step - g[act]) > 1e-6 * np.maximum(g[act], 1e-3)
        g[act] = step
        act = act[moved]
        if act.size == 0:
            break
    return g


def _bounds(W, b, ks, H, R, max_norm, mem_mb):
    """Certified (lower, upper, f, V) for the columns of H (‖h‖ ≤ R), in float64 with rounding
    bounds: lower = exp(−f(h) − e_f), upper = exp(−g(λ) + e_g) with λ = softmax(Wh + b)."""
    C, d = W.shape
    n = H.shape[1]
    cols = np.arange(n)
    Z = logits(W, H, mem_mb)
    if b is not None:
        Z += b[:, None]
    lse, L = _lse_cols(Z)
    f = lse - Z[ks, cols]
    V = logits_t(W, L, mem_mb) - np.asarray(W[ks], np.float64).T
    hn = np.linalg.norm(H, axis=0)
    gap = np.maximum((V * H).sum(0) + R * np.linalg.norm(V, axis=0), 0.0)
    zmax = np.abs(Z).max(0)
    # f: each logit is off by at most γ_d(‖w‖‖h‖) + u|z| (the difference of two: doubled), lse by
    # max|δz| plus C roundings; g adds the rounding of Wᵀλ (γ_C max‖w‖ per entry, times R√d)
    e_f = 2.0 * (d + 6) * U64 * (max_norm * hn + zmax) * 1.01 + (C + 8) * U64 * (1 + np.abs(lse))
    e_g = e_f + (C + d + 8) * U64 * (R * max_norm * np.sqrt(d) + zmax) * 2
    lower = np.exp(-(f + e_f))
    upper = np.minimum(np.exp(-(f - gap - e_g)), 1.0)
    return lower, upper, f, gap


def logits_t(W, L, mem_mb, dtype=np.float64):
    """Wᵀ L (d, n) in ``dtype``, a block of W's rows at a time (W may be a float32 memmap)."""
    C, d = W.shape
    out = np.zeros((d, L.shape[1]), dtype)
    rows = max(1, int(mem_mb * 2**20 / (np.dtype(dtype).itemsize * max(d, L.shape[1]))))
    for r in range(0, C, rows):
        out += np.asarray(W[r:r + rows], dtype).T @ np.asarray(L[r:r + rows], dtype)
    return out


def _frank_wolfe(W, b, ks, H, R, tol, iters, mem_mb, dtype):
    """Frank–Wolfe steps on the columns of H (in ``dtype``) until each column's probability
    interval (in this precision, uncertified) is below ``tol``. Returns (H, steps per column)."""
    with np.errstate(over="ignore", under="ignore"):
        return _fw(W, b, ks, H, R, tol, iters, mem_mb, dtype)


def _fw(W, b, ks, H, R, tol, iters, mem_mb, dtype):
    n = H.shape[1]
    steps = np.zeros(n, np.int64)
    bb = None if b is None else b.astype(dtype)[:, None]
    wk = np.asarray(W[ks], dtype).T
    open_ = np.arange(n)
    Z = logits(W, H, mem_mb, dtype) + (0 if bb is None else bb)
    for _ in range(iters):
        if open_.size == 0 or R == 0:
            break
        Hs, Zs_, ks_ = H[:, open_], Z[:, open_], ks[open_]
        lse, P = _lse_cols(Zs_)
        f = lse - Zs_[ks_, np.arange(open_.size)]
        V = logits_t(W, P, mem_mb, dtype) - wk[:, open_]
        vn = np.linalg.norm(V, axis=0)
        gap = np.maximum((V * Hs).sum(0) + R * vn, 0)
        width = np.minimum(np.exp(np.minimum(gap - f, 0.0)), 1.0) - np.exp(-f)  # upper ≤ 1 too
        done = (width <= 0.5 * tol) | (vn == 0)
        keep = ~done
        if not keep.any():
            open_ = open_[keep]
            break
        open_, V, vn, Hs, Zs_ = open_[keep], V[:, keep], vn[keep], Hs[:, keep], Zs_[:, keep]
        S = (-R / vn) * V
        ZS = logits(W, S, mem_mb, dtype) + (0 if bb is None else bb)
        g = _line_search(Zs_, ZS, ks[open_]).astype(dtype)
        Hn, Zn = Hs + g * (S - Hs), Zs_ + g * (ZS - Zs_)
        # a convex combination of two points of the sphere lies inside it, while the optimum is
        # on it unless w_i is inside the others' hull: a second search along the ray to the sphere
        # (the logits scale with h: no product) keeps Frank–Wolfe from crawling outwards
        nn = np.linalg.norm(Hn, axis=0)
        grow = (nn > 0) & (nn < R * (1 - 1e-6))
        if grow.any():
            c = np.where(grow, R / np.where(nn > 0, nn, 1), 1.0).astype(dtype)
            Zc = Zn if bb is None else Zn - bb
            Zr = (Zc * c) if bb is None else (Zc * c + bb)
            t = _line_search(Zn, Zr, ks[open_]).astype(dtype)
            Hn, Zn = Hn * (1 + t * (c - 1)), Zn + t * (Zr - Zn)
        H[:, open_], Z[:, open_] = Hn, Zn
        steps[open_] += 1
    return H, steps


NEWTON_STEPS = 60
TOL32 = 2e-5  # the float32 steps stop here; narrower intervals are finished in float64


def reach_block(W, W32, b, ks, radius: float, stats: LayerStats, tol: float, iters: int, keep: bool) -> dict:
    """The reachable probability of the classes ``ks`` (one worker task): start at the best
    candidate direction scaled to ‖h‖ = R, Frank–Wolfe in float32, then in float64 for the
    classes still open, then certified float64 bounds. Returns {"ks", "lower", "upper",
    "iters", "H" (float32, or None), "secs"}."""
    t0 = time.perf_counter()
    W, W32, b = opened(W), opened(W32), opened(b)
    b = None if b is None else np.asarray(b, np.float64)
    ks = np.asarray(ks)
    n, d = len(ks), W.shape[1]
    R = float(radius)
    H = np.zeros((d, n))
    if R > 0:
        best = np.full(n, np.inf)
        for fam in stats.config.families:
            D = directions(W, ks, fam, stats)
            D *= R / np.maximum(np.linalg.norm(D, axis=0), 1e-300)
            Z = logits(W32, D, stats.mem_mb, np.float32).astype(np.float64)
            if b is not None:
                Z += b[:, None]
            lse, _ = _lse_cols(Z)
            f = lse - Z[ks, np.arange(n)]
            better = f < best
            best[better], H[:, better] = f[better], D[:, better]
    # float32 cannot resolve intervals much below ~1e-5 (its logits are off by ~1e-7 · |z|)
    H32, steps = _frank_wolfe(W32, b, ks, H.astype(np.float32), R, max(tol, TOL32), iters, stats.mem_mb, np.float32)
    # FW in float64 gets at most a fifth of the budget: what it leaves is for Newton
    H = H32.astype(np.float64)
    _scale_into_ball(H, R)
    lower, upper, _, _ = _bounds(W, b, ks, H, R, stats.max_norm, stats.mem_mb)
    still = np.flatnonzero(upper - lower > tol)
    for phase in ("fw64", "newton"):  # float32 stalls near its rounding; FW near an interior optimum
        still = np.flatnonzero(upper - lower > tol)
        if not still.size:
            break
        H64 = H[:, still].copy()
        with np.errstate(over="ignore", under="ignore"):
            if phase == "fw64":
                H64, s64 = _frank_wolfe(W, b, ks[still], H64, R, tol, max(1, iters // 5), stats.mem_mb, np.float64)
            else:
                H64, s64 = _newton(W, b, ks[still], H64, R, tol, NEWTON_STEPS, stats.mem_mb)
        _scale_into_ball(H64, R)
        lo2, up2, _, _ = _bounds(W, b, ks[still], H64, R, stats.max_norm, stats.mem_mb)
        better = (up2 - lo2) < (upper[still] - lower[still])
        sel = still[better]
        lower[sel], upper[sel], H[:, sel] = lo2[better], up2[better], H64[:, better]
        steps[still] += s64
    return {"ks": ks, "lower": lower, "upper": upper, "iters": steps, "H": H.T.astype(np.float32) if keep else None,
            "secs": {"reach": time.perf_counter() - t0}}


def _trs(Hs, c, R):
    """argmin ½xᵀHx + c·x over ‖x‖ ≤ R (H symmetric PSD): x(μ) = −(H + μI)⁻¹c with μ ≥ 0 the
    root of ‖x(μ)‖ = R when the unconstrained minimiser is outside (bisection on log μ)."""
    lam, Q = np.linalg.eigh(Hs)
    lam = np.maximum(lam, 0.0)
    cq = Q.T @ c
    floor = 1e-12 * max(float(lam.max()), 1e-300)

    def x_of(mu):
        return -(cq / (lam + mu + floor))

    x = x_of(0.0)
    if np.linalg.norm(x) <= R:
        return Q @ x
    lo, hi = 0.0, max(float(np.linalg.norm(c)) / R, floor)
    for _ in range(100):  # ‖x(μ)‖ decreases in μ; x(hi) is inside
        mid = 0.5 * (lo + hi) if lo == 0 else np.sqrt(lo * hi)
        if np.linalg.norm(x_of(mid)) > R:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return Q @ x_of(hi)


def _newton(W, b, ks, H, R, tol, iters, mem_mb, top=2048):
    """Damped Newton on the ball for the columns of H (float64): the quadratic model with the
    Hessian Wᵀ(diag λ − λλᵀ)W over the ``top`` rows of largest λ, minimised on the ball
    (:func:`_trs`), then the exact line search towards it. For the classes Frank–Wolfe leaves
    open: those with an optimum inside the ball (w_i inside the others' hull), where it is slow."""
    n = H.shape[1]
    steps = np.zeros(n, np.int64)
    bb = None if b is None else b[:, None]
    for j in range(n):
        k = int(ks[j])
        wk = np.asarray(W[k], np.float64)
        h = H[:, j].copy()
        for _ in range(iters):
            z = logits(W, h[:, None], mem_mb)[:, 0] + (0 if bb is None else bb[:, 0])
            lse, lam = _lse_cols(z[:, None])
            lam = lam[:, 0]
            f = float(lse[0] - z[k])
            v = logits_t(W, lam[:, None], mem_mb)[:, 0] - wk
            gap = max(float(v @ h + R * np.linalg.norm(v)), 0.0)
            if min(np.exp(min(gap - f, 0.0)), 1.0) - np.exp(-f) <= 0.5 * tol:
                break
            act = np.argsort(-lam)[:min(top, lam.size)]
            Wa = np.asarray(W[np.sort(act)], np.float64)
            la = lam[np.sort(act)]
            m = Wa.T @ la
            Hs = (Wa.T * la) @ Wa - np.outer(m, m)
            x = _trs(Hs, v - Hs @ h, R)
            zx = logits(W, x[:, None], mem_mb) + (0 if bb is None else bb)
            g = float(_line_search(z[:, None], zx, np.array([k]))[0])
            if g <= 0:
                break
            h = h + g * (x - h)
            steps[j] += 1
        H[:, j] = h
    return H, steps


def _scale_into_ball(H, R):
    """Scale columns that rounding left a hair outside ‖h‖ ≤ R back inside (the witness must be
    feasible for the lower bound to hold)."""
    nrm = np.linalg.norm(H, axis=0)
    over = nrm > R * (1 - 4 * U64 * H.shape[0])
    H[:, over] *= (R * (1 - 8 * U64 * H.shape[0])) / nrm[over]
