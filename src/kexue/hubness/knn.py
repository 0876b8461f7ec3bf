"""k nearest neighbours and k-occurrence (SPEC 8.2).

k-occurrence. For index points ``X`` and queries ``Q`` (``Q = X`` by default),
``N_k(x)`` is the number of queries that have ``x`` among their ``k`` nearest neighbours.
When ``Q = X`` a point is never its own neighbour (``exclude_self=True``): the point with the
*same row index* is removed, not "the first neighbour" — so a duplicate of ``x`` (distance 0)
still counts as a neighbour of ``x``. Hence ``sum(N_k) = k × n_queries`` always.

Distances are float64: Euclidean ``|q - x|`` and cosine ``1 - cos(q, x)``, the latter computed as
``|q̂ - x̂|² / 2`` on unit vectors, so a point's distance to an identical point is exactly 0.

**Near-ties.** Two float64 distances ``a <= b`` of one query are *near-tied* when
``b - a <= TIE_RTOL · b`` (cosine: ``TIE_RTOL · (b + sqrt(2b))``, the rounding of unit vectors
being absolute), ``TIE_RTOL = 1e-12`` (about 4,500 float64 ulps). Chains of near-ties form one
group; neighbours are ordered by (group, index), i.e. near-ties by the smaller index, and every
member is reported with the group's smallest distance. Rounding of a float64 distance is a few
ulps whatever the BLAS kernel or summation order, so mathematically equal distances always fall
in one group and the result does not depend on the machine.

Backends
  ``exact``  blocked brute force (this module). Float32 screening by BLAS over square blocks —
             for ``Q = X`` only one triangle of the distance matrix, used for both rows and
             columns — keeps per query the ``k + margin`` best candidates under a running
             threshold; the candidates are re-scored in float64 from the differences, and a row
             whose screened gap between the k-th and the last candidate is within the float32
             error bound is recomputed wholly in float64. The result equals a float64 brute-force
             search with the near-tie rule above. ``X`` and ``Q`` are read in blocks (a memory
             map is never copied whole): the screening rows of each block are made when it is
             compared, float64 rows only for the gathered candidates (``arrays.BlockRows``).
  ``hnsw``, ``ivf``, ``faiss``: approximate, see :mod:`kexue.hubness.ann`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from kexue.hubness.arrays import BlockRows, max_abs, pow2_exponent, row_blocks
from kexue.utils import KexueError, Tracker

METRICS = ("euclidean", "cosine")
STREAM_ROWS = 16384  # at most this many rows of an index or query matrix are read at a time by streamed passes ...
STREAM_VALUES = 1 << 21  # ... and at most this many values (16 MB per float64 temporary of a block)


def stream_rows(d: int) -> int:
    """Rows per block of a streamed pass over a matrix of ``d`` columns."""
    return max(1, min(STREAM_ROWS, STREAM_VALUES // max(1, d)))
BACKENDS = ("exact", "hnsw", "ivf", "faiss")
TIE_RTOL = 1e-12
_U32 = float(np.finfo(np.float32).eps) / 2  # unit round-off of float32


@dataclass(eq=False)
class KNNGraph:
    """A kNN graph: ``dist``, ``ind`` (n_queries, k), sorted by (near-tie group, index).

    Unpacks as ``dist, ind = graph`` (and ``graph[1]`` is ``ind``). ``recall`` is 1.0 for the exact
    backend and, for approximate ones, the recall measured against exact search on
    ``recall_sample`` random queries with the chosen ``params`` (e.g. ``{"ef_search": 96}``); NaN
    with ``recall_sample`` 0 when nothing was measured (a user's FAISS index unless asked).
    """

    dist: np.ndarray
    ind: np.ndarray
    backend: str = "exact"
    recall: float = 1.0
    recall_sample: int = 0
    params: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.dist, self.ind))

    def __getitem__(self, i):
        return (self.dist, self.ind)[i]

    def __len__(self):
        return 2


# ---------------------------------------------------------------------------------------------
# inputs


def _normalise(X: np.ndarray, first: int = 0) -> np.ndarray:
    """Unit rows in float64, row by row (a block gives the rows the whole would); ``first``: the
    block's first row number, for the error message."""
    X = np.asarray(X, dtype=np.float64)
    top = np.abs(X).max(axis=1) if X.size else np.zeros(len(X))
    if (top == 0).any():
        raise KexueError(f"cosine metric needs non-zero vectors; row {first + int(np.argmax(top == 0))} is all zeros "
                         "(drop it or use --metric euclidean)")
    e = np.frexp(top)[1]
    far = np.abs(e) > 250  # |x|² would overflow or underflow: rescale those rows by an exact power of two first
    if far.any():
        X = X.copy()
        X[far] = np.ldexp(X[far], -e[far][:, None])
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / n


def pair_distances(A: np.ndarray, B: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Float64 distances between rows ``A[i]`` and ``B[i]`` (same shape, or B broadcast (m, c, d)),
    from the differences (no cancellation): Euclidean ``sqrt(Σ (a - b)²)``; cosine ``Σ (a - b)² / 2``
    for already normalised rows, which is ``1 - <a, b>`` and exactly 0 for identical rows."""
    diff = A - B
    sq = np.einsum("...k,...k->...", diff, diff)
    return np.sqrt(sq) if metric == "euclidean" else sq / 2.0


# ---------------------------------------------------------------------------------------------
# ordering


def _sort_rows(dist: np.ndarray, ind: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index) and keep k (used for secondary distances)."""
    order = np.lexsort((ind, dist), axis=1)
    return np.take_along_axis(dist, order, 1)[:, :k], np.take_along_axis(ind, order, 1)[:, :k]


def _tie_width(d: np.ndarray, metric: str) -> np.ndarray:
    return TIE_RTOL * (d + np.sqrt(2.0 * d)) if metric == "cosine" else TIE_RTOL * d


def order_rows(dist: np.ndarray, ind: np.ndarray, k: int, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest by the near-tie rule: sort by distance, chain gaps within the near-tie
    width into groups, order by (group, index); report each member with its group's first distance."""
    d, i = _sort_rows(dist, ind, dist.shape[1])
    new = np.ones(d.shape, dtype=bool)
    new[:, 1:] = np.diff(d, axis=1) > _tie_width(np.where(np.isfinite(d[:, 1:]), d[:, 1:], 0.0), metric)
    group = np.cumsum(new, axis=1)
    first = np.maximum.accumulate(np.where(new, np.arange(d.shape[1]), 0), axis=1)
    gd = np.take_along_axis(d, first, 1)
    o = np.lexsort((i, group), axis=1)[:, :k]
    return np.take_along_axis(gd, o, 1), np.take_along_axis(i, o, 1)


# ---------------------------------------------------------------------------------------------
# exact search


@dataclass
class _Prepared:
    """Float64 rows for re-scoring and float32 augmented rows for screening: one GEMM of
    ``[q, |q|², 1]`` with ``[-2x, 1, |x|²]`` gives ``|q|² + |x|² - 2 q·x`` (no passes over the block
    to add the norms, and a symmetric matrix when Q = X). The rows are centred on the index mean
    (L2), and the columns where every centred index row is 0 (a feature constant over the index,
    e.g. a blank pixel) are left out of the products — they add exactly 0 to ``q·x`` — while the
    norms keep every column."""

    X64: np.ndarray | BlockRows  # BlockRows: made a block at a time from a memory map (exact backend)
    Q64: np.ndarray | BlockRows
    Xa: np.ndarray | BlockRows
    Qa: np.ndarray | BlockRows
    scale: np.ndarray  # per query: |q|² + max |x|², the size of a screened value's rounding error

    def tol(self, m: int) -> np.ndarray:
        """Gap between screened values beyond which the order (and any near-tie chain of ``m``
        links) is certain: one value errs by <= 2 (d+6) u scale (a GEMM of d+2 terms of total
        magnitude <= 2 scale plus the float32 rounding of the inputs), two can err both ways."""
        return 4.0 * (self.X64.shape[1] + 6) * _U32 * self.scale + 8.0 * (m + 1) * TIE_RTOL * (self.scale + 1.0)


@dataclass(eq=False)
class Screening:
    """The index side of the float32 screening, built once per index and reusable for any queries:
    the centring shift (the index mean for L2, 0 for cosine's unit rows), the columns kept in the
    products (None: all; see :class:`_Prepared`), the float32 rows ``[-2x, 1, |x|²]`` and the
    float64 ``|x|²`` of the centred rows."""

    shift: np.ndarray | float
    used: np.ndarray | None
    Xa: np.ndarray | BlockRows  # BlockRows: made a block at a time (streamed_screening)
    xsq: np.ndarray
    exp: int = 0  # the centred rows are stored divided by 2^exp (coordinates beyond 2^±40; see pow2_exponent)

    def rows(self, Q64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float32 rows ``[q, |q|², 1]`` of queries (unit rows for cosine) and their float64 ``|q|²``,
        in the index's units (divided by ``2^exp``)."""
        C, qsq = self._centred(Q64)
        return _augmented(C if self.used is None else C[:, self.used], 1.0, qsq, 1.0), qsq

    def _centred(self, B64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        C = B64 - self.shift
        if self.exp:
            C = np.ldexp(C, -self.exp)
        return C, np.einsum("ij,ij->i", C, C)

    def queries(self, Q, metric: str, block: int | None = None, qsq: np.ndarray | None = None):
        """:meth:`rows` of the raw queries ``Q`` (a memory map stays on disk): a :class:`BlockRows`
        made block by block, and ``|q|²`` from one streamed pass (``qsq``: already known)."""
        block = block or stream_rows(Q.shape[1])
        if qsq is None:
            qsq = np.concatenate([np.empty(0)] + [self._centred(rows64(B, metric))[1]
                                                  for _, B in row_blocks(Q, block)])
        return BlockRows(Q, lambda B: self.rows(rows64(B, metric))[0], self.Xa.shape[1]), qsq


def rows64(X, metric: str) -> np.ndarray:
    """The float64 rows distances are computed on: unit rows for cosine, ``X`` as it is for L2."""
    return _normalise(X) if metric == "cosine" else np.asarray(X, dtype=np.float64)


def column_mean(X, block: int, metric: str = "euclidean") -> np.ndarray:
    """The float64 mean of ``rows64(X)`` from blocks of ``block`` rows, bit for bit NumPy's mean of the
    whole float64 matrix: its columns are summed row after row, as here (an ``X`` of one block: its
    own mean)."""
    n = len(X)
    if n <= block:
        return rows64(np.asarray(X), metric).mean(0)
    acc = np.zeros(X.shape[1])
    for _, B in row_blocks(X, block):  # (a memory map's pages released block by block)
        acc = np.add.reduce(np.vstack([acc[None], rows64(B, metric)]), axis=0)
    return acc / n


def _streamed_stats(X, metric: str, block: int):
    """What the screening derives from the whole index — centring shift, power-of-two exponent,
    used columns, float64 ``|x|²`` of the centred rows — from blocks of ``block`` rows of ``X``."""
    n, d = X.shape
    shift = 0.0 if metric == "cosine" else column_mean(X, block)
    top, used, xsq = 0.0, np.zeros(d, bool), np.empty(n)
    for s, B in row_blocks(X, block):
        C = (_normalise(B, s) if metric == "cosine" else rows64(B, metric)) - shift
        top = max(top, max_abs(C))
        used |= C.any(0)
        xsq[s:s + len(C)] = np.einsum("ij,ij->i", C, C)
    e = pow2_exponent(top)
    if e:  # rare: the norms and used columns of the rescaled rows (a rescale can underflow or overflow)
        used[:] = False
        for s, B in row_blocks(X, block):
            C = np.ldexp(rows64(B, metric) - shift, -e)
            used |= C.any(0)
            xsq[s:s + len(C)] = np.einsum("ij,ij->i", C, C)
    return shift, e, (None if used.all() else np.flatnonzero(used)), xsq


def streamed_screening(X, metric: str, block: int | None = None) -> Screening:
    """The :class:`Screening` of the raw index rows ``X`` (a memory map stays on disk): the centring
    shift (the index mean for L2 — it shrinks the norms, hence the float32 error — 0 for cosine's unit
    rows), the power-of-two exponent, used columns and ``|x|²`` from streamed passes of ``block`` rows,
    bit for bit what the whole float64 matrix gives, and ``Xa`` a :class:`BlockRows`: each block of
    screening rows ``[-2x, 1, |x|²]`` is made when it is read. Memory: ``|x|²`` (n float64) only."""
    shift, e, used, xsq = _streamed_stats(X, metric, block or stream_rows(X.shape[1]))
    S = Screening(shift, used, np.empty((0, 0), np.float32), xsq, e)  # blocks read a copy: S is a cycle (gc-freed)
    S.Xa = BlockRows(X, partial(_index_side, replace(S), metric), (X.shape[1] if used is None else len(used)) + 2)
    if isinstance(X, np.ndarray) and not _mapped(X):  # in memory already: made once, not per pass
        b = block or stream_rows(X.shape[1])  # (the same rows: BlockRows works row by row)
        S.Xa = np.concatenate([S.Xa[s:s + b] for s in range(0, len(X), b)]) if len(X) else S.Xa[0:0]
    return S


def _mapped(A: np.ndarray) -> bool:
    """Whether ``A`` (or the array it views: ``np.asarray`` of a memory map is a plain ndarray) is a
    memory-mapped file."""
    import mmap

    a: object = A
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def _index_side(S: Screening, metric: str, B) -> np.ndarray:
    """The screening rows ``[-2x, 1, |x|²]`` of raw index rows ``B`` (a module function: a fitted
    reduction holding them pickles)."""
    C, sq = S._centred(rows64(B, metric))
    return _augmented(C if S.used is None else C[:, S.used], -2.0, 1.0, sq)


def _prepare(X, Q, metric, same, block: int) -> _Prepared:
    """The exact search's rows, all :class:`~kexue.hubness.arrays.BlockRows` made block by block
    from ``X`` and ``Q`` (memory maps are read, never copied whole): float64 rows for re-scoring and
    the float32 screening rows of :func:`streamed_screening`."""
    S = streamed_screening(X, metric, block)
    X64 = BlockRows(X, lambda B: rows64(B, metric), X.shape[1])
    if same:
        Q64, (Qa, qsq) = X64, S.queries(X, metric, block, S.xsq)
    else:
        Q64 = BlockRows(Q, lambda B: rows64(B, metric), X.shape[1])
        Qa, qsq = S.queries(Q, metric, block)
    return _Prepared(X64, Q64, S.Xa, Qa, qsq + S.xsq.max())


def _augmented(C, scale, a, b) -> np.ndarray:
    """Float32 ``[scale · C, a, b]``, written straight into one array (no float64 intermediate)."""
    out = np.empty((len(C), C.shape[1] + 2), np.float32)
    np.multiply(C, scale, out=out[:, :-2], casting="unsafe")
    out[:, -2], out[:, -1] = a, b
    return out


class _Candidates:
    """Per query the ``m`` best screened values seen so far and a threshold (the m-th of them)."""

    def __init__(self, nq: int, m: int):
        self.m = m
        self.val = np.full((nq, m), np.inf, np.float32)
        self.ind = np.full((nq, m), -1, np.int64)
        self.tau = np.full(nq, np.inf, np.float32)

    def offer(self, D: np.ndarray, r0: int, c0: int, transposed: bool = False) -> None:
        """Offer block ``D`` (rows r0.., columns c0..; with ``transposed`` the block's columns are
        the queries and its rows the index points). Only entries under a query's threshold are
        gathered: one vectorised comparison and a flat nonzero, far cheaper than a selection."""
        ax = 0 if transposed else 1
        nr, width = D.shape[1 - ax], D.shape[ax]
        tau = self.tau[r0:r0 + nr]
        below: np.ufunc = np.less
        if np.isinf(tau).all() and width > self.m:
            # first visit: a provisional threshold, the m-th smallest of the first w entries, which
            # is >= the block's m-th smallest, so at least m entries per query pass (≤, for ties)
            w = min(width, max(4 * self.m, 1024))
            head = D[:w] if transposed else D[:, :w]
            tau = np.partition(head, self.m - 1, axis=ax).take(self.m - 1, axis=ax)
            below = np.less_equal
        flat = np.flatnonzero(below(D, tau[None, :] if transposed else tau[:, None]))
        if len(flat):
            i, j = np.divmod(flat, D.shape[1])
            rows, cols = (j, i) if transposed else (i, j)
            self._merge(rows + r0, cols + c0, D.ravel()[flat])

    def _merge(self, rows, cols, vals):
        """Merge entries into the buffers: one dense (hit rows × (m + most new)) array per call
        and a row-wise partial selection — no sort of all entries."""
        if len(rows) > 1 and (np.diff(rows) < 0).any():
            o = np.argsort(rows, kind="stable")
            rows, cols, vals = rows[o], cols[o], vals[o]
        start = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
        counts = np.diff(np.r_[start, len(rows)])
        hit, m = rows[start], self.m
        V = np.full((len(hit), m + counts.max()), np.inf, np.float32)
        I = np.full(V.shape, -1, np.int64)
        V[:, :m], I[:, :m] = self.val[hit], self.ind[hit]
        slot = np.repeat(np.arange(len(hit)), counts)
        pos = m + np.arange(len(rows)) - np.repeat(start, counts)
        V[slot, pos], I[slot, pos] = vals, cols
        sel = np.argpartition(V, m - 1, axis=1)[:, :m]
        self.val[hit] = np.take_along_axis(V, sel, 1)
        self.ind[hit] = np.take_along_axis(I, sel, 1)
        self.tau[hit] = self.val[hit].max(1)


def _screen(P: _Prepared, same: bool, self_ids, m: int, block: int, tracker: Tracker) -> _Candidates:
    nq, n = len(P.Qa), len(P.Xa)
    cand = _Candidates(nq, m)
    pairs = [(i, j) for i in range(0, nq, block) for j in range(i if same else 0, n, block)]
    for i0, j0 in tracker.track(pairs, "kNN search"):
        D = P.Qa[i0:i0 + block] @ P.Xa[j0:j0 + block].T
        if self_ids is not None:
            own = self_ids[i0:i0 + block] - j0
            r = np.flatnonzero((own >= 0) & (own < D.shape[1]))
            D[r, own[r]] = np.inf
        cand.offer(D, i0, j0)
        if same and j0 != i0:
            cand.offer(D, j0, i0, transposed=True)
    return cand


def _rescore(P: _Prepared, cand: _Candidates, k: int, metric: str, self_ids, n_valid: int):
    """Float64 distances of the candidates that can still reach the k first places (screened
    value within the error bound of the k-th); rows where a candidate outside the buffer could,
    i.e. a near-tie at the k-th place in float32, are redone in full."""
    m, d = cand.m, P.X64.shape[1]
    o = np.argsort(cand.val, axis=1)
    sv, si = np.take_along_axis(cand.val, o, 1), np.take_along_axis(cand.ind, o, 1)
    tol = P.tol(m)
    bad = np.flatnonzero(sv[:, -1] - sv[:, k - 1] <= tol) if m < n_valid else np.empty(0, int)
    need = (sv <= (sv[:, k - 1] + tol)[:, None]).sum(1)
    need[bad] = k
    dist, ind = np.empty((len(sv), k)), np.empty((len(sv), k), np.int64)
    step = max(1, (4 << 20) // (m * d))  # ≤ 32 MB of gathered float64 rows at a time
    for s in range(0, len(sv), step):
        ids = si[s:s + step, :int(need[s:s + step].max())]  # the columns worth re-scoring
        exact = pair_distances(P.Q64[s:s + step, None, :], P.X64[ids], metric)
        dist[s:s + step], ind[s:s + step] = order_rows(exact, ids, k, metric)
    for r in bad:  # rare: a near-tie at the k-th place: the whole row in float64
        dist[r], ind[r] = _full_row(P, int(r), k, metric, -1 if self_ids is None else int(self_ids[r]))
    return dist, ind


def _full_row(P: _Prepared, r: int, k: int, metric: str, own: int):
    n, d = P.X64.shape
    step = max(1, (4 << 20) // d)  # index points per chunk of float64 differences (≤ 32 MB)
    full = np.concatenate([pair_distances(P.Q64[r], P.X64[s:s + step], metric) for s in range(0, n, step)])
    if own >= 0:
        full[own] = np.inf  # sorts last, beyond k
    dr, ir = order_rows(full[None, :], np.arange(n)[None, :], k, metric)
    return dr[0], ir[0]


def _exact(X, Q, k, metric, self_ids, block, margin, tracker) -> KNNGraph:
    same = Q is X
    n = len(X)
    n_valid = n - (1 if self_ids is not None else 0)
    m = min(k + margin, n_valid)
    block = max(1, min(block or 4096, max(len(Q), n)))
    P = _prepare(X, Q, metric, same, block)
    cand = _screen(P, same, self_ids, m, block, tracker)
    dist, ind = _rescore(P, cand, k, metric, self_ids, n_valid)
    return KNNGraph(dist, ind.astype(np.int64), "exact", 1.0, 0, {})


# ---------------------------------------------------------------------------------------------
# public entry points


def occurrences(neigh_ind: np.ndarray, n_index: int) -> np.ndarray:
    """N_k from a kNN graph's index array (n_queries, k)."""
    return np.bincount(np.asarray(neigh_ind).ravel(), minlength=n_index).astype(np.int64)


def knn_recall(approx_ind: np.ndarray, exact_ind: np.ndarray) -> float:
    """Recall of an approximate kNN graph: mean over queries of |approx ∩ exact| / k."""
    a, e = np.asarray(approx_ind), np.asarray(exact_ind)
    if a.shape != e.shape or a.ndim != 2:
        raise KexueError(f"kNN graphs differ in shape: {a.shape} vs {e.shape}")
    a, e = np.sort(a, 1), np.sort(e, 1)
    hits = (a[:, :, None] == e[:, None, :]).any(2) if a.shape[1] <= 64 else \
        np.array([np.isin(x, y) for x, y in zip(a, e)])
    return float(hits.sum() / e.size)
