"""Stage 3 of the audit: the exact LP (SPEC 3.4) with HiGHS by constraint generation, and the
post's criterion (SPEC 3.3) by Frank–Wolfe.

The LP on a working set of competitors is a relaxation, so a non-positive optimum there already
proves unargmaxability (SPEC 3.6: a few nearby rows suffice); a positive optimum gives a z that is
checked against all rows, and the violated rows join the working set. The margin LP maximises
the (Chebyshev) margin, so when a certified witness's relative margin is below ``min_margin`` the
rows close to k at z join the working set too, until the optimum over every relevant row is known.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

from kexue.unargmax.certificates import (ARGMAXABLE, U32, U64, UNARGMAXABLE, UNDECIDED, err_bound, relative_margin,
                                         verify_certificate, verify_witness)
from kexue.unargmax.config import LayerStats
from kexue.unargmax.stages import check_columns, logits


def _highs(c, A_ub, b_ub, A_eq, b_eq, bounds, time_limit):
    """One HiGHS solve through SciPy with tight tolerances: a loose feasibility tolerance would
    accept interior points as "argmaxable" (the witness check catches that, but it would cost
    rounds). Returns (status, x, fun); status 0 = optimal, anything else = failure/limit."""
    from scipy.optimize import linprog

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs",
                      options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10,
                               "time_limit": time_limit, "presolve": True})
    return res.status, res.x, res.fun


_BANNER_SHOWN = False


def _silent_highs():
    """A ``highspy.Highs`` with its output off. The first one in a process prints HiGHS's banner
    on the C-level stdout before any option can be set, which would land in the CLI's output (or
    its JSON on stdout); that one construction runs with file descriptor 1 pointed at devnull."""
    import highspy

    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _BANNER_SHOWN = True
    h.setOptionValue("output_flag", False)
    return h


class _MarginLP:
    """max t s.t. ‖Δw_i‖ t ≤ ⟨Δw_i, z⟩ + s·Δb_i (Chebyshev-style, SPEC 3.4), Δ = (w_k - w_i, b_k - b_i),
    kept in one HiGHS model so that the rows constraint generation adds are re-solved from the
    last optimal basis (dual simplex warm start) instead of from scratch: on Whisper's F16 layer
    a class needs ~13 rounds of 1–3 added rows, 2 s each when solved cold.

    Without a box the question is homogeneous: z ∈ [-1,1]^d, s ∈ [0,1], t ≤ s (so t > 0 forces
    s > 0 and z/s is a witness). With a box R: s = 1, z ∈ [-R,R]^d."""

    def __init__(self, d: int, bias: bool, box, time_limit: float):
        import highspy

        self.d, self.use_s = d, bias and box is None
        self.inf = highspy.kHighsInf
        self.h = h = _silent_highs()
        for name, value in (("primal_feasibility_tolerance", 1e-10), ("dual_feasibility_tolerance", 1e-10)):
            h.setOptionValue(name, value)
        self.time_limit = float(time_limit)
        zb = (-1.0, 1.0) if box is None else (-box, box)
        nv = self.nv = d + (1 if self.use_s else 0) + 1
        lower = np.array([zb[0]] * d + ([0.0] if self.use_s else []) + [-self.inf])
        upper = np.array([zb[1]] * d + ([1.0] if self.use_s else []) + [self.inf if box is not None or self.use_s else 1.0])
        cost = np.zeros(nv)
        cost[-1] = -1.0
        h.addCols(nv, cost, lower, upper, 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
        if self.use_s:  # t ≤ s
            self._add_dense(np.array([[0.0] * d + [-1.0, 1.0]]), np.zeros(1))

    def _add_dense(self, A, rhs):
        m, nv = A.shape
        starts = (np.arange(m) * nv).astype(np.int32)
        index = np.tile(np.arange(nv, dtype=np.int32), m)
        self.h.addRows(m, np.full(m, -self.inf), rhs, m * nv, starts, index, A.ravel())

    def add(self, Dw, Db) -> None:
        m, d = Dw.shape
        nrm = np.sqrt((Dw * Dw).sum(1))
        A = np.zeros((m, self.nv))
        A[:, :d] = -Dw
        A[:, -1] = np.where(nrm > 0, nrm, 1.0)
        rhs = np.zeros(m)
        if self.use_s:
            A[:, d] = -Db
        elif Db is not None:
            rhs[:] = Db
        self._add_dense(A, rhs)

    def solve(self):
        """(status, t, z): status 0 when optimal, else HiGHS's model status (t, z None)."""
        import highspy

        # HiGHS's time limit counts the model's whole run time: give each solve its own
        self.h.setOptionValue("time_limit", self.h.getRunTime() + self.time_limit)
        self.h.run()
        status = self.h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            return int(status) or 1, None, None
        x = np.asarray(self.h.getSolution().col_value)
        z = x[:self.d].copy()
        if self.use_s:
            z = z / x[self.d] if x[self.d] > 0 else z * 0
        return 0, float(x[-1]), z


def _certificate_lp(Dw, Db, box, time_limit):
    """min over λ ∈ simplex of Σλ_iΔb_i (+ R‖Σλ_iΔw_i‖₁ with a box; Σλ_iΔw_i = 0 without).

    Feasible with value ≤ 0 ⇔ unargmaxable on these rows (the LP dual of :class:`_MarginLP`).
    Returns (status, λ) with status 0 optimal, 2 infeasible."""
    m, d = Dw.shape
    db = np.zeros(m) if Db is None else Db
    if box is None:
        A_eq = np.vstack([Dw.T, np.ones((1, m))])
        b_eq = np.concatenate([np.zeros(d), [1.0]])
        status, x, fun = _highs(db, None, None, A_eq, b_eq, [(0, None)] * m, time_limit)
        return status, (x if status == 0 else None)
    # variables λ (m), u (d) ≥ |Σλ_iΔw_i|
    A_ub = np.block([[Dw.T, -np.eye(d)], [-Dw.T, -np.eye(d)]])
    A_eq = np.concatenate([np.ones(m), np.zeros(d)])[None]
    c = np.concatenate([db, box * np.ones(d)])
    status, x, fun = _highs(c, A_ub, np.zeros(2 * d), A_eq, [1.0], [(0, None)] * (m + d), time_limit)
    return status, (x[:m] if status == 0 else None)


def _polish(Dw, lam):
    """Re-solve Σλ_iΔw_i = 0, Σλ = 1 on the support by least squares: HiGHS meets equalities to
    ~1e-10; on the (≤ d+1)-point support the exact solution is recovered to ~1e-15."""
    supp = np.flatnonzero(lam > 1e-13 * lam.max())
    M = np.vstack([Dw[supp].T, np.ones((1, supp.size))])
    rhs = np.zeros(M.shape[0])
    rhs[-1] = 1.0
    sol, *_ = np.linalg.lstsq(M, rhs, rcond=None)
    if (sol >= 0).all():
        return supp, sol / sol.sum()
    keep = lam[supp]
    return supp, keep / keep.sum()


def _certificate(W, b, k, S, Dw, Db, stats: LayerStats):
    """Certificate LP on the rows S, polished and verified. Returns (status, (ok, idx, λ, residual))."""
    status, lam = _certificate_lp(Dw, Db, stats.config.box, stats.config.lp_time_limit)
    if status != 0:
        return status, None
    return 0, _checked_certificate(W, b, k, S, Dw, lam, stats)


def _checked_certificate(W, b, k, S, Dw, lam, stats: LayerStats):
    """Weights λ on the rows S (Dw = w_k - W[S]) as a verified certificate: first polished on
    their support where that cannot hurt (no box: Σλ_iΔw_i = 0 is the condition; no bias: g = 0
    is the best any box allows), else as they are. Returns (ok, idx, λ, residual)."""
    box, tol = stats.config.box, stats.config.cert_tol
    supp = np.flatnonzero(lam > 0)
    tries = [_polish(Dw, lam)] if box is None or b is None else []
    tries.append((supp, lam[supp] / lam[supp].sum()))  # polishing may have moved off: the raw weights
    for supp, lp in tries:
        ok, res = verify_certificate(W, b, k, S[supp], lp, box, tol)
        if ok:
            break
    return ok, S[supp], lp, res


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
        self.L = np.asfortranarray(np.eye(cap))
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
    P[:m] = wk - np.asarray(W[S], np.float64)
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
                ok, idx, lam, res = _checked_certificate(W, None, k, S[Q], P[Q], corral.lam, stats)
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
                P[m:m + block.size] = wk - np.asarray(W[block], np.float64)
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


def _rows_near(W, b, k, S, z, band, n_add, mem_mb):
    """Rows outside S whose logit at z is within ``band`` of k's (or above it), strongest first."""
    lg = logits(W, z[:, None], mem_mb)[:, 0] + (0 if b is None else b)
    own = lg[k]
    lg[k] = -np.inf
    lg[S] = -np.inf
    order = np.argsort(-lg)[:n_add]
    return order[lg[order] >= own - band]


def _witness_round(W, b, k, S, z, out, stats: LayerStats):
    """A positive LP optimum's z: certify it against all rows. Returns rows to add (empty: done)."""
    cfg = stats.config
    cert = verify_witness(W, b, k, z, cfg.box, stats.mem_mb)
    if cert > 0:
        rel = float(relative_margin(cert, stats.max_norm, np.linalg.norm(z), stats.max_abs_bias))
        if rel > out.get("rel", -1.0):
            out.update(verdict=ARGMAXABLE, z=z, margin=cert, rel=rel)
        if rel >= stats.min_margin:
            return np.zeros(0, np.int64)
        # a small margin: the rows close to k at z may be what limits the LP optimum
        band = stats.min_margin * (stats.max_norm * float(np.linalg.norm(z)) + stats.max_abs_bias)
        return _rows_near(W, b, k, S, z, band, cfg.add_rows, stats.mem_mb)
    own = abs(float(logits(W[k:k + 1], z[:, None], stats.mem_mb)[0, 0]))
    return _rows_near(W, b, k, S, z, 1e-9 * max(own, 1.0), cfg.add_rows, stats.mem_mb)


def lp_class(W, b, k, work, stats: LayerStats, W32=None) -> dict:
    """Stage 3 for one class: without a bias first Wolfe's nearest point (:func:`nearest_class`),
    then (with a bias, or where Wolfe did not decide) constraint generation around the margin LP
    (SPEC 3.4). Returns {"k", "verdict", "stage", "rounds", "note", "seconds", "secs" (per
    stage)} plus z/margin/rel or idx/lam/residual."""
    cfg = stats.config
    secs = {}
    if b is None and cfg.nearest:
        near = nearest_class(W, k, work, stats, W32)
        secs["nearest"] = near["seconds"]
        if near["verdict"] != UNDECIDED:
            near["secs"] = secs
            return near
        work = near["work"]  # the rows that blocked Wolfe's points start the LP's working set
    t0 = time.perf_counter()
    b = None if b is None else np.asarray(b, np.float64)
    wk = np.asarray(W[k], np.float64)
    S = np.asarray(work, np.int64)
    out = {"k": int(k), "verdict": UNDECIDED, "rounds": 0, "note": "", "stage": "lp"}
    tiny = 1e-12 * max(float(np.abs(wk).max()), 1e-300)

    def deltas(S):
        return wk - np.asarray(W[S], np.float64), (None if b is None else b[k] - b[S])

    # the margin LP first: on real layers the classes the pre-checks leave open are mostly
    # argmaxable by a hair (Whisper's F16 near-ties), where an infeasible certificate LP costs 2x
    # a margin solve; an unargmaxable class pays one margin solve before its certificate
    lp, in_lp = _MarginLP(wk.size, b is not None, cfg.box, cfg.lp_time_limit), np.zeros(0, np.int64)
    for rnd in range(cfg.max_rounds):
        out["rounds"] = rnd + 1
        lp.add(*deltas(np.setdiff1d(S, in_lp)))  # only the new rows; the basis is kept
        in_lp = S
        status, t, z = lp.solve()
        if status != 0:
            out["note"] = f"margin LP failed (HiGHS status {status})"
            break
        if t > tiny:
            add = _witness_round(W, b, k, S, z, out, stats)
            if out["verdict"] == ARGMAXABLE and add.size == 0:
                break
            if add.size:
                S = np.union1d(S, add)
                continue
        if out["verdict"] == ARGMAXABLE:  # the best margin is known; it is below min_margin
            break
        # optimum ≤ 0 on S (or z is blocked only by rows already in S): look for the certificate
        status, c = _certificate(W, b, k, S, *deltas(S), stats)
        if status == 0:
            if c[0]:
                out.update(verdict=UNARGMAXABLE, idx=c[1], lam=c[2], residual=c[3])
            else:
                out["note"] = f"certificate residual {c[3]:.2e} above tolerance {cfg.cert_tol:g}"
            break
        if t > tiny:  # the certificate LP is infeasible: w_k is outside this hull; grow S
            S = np.union1d(S, _rows_near(W, b, k, S, z, np.inf, cfg.add_rows, stats.mem_mb))
            continue
        out["note"] = f"LP optimum {t:.3g} ≤ 0 but the certificate LP failed (HiGHS status {status})"
        break
    else:
        if out["verdict"] != ARGMAXABLE:
            out["note"] = "constraint generation hit max_rounds"
    secs["lp"] = time.perf_counter() - t0
    out["secs"], out["seconds"] = secs, sum(secs.values())
    return out


def min_norm_fw(W, k: int, iters: int = 2000, tol: float = 1e-9, mem_mb: float = 256):
    """Pairwise Frank–Wolfe for min_{α ∈ simplex} ‖Σ_i α_i (w_k - w_i)‖ over i ≠ k (SPEC 3.3).

    Stops as soon as p = Σα_iΔw_i has ⟨Δw_i, p⟩ > 0 for every i (then z = p certifies k without
    bias: the min-norm point is positive), or ‖p‖ ≤ tol·scale (the post: "unargmaxable").
    Returns (p, idx, α, status) with status "positive", "zero" or "iters"."""
    C, d = W.shape
    W64 = np.asarray(W, np.float64)
    wk = W64[k]
    D = wk - W64
    D[k] = 0
    scale = float(np.sqrt((W64 * W64).sum(1)).max())
    # start at the nearest competitor
    nrm = (D * D).sum(1)
    nrm[k] = np.inf
    j0 = int(np.argmin(nrm))
    alpha = {j0: 1.0}
    p = D[j0].copy()
    status = "iters"
    for _ in range(iters):
        g = D @ p
        g[k] = np.inf
        s = int(np.argmin(g))
        if g[s] > 0:
            status = "positive"
            break
        if np.linalg.norm(p) <= tol * scale:
            status = "zero"
            break
        act = np.fromiter(alpha.keys(), np.int64)
        v = int(act[np.argmax(g[act])])
        if v == s:  # no pairwise move possible: a plain FW step towards vertex s
            dd = D[s] - p
            den = float(dd @ dd)
            if den == 0:
                break
            gam = min(max(-(p @ dd) / den, 0.0), 1.0)
            p += gam * dd
            for key in alpha:
                alpha[key] *= 1 - gam
            alpha[s] = alpha.get(s, 0.0) + gam
            continue
        dd = D[s] - D[v]
        den = float(dd @ dd)
        if den == 0:
            break
        gam = min(max(-(p @ dd) / den, 0.0), alpha[v])
        p += gam * dd
        alpha[s] = alpha.get(s, 0.0) + gam
        alpha[v] -= gam
        if alpha[v] <= 0:
            del alpha[v]
    idx = np.fromiter(alpha.keys(), np.int64)
    a = np.fromiter(alpha.values(), np.float64)
    return p, idx, a / a.sum(), status




def fw_class(W, b, k, stats: LayerStats) -> dict:
    """Stage 3' for one class: the post's criterion (SPEC 3.3), certified where it can be."""
    t0 = time.perf_counter()
    cfg = stats.config
    bb = None if b is None else np.asarray(b, np.float64)
    p, idx, a, status = min_norm_fw(W, k, cfg.fw_iters, cfg.fw_tol, stats.mem_mb)
    out = {"k": int(k), "verdict": UNDECIDED, "rounds": 0, "note": f"Frank–Wolfe: {status}", "post": UNDECIDED}
    if status == "positive":
        out["post"] = ARGMAXABLE
        D = p[:, None]
        lo, _, s = check_columns(logits(W, D, stats.mem_mb), np.array([k]), bb, D, cfg.box, stats.max_norm)
        if lo[0] > 0:
            z = s[0] * p
            out.update(verdict=ARGMAXABLE, z=z, margin=lo[0],
                       rel=float(relative_margin(lo[0], stats.max_norm, np.linalg.norm(z), stats.max_abs_bias)))
    elif status == "zero":
        out["post"] = UNARGMAXABLE  # the post's criterion ignores the bias for large r (SPEC 3.3)
        ok, res = verify_certificate(W, bb, k, idx, a, cfg.box, cfg.fw_tol * 10)  # FW's own tolerance
        if ok:
            out.update(verdict=UNARGMAXABLE, idx=idx, lam=a, residual=res)
        else:
            out["note"] = "min-norm ≈ 0 but the bias decides (SPEC 3.3 caveat); use method='lp'"
    out["seconds"] = time.perf_counter() - t0
    return out
