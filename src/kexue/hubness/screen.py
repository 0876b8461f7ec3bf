"""Float32 distances for the hubness reductions' statistics and new queries' candidate rows
(SPEC 8.4), built on the exact backend's float32 screening (:mod:`kexue.hubness.knn`).

The reductions need, per index point, its ``w`` smallest distances to the other index points (a
statistic: mean, standard deviation, k-th value), and per new query its ``n_candidates`` nearest
index points with their distances (the query's statistic and the secondary distances). Neither
is an exact kNN graph: the statistics are the same multiset of values whatever order near-ties
take, and the secondary distances combine the candidates' distances with the float32 index
statistics. So both are float32 BLAS distances — one GEMM of the centred rows augmented with their
squared norms, constant columns left out (:class:`kexue.hubness.knn.Screening`) — with no float64
re-check and no near-tie rule. A squared distance errs by about ``sqrt(dim) · 6e-8 · (|q|² + max
|x|²)``: relative errors of ~1e-6, except between points that nearly coincide (a duplicate is at
a distance of ~1e-3 rather than 0). The exact backend (float64, tie rule) still serves the
in-sample graph and the primary N_k.
"""

from __future__ import annotations

import numpy as np

from kexue.hubness.knn import Screening, _Candidates, _Prepared, _screen, _sort_rows, streamed_screening
from kexue.utils import NULL_TRACKER


def _finish(sq: np.ndarray, metric: str, exp: int = 0) -> np.ndarray:
    """Distances from screened squared distances in the screening's units (``Screening.exp``)."""
    sq = np.maximum(sq, 0.0)
    return sq / 2.0 if metric == "cosine" else np.ldexp(np.sqrt(sq), exp) if exp else np.sqrt(sq)


def nearest_rows(X: np.ndarray, w: int, metric: str, among: np.ndarray | None = None, block: int = 2048,
                 screen: Screening | None = None, among_width: int = 0):
    """Each row's ``w`` smallest distances to the other rows of ``X`` (``among``: to the rows with
    those ids only), sorted ascending; a row is never its own neighbour (by id, so a duplicate
    still counts, at distance ~0). Float32 (module docstring), over square blocks of ``block``
    rows and, without ``among``, only one triangle of the symmetric matrix: each block serves its
    rows and, transposed, its columns. ``screen``: ``X``'s :class:`Screening` if already built.
    ``among_width`` > 0 (with ``among``): also return, from the same blocks transposed, each
    ``among`` row's ``among_width`` smallest distances to all other rows of ``X`` — the result is
    then ``(rows, among_rows)``. Memory: one ``block × block`` float32 block and the results."""
    n = len(X)
    same = among is None
    ids = np.arange(n) if same else np.asarray(among, dtype=np.int64)
    if screen is None:
        screen = streamed_screening(X, metric)
    R = screen.queries(X, metric, qsq=screen.xsq)[0]  # X's own query rows, made a block at a time
    C = screen.Xa if same else screen.Xa[ids]  # the sampled columns' rows: in memory
    pos = np.full(n, -1, np.int64)  # column of each row's own id, -1 if not among the columns
    pos[ids] = np.arange(len(ids))
    best = np.full((n, w), np.inf, np.float32)
    cols = np.full((len(ids), among_width), np.inf, np.float32) if among_width and not same else None
    for i in range(0, n, block):
        own = pos[i:i + block]
        for j in range(i if same else 0, len(ids), block):
            D = R[i:i + block] @ C[j:j + block].T
            r = np.flatnonzero((own >= j) & (own < j + D.shape[1]))
            D[r, own[r] - j] = np.inf
            if (same and j != i) or cols is not None:  # the block's transpose: rows j.. against columns i..
                _keep_smallest(best if cols is None else cols, j, _transposed(D))  # cols: only when not same
            _keep_smallest(best, i, D)
    rows = _finish(np.sort(best, axis=1).astype(np.float64), metric, screen.exp)
    return rows if cols is None else (rows, _finish(np.sort(cols, axis=1).astype(np.float64), metric, screen.exp))


def reference_rows(screen: Screening, R, w: int, metric: str, block: int = 2048) -> np.ndarray:
    """Each index point's ``w`` smallest float32-screened distances to the rows of ``R`` (raw reference
    rows; a memory map is read a block at a time), sorted: the index side of a reduction fitted with
    a reference set. The index's own :class:`Screening` serves as is (the reference rows take the
    query side of the augmented product), so nothing is built for the index twice, and nothing is
    excluded (a reference row equal to an index point is at distance ~0)."""
    Ra = screen.queries(R, metric)[0]
    n = len(screen.Xa)
    best = np.full((n, w), np.inf, np.float32)
    for i in range(0, n, block):
        for j in range(0, len(Ra), block):
            _keep_smallest(best, i, screen.Xa[i:i + block] @ Ra[j:j + block].T)  # index rows × reference rows
    return _finish(np.sort(best, axis=1).astype(np.float64), metric, screen.exp)


def _transposed(D: np.ndarray, strip: int = 64) -> np.ndarray:
    """``D.T`` as a C-ordered copy, a strip of rows at a time (about twice as fast as one strided copy)."""
    out = np.empty(D.shape[::-1], D.dtype)
    for i in range(0, len(D), strip):
        out[:, i:i + strip] = D[i:i + strip].T
    return out


def _keep_smallest(best: np.ndarray, r0: int, D: np.ndarray) -> None:
    """Merge block ``D`` (rows r0..; partitioned in place) into the running ``w`` smallest per row.
    Once every row holds ``w`` values, only the entries under a row's largest kept value can enter
    (an entry equal to it leaves the same multiset): when they are few, one comparison gathers them
    and only those are partitioned with the kept values, not the whole block."""
    w = best.shape[1]
    cur = best[r0:r0 + len(D)]
    tau = cur.max(1) if w else None
    if tau is not None and np.isfinite(tau).all() and D.shape[1] > 4 * w:
        below = D < tau[:, None]
        counts = below.sum(1)
        m = int(counts.max())
        if 4 * m < D.shape[1]:
            r, c = np.nonzero(below)
            V = np.full((len(D), w + m), np.inf, np.float32)
            V[:, :w] = cur
            V[r, w + np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)] = D[r, c]
            V.partition(w - 1, axis=1)
            best[r0:r0 + len(D)] = V[:, :w]
            return
    if tau is not None and np.isinf(tau).all() and np.isinf(cur).all() and D.shape[1] >= w:
        D.partition(w - 1, axis=1)  # first block of rows still empty: its w smallest are the block's own
        best[r0:r0 + len(D)] = D[:, :w]
        return
    if D.shape[1] > w:
        D.partition(w - 1, axis=1)
        D = D[:, :w]
    both = np.concatenate([best[r0:r0 + len(D)], D], axis=1)
    both.partition(w - 1, axis=1)
    best[r0:r0 + len(D)] = both[:, :w]


def screened(X, Q, k: int, metric: str = "euclidean", block: int | None = None,
             screen: Screening | None = None, ref_width: int = 0):
    """Each query's ``k`` nearest rows of ``X``: ``(dist, ind)`` sorted by (distance, index), float32
    (module docstring). The exact backend's screening picks the ``k``; each picked pair's squared
    distance is then recomputed on its own (the augmented rows' dot product), so a query's row
    does not depend on the other queries of the call, as a batch GEMM's rounding does. The set
    can differ from the exact one only where the k-th and (k+1)-th distances agree to float32
    rounding. ``screen``: ``X``'s :class:`Screening` if already built (then ``X`` is not read).
    ``ref_width`` > 0: also return, from the same products read by column, each row of ``X``'s
    ``ref_width`` smallest distances to the queries (the queries as the reference set, in one pass)
    — the result is then ``(dist, ind, rows)``."""
    if screen is None:
        screen = streamed_screening(X, metric)
    Qa, qsq = screen.queries(Q, metric)  # made a block at a time: a memory map stays on disk
    n = len(screen.Xa)
    b = max(1, min(block or 4096, max(len(Q), n)))
    if ref_width:
        cand = _Candidates(len(Qa), k)
        best = np.full((n, ref_width), np.inf, np.float32)
        for i0 in range(0, len(Qa), b):
            for j0 in range(0, n, b):
                D = Qa[i0:i0 + b] @ screen.Xa[j0:j0 + b].T
                cand.offer(D, i0, j0)
                _keep_smallest(best, j0, _transposed(D))
        rows = _finish(np.sort(best, axis=1).astype(np.float64), metric, screen.exp)
    else:
        P = _Prepared(np.empty((0, 0)), np.empty((0, 0)), screen.Xa, Qa, qsq + screen.xsq.max())
        cand = _screen(P, False, None, k, b, NULL_TRACKER)
    out = rescored(screen, Qa, cand.ind, metric)
    return (*out, rows) if ref_width else out


def rescored(screen: Screening, Qa, ind: np.ndarray, metric: str):
    """``(dist, ind)`` of the picked pairs (query row i with index rows ``ind[i]``), each squared distance
    recomputed on its own (the augmented rows' dot product, float32), so a query's row does not
    depend on the other queries of the call, as a batch GEMM's rounding does; sorted by (distance,
    index). Padding (-1 in ``ind``) goes last at an infinite distance."""
    pad = ind < 0
    ind = np.where(pad, 0, ind) if pad.any() else ind
    v = np.empty(ind.shape)
    step = max(1, (1 << 20) // (ind.shape[1] * Qa.shape[1]))  # ≤ 4 MB of gathered float32 rows at a time
    for s in range(0, len(v), step):
        v[s:s + step] = np.einsum("bd,bcd->bc", Qa[s:s + step], screen.Xa[ind[s:s + step]])
    dist = _finish(v, metric, screen.exp)
    dist[pad] = np.inf
    return _sort_rows(dist, ind, ind.shape[1])


def near_smallest(key: np.ndarray, keep: int, margin, limit: int):
    """Per row of float32 ``key`` (b, n), the columns whose key is at most the row's ``keep``-th smallest
    plus ``margin(U)`` (per row, float64; ``U`` ≥ that ``keep``-th smallest, for a bound that depends on
    the keys' size), found without a selection over the whole rows: the ``keep``-th smallest of a
    strided subset of the columns is ≥ the row's, so one comparison keeps every column that can be
    within the margin, and the exact ``keep``-th smallest and the final set come from those few.
    Returns ``ind`` (b, m) int64, each row's chosen columns in any order, padded with -1, ``m`` the
    largest count; or ``None`` if a row has more than ``limit`` of them (the caller then selects as
    before). A threshold set of the keys: every column with a key at most a chosen
    one's is chosen too."""
    b, n = key.shape
    head = key[:, ::max(1, n // max(1024, 8 * keep))]
    U = np.partition(head, keep - 1, axis=1)[:, keep - 1].astype(np.float64)
    pad = np.asarray(margin(U), np.float64)

    def up(t):  # a float32 threshold never below the float64 one
        t32 = t.astype(np.float32)
        return np.where(t32 < t, np.nextafter(t32, np.float32(np.inf)), t32)

    flat = np.flatnonzero(key <= up(U + pad)[:, None])
    r, col = np.divmod(flat, n)
    counts = np.bincount(r, minlength=b)
    P = np.full((b, counts.max()), np.inf, np.float32)
    I = np.full(P.shape, -1, np.int64)
    pos = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    P[r, pos], I[r, pos] = key.ravel()[flat], col
    K = np.partition(P, keep - 1, axis=1)[:, keep - 1].astype(np.float64)
    chosen = P <= up(K + pad)[:, None]
    m = int(chosen.sum(1).max())
    if m > limit:
        return None
    sel = np.argpartition(P, m - 1, axis=1)[:, :m] if m < P.shape[1] else np.broadcast_to(np.arange(m), (b, m))
    ind = np.take_along_axis(I, sel, 1)
    ind[~np.take_along_axis(chosen, sel, 1)] = -1
    return ind
