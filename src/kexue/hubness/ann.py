"""Approximate kNN backends whose search parameter is chosen for a recall target (SPEC 8.2), and
a user's own FAISS index (issue 29).

A user asks for ``recall`` (default 0.95), not for ``nprobe`` or ``ef``: the index is built,
``sample`` random queries (default 1,000) are searched exactly (:mod:`kexue.hubness.knn`), and
the smallest search parameter whose recall on that sample reaches the target is used for all
queries (doubling, then bisection between the last miss and the first hit). The measured sample
recall is returned with the result (``KNNGraph.recall``), so every approximate graph states its
quality. Found neighbours are re-scored in float64 and ordered like the exact backend's.

- ``hnsw``: FAISS ``IndexHNSWFlat``; parameter ``ef_search`` (build: ``M`` = 16,
  ``ef_construction`` = 100, ``num_threads`` = 1 — one thread gives the same graph every run;
  rows inserted in batches of 16,384 whatever ``block_rows``, as the batches shape the graph).
- ``ivf``: FAISS ``IndexIVFFlat``; parameter ``nprobe`` (build: ``nlist`` = √n, k-means on a
  seeded sample of 64 points per list).
- ``faiss``: ``backend_params={"index": "hnsw" | "ivf" | "flat"}`` — the HNSW or IVF index above,
  or the float32 flat index (exact up to float32 rounding, nothing to tune).
- a built FAISS index passed as ``backend`` (any kind: flat, IVF-Flat, IVF-PQ, HNSW,
  ``IndexShards``; :mod:`kexue.hubness.faiss_index`): searched as it is configured — its
  ``nprobe``/``efSearch`` unless ``backend_params`` sets one — and its recall measured only when
  a sample is asked for (``sample`` > 0). Without the vectors (``X`` None, queries given) the
  distances are FAISS's own float32 ones.

Passing the parameter itself (``backend_params={"nprobe": 32}``) skips the tuning; the recall
is still measured on the sample. Cosine: unit vectors searched with L2, which ranks identically.

**Out of core.** ``X`` and the queries may be memory maps (``np.load(path, mmap_mode="r")``): they
are read ``block_rows`` rows at a time — the index is built block by block (IVF trained on its
sample), the queries are searched block by block, the sample's exact neighbours are merged over
blocks of ``X`` — and float64 is used only for the found candidates' rows. Besides the index
itself (a flat, IVF-Flat or HNSW index holds a float32 copy of ``X``), the working memory is a few
blocks of ``block_rows × dim`` values; the memory map's pages are released from the process as
each block (and each chunk of gathered candidate rows) is consumed (:func:`kexue.io.release_pages`),
so its resident set does not grow to the whole file. Where the built index's own float32 copy of a
row is that row bit for bit (float32 ``X``, Euclidean: flat, IVF-Flat, HNSW), the candidates are
re-scored from it instead of the map (:func:`_own_rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from kexue import validate
from kexue.hubness import faiss_index as FI
from kexue.hubness.arrays import gather_rows, row_blocks
from kexue.hubness.knn import KNNGraph, _exact, _normalise, knn_recall, order_rows, pair_distances, rows64
from kexue.io import release_pages
from kexue.utils import KexueError, NULL_TRACKER, Tracker, require

BLOCK_ROWS = 16384  # rows read at a time: 24 MB of float32 at 384 dimensions


@dataclass
class _Index:
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (Q, kk) -> (D, I)
    set_param: Callable[[int], None] | None  # None: nothing to tune
    name: str  # the tuned parameter's name
    values: list  # candidates, increasing
    fixed: int | None  # the user's value, if given
    current: Callable[[], int] | None = None  # a user's index: its parameter as configured
    index: object = None  # the FAISS index itself (a Dask run writes it to a file for its workers)
    rows: Callable[[np.ndarray], np.ndarray] | None = None  # X's rows from the index's own copy (_own_rows)


def _own_rows(index, X, metric: str):
    """The index's stored vectors as ``X[ids]`` for the float64 re-scoring, where they are X's rows bit
    for bit: X float32 and Euclidean (FAISS stores the added float32 rows as given; cosine stores unit
    rows, a float64 X rounded ones: None, and the rows are read from X). A memcpy each (0.1 µs), where
    a scattered row of a memory map costs a page-cache folio mapped and released (3-6 µs, see
    ``arrays.gather_rows``): MP's 100 candidates for 1,000,000 points are 10⁸ of them."""
    if metric != "euclidean" or getattr(X, "dtype", None) != np.float32:
        return None
    return lambda ids: index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))


def _rows32(B, metric: str) -> np.ndarray:
    """Float32 rows of one block as FAISS takes them (unit rows for cosine)."""
    return np.ascontiguousarray(_normalise(B) if metric == "cosine" else B, dtype=np.float32)


def _add(index, X, metric: str, block_rows: int) -> None:
    for _, B in row_blocks(X, block_rows):
        index.add(_rows32(B, metric))


def _add_ivf(faiss, index, X, metric: str, block_rows: int) -> None:
    """``_add`` for an IVF index, with each inverted list allocated once at its final length: the
    lists are found first (the quantiser's assignment of the same blocks ``index.add`` would make, n
    int64), then the rows added with them (``add_core``: the same lists, order and ids). Grown block by
    block, a list's buffer doubles as it fills and ends up to 2x its length (200,000 x 384: 0.44 GB
    resident for a 0.31 GB index; 0.33 GB reserved first)."""
    lists = np.concatenate([np.empty(0, np.int64)] + [index.quantizer.assign(_rows32(B, metric), 1).ravel()
                                                      for _, B in row_blocks(X, block_rows)])
    inv = faiss.downcast_InvertedLists(index.invlists)
    for j, c in enumerate(np.bincount(lists, minlength=index.nlist).tolist()):
        inv.resize(j, c)  # a vector shrunk keeps its capacity: the adds below fill it without reallocating
        inv.resize(j, 0)
    for s, B in row_blocks(X, block_rows):
        B, a = _rows32(B, metric), np.ascontiguousarray(lists[s:s + block_rows])
        index.add_core(len(B), faiss.swig_ptr(B), None, faiss.swig_ptr(a))


def _faiss_hnsw(X, kk, params, seed, metric, block_rows) -> _Index:
    faiss = require("ann", "faiss", "backend 'hnsw'")

    n, d = X.shape
    index = faiss.IndexHNSWFlat(d, int(params.pop("M", 16)))
    index.hnsw.efConstruction = int(params.pop("ef_construction", 100))
    threads, before = int(params.pop("num_threads", 1)), faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)  # parallel insertion depends on thread timing; one thread does not
    try:  # FAISS inserts each batch level by level, so the batch size shapes the graph: fixed, not block_rows
        _add(index, X, metric, BLOCK_ROWS)
    finally:
        faiss.omp_set_num_threads(before)
    fixed = params.pop("ef_search", None)
    return _Index(lambda Q, k: _int(index.search(Q, k)), lambda v: setattr(index.hnsw, "efSearch", v), "ef_search",
                  _doubling(kk, max(n, kk)), fixed, index=index, rows=_own_rows(index, X, metric))


def _faiss_ivf(X, kk, params, seed, metric, block_rows) -> _Index:
    faiss = require("ann", "faiss", "backend 'ivf'")

    n, d = X.shape
    nlist = int(params.pop("nlist", max(1, round(math.sqrt(n)))))
    if not 1 <= nlist <= n:
        raise KexueError(f"nlist must be in 1..{n} (the number of index points), got {nlist}")
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.max_points_per_centroid = 64  # k-means on a sample: the lists need not be optimal
    index.cp.min_points_per_centroid = 1
    m = min(n, 64 * nlist)  # the sample read from X (FAISS would draw the same number from all of it)
    index.train(_rows32(X if m == n else gather_rows(X, np.sort(np.random.default_rng(seed).choice(n, m, replace=False))),
                        metric))
    _add_ivf(faiss, index, X, metric, block_rows)
    index.make_direct_map()  # id -> (list, offset), 8 bytes a vector: for _own_rows
    fixed = params.pop("nprobe", None)

    def search(Q, k):
        D, I = index.search(Q, k)
        miss = np.flatnonzero((I < 0).any(1))
        if len(miss):  # a few lists held fewer than k points: search those rows in every list
            p = index.nprobe
            index.nprobe = nlist
            D[miss], I[miss] = index.search(Q[miss], k)
            index.nprobe = p
        return D, I.astype(np.int64)

    return _Index(search, lambda v: setattr(index, "nprobe", v), "nprobe", _doubling(1, nlist), fixed, index=index,
                  rows=_own_rows(index, X, metric))


def _faiss(X, kk, params, seed, metric, block_rows) -> _Index:
    faiss = require("ann", "faiss", "backend 'faiss'")

    kind = params.pop("index", "hnsw")
    if kind == "ivf":
        return _faiss_ivf(X, kk, params, seed, metric, block_rows)
    if kind == "hnsw":
        return _faiss_hnsw(X, kk, params, seed, metric, block_rows)
    if kind != "flat":
        raise KexueError(f"unknown FAISS index {kind!r}; choose from: hnsw, ivf, flat")
    index = faiss.IndexFlatL2(X.shape[1])
    _add(index, X, metric, block_rows)
    return _Index(lambda Q, k: _int(index.search(Q, k)), None, "", [], None, index=index, rows=_own_rows(index, X, metric))


def _given(index, params) -> _Index:
    """A user's built FAISS index, searched as configured (see the module docstring)."""
    knob = FI.knob(index)
    pname = None if knob is None else "nprobe" if knob[0] == "nprobe" else "ef_search"
    fixed = {a: params.pop(a) for a in ("nprobe", "ef_search") if a in params}
    for a in fixed:
        if a != pname:
            raise KexueError(f"the FAISS index ({type(index).__name__}) has no {a}"
                             + (f"; its search parameter is {pname}" if pname else "; drop it"))
    value = int(validate.integer(fixed[pname], pname, 1)) if pname in fixed else None

    def with_param(v, Q, k):
        """``index.search`` with its parameter at ``v`` for this call only: the index is the user's,
        so their own setting is back when the search returns (or raises)."""
        if v is None:
            return index.search(Q, k)
        before = FI.get_param(knob[1], knob[0])
        FI.set_param(index, knob[0], v)
        try:
            return index.search(Q, k)
        finally:
            FI.set_param(index, knob[0], before)

    def search(Q, k):
        D, I = with_param(value, Q, k)
        miss = np.flatnonzero((I < 0).any(1))
        if len(miss) and pname == "nprobe":  # lists too small for k: those rows again in every list
            D[miss], I[miss] = with_param(knob[2], Q[miss], k)
            miss = np.flatnonzero((I < 0).any(1))
        if len(miss):
            raise KexueError(f"the FAISS index found fewer than {k} neighbours for {len(miss)} queries"
                             + (f"; raise its {pname} or lower k" if pname else "; lower k"))
        if I.max() >= index.ntotal:  # e.g. an IndexIDMap with ids of its own: they must be row numbers
            raise KexueError(f"the FAISS index returned id {int(I.max())} but holds {index.ntotal} vectors; "
                             "its ids must be the row numbers 0..ntotal-1 of X (the order the rows were added)")
        return D, I.astype(np.int64)

    current = None if knob is None else (lambda: FI.get_param(knob[1], knob[0]) if value is None else value)
    return _Index(search, None, pname or "", [], None, current, index)


def _int(DI):
    return DI[0], DI[1].astype(np.int64)


def _doubling(lo: int, hi: int) -> list:
    out = [lo]
    while out[-1] < hi:
        out.append(min(2 * out[-1], hi))
    return out


_BUILD = {"hnsw": _faiss_hnsw, "ivf": _faiss_ivf, "faiss": _faiss}


def _drop_self(I: np.ndarray, ids, k: int) -> np.ndarray:
    """Remove each row's own id wherever it appears (not "the first column": duplicates tie with
    it); rows without it lose their last column."""
    if ids is None:
        return I[:, :k]
    own = I == ids[:, None]
    drop = np.where(own.any(1), own.argmax(1), I.shape[1] - 1)
    keep = np.ones_like(I, dtype=bool)
    keep[np.arange(len(I)), drop] = False
    return I[keep].reshape(len(I), k)


PLATEAU = 0.005  # recall within this of the best counts as the plateau when the target is out of reach


def _tune(idx: _Index, run, truth: np.ndarray, target: float) -> tuple[int | None, float]:
    """The smallest parameter value whose recall on the sample reaches ``target``; when no value
    reaches it, the smallest whose recall is within ``PLATEAU`` of the best one tried."""
    if idx.set_param is None:
        return None, knn_recall(run(), truth)
    if idx.fixed is not None:
        idx.set_param(int(idx.fixed))
        return int(idx.fixed), knn_recall(run(), truth)
    lo, hi, got = None, None, {}
    for v in idx.values:
        idx.set_param(v)
        got[v] = knn_recall(run(), truth)
        if got[v] >= target:
            hi = v
            break
        lo = v
    if hi is None:  # out of reach even at the largest value (e.g. PQ codes cap the recall)
        # the smallest value within PLATEAU of the best recall: at nprobe = nlist an IVF-PQ search is
        # exhaustive (hours at 10^6 queries) for a recall its codes reached at a few lists
        best = max(got.values())
        v = min(u for u, r in got.items() if r >= best - PLATEAU)
        idx.set_param(v)
        return v, got[v]
    while lo is not None and hi - lo > 1 and hi > 1.15 * lo:  # bisect to within ~15 %
        mid = (lo + hi) // 2
        idx.set_param(mid)
        got[mid] = knn_recall(run(), truth)
        lo, hi = (lo, mid) if got[mid] >= target else (mid, hi)
    idx.set_param(hi)
    return hi, got[hi]


def exact_sample(X, Qs: np.ndarray, k: int, metric: str, self_ids, block_rows: int) -> np.ndarray:
    """Exact k nearest (ids) of a few queries among all of ``X``, merged over blocks of ``block_rows``
    rows of ``X`` (each block searched exactly, its ``k + 1`` best kept; ``self_ids``: each query's
    own row, dropped wherever it ranks) — the truth the recall is measured against."""
    kk = k + (0 if self_ids is None else 1)
    bd, bi = np.empty((len(Qs), 0)), np.empty((len(Qs), 0), np.int64)
    for s, Xb in row_blocks(X, block_rows):
        g = _exact(Xb, Qs, min(kk, len(Xb)), metric, None, None, 16, NULL_TRACKER)
        d, i = np.hstack([bd, g.dist]), np.hstack([bi, g.ind + s])
        bd, bi = order_rows(d, i, min(kk, d.shape[1]), metric)
    return _drop_self(bi, self_ids, k)


def tuned(X, Q, k, metric, backend, self_ids, params, recall, seed, sample: int | None = None,
          block_rows: int = BLOCK_ROWS):
    """The index :func:`search` searches — built for a backend name, or the given FAISS index — with
    its search parameter chosen on the sample (module docstring): ``(idx, label, value, recall,
    n_sample)``; a Dask run builds it here and has its workers search it."""
    given = not isinstance(backend, str)
    kk = k + (1 if self_ids is not None else 0)
    sample = params.pop("sample", sample)
    if given:
        idx = _given(backend, params)
        label = type(backend).__name__
    else:
        idx = _BUILD[backend](X, kk, params, seed, metric, block_rows)
        label = backend
    if params:
        raise KexueError(f"unknown {label} backend parameters: {', '.join(params)}")
    sample = validate.integer((0 if given else 1000) if sample is None else sample, "recall_sample", 0)
    nq = len(Q)
    rows = np.empty(0, np.int64)
    value, got = None, float("nan")
    if sample:
        if X is None:
            raise KexueError("measuring recall needs the vectors the FAISS index was built from; pass X "
                             "or recall_sample=0")
        rows = np.sort(np.random.default_rng(seed).choice(nq, min(sample, nq), replace=False))
        sid = None if self_ids is None else self_ids[rows]
        Qs = gather_rows(Q, rows)
        truth = exact_sample(X, Qs, k, metric, sid, block_rows)
        Qs32 = _rows32(Qs, metric)
        value, got = _tune(idx, lambda: _drop_self(idx.search(Qs32, kk)[1], sid, k), truth, recall)
    elif idx.set_param is not None:
        if idx.fixed is None:
            raise KexueError(f"recall_sample=0 leaves no sample to choose {idx.name} on; give backend_params="
                             f"{{'{idx.name}': ...}} or recall_sample >= 1")
        value = int(idx.fixed)
        idx.set_param(value)
    if idx.current is not None:
        value = idx.current()
    return idx, label, value, got, len(rows)


def search(X, Q, k, metric, backend, self_ids, params, recall, seed, tracker: Tracker,
           sample: int | None = None, block_rows: int = BLOCK_ROWS, out=None) -> KNNGraph:
    """Approximate kNN of ``Q`` among ``X`` (see the module docstring); called by ``kneighbors``.
    ``backend``: a backend name or a built FAISS index (then ``X`` may be None). ``out``: ``(dist,
    ind)`` written a block of ``block_rows`` rows at a time (e.g. an on-disk graph,
    :func:`kexue.hubness.stream.disk_graph`) instead of new arrays."""
    idx, label, value, got, n_sample = tuned(X, Q, k, metric, backend, self_ids, params, recall, seed, sample,
                                             block_rows)
    kk = k + (1 if self_ids is not None else 0)
    nq = len(Q)
    dist, ind = (np.empty((nq, k)), np.empty((nq, k), np.int64)) if out is None else out
    for s in tracker.track(range(0, nq, block_rows), f"{label} search"):
        e = min(s + block_rows, nq)
        Qb = np.asarray(Q[s:e])
        D, I = idx.search(_rows32(Qb, metric), kk)  # float32 rows read as they are: no float64 block
        if X is None:  # a user's index without its vectors: FAISS's own distances
            dist[s:e], ind[s:e] = order_rows(FI.faiss_distances(D[:, :k], backend, metric), I[:, :k], k, metric)
            release_pages(Q)
            continue
        I = _drop_self(I, None if self_ids is None else self_ids[s:e], k)
        bd, bi = np.empty((e - s, k)), np.empty((e - s, k), np.int64)  # the block, stored at once
        step = max(1, (1 << 20) // (k * Qb.shape[1]))  # 8 MB of gathered float64 rows (and as much of differences)
        for c in range(0, e - s, step):
            Ic = I[c:c + step]
            Xc = rows64(idx.rows(Ic.ravel()) if idx.rows else gather_rows(X, Ic.ravel()), metric).reshape(*Ic.shape, -1)
            d64 = pair_distances(rows64(Qb[c:c + step], metric)[:, None, :], Xc, metric)  # row by row: as the block's
            bd[c:c + len(Ic)], bi[c:c + len(Ic)] = order_rows(d64, Ic, k, metric)
        dist[s:e], ind[s:e] = bd, bi
        release_pages(Q)
    return KNNGraph(dist, ind, label, float(got), n_sample, {} if value is None else {idx.name: value})
