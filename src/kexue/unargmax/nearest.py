"""Stage 3 on bias-free layers: Wolfe's nearest point of the other rows' hull to w_k (SPEC 3.2/3.3),
by constraint generation, before the LP of :mod:`kexue.unargmax.lp` (which it falls back to when
Wolfe stalls). A witness or a certificate comes out of the same iteration."""

from __future__ import annotations

import time

import numpy as np

from kexue.unargmax.certificates import (ARGMAXABLE, U32, U64, UNARGMAXABLE, UNDECIDED, checked_certificate, err_bound,
                                         relative_margin, verify_witness)
from kexue.unargmax.config import LayerStats
from kexue.unargmax.stages import logits, row_deltas


class _Corral:
    """Wolfe's corral (Wolfe 1976, "Finding the nearest point in a polytope"): affinely independent
    rows Q of P with convex weights λ > 0, and the lower Cholesky factor L of H = P_Q P_Qᵀ + ρ11ᵀ.

    On Σα = 1, αᵀHα = ‖P_Qᵀα‖² + ρ, so the affine min-norm point of the corral is P_Qᵀα with
    α ∝ H⁻¹1, and H is positive definite iff Q is affinely independent. Any ρ > 0 will do; ρ at
    the points' squared scale keeps H's condition at that of the points themselves (a tiny ρ would
    make H near-singular as the corral approaches 0 ∈ hull, the unargmaxable case).

    Kept so that a step costs O(n²) in BLAS, not O(n³) nor O(n) Python calls per row: L lives in
    a column-major cap × cap buffer padded with the identity (a triangular solve of full size
    needs no copy of the n × n corner), u = L⁻¹1 is updated with L, rows are added by one
    triangular solve and dropped by Givens rotations (BLAS ``drot``) that re-triangularise L."""

    def __init__(self, p0, j0: int, cap: int, rho: float):
        from scipy.linalg.blas import drot, dtrsv

        self._drot, self._dtrsv = drot, dtrsv
        self.rho = max(float(rho), 1e-300)
        # built column-major (not converted): only the pages the corral reaches are written, not
        # all (d + 2)² of them (128 MiB per worker at d = 4,096)
        self.L = np.eye(cap, order="F")
        self.u = np.zeros(cap)
        self.PQ = np.zeros((cap, p0.size))  # the corral's rows, in corral order
        self.Q = np.zeros(cap, np.int64)
        self.L[0, 0] = np.sqrt(float(p0 @ p0) + self.rho)
        self.u[0] = 1.0 / self.L[0, 0]
        self.PQ[0], self.Q[0], self.n = p0, j0, 1
        self.lam = np.ones(1)

    def _solve(self, rhs, trans=0):
        return self._dtrsv(self.L, rhs, lower=1, trans=trans)

    def add(self, j: int, p) -> bool:
        """Append row j (point p); False if it is affinely dependent on the corral (to rounding)."""
        n = self.n
        if n == self.L.shape[0]:
            return False
        v = np.zeros(self.L.shape[0])
        v[:n] = self.PQ[:n] @ p + self.rho
        r = self._solve(v)[:n]
        pp = float(p @ p) + self.rho
        piv = pp - float(r @ r)
        if not piv > 1e-13 * pp:
            return False
        self.L[n, :n], self.L[n, n] = r, np.sqrt(piv)
        self.u[n] = (1.0 - float(r @ self.u[:n])) / self.L[n, n]
        self.PQ[n], self.Q[n] = p, j
        self.lam = np.append(self.lam, 0.0)
        self.n = n + 1
        return True

    def affine(self):
        """Weights α (Σα = 1) of the affine min-norm point of the corral."""
        a = self._solve(self.u, trans=1)[:self.n]
        return a / a.sum()

    def drop(self, i: int) -> None:
        """Remove the corral's i-th row: delete row i of L (one equation of L u = 1) and restore the
        triangle with rotations of columns (r, r+1), which keep L Lᵀ (= H without row and column
        i); the same rotations carry u."""
        n, L, u, drot = self.n, self.L, self.u, self._drot
        L[i:n - 1, :n] = L[i + 1:n, :n]
        for r in range(i, n - 1):
            a, b = L[r, r], L[r, r + 1]
            h = np.hypot(a, b)
            c, s = a / h, b / h
            drot(L[:, r], L[:, r + 1], c, s, n=n - 1 - r, offx=r, offy=r, overwrite_x=1, overwrite_y=1)
            L[r, r + 1] = 0.0
            u[r], u[r + 1] = c * u[r] + s * u[r + 1], c * u[r + 1] - s * u[r]
        L[n - 1, :n], L[:n, n - 1], L[n - 1, n - 1], u[n - 1] = 0.0, 0.0, 1.0, 0.0
        self.PQ[i:n - 1] = self.PQ[i + 1:n]
        self.Q[i:n - 1] = self.Q[i + 1:n]
        self.lam = np.delete(self.lam, i)
        self.n = n - 1

    def point(self):
        return self.lam @ self.PQ[:self.n]

    def step(self):
        """Wolfe's minor cycles after an added row: move λ towards the affine minimiser until it is
        inside the simplex, dropping the rows whose weight reaches 0 on the way."""
        while True:
            a = self.affine()
            if (a > 0).all():
                self.lam = a
                return
            neg = a <= 0
            theta = float(np.min(self.lam[neg] / (self.lam[neg] - a[neg])))
            self.lam += theta * (a - self.lam)
            out = np.flatnonzero(self.lam <= 1e-15 * self.lam.max())
            if out.size == 0:  # rounding: drop the row that reached the boundary
                out = np.array([int(np.argmin(np.where(neg, self.lam, np.inf)))])
            for i in sorted(out.tolist(), reverse=True):
                self.drop(i)
            self.lam = np.maximum(self.lam, 0.0)
            self.lam /= self.lam.sum()


def nearest_class(W, k, work, stats: LayerStats, W32=None) -> dict:
    """Stage 3 without a bias: Wolfe's nearest point of P = conv{w_k - w_i : i ≠ k} to 0 (the
    distance of w_k to the hull of the other rows, SPEC 3.2/3.3), by constraint generation.

    Wolfe's algorithm runs on the rows of a working set S (first the pre-checks' ``work``). Any
    x = Σλ_i(w_k - w_i) ∈ P bounds every witness z: min_i ⟨w_k - w_i, z⟩ ≤ ⟨x, z⟩ ≤ ‖x‖‖z‖, so
    the best relative margin (SPEC 3.7) is at most ‖x‖/max‖w_i‖; and x itself is a witness once
    min_i ⟨w_k - w_i, x⟩ > 0 over all rows (at the nearest point p*, every row has
    ⟨w_k - w_i, p*⟩ ≥ ‖p*‖²: the minimax of SPEC 3.3 without a box, where the bound is attained).
    So the class is decided when x, checked against all C rows, is

    - a witness with relative margin ≥ ``min_margin`` (argmaxable), or a witness while
      ‖x‖/max‖w_i‖ < ``min_margin`` (near-unargmaxable, and no witness can do better), or
    - 0 (to rounding): the corral's weights, re-solved exactly on their support, are the
      certificate Σλ_i w_i = w_k (unargmaxable).

    Rows that block x (⟨w_k - w_i, x⟩ < ‖x‖², where Wolfe's step would pick them) join S, the most
    blocking first. Each iteration costs one product with S's rows, each check one with W (with
    ``W32``, W in float32, that product is screened in float32, half the memory traffic; any
    witness is still verified in float64 by :func:`verify_witness`); on
    Qwen2.5's near-identical untrained rows the margin LP on the same rows took 11–45 s a solve.
    Returns lp_class's dict (verdict undecided if Wolfe stalls or runs out of iterations; S,
    grown, is returned as "work" for the LP)."""
    t0 = time.perf_counter()
    cfg = stats.config
    C, d = W.shape
    wk = np.asarray(W[k], np.float64)
    S = np.asarray(work, np.int64)
    S = S[S != k]
    in_s = np.zeros(C, bool)
    in_s[S] = in_s[k] = True
    mm, M = stats.min_margin, stats.max_norm
    # a Wolfe step prices only a pool of S's rows, so rows are cheap to add here; checks against all
    # C rows are not (on Qwen's LP classes: 3-4 checks a class adding 1,024 rows each, 4-6 with 256)
    n_add = 16 * cfg.add_rows
    P = np.empty((S.size + n_add * 8, d))
    m = S.size
    row_deltas(W, wk, S, P[:m])
    sq = np.empty(P.shape[0])
    sq[:m] = np.einsum("ij,ij->i", P[:m], P[:m])
    out = {"k": int(k), "verdict": UNDECIDED, "rounds": 0, "note": "", "stage": "nearest"}
    j0 = int(np.argmin(sq[:m]))
    scale = float(sq[:m].max())
    corral = _Corral(P[j0], j0, d + 2, scale)  # at most d + 1 affinely independent points
    early, rounds, x = True, 0, P[j0].copy()
    pool, P_pool, stale = None, None, 0
    for _ in range(cfg.nearest_iters):
        xx = float(x @ x)
        j = -1
        if pool is not None and stale < _POOL_STEPS:
            # partial pricing: any row with ⟨p_j, x⟩ < ‖x‖² is a valid Wolfe step, so the rows most
            # negative at the last full pricing are tried first (a product with _POOL rows, not m)
            gp = P_pool @ x
            jj = int(np.argmin(gp))
            if xx - gp[jj] > 1e-12 * scale:
                j, stale = int(pool[jj]), stale + 1
        if j < 0:
            g = P[:m] @ x
            j = int(np.argmin(g))
            gj, xn, stale = float(g[j]), np.sqrt(xx), 0
            if m > 2 * _POOL:
                pool = np.argpartition(g, _POOL)[:_POOL]
                P_pool = P[pool]
            optimal = xx - gj <= 1e-12 * scale  # Wolfe's stopping rule on S (absolute, so x = 0 stops)
            if optimal and xn <= 1e-6 * np.sqrt(scale):
                Q = corral.Q[:corral.n]
                ok, idx, lam, res = checked_certificate(W, None, k, S[Q], P[Q], corral.lam, stats)
                if ok:
                    out.update(verdict=UNARGMAXABLE, idx=idx, lam=lam, residual=res)
                    break
            if optimal or (early and (gj >= mm * M * xn * (1 + 1e-9) or (xn < mm * M and gj > 0))):
                rounds += 1
                found, block = _nearest_check(W, W32, k, x, xx, in_s, optimal, n_add, stats, out)
                if found:
                    break
                if block.size == 0:
                    if optimal:  # x is the nearest point, yet its margin is within float64 rounding
                        out["note"] = "nearest point: its margin is within float64 rounding"
                        break
                    early = False  # only rounding stopped the early check; wait for S's optimum
                    continue
                if m + block.size > P.shape[0]:
                    grow = max(P.shape[0], block.size)
                    P, sq = np.resize(P, (P.shape[0] + grow, d)), np.resize(sq, sq.size + grow)
                row_deltas(W, wk, block, P[m:m + block.size])
                sq[m:m + block.size] = np.einsum("ij,ij->i", P[m:m + block.size], P[m:m + block.size])
                S, m, early, pool = np.concatenate([S, block]), m + block.size, True, None
                in_s[block], scale = True, float(sq[:m].max())
                if rounds >= cfg.max_rounds:
                    out["note"] = "nearest point: hit max_rounds"
                    break
                continue
        if not corral.add(j, P[j]):
            out["note"] = "nearest point: Wolfe stalled (affinely dependent step)"
            break
        corral.step()
        x = corral.point()
    else:
        out["note"] = "nearest point: hit nearest_iters"
    out["rounds"], out["work"], out["seconds"] = rounds, S, time.perf_counter() - t0
    return out


_POOL, _POOL_STEPS = 512, 16  # partial pricing: rows kept, steps between full pricings


def _nearest_check(W, W32, k, x, xx, in_s, optimal, n_add, stats: LayerStats, out):
    """Check Wolfe's point x against all rows. Accepts it (verified, into ``out``) when it wins by
    ``min_margin``, when ‖x‖ bounds every witness below it, or when it is the nearest point over
    all rows (S optimal and nothing outside blocks it). Returns (accepted, blocking rows outside S,
    most blocking first, at most ``n_add``)."""
    cfg, d, M, mm = stats.config, W.shape[1], stats.max_norm, stats.min_margin
    xn = np.sqrt(xx)
    for Wc, dtype, u in ((W32, np.float32, U32), (W, np.float64, U64)):
        if Wc is None:
            continue
        lg = logits(Wc, x[:, None], stats.mem_mb, dtype)[:, 0].astype(np.float64)
        marg = lg[k] - lg
        marg[k] = np.inf
        err = err_bound(d, M, xn, float(np.abs(lg).max()), u)
        cert = float(marg.min()) - err
        if cert > 0 or marg.min() < -err:  # decided at this precision (float64 only within rounding)
            break
    block = np.flatnonzero(marg < xx * (1 - 1e-9))
    block = block[~in_s[block]]
    if cert > 0 and (relative_margin(cert, M, xn) >= mm or xn < mm * M or (optimal and block.size == 0)):
        z = x if cfg.box is None else x * (cfg.box * (1 - 1e-12) / np.abs(x).max())
        cert = verify_witness(W, None, k, z, cfg.box, stats.mem_mb)
        if cert > 0:
            out.update(verdict=ARGMAXABLE, z=z, margin=cert, rel=float(relative_margin(cert, M, np.linalg.norm(z))))
            return True, block
    return False, block[np.argsort(marg[block], kind="stable")[:n_add]]
