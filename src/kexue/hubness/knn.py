"""k nearest neighbours and k-occurrence (SPEC 8.2).

k-occurrence. For index points ``X`` and queries ``Q`` (``Q = X`` by default),
``N_k(x)`` is the number of queries that have ``x`` among their ``k`` nearest neighbours.
When ``Q = X`` a point is never its own neighbour (``exclude_self=True``): the point with the
*same row index* is removed, not "the first neighbour" — so a duplicate of ``x`` (distance 0)
still counts as a neighbour of ``x``. Hence ``sum(N_k) = k × n_queries`` always.

Backends
  ``exact``  blocked brute force. Distances of a block of queries to all ``N`` index points are
             computed in float32 with BLAS (``block × N`` at a time, so memory stays bounded);
             the ``k + margin`` best candidates of each row are re-scored in float64 from the
             differences themselves, and a row whose float32 gap between the k-th and the last
             candidate is smaller than the float32 error bound is recomputed wholly in float64.
             The result therefore equals a float64 brute-force search. **Ties** (equal float64
             distances, e.g. duplicates) are broken by the smaller index point id.
  ``faiss``  FAISS, approximate: ``IndexHNSWFlat`` (default), ``IndexIVFFlat`` or exact
             ``IndexFlatL2`` (``backend_params={"index": "hnsw"|"ivf"|"flat", ...}``).
  ``hnsw``   hnswlib (approximate HNSW graph).
Cosine distance is ``1 - cos``; the approximate backends search normalised vectors with L2,
which ranks identically.
"""

from __future__ import annotations

import math

import numpy as np

from kexue.utils import KexueError
from kexue.validate import finite as check_finite

METRICS = ("euclidean", "cosine")
BACKENDS = ("exact", "faiss", "hnsw")
_U32 = float(np.finfo(np.float32).eps) / 2  # unit round-off of float32


# ---------------------------------------------------------------------------------------------
# validation


def _as_matrix(X, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise KexueError(f"{what} must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise KexueError(f"{what} must be real numbers, got dtype {X.dtype}")
    check_finite(X, what)
    return X


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise KexueError(f"unknown metric {metric!r}; choose from: {', '.join(METRICS)}")


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    if (n == 0).any():
        raise KexueError(f"cosine metric needs non-zero vectors; row {int(np.argmax(n[:, 0] == 0))} is all zeros "
                         "(drop it or use --metric euclidean)")
    return X / n


def pair_distances(A: np.ndarray, B: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Float64 distances between rows ``A[i]`` and ``B[i]`` (same shape, or B broadcast (m, c, d)).

    Euclidean ``sqrt(sum((a - b)^2))`` computed from the differences (no cancellation);
    cosine ``1 - <a, b>`` for already normalised rows.
    """
    if metric == "euclidean":
        return np.sqrt(np.sum((A - B) ** 2, axis=-1))
    return 1.0 - np.sum(A * B, axis=-1)


# ---------------------------------------------------------------------------------------------
# kNN search


def _sort_rows(dist: np.ndarray, ind: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index) — the documented tie-breaking — and keep k."""
    order = np.lexsort((ind, dist), axis=1)
    d = np.take_along_axis(dist, order, 1)[:, :k]
    i = np.take_along_axis(ind, order, 1)[:, :k]
    return d, i


def _exact_block(Qb, qid, Xw, xsq, Q64, X64, k, metric, margin, exclude_self):
    """kNN of one query block: float32 screening, float64 re-scoring, float64 fallback rows."""
    n = Xw.shape[0]
    d = Xw.shape[1]
    qsq = np.einsum("ij,ij->i", Qb, Qb)
    # float32 squared distances minus |q|^2 (a per-row constant, irrelevant for ranking and gaps):
    # |x|^2 - 2 q.x, built in place to keep one block-sized array and few passes over it
    D = Qb @ Xw.T
    D *= -2.0
    D += xsq[None, :]
    if exclude_self:
        D[np.arange(len(qid)), qid] = np.inf
    n_valid = n - (1 if exclude_self else 0)
    m = min(k + margin, n_valid)
    cand = np.argpartition(D, m - 1, axis=1)[:, :m] if m < n else np.argsort(D, axis=1)[:, :m]
    cd32 = np.take_along_axis(D, cand, 1)
    # Error bound of a screened squared distance (dot products, norms and the float32 rounding of
    # the inputs): |err| <= 2 (d+4) u (|q|^2 + |x|^2); two of them can err in opposite directions.
    tol = 4.0 * (d + 4) * _U32 * (qsq + xsq.max())
    Qr = Q64[qid]
    exact = np.empty(cand.shape)
    step = max(1, (4 << 20) // (m * d))  # re-score in chunks of ≤ 32 MB of gathered float64 rows
    for s in range(0, len(qid), step):
        exact[s:s + step] = pair_distances(Qr[s:s + step, None, :], X64[cand[s:s + step]], metric)
    dist, ind = _sort_rows(exact, cand, k)
    if m < n_valid:
        # a point outside the candidates can only beat the k-th if the gap is within the error bound
        srt = np.sort(cd32, axis=1)
        bad = np.nonzero(srt[:, -1] - srt[:, k - 1] <= tol)[0]
        for r in bad:  # rare: near-ties at the k-th place: recompute the whole row in float64
            full = pair_distances(Qr[r][None, :], X64, metric)
            idx = np.arange(n)
            if exclude_self:
                keep = idx != qid[r]
                full, idx = full[keep], idx[keep]
            dr, ir = _sort_rows(full[None, :], idx[None, :], k)
            dist[r], ind[r] = dr[0], ir[0]
    return dist, ind


def kneighbors(X, k: int, metric: str = "euclidean", backend: str = "exact", queries=None,
               exclude_self: bool = True, block: int | None = None, margin: int = 16,
               backend_params: dict | None = None, seed: int = 0, n_jobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph: ``(dist, ind)`` of shape (n_queries, k), sorted by (distance, index).

    ``queries=None`` searches ``X`` against itself and, with ``exclude_self``, drops each row's own
    index (SPEC 8.2). ``block`` is the number of query rows per distance block (default so a block
    of float32 distances is about 128 MB); ``n_jobs > 1`` runs blocks through joblib.
    """
    _check_metric(metric)
    if backend not in BACKENDS:
        raise KexueError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    X = _as_matrix(X, "X")
    self_search = queries is None
    Q = X if self_search else _as_matrix(queries, "queries")
    if Q.shape[1] != X.shape[1]:
        raise KexueError(f"queries have {Q.shape[1]} features but X has {X.shape[1]}; embed both the same way")
    exclude_self = bool(exclude_self and self_search)
    n = X.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1 or k > n - (1 if exclude_self else 0):
        raise KexueError(f"k must be an integer in 1..{n - (1 if exclude_self else 0)} for {n} index points, got {k}")
    k = int(k)
    if backend == "exact":
        return _exact(X, Q, k, metric, exclude_self, block, margin, n_jobs)
    return _approx(X, Q, k, metric, backend, exclude_self, dict(backend_params or {}), seed)


def _exact(X, Q, k, metric, exclude_self, block, margin, n_jobs):
    if metric == "cosine":
        X64 = _normalise(X)
        Q64 = X64 if Q is X else _normalise(Q)
        shift = 0.0
    else:
        X64 = np.asarray(X, dtype=np.float64)
        Q64 = X64 if Q is X else np.asarray(Q, dtype=np.float64)
        shift = X64.mean(0)  # centring is free for L2 and shrinks norms, hence the float32 error
    Xw = np.ascontiguousarray((X64 - shift).astype(np.float32))
    Qw = Xw if Q is X else np.ascontiguousarray((Q64 - shift).astype(np.float32))
    xsq = np.einsum("ij,ij->i", Xw, Xw)
    n = X.shape[0]
    if block is None:
        block = max(1, min(Qw.shape[0], (128 << 20) // (4 * n)))
    starts = range(0, Qw.shape[0], block)

    def run(s):
        qid = np.arange(s, min(s + block, Qw.shape[0]))
        return _exact_block(Qw[qid], qid, Xw, xsq, Q64, X64, k, metric, margin, exclude_self)

    if n_jobs == 1:
        parts = [run(s) for s in starts]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(run)(s) for s in starts)
    dist = np.concatenate([p[0] for p in parts])
    ind = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return dist, ind


def _approx(X, Q, k, metric, backend, exclude_self, params, seed):
    Xf = (_normalise(X) if metric == "cosine" else np.asarray(X, np.float64)).astype(np.float32)
    Qf = Xf if Q is X else (_normalise(Q) if metric == "cosine" else np.asarray(Q, np.float64)).astype(np.float32)
    kk = k + (1 if exclude_self else 0)
    n, d = Xf.shape
    if backend == "faiss":
        import faiss

        kind = params.pop("index", "hnsw")
        if kind == "flat":
            index = faiss.IndexFlatL2(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(params.pop("M", 32)))
            index.hnsw.efConstruction = int(params.pop("ef_construction", 200))
            index.hnsw.efSearch = int(params.pop("ef_search", max(128, 2 * kk)))
        elif kind == "ivf":
            nlist = int(params.pop("nlist", max(1, int(4 * math.sqrt(n)))))
            quant = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quant, d, nlist)
            index.cp.seed = seed
            index.train(Xf)
            index.nprobe = int(params.pop("nprobe", max(1, nlist // 8)))
        else:
            raise KexueError(f"unknown FAISS index {kind!r}; choose from: hnsw, ivf, flat")
        if params:
            raise KexueError(f"unknown FAISS backend parameters: {', '.join(params)}")
        index.add(Xf)
        D, I = index.search(Qf, kk)
        D = np.sqrt(np.maximum(D, 0)).astype(np.float64)
    else:
        import hnswlib

        index = hnswlib.Index(space="l2", dim=d)
        index.init_index(max_elements=n, M=int(params.pop("M", 32)),
                         ef_construction=int(params.pop("ef_construction", 200)), random_seed=seed)
        index.set_num_threads(int(params.pop("num_threads", 1)))  # 1 thread: deterministic graph
        index.add_items(Xf, np.arange(n))
        index.set_ef(int(params.pop("ef_search", max(128, 2 * kk))))
        if params:
            raise KexueError(f"unknown hnsw backend parameters: {', '.join(params)}")
        I, D = index.knn_query(Qf, k=kk)
        I = I.astype(np.int64)
        D = np.sqrt(np.maximum(D, 0)).astype(np.float64)
    if metric == "cosine":
        D = D**2 / 2.0  # |a - b|^2 = 2 - 2cos for unit vectors
    if exclude_self:
        # drop the row's own id wherever it appears (not "the first column": duplicates tie with it)
        own = I == np.arange(len(I))[:, None]
        drop = np.where(own.any(1), own.argmax(1), kk - 1)
        keep = np.ones_like(I, dtype=bool)
        keep[np.arange(len(I)), drop] = False
        I = I[keep].reshape(len(I), k)
        D = D[keep].reshape(len(I), k)
    return D, I.astype(np.int64)


def k_occurrence(X, k: int, metric: str = "euclidean", backend: str = "exact", exclude_self: bool = True,
                 queries=None, **kw) -> np.ndarray:
    """N_k of every index point (SPEC 8.2): int64 array of length ``len(X)``.

    ``N_k(x) = |{q in queries : x in kNN_k(q)}|``; with ``queries=None`` the queries are ``X`` and a
    point is not its own neighbour unless ``exclude_self=False``. ``sum(N_k) = k × n_queries``.
    Further keywords go to :func:`kneighbors` (``block``, ``backend_params``, ``seed``, ``n_jobs``).
    """
    X = _as_matrix(X, "X")
    _, ind = kneighbors(X, k, metric=metric, backend=backend, queries=queries, exclude_self=exclude_self, **kw)
    return occurrences(ind, len(X))


def occurrences(neigh_ind: np.ndarray, n_index: int) -> np.ndarray:
    """N_k from a kNN graph's index array (n_queries, k)."""
    return np.bincount(np.asarray(neigh_ind).ravel(), minlength=n_index).astype(np.int64)


def knn_recall(approx_ind: np.ndarray, exact_ind: np.ndarray) -> float:
    """Recall of an approximate kNN graph: mean over queries of |approx ∩ exact| / k."""
    a, e = np.asarray(approx_ind), np.asarray(exact_ind)
    if a.shape != e.shape:
        raise KexueError(f"kNN graphs differ in shape: {a.shape} vs {e.shape}")
    hits = sum(len(np.intersect1d(x, y)) for x, y in zip(a, e))
    return hits / e.size
