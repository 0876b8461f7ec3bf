"""Candidate graphs for the hubness reductions (SPEC 8.4): searching an index (kexue's backends or a
user's built FAISS index), sparse neighbour graphs in and out, and sampled per-point statistics.

A candidate graph is a pair ``(dist, ind)`` of shape (n_queries, c): each query's ``c`` nearest
index points by primary distance, sorted ascending. Sparse graphs follow scikit-learn's
``KNeighborsTransformer`` contract: CSR (n_queries, n_index), explicit entries = the neighbours'
distances (explicit zeros allowed).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from kexue.hubness.arrays import BlockRows, _vectors, host_array, row_blocks
from kexue.hubness.faiss_index import faiss_distances, is_faiss_index, is_flat_faiss  # noqa: F401 (re-exported)
from kexue.hubness import knn as K
from kexue.hubness.knn import _normalise, column_mean, rows64
from kexue.hubness.search import BLOCK_ROWS, checked_matrix, kneighbors
from kexue.hubness.stream import disk_graph, is_disk
from kexue.hubness.screen import nearest_rows
from kexue.utils import KexueError, require


def vectors(X, what: str = "X", metric: str | None = None):
    """A reduction's vectors: a memory map (``np.load(path, mmap_mode="r")``, safetensors rows from
    :func:`kexue.io.open_matrix`) kept as it is and checked a block at a time, never read whole;
    anything else a float64 matrix (:func:`kexue.hubness.arrays._vectors`). Every later pass reads
    rows through ``rows64`` block by block, so both give the same results bit for bit.
    ``metric="cosine"``: an all-zero row is refused now, named by its row number."""
    X = host_array(X)
    X = checked_matrix(X, what) if isinstance(X, np.memmap) else _vectors(X, what)
    if metric == "cosine":
        b = K.stream_rows(X.shape[1])
        for s, B in row_blocks(X, b):
            _normalise(B, s)
    return X


def widest_range(X) -> float:
    """``np.ptp(X64, axis=0).max()`` of the float64 rows, from column maxima and minima taken a block
    at a time (both exact in any dtype)."""
    hi = lo = None
    b = K.stream_rows(X.shape[1])
    for _, B in row_blocks(X, b):
        hi = B.max(0) if hi is None else np.maximum(hi, B.max(0))
        lo = B.min(0) if lo is None else np.minimum(lo, B.min(0))
    if hi is None or lo is None:  # no rows: no spread
        return 0.0
    return float((hi.astype(np.float64) - lo.astype(np.float64)).max())


def mean(X) -> np.ndarray:
    """The float64 mean of X's rows (bit for bit ``X64.mean(0)``), a block at a time."""
    return column_mean(X, K.stream_rows(X.shape[1]))


def rows_of(X, f=None):
    """X's float64 rows a block at a time (:class:`kexue.hubness.arrays.BlockRows`): ``f`` applied to
    ``rows64`` of each block read (row by row, so any block gives the rows the whole would)."""
    return BlockRows(X, lambda B: rows64(B, "euclidean") if f is None else f(rows64(B, "euclidean")), X.shape[1])


def given_graph(graph, n: int, c: int):
    """``fit(..., graph=(dist, ind))``'s index graph, checked and cut to ``c`` columns (no copy of
    float64 distances and int64 ids: an n × c graph can be the largest array of a large fit). An
    on-disk graph (:func:`kexue.hubness.stream.disk_graph`) stays on disk, read in blocks by the passes."""
    if all(is_disk(g) for g in graph):
        gd, gi = graph
        if gd.shape != gi.shape or gd.shape[0] != n or gd.shape[1] != c:
            raise KexueError(f"graph must be (dist, ind) of shape ({n}, {c}); got {gd.shape}, {gi.shape}")
        return gd, gi
    gd, gi = (np.asarray(g) for g in graph)
    if gd.shape != gi.shape or gd.ndim != 2 or gd.shape[0] != n or gd.shape[1] < c:
        raise KexueError(f"graph must be (dist, ind) of shape ({n}, >= {c}); got {gd.shape}, {gi.shape}")
    return gd[:, :c].astype(np.float64, copy=False), gi[:, :c].astype(np.int64, copy=False)


def check_faiss_index(index, X: np.ndarray, metric: str) -> None:
    """A built FAISS index must hold exactly the fitted rows (id i = row i) with the right metric."""
    faiss = require("ann", "faiss", "a FAISS index")

    if index.ntotal != len(X) or index.d != X.shape[1]:
        raise KexueError(f"the FAISS index holds {index.ntotal} vectors of dimension {index.d} but X is "
                         f"{X.shape[0]} × {X.shape[1]}; fit on the same vectors the index holds, in the same order")
    if not index.is_trained:
        raise KexueError("the FAISS index is not trained; train it and add the vectors before fitting")
    if index.metric_type == faiss.METRIC_INNER_PRODUCT and metric != "cosine":
        raise KexueError("an inner-product FAISS index ranks by cosine only for unit vectors; use metric='cosine'")


def faiss_search(index, Q: np.ndarray, k: int, metric: str, exclude_self: bool = False, out=None):
    """``(dist, ind)`` of the ``k`` nearest of each query in a built FAISS index, as kexue distances:
    Euclidean ``|q - x|`` for an L2 index; cosine ``1 - cos`` (L2 index over unit vectors:
    ``|q̂ - x̂|² / 2``; inner-product index: ``1 - <q̂, x̂>``). ``exclude_self``: the queries are the
    indexed rows themselves and each row's own id is dropped (wherever it ranks). ``out``: ``(dist,
    ind)`` stored into a block at a time (see :func:`kexue.hubness.search.kneighbors`)."""
    kk = k + (1 if exclude_self else 0)
    parts = []
    b = K.stream_rows(Q.shape[1])
    for s, B in row_blocks(Q, b):  # a memory map is read a block at a time (its pages released), never whole
        D, I = index.search(np.ascontiguousarray((_normalise(B, s) if metric == "cosine" else B).astype(np.float32)), kk)
        if (I < 0).any():
            raise KexueError(f"the FAISS index returned fewer than {kk} neighbours for some queries "
                             "(an IVF index probing too few lists?); raise nprobe or lower n_candidates")
        D, I = faiss_distances(D, index, metric), I.astype(np.int64)
        if exclude_self:
            D, I = _drop_own(D, I, s)
        order = np.argsort(D, axis=1, kind="stable")  # row by row: a block sorts as the whole would
        D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
        if out is None:
            parts.append((D, I))
        else:
            out[0][s:s + len(D)], out[1][s:s + len(D)] = D, I
    if out is not None:
        return out
    return tuple(np.concatenate([p[j] for p in parts]) for j in (0, 1))


def _drop_own(D: np.ndarray, I: np.ndarray, first: int = 0):
    """Remove row r's entry for id ``first + r`` wherever it ranks (a duplicate may tie with it); a
    row without it loses its last entry, so every row keeps one entry fewer."""
    own = I == first + np.arange(len(I))[:, None]
    drop = np.where(own.any(1), own.argmax(1), I.shape[1] - 1)
    keep = np.ones(I.shape, dtype=bool)
    keep[np.arange(len(I)), drop] = False
    c = I.shape[1] - 1
    return D[keep].reshape(-1, c), I[keep].reshape(-1, c)


def search(X: np.ndarray, Q: np.ndarray | None, k: int, metric: str, backend, backend_params, seed: int,
           block_rows: int | None = None, on_disk: bool = False):
    """Candidate graph of queries ``Q`` (None: the rows of ``X`` themselves, self excluded).
    ``on_disk``: an approximate backend or a FAISS index stores it on disk a block of ``block_rows``
    rows at a time (:func:`kexue.hubness.stream.disk_graph`), for a pass that reads it back in blocks."""
    nq = len(X) if Q is None else len(Q)
    out = disk_graph(nq, k, len(X)) if on_disk and not (isinstance(backend, str) and backend == "exact") else None
    if is_faiss_index(backend):
        return faiss_search(backend, X if Q is None else Q, k, metric, exclude_self=Q is None, out=out)
    d, i = kneighbors(X, k, metric=metric, backend=backend, queries=Q, backend_params=backend_params, seed=seed,
                      block_rows=block_rows or BLOCK_ROWS, out=out)
    return (d, i) if out is not None else (np.asarray(d, dtype=np.float64), np.asarray(i, dtype=np.int64))


SAMPLE_WINDOW = 40  # sampled neighbours a statistic reads at least (noise vs locality; see sampled_stats)


def sampled_rows(X: np.ndarray, width: int, metric: str, n_samples: int, seed: int, screen=None):
    """The rows behind :func:`sampled_stats`, from one float32 pass over the ``n × n_samples``
    distances (:func:`kexue.hubness.screen.nearest_rows`; ``screen``: X's prepared rows, if built):

    - ``rows``: each index point's ``J`` smallest distances to a random sample of ``n_samples``
      other index points, sorted; ``J = max(round(width · n_samples / (n - 1)), min(SAMPLE_WINDOW,
      n_samples - 1))`` — at least the same fraction of its distance distribution as its
      ``width`` nearest among all ``n - 1`` others, and never fewer than 40 values;
    - ``ids``: the sample (sorted ids);
    - ``full``: each sample point's ``width`` smallest distances to all other index points (the
      same distances read column-wise), i.e. its exact row."""
    n = len(X)
    ids = np.sort(np.random.default_rng(seed).choice(n, n_samples, replace=False))
    w = int(min(n_samples - 1, max(round(width * n_samples / (n - 1)), SAMPLE_WINDOW)))
    rows, full = nearest_rows(X, w, metric, among=ids, screen=screen, among_width=width)
    return rows, ids, full


def sampled_stats(stats, X: np.ndarray, width: int, metric: str, n_samples: int, seed: int, screen=None):
    """Per-point statistics estimated from a sample of the index (``n_samples`` points) at the cost
    of ``n × n_samples`` distances. ``stats(dist, w)`` computes a reduction's statistics from
    sorted rows (w columns read). Each point's statistic over its ``J`` nearest sampled points
    (:func:`sampled_rows`) is a low-noise but wider-neighbourhood version of the one over its
    ``width`` nearest points; it is mapped back by an affine calibration fitted, per statistic,
    on the sample points, whose exact rows come from the same distances: least squares of the
    exact statistic on the sampled one. (Reading only the same fraction of the sample, e.g. its
    1 nearest point for a 5-NN statistic at a 5 % sample, is unbiased in rank but so noisy that
    a quarter of the re-ranked top 10 changed on 20,000 × 384 Gaussian data; the window and the
    calibration bring the agreement with the exact statistics from 0.74 to 0.86-0.89 there.)
    Positive statistics (a scale, a mean distance) stay positive."""
    rows, ids, full = sampled_rows(X, width, metric, n_samples, seed, screen)
    w = rows.shape[1]
    out = []
    for est, on_sample, exact in zip(stats(rows, w), stats(rows[ids], w), stats(full, width)):
        v = on_sample - on_sample.mean()
        var = float(v @ v)
        a = float(v @ (exact - exact.mean())) / var if var > 0 else 0.0
        cal = exact.mean() + a * (est - on_sample.mean())
        if (exact > 0).all():
            cal = np.maximum(cal, np.finfo(np.float64).tiny)
        out.append(cal)
    return tuple(out)


def graph_rows(G, what: str, drop_diagonal: bool):
    """Sorted ``(dist, ind)`` rows of a sparse neighbour graph; every row must hold the same number
    of entries. ``drop_diagonal``: the graph is the index's own (square), and each point's entry
    for itself is removed — if a row has none while others do (a duplicate pushed it out), its
    farthest entry goes, so rows stay equal; a graph with no self entry at all (scikit-learn's
    ``kneighbors_graph()`` without X) is already self-excluded and is read as it is."""
    G = sparse.csr_matrix(G, dtype=np.float64)
    G.sort_indices()
    counts = np.diff(G.indptr)
    if G.shape[0] == 0 or counts.min() != counts.max() or counts[0] == 0:
        raise KexueError(f"a sparse X is read as a kNN graph; {what} must hold the same number (≥ 1) of "
                         "neighbours in every row, as KNeighborsTransformer(mode='distance') gives; got rows with "
                         f"{counts.min() if len(counts) else 0}..{counts.max() if len(counts) else 0}")
    if not np.isfinite(G.data).all() or (G.data < 0).any():
        raise KexueError(f"{what} must hold finite non-negative distances")
    c = int(counts[0])
    dist = G.data.reshape(-1, c).copy()
    ind = G.indices.reshape(-1, c).astype(np.int64)
    order = np.lexsort((ind, dist), axis=1)
    dist, ind = np.take_along_axis(dist, order, 1), np.take_along_axis(ind, order, 1)
    if drop_diagonal:
        if G.shape[0] != G.shape[1]:
            raise KexueError(f"a sparse X is read as a kNN graph; {what} must be square (n_index, n_index); got {G.shape}")
        if (ind == np.arange(len(ind))[:, None]).any():  # the graph includes the points themselves
            if c < 2:
                raise KexueError(f"{what} needs at least 2 entries per row (the point itself and a neighbour)")
            dist, ind = _drop_own(dist, ind)
    return dist, ind


def to_graph(dist: np.ndarray, ind: np.ndarray, n_index: int) -> sparse.csr_matrix:
    """CSR (n_queries, n_index) holding ``dist`` at ``ind``, rows sorted by value (explicit zeros kept)."""
    order = np.lexsort((ind, dist), axis=1)
    d, i = np.take_along_axis(dist, order, 1), np.take_along_axis(ind, order, 1)
    n, c = d.shape
    return sparse.csr_matrix((d.ravel(), i.ravel(), np.arange(0, n * c + 1, c)), shape=(n, n_index))
