"""Hubness (SPEC 8): k-occurrence, hubness measures, hubness reduction and hub-prior sampling.

k-occurrence (SPEC 8.2). For index points ``X`` and queries ``Q`` (``Q = X`` by default),
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

Measures (SPEC 8.2) are functions of the vector ``N_k``; see :func:`hubness_measures`.

Reductions (SPEC 8.4) are scikit-learn style transformers over kNN graphs: ``fit(X)`` learns the
per-point statistics of the index, ``transform(neigh_dist, neigh_ind, X=None)`` turns a
candidate graph (primary distances) into secondary distances and returns the neighbours
re-ranked by them; ``kneighbors(Q=None, n_neighbors)`` does both from vectors.

Hub-prior sampling (SPEC 8.3): :func:`hub_sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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


# ---------------------------------------------------------------------------------------------
# measures (SPEC 8.2)


def _nk(Nk) -> np.ndarray:
    Nk = np.asarray(Nk, dtype=np.float64)
    if Nk.ndim != 1 or Nk.size == 0:
        raise KexueError(f"N_k must be a non-empty 1-D array, got shape {Nk.shape}")
    check_finite(Nk, "N_k")
    if (Nk < 0).any():
        raise KexueError("N_k must be non-negative counts")
    return Nk


def skewness(Nk) -> float:
    """Skewness of N_k: ``S = mean((N_k - μ)^3) / σ^3`` with population moments (μ mean, σ std).

    0 for symmetric N_k; large positive values mean a few hubs. 0 if all N_k are equal.
    """
    Nk = _nk(Nk)
    c = Nk - Nk.mean()
    s2 = np.mean(c**2)
    return 0.0 if s2 == 0 else float(np.mean(c**3) / s2**1.5)


def robin_hood(Nk) -> float:
    """Robin-Hood (Hoover) index: ``RH = Σ_i |N_k(i) - μ| / (2 Σ_i N_k(i))``.

    The fraction of all k-occurrences that would have to move from rich to poor points for every
    point to have the mean μ; 0 = equal, → 1 = one point takes all.
    """
    Nk = _nk(Nk)
    tot = Nk.sum()
    return 0.0 if tot == 0 else float(np.abs(Nk - Nk.mean()).sum() / (2 * tot))


def gini(Nk) -> float:
    """Gini coefficient: ``G = Σ_i Σ_j |N_k(i) - N_k(j)| / (2 n Σ_i N_k(i))``.

    Computed from the sorted values, ``G = Σ_i (2i - n - 1) N_(i) / (n Σ N)`` (i = 1..n), which
    is the same number. 0 = equal, (n-1)/n = one point takes all.
    """
    Nk = np.sort(_nk(Nk))
    n, tot = len(Nk), Nk.sum()
    if tot == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * Nk) / (n * tot))


def atkinson(Nk, epsilon: float = 0.5) -> float:
    """Atkinson index with inequality aversion ε ≥ 0:
    ``A_ε = 1 - (mean(N_k^{1-ε}))^{1/(1-ε)} / μ`` for ε ≠ 1 and ``A_1 = 1 - geomean(N_k) / μ``.

    0 = equal; with ε ≥ 1 a single zero (antihub) gives A = 1.
    """
    Nk = _nk(Nk)
    if epsilon < 0:
        raise KexueError(f"Atkinson epsilon must be >= 0, got {epsilon}")
    mu = Nk.mean()
    if mu == 0:
        return 0.0
    if epsilon == 1:
        if (Nk == 0).any():
            return 1.0
        return float(1 - np.exp(np.mean(np.log(Nk))) / mu)
    if epsilon > 1 and (Nk == 0).any():
        return 1.0
    return float(1 - np.mean(Nk ** (1 - epsilon)) ** (1 / (1 - epsilon)) / mu)


def hub_occurrence(Nk, k: int, n_queries: int | None = None, hub_size: float = 2.0) -> float:
    """Share of all k-occurrences that fall on hubs: ``Σ_{hubs} N_k / (k × n_queries)``.

    Hubs are points with ``N_k > hub_size × μ``, where ``μ = k × n_queries / n_index`` is the mean
    N_k (= k when queries are the index itself). ``n_queries`` defaults to ``len(N_k)``.
    """
    Nk = _nk(Nk)
    nq = len(Nk) if n_queries is None else int(n_queries)
    mu = k * nq / len(Nk)
    return float(Nk[Nk > hub_size * mu].sum() / (k * nq))


def antihub_occurrence(Nk, threshold: float = 0) -> float:
    """Share of index points that are antihubs, ``|{i : N_k(i) <= threshold}| / n_index``
    (threshold 0: points that are nobody's neighbour)."""
    Nk = _nk(Nk)
    return float(np.mean(Nk <= threshold))


def hubness_measures(Nk, k: int, n_queries: int | None = None, hub_size: float = 2.0,
                     epsilon: float = 0.5) -> dict:
    """All measures of SPEC 8.2 for one N_k vector, as a dict of floats (plus max N_k)."""
    Nk = _nk(Nk)
    return {
        "skewness": skewness(Nk),
        "robin_hood": robin_hood(Nk),
        "gini": gini(Nk),
        "atkinson": atkinson(Nk, epsilon),
        "hub_occurrence": hub_occurrence(Nk, k, n_queries, hub_size),
        "antihub_occurrence": antihub_occurrence(Nk),
        "max_nk": float(Nk.max()),
    }


# ---------------------------------------------------------------------------------------------
# hubness reduction (SPEC 8.4)


class _Reduction:
    """Base: a secondary distance over a candidate kNN graph.

    ``fit(X)`` stores the index and the per-point statistics; ``transform(neigh_dist, neigh_ind,
    X=None)`` maps primary candidate distances of queries ``X`` (None = the fitted index points,
    row i being point i) to secondary distances and returns ``(dist, ind)`` re-ranked by them.
    """

    def __init__(self, metric: str = "euclidean", n_candidates: int = 100, backend: str = "exact",
                 backend_params: dict | None = None):
        self.metric = metric
        self.n_candidates = n_candidates
        self.backend = backend
        self.backend_params = backend_params

    def get_params(self, deep: bool = True) -> dict:
        import inspect

        names = [p for c in type(self).__mro__ if "__init__" in c.__dict__
                 for p in inspect.signature(c.__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in dict.fromkeys(names) if p not in ("args", "kwargs")}

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ---- fitting
    def fit(self, X, y=None, graph: tuple | None = None):
        """Learn the index statistics. ``graph=(dist, ind)``: the index's own kNN graph (self
        excluded, sorted, ``n_candidates`` columns), if already computed — saves one search."""
        _check_metric(self.metric)
        X = _as_matrix(X, "X")
        n = len(X)
        if n < 3:
            raise KexueError(f"hubness reduction needs at least 3 index points, got {n}")
        self.n_index_ = n
        self.X_ = np.asarray(X, dtype=np.float64)
        self.n_candidates_ = int(min(self.n_candidates, n - 1))
        if graph is None:
            graph = kneighbors(self.X_, self.n_candidates_, metric=self.metric, backend=self.backend,
                               backend_params=self.backend_params)
        else:
            gd, gi = (np.asarray(g) for g in graph)
            if gd.shape != gi.shape or gd.shape[0] != n or gd.shape[1] < self.n_candidates_:
                raise KexueError(f"graph must be (dist, ind) of shape ({n}, >= {self.n_candidates_}), got {gd.shape}, {gi.shape}")
            graph = (gd[:, :self.n_candidates_].astype(np.float64), gi[:, :self.n_candidates_].astype(np.int64))
        self.graph_ = graph
        self._fit_stats(self.X_, *self.graph_)
        return self

    def _fit_stats(self, X, dist, ind):
        raise NotImplementedError

    def _check_fitted(self):
        if not hasattr(self, "X_"):
            raise KexueError(f"{type(self).__name__} is not fitted; call fit(X) first")

    # ---- secondary distances
    def transform(self, neigh_dist, neigh_ind, X=None):
        """Secondary distances of a candidate graph, re-ranked: ``(dist, ind)`` sorted by
        (secondary distance, index)."""
        self._check_fitted()
        neigh_dist = np.asarray(neigh_dist, dtype=np.float64)
        neigh_ind = np.asarray(neigh_ind, dtype=np.int64)
        if neigh_dist.shape != neigh_ind.shape or neigh_dist.ndim != 2:
            raise KexueError(f"neigh_dist and neigh_ind must be 2-D of equal shape, got {neigh_dist.shape}, {neigh_ind.shape}")
        if neigh_ind.size and (neigh_ind.min() < 0 or neigh_ind.max() >= self.n_index_):
            raise KexueError(f"neigh_ind refers to points outside the fitted index of {self.n_index_}")
        if X is None and len(neigh_dist) != self.n_index_:
            raise KexueError("without X the graph's rows must be the fitted index points")
        if X is not None:
            X = _as_matrix(X, "X")
            if X.shape != (len(neigh_dist), self.X_.shape[1]):
                raise KexueError(f"X must have shape {(len(neigh_dist), self.X_.shape[1])}, got {X.shape}")
        sec = self._secondary(neigh_dist, neigh_ind, X)
        return _sort_rows(sec, neigh_ind, sec.shape[1])

    def _secondary(self, dist, ind, X):
        raise NotImplementedError

    def kneighbors(self, X=None, n_neighbors: int = 10):
        """Re-ranked kNN of queries ``X`` (None: the index itself, self excluded) from
        ``n_candidates`` primary candidates: ``(secondary_dist, ind)`` of shape (n, n_neighbors)."""
        self._check_fitted()
        if n_neighbors > self.n_candidates_:
            raise KexueError(f"n_neighbors={n_neighbors} exceeds n_candidates={self.n_candidates_}")
        if X is None:
            dist, ind = self.graph_
        else:
            X = _as_matrix(X, "X")
            dist, ind = kneighbors(self.X_, self.n_candidates_, metric=self.metric, backend=self.backend,
                                   queries=X, backend_params=self.backend_params)
        d, i = self.transform(dist, ind, X)
        return d[:, :n_neighbors], i[:, :n_neighbors]

    def k_occurrence(self, X=None, n_neighbors: int = 10) -> np.ndarray:
        """N_k of the index points under the secondary distance."""
        return occurrences(self.kneighbors(X, n_neighbors)[1], self.n_index_)


class MutualProximity(_Reduction):
    """Mutual proximity (Schnitzer et al. 2012): ``MP(x, y) = P(D_x > d_xy, D_y > d_xy)`` where
    ``D_x`` is the distance from x to a random point; secondary distance ``1 - MP``.

    - ``method="gaussian"``: D_x ~ N(μ_x, σ_x²) independently of D_y:
      ``MP = SF_x(d_xy) · SF_y(d_xy)`` with SF the normal survival function.
    - ``method="empirical"``: the joint count over reference points j,
      ``MP = |{j : d_xj > d_xy and d_yj > d_xy}| / n_ref``.

    μ, σ and the reference distances come from ``n_samples`` index points drawn without
    replacement (``None``: all of them, i.e. exact MP; x itself and y are not excluded, which
    changes MP by at most 2/n_ref).
    """

    def __init__(self, method: str = "gaussian", n_samples: int | None = 1000, seed: int = 0, metric: str = "euclidean",
                 n_candidates: int = 100, backend: str = "exact", backend_params: dict | None = None):
        super().__init__(metric, n_candidates, backend, backend_params)
        self.method = method
        self.n_samples = n_samples
        self.seed = seed

    def _ref_dist(self, A):
        """Distances (float64) from rows of A to the reference points, in blocks."""
        A = np.asarray(A, dtype=np.float64)
        R = self.ref_
        if self.metric == "cosine":
            A = _normalise(A)
            return 1.0 - A @ R.T
        sq = (A**2).sum(1)[:, None] + (R**2).sum(1)[None, :] - 2 * A @ R.T
        return np.sqrt(np.maximum(sq, 0))

    def _fit_stats(self, X, dist, ind):
        if self.method not in ("gaussian", "empirical"):
            raise KexueError(f"unknown mutual proximity method {self.method!r}; choose gaussian or empirical")
        n = len(X)
        m = n if self.n_samples is None else min(int(self.n_samples), n)
        rows = np.sort(np.random.default_rng(self.seed).choice(n, m, replace=False)) if m < n else np.arange(n)
        ref = X[rows]
        self.ref_ = _normalise(ref) if self.metric == "cosine" else ref
        Dref = self._ref_dist(X)  # (n, m)
        self.mu_, self.sd_ = Dref.mean(1), Dref.std(1)
        self._Dref = Dref if self.method == "empirical" else None

    def _secondary(self, dist, ind, X):
        from scipy.stats import norm

        if X is None:
            mu_q, sd_q = self.mu_, self.sd_
            Dq = self._Dref
        else:
            Dq = self._ref_dist(X)
            mu_q, sd_q = Dq.mean(1), Dq.std(1)
        if self.method == "gaussian":
            tiny = np.finfo(np.float64).tiny
            sf_q = norm.sf(dist, loc=mu_q[:, None], scale=np.maximum(sd_q, tiny)[:, None])
            sf_y = norm.sf(dist, loc=self.mu_[ind], scale=np.maximum(self.sd_[ind], tiny))
            return 1.0 - sf_q * sf_y
        out = np.empty_like(dist)
        Dy = self._Dref
        for r in range(len(dist)):  # joint count per query row: (c, m) comparisons
            out[r] = 1.0 - np.mean((Dq[r][None, :] > dist[r][:, None]) & (Dy[ind[r]] > dist[r][:, None]), axis=1)
        return out


class LocalScaling(_Reduction):
    """Local scaling (Zelnik-Manor & Perona 2005) and NICDM (Jegou et al. 2010).

    - ``method="standard"``: ``LS(x, y) = 1 - exp(-d_xy² / (σ_x σ_y))``, σ_x = distance from x
      to its ``k``-th nearest neighbour.
    - ``method="nicdm"``: ``d_xy / sqrt(μ_x μ_y)``, μ_x = mean distance to its ``k`` nearest
      neighbours.

    A query's σ / μ is read from its own candidate row (its k first primary distances).
    ``k = 5`` by default, as in scikit-hubness.
    """

    def __init__(self, method: str = "standard", k: int = 5, metric: str = "euclidean", n_candidates: int = 100,
                 backend: str = "exact", backend_params: dict | None = None):
        super().__init__(metric, n_candidates, backend, backend_params)
        self.method = method
        self.k = k

    def _scale(self, dist):
        kk = min(self.k, dist.shape[1])
        s = np.sort(dist, axis=1)[:, :kk]
        return s[:, -1] if self.method == "standard" else s.mean(1)

    def _fit_stats(self, X, dist, ind):
        if self.method not in ("standard", "nicdm"):
            raise KexueError(f"unknown local scaling method {self.method!r}; choose standard or nicdm")
        self.scale_ = np.maximum(self._scale(dist), np.finfo(np.float64).tiny)

    def _secondary(self, dist, ind, X):
        sq = self.scale_ if X is None else np.maximum(self._scale(dist), np.finfo(np.float64).tiny)
        if self.method == "standard":
            return 1.0 - np.exp(-dist**2 / (sq[:, None] * self.scale_[ind]))
        return dist / np.sqrt(sq[:, None] * self.scale_[ind])


class CSLS(_Reduction):
    """Cross-domain similarity local scaling (Conneau et al. 2018):
    ``CSLS(x, y) = 2 s(x, y) - r_x - r_y``, ``r_x`` = mean similarity of x to its ``k`` nearest
    neighbours. The similarity is ``s = cos`` for the cosine metric and ``s = -d`` for Euclidean;
    the secondary distance is ``-CSLS``.
    """

    def __init__(self, k: int = 5, metric: str = "cosine", n_candidates: int = 100, backend: str = "exact",
                 backend_params: dict | None = None):
        super().__init__(metric, n_candidates, backend, backend_params)
        self.k = k

    def _sim(self, dist):
        return 1.0 - dist if self.metric == "cosine" else -dist

    def _r(self, dist):
        kk = min(self.k, dist.shape[1])
        return np.sort(self._sim(dist), axis=1)[:, ::-1][:, :kk].mean(1)

    def _fit_stats(self, X, dist, ind):
        self.r_ = self._r(dist)

    def _secondary(self, dist, ind, X):
        rq = self.r_ if X is None else self._r(dist)
        return rq[:, None] + self.r_[ind] - 2 * self._sim(dist)


class Centering(_Reduction):
    """Centering (Suzuki et al. 2013): subtract the index mean c from every vector and rank by
    cosine distance of the centred vectors, ``1 - <x-c, y-c> / (|x-c| |y-c|)``.

    (For the Euclidean metric centring changes nothing, so this reduction always ranks by the
    centred cosine; candidates come from the primary metric.)
    """

    def _fit_stats(self, X, dist, ind):
        self.center_ = X.mean(0)
        self.Xc_ = _normalise(X - self.center_)

    def _secondary(self, dist, ind, X):
        Q = self.Xc_ if X is None else _normalise(np.asarray(X, np.float64) - self.center_)
        return 1.0 - np.einsum("rd,rcd->rc", Q, self.Xc_[ind])


REDUCTIONS: dict[str, Callable[..., _Reduction]] = {
    "mp": lambda **kw: MutualProximity(method="gaussian", **kw),
    "mp-empirical": lambda **kw: MutualProximity(method="empirical", **kw),
    "ls": lambda **kw: LocalScaling(method="standard", **kw),
    "nicdm": lambda **kw: LocalScaling(method="nicdm", **kw),
    "csls": lambda **kw: CSLS(**kw),
    "centering": lambda **kw: Centering(**kw),
}


def make_reduction(name: str, **kw) -> _Reduction:
    """A reduction by short name: mp, mp-empirical, ls, nicdm, csls, centering."""
    if name not in REDUCTIONS:
        raise KexueError(f"unknown hubness reduction {name!r}; choose from: {', '.join(REDUCTIONS)}")
    return REDUCTIONS[name](**kw)


# ---------------------------------------------------------------------------------------------
# hub-prior latent sampling (SPEC 8.3)


@dataclass
class HubSample:
    """Accepted latents and how they were obtained."""

    z: np.ndarray  # (n, dim) accepted latents
    nk: np.ndarray  # their N_k within their pool
    acceptance_rate: float  # accepted / drawn over all pools used
    n_drawn: int
    n_pools: int


def hub_sample(n: int, dim: int, k: int = 5, t: int = 50, pool: int = 10000, space: Callable | None = None,
               seed: int = 0, max_pools: int = 100, metric: str = "euclidean", backend: str = "exact") -> HubSample:
    """Hubness-prior latent sampling (SPEC 8.3, Liang et al. 2022).

    Repeatedly draw ``pool`` latents ``z ~ N(0, I_dim)``, compute N_k (``k`` nearest neighbours,
    self excluded) among them — in ``space(z)`` if a mapping is given (e.g. a generator's
    intermediate space), else in the latent space — and keep the latents with ``N_k >= t``,
    until ``n`` are accepted. Pools are independent, so the accepted set is a sample of the
    hub-prior distribution. ``acceptance_rate`` = accepted / drawn.
    """
    for name, v in (("n", n), ("dim", dim), ("k", k), ("pool", pool)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise KexueError(f"{name} must be a positive integer, got {v!r}")
    if k >= pool:
        raise KexueError(f"k={k} must be smaller than pool={pool}")
    rng = np.random.default_rng(seed)
    got, nks, drawn = [], [], 0
    for p in range(max_pools):
        z = rng.standard_normal((pool, dim))
        feats = z if space is None else np.asarray(space(z))
        if feats.ndim != 2 or len(feats) != pool:
            raise KexueError(f"space(z) must return a 2-D array with one row per latent, got shape {feats.shape}")
        nk = k_occurrence(feats, k, metric=metric, backend=backend)
        keep = nk >= t
        got.append(z[keep])
        nks.append(nk[keep])
        drawn += pool
        if sum(len(g) for g in got) >= n:
            break
    total = sum(len(g) for g in got)
    if total < n:
        raise KexueError(f"hub_sample accepted only {total} of {n} latents in {max_pools} pools of {pool} "
                         f"(N_k >= {t} is too rare in dim {dim}); lower t or raise max_pools")
    return HubSample(np.concatenate(got)[:n], np.concatenate(nks)[:n], total / drawn, drawn, p + 1)
