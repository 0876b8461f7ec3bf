"""The shared estimator behind every hubness reduction (SPEC 8.4; the formulas are in
:mod:`kexue.hubness.reduction`).

Each reduction is a scikit-learn estimator with the ``KNeighborsTransformer`` contract:

- ``fit(X)`` — ``X`` is either the index vectors (n_index, dim), searched with kexue's kNN
  backends or a built FAISS index passed as ``backend``; or a sparse kNN distance graph of the
  index against itself (from ``KNeighborsTransformer(mode="distance")``). It learns each index
  point's statistic from its nearest index neighbours (itself excluded): on the exact backend
  from float32 BLAS distances to all other index points (:func:`kexue.hubness.screen.nearest_rows`,
  ~1e-6 relative error; the statistic reads only its ``_width()`` nearest); on an approximate
  backend or a user's FAISS index from a self-search of that depth; from the graph's rows when
  fitted on a graph or given ``graph=``.
- ``transform(X)`` — new queries (vectors, or their sparse graph against the index) → a CSR graph
  (n_queries, n_index) of **secondary distances** over each query's ``n_candidates`` primary
  candidates. A query's statistic comes from its own candidate row (on the exact backend the
  query's float32-screened candidates, :func:`kexue.hubness.screen.screened`, with their float32
  distances); an index point's from the fitted index. So ``make_pipeline(KNeighborsTransformer(...), MutualProximity(),
  KNeighborsClassifier(metric="precomputed"))`` works.
- ``kneighbors(X=None, n_neighbors)`` — ``(secondary_dist, ind)`` re-ranked; ``X=None`` is the
  in-sample path (each index point against the others: the exact float64 self-kNN graph,
  searched on first use). ``rerank(dist, ind, X=None)`` re-ranks a
  candidate graph computed elsewhere.

Secondary distances are computed for the whole candidate block at once (no per-query Python).
``n_samples``: an int estimates the index statistics from a random sample of that many index
points (:func:`kexue.hubness.graph.sampled_stats`: ``n_index × n_samples`` distances instead of
``n_index² / 2``); ``None`` reads exact rows; ``"auto"`` (the default) samples ``max(2000,
n_index // 20)`` points on the exact backend or a flat FAISS index from 8,000 index points on
(accuracy cost and timings: docs/hubness.md, issue 19); the size used is ``n_samples_``. A graph
given to ``fit`` is read exactly. ``reference=`` (``fit``, and per call): the index side from a
reference set instead (:mod:`kexue.hubness.reference`, issue 28).

Working memory (issue 29): statistics and secondary distances are made ``block_rows`` query rows
at a time (None: ``2^21 / n_candidates`` rows, 16 MB per float64 temporary). In sample on an
approximate backend or a FAISS index, the ``n_index × n_candidates`` candidate graph (and fit's
self-search; on hnsw/ivf/faiss the rows read from a reference set) goes to an anonymous temporary file and is
read back in those blocks (:mod:`kexue.hubness.stream`), as does a ``graph=`` given on disk: only
the statistics, a block and the ``n_index × n_neighbors`` result stay in memory.
"""

from __future__ import annotations

from numbers import Integral
import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import InvalidParameterError, Interval, StrOptions

from kexue import validate
from kexue.hubness import graph as G
from kexue.hubness import reference as REF
from kexue.hubness import screen as S
from kexue.hubness.arrays import check_is_fitted, pow2_exponent, release_pages
from kexue.hubness.knn import BACKENDS, METRICS, occurrences, streamed_screening
from kexue.hubness.rerank import rerank as rerank_blocks
from kexue.utils import KexueError

_TINY = np.finfo(np.float64).tiny
_BLOCK = 1 << 21  # candidate entries (query rows × n_candidates) whose secondary distances are made at once
AUTO_SAMPLE = 2000  # the smallest sample n_samples="auto" draws (see _Reduction._sample_size)
AUTO_K = 5  # k="auto" without a reference set: each statistic over the 5 nearest (see _Reduction._k)


def _store(est, params: dict) -> None:
    """Store the ``__init__`` arguments unchanged, as scikit-learn requires (``params = locals()``)."""
    for name, value in params.items():
        if name not in ("self", "__class__"):
            setattr(est, name, value)


class _Reduction(TransformerMixin, BaseEstimator):
    """Shared fitting, searching, persistence; subclasses define the statistic and the formula."""

    stats_: tuple[np.ndarray, ...]  # fitted statistics (empty for methods without any)

    _parameter_constraints: dict = {
        "n_candidates": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions(set(METRICS))],
        "backend": "no_validation",  # a name or a built FAISS index: checked in _check_params
        "backend_params": [dict, None],
        "n_samples": [Interval(Integral, 2, None, closed="left"), StrOptions({"auto"}), None],
        "random_state": [Interval(Integral, 0, None, closed="left")],
        "block_rows": [Interval(Integral, 1, None, closed="left"), None],
    }
    _needs_vectors = False  # True: the formula reads the vectors, a graph alone is not enough
    # ties in the secondary distance go to the nearer candidate (see _sort); False for a formula whose
    # values are discrete by design (empirical MP's counts), whose ties keep the id order
    _ties_by_primary = True

    # ---- hooks
    def _width(self, reference: bool = False) -> int:
        """How many nearest distances of a point its statistic reads (``reference``: when the index
        side comes from a reference set)."""
        return self.n_candidates_

    def _k(self, reference: bool) -> int:
        """``k`` of LS, NICDM, CSLS and NNN. ``"auto"``: 5 with index-internal statistics (the SPEC
        8.4 random-split setting); with a reference set ``n_candidates`` on both sides — q's whole
        candidate row, x's as many nearest reference points (at most all) — kiez's definition.
        Across two populations each statistic should describe the neighbourhood the re-ranking
        happens in, not a handful of bank or batch queries (a noisy estimate: on issue 28's shifted
        settings k = 5 lost accuracy against k = 100 in 14 of 18 rows)."""
        if self.k != "auto":
            return self.k
        return self.n_candidates_ if reference else min(AUTO_K, self.n_candidates_)

    def _stats(self, dist: np.ndarray, width: int) -> tuple:
        """Per-row statistics from sorted distances (first ``width`` columns)."""
        return ()

    def _secondary(self, dist, ind, q_stats, x_stats, Q) -> np.ndarray:
        """Secondary distances of candidates ``ind`` at primary ``dist``: ``q_stats`` the queries'
        statistics, ``x_stats`` the index points' (indexed by ``ind``)."""
        raise NotImplementedError

    # ---- fitting
    def _check_params(self):
        try:
            self._validate_params()
        except InvalidParameterError as e:
            raise KexueError(str(e).replace("\n", " ")) from None
        if isinstance(self.backend, str):
            validate.choice(self.backend, BACKENDS, "backend")
        elif not G.is_faiss_index(self.backend):
            raise KexueError(f"backend must be one of {', '.join(BACKENDS)} or a built FAISS index; "
                             f"got {type(self.backend).__name__}")

    def fit(self, X, y=None, graph: tuple | None = None, reference=None):
        """Learn each index point's statistic. ``X``: index vectors or a sparse self-kNN graph; a
        memory map (``np.load(path, mmap_mode="r")``) is kept as ``X_`` and read in blocks, as are
        memory-mapped queries and reference sets, with the in-memory results bit for bit.
        ``graph=(dist, ind)``: the index's own kNN graph (self excluded, sorted, at least
        ``n_candidates`` columns) if already computed — saves the search.

        ``reference``: None (each index point's statistic from its nearest other index points), or
        an array of reference vectors in the index's space — a bank of queries, any size — from
        whose nearest points each index point's statistic is read instead (CSLS's ``r_T`` of Conneau
        et al. 2018, kiez's ``fit(source, target)``, NNN's reference set; :mod:`kexue.hubness.reference`).
        An int ``n_samples`` then draws that many reference rows at random. ``reference="queries"``:
        transductive — every query batch is its own reference (nothing learned here but the index;
        on the exact backend one float32 pass per batch gives the candidates and the index side),
        as ``kneighbors(Q, reference="queries")`` does for one call."""
        self._check_params()
        if sparse.issparse(X):
            if reference is not None:
                raise KexueError("a reference set needs the index vectors; fit on the embeddings, not on a kNN graph")
            return self._fit_graph(X)
        X = G.vectors(X, metric=self.metric)  # a memory map stays one (cosine: zero rows refused here)
        n = len(X)
        if n < 2:
            raise KexueError(f"a hubness reduction needs at least 2 index points; got {n} sample")
        if not isinstance(self.backend, str):
            G.check_faiss_index(self.backend, X, self.metric)
        self.fit_mode_, self.n_features_in_, self.n_index_ = "vectors", X.shape[1], n
        self.n_candidates_ = min(self.n_candidates, n - 1)  # no point has more neighbours than this
        self.X_ = X
        # distances beyond 2^±40 (coordinates near the ends of the float range): the formulas read them
        # divided by an exact power of two, so squares and variances neither overflow nor vanish
        self.exp_ = 0 if self.metric == "cosine" or not isinstance(self.backend, str) else \
            pow2_exponent(G.widest_range(X))
        self._check_width(self.n_candidates_)
        self._graph, self._screen = None, None
        self._screening()  # built now, so transform never changes the estimator
        if graph is not None:
            self._graph = G.given_graph(graph, n, self.n_candidates_)
        w = self._width()
        self.n_reference_, self.transductive_ = None, False
        if reference is not None:
            return REF.fit(self, reference)
        self.n_samples_ = self._sample_size(n) if w and self._graph is None else None
        if w == 0:
            self.stats_ = ()
        elif self._graph is not None:
            self.stats_ = self._scaled_stats(self._graph[0], w)
        elif self.n_samples_ is not None:
            self.stats_ = G.sampled_stats(self._scaled_stats, X, w, self.metric, self.n_samples_, self.random_state,
                                          self._screening())
        elif self._exact():
            self.stats_ = self._scaled_stats(S.nearest_rows(X, w, self.metric, screen=self._screening()), w)
        else:  # an approximate backend or the user's FAISS index: a self-search, w neighbours deep, on disk
            self.stats_ = self._scaled_stats(self._search(None, w, on_disk=True)[0], w)
        return self

    def _sample_size(self, n: int) -> int | None:
        """How many index points ``fit`` estimates the statistics from (None: all, exactly). "auto":
        ``s = max(AUTO_SAMPLE, n // 20)`` when ``n ≥ 4 s``, i.e. when the ``n × s`` sampled
        distances are at most half of the ``n² / 2`` of one triangle, on the backends whose
        self-search is quadratic: the exact one and a user's flat FAISS index. Approximate backends
        search themselves below quadratic cost, so "auto" leaves them exact."""
        if self.n_samples == "auto":
            s = max(AUTO_SAMPLE, n // 20)
            return s if (self._exact() or G.is_flat_faiss(self.backend)) and n >= 4 * s else None
        return self.n_samples if self.n_samples is not None and self.n_samples < n else None

    def _fit_graph(self, X):
        if self._needs_vectors:
            raise KexueError(f"{type(self).__name__} reads the vectors: sparse input (a kNN graph) is not "
                             "supported; fit it on the embeddings")
        dist, ind = G.graph_rows(X, "the index graph", drop_diagonal=True)
        self.fit_mode_, self.n_index_ = "graph", X.shape[1]
        self.n_features_in_ = X.shape[1]
        self.n_candidates_ = dist.shape[1]
        self._check_width(dist.shape[1])
        self._graph, self.X_, self._screen = (dist, ind), None, None
        self.n_samples_, self.n_reference_, self.transductive_ = None, None, False
        self.exp_ = pow2_exponent(float(dist.max()))
        self.stats_ = self._scaled_stats(dist, self._width())
        return self

    def _check_width(self, c: int):
        k = getattr(self, "k", None)
        if k is not None and k != "auto" and k > c:
            raise KexueError(f"k={k} exceeds the {c} candidates per point; lower k or raise n_candidates")

    def _search(self, Q, c, on_disk: bool = False):
        """The ``c`` nearest index points of queries ``Q`` (None: of the index points, self excluded).
        New queries on the exact backend: its float32 screening without the float64 re-check
        (:func:`kexue.hubness.knn.screened`) — the candidates' distances feed statistics and
        secondary distances whose index side is float32 already (:func:`G.nearest_rows`)."""
        if Q is not None and self._exact():
            return S.screened(None, Q, c, self.metric, screen=self._screening())
        return G.search(self.X_, Q, c, self.metric, self.backend, self.backend_params, self.random_state,
                        block_rows=self.block_rows, on_disk=on_disk)

    def _exact(self) -> bool:
        return isinstance(self.backend, str) and self.backend == "exact"

    def _screening(self):
        """The index side of the float32 screening (exact backend, vector mode; else None), built by
        ``fit``/``load`` and reused by every query batch: streamed passes over ``X_`` give the
        centring and the squared norms, and the screening rows are made a block at a time when read
        (:func:`kexue.hubness.knn.streamed_screening`), so a memory-mapped index stays on disk."""
        if getattr(self, "_screen", None) is None and self._exact() and self.X_ is not None:
            self._screen = streamed_screening(self.X_, self.metric)
        return self._screen

    def _index_graph(self):
        """The index's own candidate graph (self excluded) for the in-sample path, searched on first
        use and kept (``fit`` itself reads only the statistics' ``_width()`` nearest)."""
        if self._graph is None:
            self._graph = self._search(None, self.n_candidates_, on_disk=True)
        return self._graph

    def __sklearn_is_fitted__(self):
        return hasattr(self, "stats_")

    # ---- queries
    def _candidates(self, X):
        """``(dist, ind, Q)`` for queries ``X`` (vectors, a sparse graph, or None = in-sample)."""
        check_is_fitted(self)
        if X is None:
            d, i = self._index_graph() if self.fit_mode_ == "vectors" else self._graph
            return d, i, self.X_
        if sparse.issparse(X):
            if self._needs_vectors:
                raise KexueError(f"{type(self).__name__} reads the vectors: sparse input (a kNN graph) is not "
                                 "supported; pass the query vectors")
            if X.shape[1] != self.n_index_:
                raise KexueError(f"the query graph has {X.shape[1]} columns but the index has {self.n_index_} points")
            d, i = G.graph_rows(X, "the query graph", drop_diagonal=False)
            self._check_width(d.shape[1])
            return d, i, None
        Q = self._query_vectors(X)
        d, i = self._search(Q, self.n_candidates_)
        return d, i, Q

    def _query_vectors(self, X) -> np.ndarray:
        if self.fit_mode_ == "graph":
            raise KexueError(f"{type(self).__name__} was fitted on a graph; pass the queries' graph against the index")
        Q = G.vectors(X, metric=self.metric)
        if Q.shape[1] != self.n_features_in_:
            raise KexueError(f"X has {Q.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return Q

    def _reference_of(self, reference):
        """The reference a call uses: its own, else "queries" for an estimator fitted transductively."""
        return REF.QUERIES if reference is None and getattr(self, "transductive_", False) else reference

    def _query_pass(self, X, reference, keep=None):
        """``(dist, ind, Q, x_stats)`` for queries ``X``; ``x_stats`` None unless the query batch is the
        reference on the exact backend: then one float32 pass gives both the queries' candidates
        and each index point's nearest queries (:func:`kexue.hubness.screen.screened`). ``keep``: the
        caller reads only each row's ``keep`` first by secondary distance (:meth:`kneighbors`); a
        reduction may then return fewer candidates, never a different top ``keep`` (NNN does)."""
        if (isinstance(reference, str) and reference == REF.QUERIES and X is not None and not sparse.issparse(X)
                and self._width() and self._exact() and getattr(self, "fit_mode_", None) == "vectors"):
            check_is_fitted(self)
            Q = self._query_vectors(X)
            w = REF.width(self, len(Q))
            d, i, rows = S.screened(None, Q, self.n_candidates_, self.metric, screen=self._screening(), ref_width=w)
            return d, i, Q, self._scaled_stats(rows, w)
        return (*self._candidates(X), None)

    def _scaled(self, A):
        """Distances (or vectors) divided by ``2^exp_`` (see ``fit``); unchanged when ``exp_`` is 0."""
        e = getattr(self, "exp_", 0)
        return np.ldexp(A, -e) if e and A is not None else A

    def _rows_per_block(self, c: int) -> int:
        """Query rows whose ``c`` candidates are processed at once: ``block_rows``, else 2^21 / c."""
        rows = getattr(self, "block_rows", None)
        return int(rows) if rows is not None else max(1, _BLOCK // max(1, c))

    def _scaled_stats(self, dist, width):
        """The statistics of sorted rows ``dist`` (an array or an on-disk graph), a block of rows at a
        time (they work row by row), so that a large graph's rows make no n × width float64 temporaries."""
        step = self._rows_per_block(dist.shape[1])
        parts = [self._stats(self._scaled(dist[s:s + step]), width) for s in range(0, len(dist), step)]
        return tuple(np.concatenate(p) for p in zip(*parts))

    def _unscaled(self, sec):
        """Secondary distances back in the primary distance's units (only where they carry them)."""
        return sec

    def _reference_stats(self, R: np.ndarray) -> tuple:
        """The index points' statistics from their nearest rows of reference ``R``."""
        w = REF.width(self, len(R))
        return self._scaled_stats(REF.rows(self.X_, R, w, self.metric, self.backend, self.backend_params,
                                           self.random_state, self._screening(), self.block_rows), w)

    def _reduce(self, dist, ind, Q, in_sample: bool, finish, reference=None, x_stats=None, first: int = 0) -> list:
        """``finish(secondary, dist, ind)`` of each block of rows (their list): statistics and secondary
        distances a block of queries at a time (every formula works row by row), so the float64
        temporaries are a block's, not n_queries × n_candidates each; ``Q`` is sliced per block too.
        ``dist``/``ind`` may be on disk (read a block at a time); ``first``: the row of the index
        their first row is, in sample (the fitted statistics are read from there)."""
        reference = self._reference_of(reference)
        x_stats = REF.index_stats(self, reference, Q, in_sample) if x_stats is None else x_stats
        # an index point searched in-sample is its own query: with index-internal statistics it is
        # read from the fitted rows; with a reference, the query side still comes from its candidates
        with_ref = reference is not None or getattr(self, "n_reference_", None) is not None
        own = in_sample and not with_ref
        w = min(self._width(with_ref), dist.shape[1])
        step = self._rows_per_block(dist.shape[1])
        out = []
        for s in range(0, len(dist), step):
            d, i = self._scaled(dist[s:s + step]), ind[s:s + step]
            q_stats = tuple(a[first + s:first + s + step] for a in self.stats_) if own else self._stats(d, w)
            sec = self._unscaled(self._secondary(d, i, q_stats, x_stats, None if Q is None else Q[s:s + step]))
            out.append(finish(sec, dist[s:s + step], i))
            release_pages(Q)  # a memory map's block of queries (kexue.io): out of the resident set once used
        return out

    def transform(self, X, reference=None):
        """CSR graph (n_queries, n_index) of secondary distances over each query's candidates.
        Values are shifted by a per-row constant where a formula can go negative (CSLS), so that
        precomputed-distance estimators accept the graph; each row's ranking is unchanged.
        ``reference``: as in :meth:`kneighbors`."""
        reference = self._reference_of(reference)
        dist, ind, Q, xs = self._query_pass(X, reference)

        def shifted(sec, d, i):
            low = sec.min(1, keepdims=True)
            return np.where(low < 0, sec - low, sec)

        parts = self._reduce(dist, ind, Q, False, shifted, reference=reference, x_stats=xs)
        return G.to_graph(np.concatenate(parts), ind[0:len(ind)], self.n_index_)  # X=None: the graph's ids, read whole

    def rerank(self, dist, ind, X=None, reference=None, n_neighbors: int | None = None):
        """Re-rank a candidate graph ``(dist, ind)`` (n_queries, c) computed elsewhere: ``X`` the
        query vectors (None: row i is index point i, in-sample). Returns ``(secondary, ind)`` sorted,
        the ``n_neighbors`` first of each row (None: all c). ``reference``: as in :meth:`kneighbors`.
        The graph is read, checked and re-ranked ``block_rows`` rows at a time, so it may be on disk
        (:func:`kexue.hubness.stream.disk_graph`, as ``kneighbors(..., out=)`` writes it)."""
        return rerank_blocks(self, dist, ind, X, reference, n_neighbors)

    def kneighbors(self, X=None, n_neighbors: int = 10, reference=None):
        """The ``n_neighbors`` nearest by secondary distance among each query's ``n_candidates``
        primary candidates: ``(secondary_dist, ind)`` sorted; ``X=None``: the index itself.

        ``reference`` (for this call only; the fitted statistics are kept): None — the index side as
        fitted; ``"queries"`` — each index point's statistic from its nearest points of this query
        batch ``X`` (transductive, kiez's setting); an array — from its nearest rows of that array."""
        reference = self._reference_of(reference)
        dist, ind, Q, xs = self._query_pass(X, reference, keep=n_neighbors)
        validate.integer(n_neighbors, "n_neighbors", 1)
        if n_neighbors > dist.shape[1]:
            raise KexueError(f"n_neighbors={n_neighbors} exceeds the {dist.shape[1]} candidates; raise n_candidates")
        return self._sorted(dist, ind, Q, X is None, n_neighbors, reference, xs)

    def _sorted(self, dist, ind, Q, in_sample, k, reference, x_stats=None, first: int = 0, out=None):
        """``(secondary, ind)``: each row's ``k`` first by secondary distance (:func:`_sort`), a block at
        a time, stored into ``out`` (new arrays by default) as each block is done."""
        out = (np.empty((len(dist), k)), np.empty((len(dist), k), np.int64)) if out is None else out
        done = [0]

        def store(sec, d, i):
            a = done[0]
            out[0][a:a + len(sec)], out[1][a:a + len(sec)] = _sort(sec, i, k, d if self._ties_by_primary else None)
            done[0] = a + len(sec)

        self._reduce(dist, ind, Q, in_sample, store, reference=reference, x_stats=x_stats, first=first)
        return out

    def k_occurrence(self, X=None, n_neighbors: int = 10, reference=None) -> np.ndarray:
        """N_k of the index points under the secondary distance (queries ``X``; None: in-sample)."""
        return occurrences(self.kneighbors(X, n_neighbors, reference=reference)[1], self.n_index_)

    # ---- persistence (kexue.hubness.reduction_io)
    def save(self, path) -> None:
        """One .safetensors file: parameters, fitted statistics and (vector mode) the index vectors."""
        from kexue.hubness.reduction_io import save_reduction

        save_reduction(self, path)

    def _extra_tensors(self) -> dict:
        return {}

    @classmethod
    def load(cls, path):
        """The reduction saved by :meth:`save`, ready to transform new queries."""
        from kexue.hubness.reduction_io import load_reduction

        return load_reduction(cls, path)

    def _load_extra(self, tensors: dict) -> None:
        pass


def _sort(sec, ind, k, dist=None):
    """The ``k`` smallest secondary distances per row; ties go to the smaller primary distance
    ``dist`` (if given), then the lower id. For a continuous formula a tie is float64 running out:
    MP's ``1 - SF_q · SF_x`` and LS's ``1 - exp(-t)`` round to 1.0 below 2^-53 (19 % of MP's
    SmolLM2 bank pairs, issue 28), where the id order made hubs of low ids (R@1 0.453 vs 0.459)."""
    order = np.lexsort((ind, sec) if dist is None else (ind, dist, sec), axis=1)[:, :k]
    return np.take_along_axis(sec, order, 1), np.take_along_axis(ind, order, 1)
