"""Stages 1–2 of the audit (SPEC 3.4/3.5) on a block of classes: batched candidate inputs and the
braid-reflect walk, and the LP working sets of the classes they leave open.

1. ``candidates`` — one blocked matrix product per family: the whitened class direction
   z = (Σ + σ̄²I)⁻¹(w_k - μ) ("lda"), z = w_k (SPEC 3.5) and z = w_k - μ; with a bias, the best
   scale s ≥ 0 of z is found exactly on the line (s = 0 is the all-bias input of the 2-D
   example). The C × n product is *screened in float32* (half the time and memory of float64):
   a column whose float32 margin clears a rigorous float32 rounding bound is certified as it is,
   one that fails by more than the bound is rejected, and only those within the bound are
   recomputed in float64.
2. ``braid`` — the paper's braid-reflect walk (SPEC 3.4), batched: reflect x across the
   hyperplane that separates k from the current winner.
"""

from __future__ import annotations

import time

import numpy as np

from kexue.unargmax.certificates import STAGES, U32, U64, err_bound, relative_margin
from kexue.parallel import opened
from kexue.unargmax.config import LayerStats


def logits(W, Z, mem_mb, dtype=np.float64):
    """W @ Z in ``dtype``, converting W a row block at a time (W may be a float32 memmap)."""
    C, d = W.shape
    Z = np.asarray(Z, dtype)
    if W.dtype == dtype:
        return np.asarray(W @ Z)
    out = np.empty((C, Z.shape[1]), dtype)
    rows = max(1, int(mem_mb * 2**20 / (np.dtype(dtype).itemsize * max(d, Z.shape[1]))))
    for r in range(0, C, rows):
        out[r:r + rows] = np.asarray(W[r:r + rows], dtype) @ Z
    return out


def row_deltas(W, wk, rows, out=None, chunk: int = 1024):
    """``wk - W[rows]`` in float64 (exact for float32 rows), into ``out`` when given, a chunk of
    rows at a time: at once it held the rows' float32 copy, their float64 copy and the difference
    (1.6 GiB on a 16,512-row working set of a 4,096-wide head, per worker)."""
    rows = np.asarray(rows, np.int64)
    if out is None:
        out = np.empty((rows.size, W.shape[1]))
    for i in range(0, rows.size, chunk):
        np.subtract(wk, W[rows[i:i + chunk]], out=out[i:i + chunk], dtype=np.float64)
    return out


def column_slices(C: int, n: int, mem_mb: float, multiple: int = 1) -> list[slice]:
    """Slices of the n columns of a C-row float64 product that fit in ``mem_mb`` MiB each (a
    multiple of ``multiple`` columns), so a worker never holds C × n logits (262,144 × 2,048
    would be 4 GiB on Gemma)."""
    step = max(multiple, int(mem_mb * 2**20 / (8 * C)) // multiple * multiple)
    return [slice(j, min(j + step, n)) for j in range(0, n, step)]


def best_scale(a, c, s_max):
    """Largest-margin s in [0, s_max] for margins s·a_i + c_i (all > 0 required); None if none.

    The feasible set is an interval (lo, hi); the min-margin is concave piecewise linear, and we
    take the interval midpoint (or a point safely past lo when hi = ∞) — any interior point is a
    witness, the rounding-error check decides."""
    pos, neg = a > 0, a < 0
    if ((a == 0) & (c <= 0)).any():
        return None
    lo = float((-c[pos] / a[pos]).max()) if pos.any() else -np.inf
    hi = float((c[neg] / -a[neg]).min()) if neg.any() else np.inf
    hi = min(hi, s_max)
    lo_c = max(lo, 0.0)
    if not lo_c < hi and not (lo < 0 <= hi):
        return None
    if lo < 0 and hi == np.inf:
        return max(1.0, 2 * abs(lo))
    if hi == np.inf:
        return 2 * lo_c + 1.0
    return 0.5 * (lo_c + hi) if lo >= 0 else 0.5 * hi


def _own_and_top(L, ks):
    """Per column j: L[ks[j], j] and the largest other entry."""
    cols = np.arange(len(ks))
    own = L[ks, cols].copy()
    L[ks, cols] = -np.inf
    top = L.max(0)
    L[ks, cols] = own
    big = np.maximum(np.maximum(top, own), -L.min(0))  # max |L| per column without an |L| copy
    return own.astype(np.float64), top.astype(np.float64), big.astype(np.float64)


def column_extremes(W, D, ks, dtype=np.float32):
    """Per column j of W @ D: the entry of row ks[j], the largest other entry and the largest
    |entry|, streamed over row chunks of W that stay in cache (the C × n logits are never held)."""
    n = D.shape[1]
    Dd = np.ascontiguousarray(D, dtype)
    own, top, low = np.zeros(n, dtype), np.full(n, -np.inf, dtype), np.full(n, np.inf, dtype)
    rows = max(512, int(2**23 / (np.dtype(dtype).itemsize * n)))
    cols = np.arange(n)
    for r in range(0, W.shape[0], rows):
        Lc = np.asarray(W[r:r + rows], dtype) @ Dd
        inside = (ks >= r) & (ks < r + Lc.shape[0])
        j, i = cols[inside], ks[inside] - r
        own[j] = Lc[i, j]
        Lc[i, j] = -np.inf
        np.maximum(top, Lc.max(0), out=top)
        Lc[i, j] = own[j]
        np.minimum(low, Lc.min(0), out=low)
    big = np.maximum(np.maximum(top, own), -low)
    return own.astype(np.float64), top.astype(np.float64), big.astype(np.float64)


def free_scale_bounds(own, top, big, dirs, box, max_norm, u=U64):
    """Bias-free candidates: the scale of z is free (1/‖z‖, or up to the box), so the margin
    bounds are vectorised over the block. Returns (lower, upper, scales) as :func:`check_columns`."""
    d = dirs.shape[0]
    dnorm = np.linalg.norm(dirs, axis=0)
    # with a box, stay a hair inside it so that rounding of s·z cannot leave it
    s = 1.0 / np.maximum(dnorm, 1e-300) if box is None else box * (1 - 1e-12) / np.maximum(np.abs(dirs).max(0), 1e-300)
    e = err_bound(d, max_norm, s * dnorm, big * s, u)
    m = s * own - s * top
    ok = np.isfinite(s)
    return np.where(ok, m - e, -np.inf), np.where(ok, m + e, -np.inf), s


def check_columns(L, ks, b, dirs, box, max_norm, u=U64):
    """For candidate directions (columns of L = W @ dirs, computed with unit roundoff ``u``),
    choose a scale and bound the margin from below. Returns (lower bound of the certified
    margin, upper bound, scales): lower > 0 certifies, upper < 0 rejects, else undetermined."""
    n = len(ks)
    dnorm = np.linalg.norm(dirs, axis=0)
    smax = np.full(n, np.inf) if box is None else box * (1 - 1e-12) / np.maximum(np.abs(dirs).max(0), 1e-300)
    if b is None:
        return free_scale_bounds(*_own_and_top(L, ks), dirs, box, max_norm, u)
    d = dirs.shape[0]
    lo, hi, scales = np.full(n, -np.inf), np.full(n, -np.inf), np.zeros(n)
    for j, k in enumerate(ks):
        col = np.asarray(L[:, j], np.float64)
        a, c = col[k] - col, b[k] - b
        a[k], c[k] = 1.0, 1.0  # k against itself is no constraint
        s = best_scale(a, c, smax[j])
        if s is None:
            s = 0.0 if not np.isfinite(smax[j]) else min(1.0, smax[j])  # a non-witness point, for the bounds
        lg = s * col + b
        own = lg[k]
        lg[k] = -np.inf
        m = own - lg.max()
        e = err_bound(d, max_norm, s * dnorm[j], float(np.abs(np.where(np.isfinite(lg), lg, 0)).max()), u)
        lo[j], hi[j], scales[j] = m - e, m + e, s
    return lo, hi, scales


def directions(W, ks, family, stats: LayerStats):
    Wk = np.asarray(W[np.asarray(ks)], np.float64)
    if family == "wk":
        D = Wk.T
    elif family == "wk-mu":
        D = (Wk - stats.mu).T
    else:  # "lda"
        D = opened(stats.A) @ (Wk - stats.mu).T
    # the witness is the float32-rounded direction, so screening and re-check use the same z
    return np.ascontiguousarray(D.astype(np.float32).astype(np.float64))


def screen_family(W, W32, b, ks, D, stats: LayerStats):
    """Certified margins of the family's directions: float32 screening (on ``W32``, W in
    float32), float64 only where the float32 verdict is within rounding. Returns (certified
    margin or -inf, scales, bias-free gap own - top of each column)."""
    box = stats.config.box
    if b is None:  # streamed: no C × n logits in memory
        own, top, big = column_extremes(W32, D, ks)
        lo, hi, s = free_scale_bounds(own, top, big, D, box, stats.max_norm, U32)
        gap = own - top
    else:
        L32 = logits(W32, D, stats.mem_mb, np.float32)
        lo, hi, s = check_columns(L32, ks, b, D, box, stats.max_norm, U32)
        own, top, _ = _own_and_top(L32, ks)
        gap = own - top
    unsure = np.flatnonzero((lo <= 0) & (hi > 0))
    for sl in column_slices(W.shape[0], unsure.size, stats.mem_mb):
        u = unsure[sl]
        lo[u], _, s[u] = check_columns(logits(W, D[:, u], stats.mem_mb), ks[u], b, D[:, u], box, stats.max_norm, U64)
    return np.where(lo > 0, lo, -np.inf), s, gap


def candidate_stage(W, W32, b, ks, stats: LayerStats):
    """Stage 1 on the classes ``ks``. Returns (stage, margin, witnesses, best point, weak) where
    the best point is the strongest uncertified direction per class (the walk's start) and
    ``weak`` holds certified witnesses whose relative margin is below ``min_margin``."""
    n, d = len(ks), W.shape[1]
    stage, margin, relm = np.full(n, -1, np.int64), np.full(n, np.nan), np.full(n, np.nan)
    Z = np.zeros((n, d)) if stats.keep else None
    best_pt, best_val = np.zeros((d, n)), np.full(n, -np.inf)
    weak: dict = {}
    secs = {}
    for fam in stats.config.families:
        t0 = time.perf_counter()
        open_ = np.flatnonzero(stage < 0)
        if open_.size == 0:
            break
        D = directions(W, ks[open_], fam, stats)
        m, s, gap = screen_family(W, W32, b, ks[open_], D, stats)
        rel = relative_margin(m, stats.max_norm, s * np.linalg.norm(D, axis=0), stats.max_abs_bias)
        for j in np.flatnonzero(m > 0):
            c = open_[j]
            if rel[j] < stats.min_margin:
                if rel[j] > weak.get(c, (-1, None, 0))[0]:
                    weak[c] = (float(rel[j]), s[j] * D[:, j], float(m[j]))
                continue
            stage[c], margin[c], relm[c] = STAGES.index(fam), m[j], rel[j]
            if Z is not None:
                Z[c] = s[j] * D[:, j]
        val = gap / np.maximum(np.linalg.norm(D, axis=0), 1e-300)
        for j in np.flatnonzero(stage[open_] < 0):  # remember the best uncertified point (bias ignored)
            c = open_[j]
            if val[j] > best_val[c]:
                best_val[c], best_pt[:, c] = val[j], D[:, j]
        secs[fam] = time.perf_counter() - t0
    return stage, (margin, relm), Z, best_pt, weak, secs


def _reflect(W, k, win, x, own, top, box):
    """Reflect x across ⟨Δ, x⟩ + Δb = 0 (Δ = row k - row win); on an exact tie step a hair to
    k's side instead. None if the rows are identical (no reflection helps)."""
    delta = np.asarray(W[k], np.float64) - np.asarray(W[win], np.float64)
    nn = float(delta @ delta)
    if nn == 0:
        return None
    h = own - top  # = ⟨Δ, x⟩ + Δb, the signed distance times ‖Δ‖
    x = x - (2.0 * h / nn) * delta if h != 0 else x + 1e-9 * delta
    return x if box is None else np.clip(x, -box, box)


def braid_stage(W, b, ks, open_, X, stats: LayerStats, stage, margins, Z, weak):
    """Stage 2 (SPEC 3.4): the braid-reflect walk from the columns of X for the classes
    ``ks[open_]``; certifies in place (``margins`` = (margin, relative margin)). Returns the walk's end points (one column per open class)."""
    for _ in range(stats.config.reflections if open_.size else 0):
        still = []
        for sl, L in _logit_slices(W, b, X, stats.mem_mb):
            still += _reflect_columns(W, b, ks, open_, X, L, sl, stats, stage, margins, Z, weak)
        open_, X = open_[still], X[:, still]
        if open_.size == 0:
            break
    return X


def _logit_slices(W, b, X, mem_mb, multiple=1):
    """(columns, W @ X[:, columns] + b) a memory-bounded slice of columns at a time."""
    for sl in column_slices(W.shape[0], X.shape[1], mem_mb, multiple):
        L = logits(W, X[:, sl], mem_mb)
        if b is not None:
            L += b[:, None]
        yield sl, L


def _reflect_columns(W, b, ks, open_, X, L, sl, stats: LayerStats, stage, margins, Z, weak) -> list:
    """One braid step for the open classes in the columns ``sl`` (L = their logits): certifies in
    place, reflects the others' points in X, and returns the column indices still open."""
    d, box = W.shape[1], stats.config.box
    still = []
    for jj, c in enumerate(open_[sl]):
        j = sl.start + jj
        k, col, x = ks[c], L[:, jj], X[:, j]
        own = col[k]
        col[k] = -np.inf
        win = int(np.argmax(col))
        top = col[win]
        col[k] = own
        if own > top and (box is None or np.abs(x).max() <= box):
            xn = float(np.linalg.norm(x))
            cert = own - top - err_bound(d, stats.max_norm, xn, float(np.abs(col).max()))
            rel = float(relative_margin(cert, stats.max_norm, xn, stats.max_abs_bias))
            if cert > 0 and rel >= stats.min_margin:
                stage[c], margins[0][c], margins[1][c] = STAGES.index("braid"), cert, rel
                if Z is not None:
                    Z[c] = x
                continue
            if cert > 0 and rel > weak.get(c, (-1, None, 0))[0]:
                weak[c] = (rel, x.copy(), cert)
        nx = _reflect(W, k, win, x, own, top, box)
        if nx is not None:
            X[:, j] = nx
        still.append(j)
    return still


def working_sets(W, b, ks, open_, P, stats: LayerStats) -> dict:
    """LP working sets: the strongest competitors of each open class at the points in the
    columns of P (two per class: best candidate, then walk end, in the order of ``open_``)."""
    C = W.shape[0]
    m = min(C - 1, stats.working_set)
    na, work = open_.size, {}
    pairs = np.stack([P[:, :na], P[:, na:]], 2).reshape(P.shape[0], 2 * na)  # class j's two points side by side
    for sl, L in _logit_slices(W, b, pairs, stats.mem_mb, multiple=2):
        for jj in range(0, sl.stop - sl.start, 2):
            k, sel = ks[open_[(sl.start + jj) // 2]], set[int]()
            for col in (L[:, jj], L[:, jj + 1]):
                col = col.copy()
                col[k] = -np.inf
                sel.update(np.argpartition(-col, m - 1)[:m].tolist() if m < C - 1 else np.flatnonzero(np.isfinite(col)).tolist())
            sel.discard(int(k))
            work[int(k)] = np.array(sorted(sel), np.int64)
    return work


def precheck_block(W, W32, b, ks, stats: LayerStats) -> dict:
    """Stages 1–2 on a block of classes (one worker task). Returns per-class stages, margins and
    witnesses, the weak witnesses (below ``min_margin``) and the working sets of the open ones."""
    ks = np.asarray(ks)
    W, W32, b = opened(W), opened(W32), opened(b)
    b = None if b is None else np.asarray(b, np.float64)
    stage, margins, Z, best_pt, weak, secs = candidate_stage(W, W32, b, ks, stats)
    t0 = time.perf_counter()
    open_ = np.flatnonzero(stage < 0)
    X = best_pt[:, open_].copy()
    if open_.size:  # start at the scale of the paper's x = w_k
        wn = np.linalg.norm(np.asarray(W[ks[open_]], np.float64), axis=1)
        X *= wn / np.maximum(np.linalg.norm(X, axis=0), 1e-300)
    X_end = braid_stage(W, b, ks, open_, X.copy(), stats, stage, margins, Z, weak)
    secs["braid"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    open_all = np.flatnonzero(stage < 0)
    work = {}
    if open_all.size:
        # walk end points of the classes still open (braid_stage kept their order)
        ends = X_end if X_end.shape[1] == open_all.size else best_pt[:, open_all]
        work = working_sets(W, b, ks, open_all, np.concatenate([best_pt[:, open_all], ends], 1), stats)
    secs["working_sets"] = time.perf_counter() - t0
    weak = {int(ks[c]): v for c, v in weak.items() if stage[c] < 0}
    return {"ks": ks, "stage": stage, "margin": margins[0], "rel": margins[1], "Z": Z, "secs": secs, "work": work, "weak": weak}
