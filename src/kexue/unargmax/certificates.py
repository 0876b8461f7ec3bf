"""Verdict codes and the two certificate checks of the audit (SPEC 3).

- **argmaxable**: a witness z; the margin ``(Wz+b)_k - max_{i≠k} (Wz+b)_i`` is recomputed in
  float64 and must exceed a rigorous bound on the float64 rounding error (:func:`verify_witness`).
- **near-unargmaxable**: argmaxable as above, but the best witness found wins only by a relative
  margin below ``min_margin`` (:func:`relative_margin`), i.e. at the level of the weights' own
  rounding (:func:`default_min_margin`).
- **unargmaxable**: weights λ ≥ 0, Σλ = 1 on a few other rows with Σλ_i w_i = w_k and
  Σλ_i b_i ≥ b_k (SPEC 3.2/3.6, Farkas/Motzkin: exactly the obstruction to 3.1), re-verified in
  float64 to a relative residual ≤ ``cert_tol`` (:func:`verify_certificate`). With a box
  ‖z‖∞ ≤ R the condition is R‖Σλ_i(w_k - w_i)‖₁ + Σλ_i(b_k - b_i) ≤ 0 (LP duality).
- **undecided**: a solver failed or hit a limit; never folded into either verdict.
"""

from __future__ import annotations

import numpy as np

U64 = np.finfo(np.float64).eps / 2  # unit roundoff of float64
U32 = float(np.finfo(np.float32).eps / 2)  # ... and of float32 (the candidate stage's screening)
ARGMAXABLE, UNARGMAXABLE, UNDECIDED, NEAR = 1, 0, -1, 2
VERDICT_NAMES = {ARGMAXABLE: "argmaxable", NEAR: "near-unargmaxable", UNARGMAXABLE: "unargmaxable",
                 UNDECIDED: "undecided"}
STAGES = ["duplicate", "lda", "wk", "wk-mu", "braid", "lp", "fw", "nearest"]
FAMILIES = ("lda", "wk", "wk-mu")

# unit roundoff of the formats weights ship in; Q8_0/Q4 blocks round to 1/127 (1/7) of the block max
_UNIT_ROUNDOFF = {"F64": 2.0**-53, "F32": 2.0**-24, "F16": 2.0**-11, "BF16": 2.0**-8, "Q8_0": 2.0**-8,
                  "Q8_1": 2.0**-8, "Q6_K": 2.0**-6, "Q5_0": 2.0**-5, "Q5_1": 2.0**-5, "Q5_K": 2.0**-5,
                  "Q4_0": 2.0**-4, "Q4_1": 2.0**-4, "Q4_K": 2.0**-4, "Q3_K": 2.0**-3, "Q2_K": 2.0**-2}


def default_min_margin(precision: str | np.dtype | None) -> float:
    """``min_margin`` for weights stored in ``precision`` (a NumPy dtype or a GGUF type name).

    A relative perturbation δ of every row and bias moves each logit by at most
    δ(max‖w_i‖·‖z‖ + max|b_i|), so a margin below 2δ (in the units of :func:`relative_margin`)
    could be undone by the rounding that produced the weights; δ = the format's unit roundoff."""
    if precision is None:
        return 0.0
    key = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(np.dtype(precision))
                                                                                        if not isinstance(precision, str)
                                                                                        else precision, str(precision))
    key = key.upper()
    return 2.0 * _UNIT_ROUNDOFF.get(key, 2.0**-24)


def err_bound(d: int, max_norm, znorm, max_abs_logit, u: float = U64):
    """Bound on the error of a computed margin ℓ_k - ℓ_i, ℓ = Wz + b, in arithmetic of unit
    roundoff ``u`` (float64 by default; U32 for the float32 screening, where rounding a float64 W
    to float32 adds one more u·‖w‖‖z‖ per logit).

    |fl(⟨w,z⟩) - ⟨w,z⟩| ≤ γ_d ‖w‖‖z‖ with γ_d ≈ d·u; the bias add and the subtraction add a
    few u·|ℓ|. Doubled for the two logits; (d + 6) absorbs the scaling of z and W's rounding."""
    return 2.0 * (d + 6) * u * (max_norm * znorm + max_abs_logit) * 1.01


def relative_margin(margin, max_norm: float, znorm, max_abs_bias: float = 0.0):
    """Margin of a witness in units of the logits' scale: margin / (max‖w_i‖·‖z‖ + max|b_i|).

    Scale-free; the witness survives any relative perturbation of the weights below half of it."""
    return np.asarray(margin, np.float64) / np.maximum(max_norm * np.asarray(znorm, np.float64) + max_abs_bias, 1e-300)


def verify_witness(W, b, k: int, z, box: float | None = None, mem_mb: float = 256) -> float:
    """Certified margin of witness ``z`` for class ``k`` (SPEC 3.1), recomputed in float64.

    Returns ``margin - error_bound``: a positive value proves that k is the strict argmax of
    Wz + b in exact arithmetic (and that ‖z‖∞ ≤ box if a box is given); otherwise -inf or ≤ 0.
    """
    W = W if hasattr(W, "shape") else np.asarray(W)
    z = np.asarray(z, dtype=np.float64)
    C, d = W.shape
    if z.shape != (d,) or not np.isfinite(z).all():
        return -np.inf
    if box is not None and np.abs(z).max() > box:
        return -np.inf
    rows = max(1, int(mem_mb * 2**20 / (8 * d)))
    logits = np.empty(C)
    max_norm = 0.0
    for r0 in range(0, C, rows):
        blk = np.asarray(W[r0:r0 + rows], dtype=np.float64)
        logits[r0:r0 + rows] = blk @ z
        max_norm = max(max_norm, float(np.sqrt(np.einsum("ij,ij->i", blk, blk).max())))  # no C × d temporary
    if b is not None:
        logits += np.asarray(b, dtype=np.float64)
    own = logits[k]
    logits[k] = -np.inf
    margin = own - logits.max() if C > 1 else np.inf
    logits[k] = own
    err = err_bound(d, max_norm, float(np.linalg.norm(z)), float(np.abs(logits).max()))
    return float(margin - err)


def verify_certificate(W, b, k: int, idx, lam, box: float | None = None, tol: float = 1e-9) -> tuple[bool, float]:
    """Check an unargmaxability certificate (SPEC 3.2/3.6) in float64.

    ``idx`` are rows ≠ k, ``lam`` ≥ 0 weights summing to 1. Without a box: g = Σλ_i w_i - w_k
    must vanish and Σλ_i b_i ≥ b_k; then for every z, ℓ_k(z) ≤ Σλ_i ℓ_i(z) + ‖g‖‖z‖, so k never
    wins (up to the residual). With a box R: R‖g‖₁ + b_k - Σλ_i b_i ≤ 0 bounds ℓ_k - Σλ_iℓ_i
    over the whole box. Returns (verified, relative residual)."""
    idx = np.asarray(idx, dtype=np.int64)
    lam = np.asarray(lam, dtype=np.float64)
    if idx.ndim != 1 or idx.shape != lam.shape or idx.size == 0 or (idx == k).any():
        return False, np.inf
    if (lam < 0).any() or abs(lam.sum() - 1.0) > 1e-12 or not np.isfinite(lam).all():
        return False, np.inf
    Wi = np.asarray(W[idx], dtype=np.float64)
    wk = np.asarray(W[k], dtype=np.float64)
    g = lam @ Wi - wk
    scale = max(float(np.linalg.norm(wk)), float(np.sqrt((Wi * Wi).sum(1)).max()), 1e-300)
    slack = 0.0
    bscale = 0.0
    if b is not None:
        b = np.asarray(b, dtype=np.float64)
        slack = float(lam @ b[idx] - b[k])  # must be ≥ 0
        bscale = float(max(abs(b[k]), np.abs(b[idx]).max()))
    if box is None:
        res = max(float(np.linalg.norm(g)) / scale, max(0.0, -slack) / max(bscale, scale))
    else:
        res = max(0.0, box * float(np.abs(g).sum()) - slack) / (box * scale * np.sqrt(len(g)) + bscale)
    return bool(res <= tol), float(res)


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


def checked_certificate(W, b, k, S, Dw, lam, stats):
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
