"""Hubness reduction (SPEC 8.4).

Reductions are scikit-learn style transformers over kNN graphs: ``fit(X)`` learns the
per-point statistics of the index, ``transform(neigh_dist, neigh_ind, X=None)`` turns a
candidate graph (primary distances) into secondary distances and returns the neighbours
re-ranked by them; ``kneighbors(Q=None, n_neighbors)`` does both from vectors.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kexue.hubness.knn import _as_matrix, _check_metric, _normalise, _sort_rows, kneighbors, occurrences
from kexue.utils import KexueError


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
