"""Hubness reduction (SPEC 8.4): mutual proximity, local scaling / NICDM, CSLS, NNN, centering.

Every reduction is a scikit-learn transformer (see :mod:`kexue.hubness.reduction_base` for the
contract): ``fit`` on the index (vectors or a sparse self-kNN graph), ``transform`` new queries
into a sparse graph of secondary distances, ``kneighbors`` for re-ranked neighbours,
``save``/``load``. Notation: ``d = d(q, x)`` the primary distance of query ``q`` to candidate
``x``; "q's row" = q's ``n_candidates`` nearest index points, sorted; "x's row" = x's nearest
index points, itself excluded (among all of them, or estimated from a sample of them: ``n_samples``,
by default "auto", which samples from 8,000 index points on; see :mod:`kexue.hubness.reduction_base`).

Which distances: on the default exact backend, x's row holds float32 BLAS distances from x to the
other index points (:func:`kexue.hubness.screen.nearest_rows`), and a new query's row holds its
float32-screened candidates with their float32 distances (:func:`kexue.hubness.screen.screened`):
relative errors ~1e-6, which reorder only secondary distances equal to that precision. The
in-sample path (``X=None``) reads the exact float64 self-kNN graph for its candidates. Other
backends and sparse graphs supply both rows themselves.

With a reference set (``fit(X, reference=R)``; ``reference="queries"`` per call) x's row is its
nearest rows of ``R`` instead of its nearest index points (:mod:`kexue.hubness.reference`), as
CSLS (Conneau et al. 2018), kiez and NNN define it for queries that differ from the index.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral, Real

import numpy as np
from scipy import sparse
from scipy.special import ndtr
from sklearn.utils._param_validation import Interval, StrOptions

from kexue import validate
from kexue.hubness import graph as G
from kexue.hubness import knn as K
from kexue.hubness import reference as REF
from kexue.hubness.arrays import check_is_fitted
from kexue.hubness import screen as S
from kexue.hubness.knn import _normalise, rows64
from kexue.hubness.reduction_base import _TINY, _Reduction, _store

_K = [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})]  # k of LS, NICDM, CSLS, NNN
_CHUNK = 1 << 22  # elements of a gathered candidate block processed at once (32 MB of float64)


class MutualProximity(_Reduction):
    """Mutual proximity (Schnitzer et al. 2012): ``MP(q, x) = P(D_q > d, D_x > d)``, secondary
    distance ``1 - MP``; ``D_p`` is the distance from p to a random point of p's neighbourhood.
    With a reference set (``fit(X, reference=R)``, ``kneighbors(Q, reference="queries")``), x's
    neighbourhood is its ``n_candidates`` nearest reference points (Gaussian method only).

    - ``method="gaussian"``: ``D_q ~ N(μ_q, σ_q²)`` independent of ``D_x ~ N(μ_x, σ_x²)``, so
      ``MP = SF_q(d) · SF_x(d)`` (SF the normal survival function). μ_q, σ_q: mean and standard
      deviation of q's ``n_candidates`` candidate distances (its own row); μ_x, σ_x: the same over
      x's ``n_candidates`` nearest index points (its distances to all other index points, or
      estimated from a sample of them, ``n_samples``), learned by ``fit``. Queries and index
      points are thus modelled over the same fraction of their distance distributions.
    - ``method="empirical"``: the joint count over q's candidates ``j``:
      ``MP = |{j : d(q, j) > d and d(x, j) > d}| / n_candidates``; ``d(q, j)`` from q's row,
      ``d(x, j)`` computed from the vectors at query time (needs vectors, not a graph).
    """

    _parameter_constraints = {**_Reduction._parameter_constraints, "method": [StrOptions({"gaussian", "empirical"})]}

    def __init__(self, method: str = "gaussian", n_candidates: int = 100, metric: str = "euclidean",
                 backend="exact", backend_params: dict | None = None, n_samples: int | str | None = "auto",
                 random_state: int = 0,
                 block_rows: int | None = None):
        _store(self, locals())

    @property
    def _needs_vectors(self):
        return self.method == "empirical"

    @property
    def _ties_by_primary(self):  # empirical MP counts over c candidates: its equal counts keep the id order
        return self.method == "gaussian"

    def _width(self, reference=False):
        return 0 if self.method == "empirical" else self.n_candidates_

    def _stats(self, dist, width):
        if self.method == "empirical":
            return ()
        d = dist[:, :width]
        return d.mean(1), np.maximum(d.std(1), _TINY)

    def _secondary(self, dist, ind, q_stats, x_stats, Q):
        if self.method == "gaussian":
            (mq, sq), (mx, sx) = q_stats, x_stats
            return 1.0 - ndtr((mq[:, None] - dist) / sq[:, None]) * ndtr((mx[ind] - dist) / sx[ind])
        # the candidates' rows, made from X_ a gather at a time (a memory map stays on disk); dist is scaled too
        A = G.rows_of(self.X_, _normalise if self.metric == "cosine" else self._scaled)
        out = np.empty_like(dist)
        c = dist.shape[1]
        step = max(1, _CHUNK // (c * max(c, A.shape[1])))
        for s in range(0, len(dist), step):  # blocks of queries, each fully vectorised
            C = A[ind[s:s + step]]  # (b, c, dim): the candidates
            dxj = _block_distances(C, self.metric)  # (b, c, c): candidate x to candidate j
            d = dist[s:s + step]
            out[s:s + step] = 1.0 - ((d[:, None, :] > d[:, :, None]) & (dxj > d[:, :, None])).mean(2)
        return out


def _block_distances(C: np.ndarray, metric: str) -> np.ndarray:
    """Distances among the rows of each block ``C[b]`` (already unit rows for cosine)."""
    G = np.matmul(C, C.transpose(0, 2, 1))
    if metric == "cosine":
        return 1.0 - G
    sq = np.einsum("bcd,bcd->bc", C, C)
    return np.sqrt(np.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * G, 0.0))


class LocalScaling(_Reduction):
    """Local scaling (Zelnik-Manor & Perona 2005) and NICDM (Jegou et al. 2010).

    - ``method="standard"``: ``LS(q, x) = 1 - exp(-d² / (σ_q σ_x))``; σ_q = distance from q to
      its ``k``-th candidate (its own row), σ_x = distance from x to its ``k``-th nearest other
      index point (learned by ``fit`` from x's distances to all other index points, or to a
      sample of them: ``n_samples``).
    - ``method="nicdm"``: ``d / sqrt(μ_q μ_x)``; μ = mean distance to the ``k`` nearest, q's from
      its row, x's from its distances to all other index points or a sample (learned by ``fit``).

    With a reference set (``fit(X, reference=R)``, ``kneighbors(Q, reference="queries")``), σ_x and
    μ_x come from x's ``k`` nearest reference points instead of index points.

    ``k`` must not exceed ``n_candidates``. With a sample (``n_samples``) the index side reads a wider window
    of the sample (at least its 40 nearest points), calibrated on the sample points' exact rows
    so that σ_x estimates the k-th neighbour distance (:func:`kexue.hubness.graph.sampled_stats`).
    """

    _parameter_constraints = {**_Reduction._parameter_constraints, "method": [StrOptions({"standard", "nicdm"})],
                              "k": _K}

    def __init__(self, method: str = "standard", k: int | str = "auto", n_candidates: int = 100,
                 metric: str = "euclidean",
                 backend="exact", backend_params: dict | None = None, n_samples: int | str | None = "auto",
                 random_state: int = 0,
                 block_rows: int | None = None):
        _store(self, locals())

    def _width(self, reference=False):
        return self._k(reference)

    def _stats(self, dist, width):
        s = dist[:, width - 1] if self.method == "standard" else dist[:, :width].mean(1)
        return (np.maximum(s, _TINY),)

    def _secondary(self, dist, ind, q_stats, x_stats, Q):
        sq, sx = q_stats[0][:, None], x_stats[0][ind]
        if self.method == "standard":
            return -np.expm1(-dist**2 / (sq * sx))
        return dist / np.sqrt(sq * sx)


class _MeanSimilarity:
    """The statistic CSLS and NNN share: a point's mean similarity to its ``k`` nearest points
    (``s = 1 - d`` for cosine, ``s = -d`` for Euclidean); their secondary distances are linear in
    d, so an exactly rescaled search (``exp_``) scales back by the same power of two."""

    def _sim(self, dist):
        return 1.0 - dist if self.metric == "cosine" else -dist

    def _width(self, reference=False):
        return self._k(reference)

    def _stats(self, dist, width):
        return (self._sim(dist[:, :width]).mean(1),)

    def _unscaled(self, sec):
        return np.ldexp(sec, self.exp_) if getattr(self, "exp_", 0) else sec


class CSLS(_MeanSimilarity, _Reduction):
    """Cross-domain similarity local scaling (Conneau et al. 2018):
    ``CSLS(q, x) = 2 s(q, x) - r_q - r_x``, secondary distance ``-CSLS``; ``s = 1 - d`` (cosine)
    or ``s = -d`` (Euclidean). ``r_q`` = mean similarity of q to its ``k`` first candidates (its
    own row), ``r_x`` = mean similarity of x to its ``k`` nearest other index points (learned by
    ``fit`` from x's distances to all other index points, or to a sample of them: ``n_samples``).
    With a reference set — ``fit(X, reference=R)`` or ``kneighbors(Q, reference="queries")`` —
    ``r_x`` is the mean similarity of x to its ``k`` nearest reference points: Conneau et al.'s
    ``r_T(x)``, the neighbourhood of a target in the *source* (query) space, which is this
    class's documented meaning whenever a reference is given.
    """

    _parameter_constraints = {**_Reduction._parameter_constraints, "k": _K}

    def __init__(self, k: int | str = "auto", n_candidates: int = 100, metric: str = "cosine", backend="exact",
                 backend_params: dict | None = None, n_samples: int | str | None = "auto", random_state: int = 0,
                 block_rows: int | None = None):
        _store(self, locals())

    def _secondary(self, dist, ind, q_stats, x_stats, Q):
        return q_stats[0][:, None] + x_stats[0][ind] - 2.0 * self._sim(dist)


FUSED_BYTES = 256 << 20  # NNN, transductive: one queries × index float32 product up to this size


class NNN(_MeanSimilarity, _Reduction):
    """Nearest Neighbor Normalization (Chowdhury et al., EMNLP 2024): the score of candidate x for
    query q is ``s(q, x) - alpha · r_x``, secondary distance ``alpha · r_x - s(q, x)``; ``s = 1 - d``
    (cosine: the inner product of unit vectors) or ``s = -d`` (Euclidean); ``r_x`` = mean similarity
    of x to its ``k`` nearest reference points — the reference set (a bank of queries) passed to
    ``fit(X, reference=R)`` or ``kneighbors(Q, reference="queries")``; without one, x's ``k``
    nearest other index points (as the other reductions). Only the index side is corrected: the
    query's own statistic is not used.

    Candidates: on the exact backend, new query vectors (``kneighbors``, ``transform``) take the
    ``n_candidates`` best by this score over the *whole* index (one float32 BLAS pass, as the
    exact backend's screening), as NNN is defined and as the PyPI package
    ``nnn-retrieval`` (MIT licence) ranks; the correction is linear in s, so an index point beyond
    the nearest ``n_candidates`` can win. Other backends, ``rerank`` and the in-sample path re-score
    the ``n_candidates`` nearest by primary distance.
    """

    _parameter_constraints = {**_Reduction._parameter_constraints, "k": _K,
                              "alpha": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, alpha: float = 0.5, k: int | str = "auto", n_candidates: int = 100, metric: str = "cosine",
                 backend="exact", backend_params: dict | None = None, n_samples: int | str | None = "auto",
                 random_state: int = 0,
                 block_rows: int | None = None):
        _store(self, locals())

    def _secondary(self, dist, ind, q_stats, x_stats, Q):
        return self.alpha * x_stats[0][ind] - self._sim(dist)

    def _unscaled(self, sec):
        return np.ldexp(sec, self.exp_) if getattr(self, "exp_", 0) else sec  # linear in d (Euclidean)

    def _query_pass(self, X, reference, keep=None):
        if X is None or sparse.issparse(X) or not self._exact() or getattr(self, "fit_mode_", None) != "vectors":
            return super()._query_pass(X, reference)
        check_is_fitted(self)
        Q = self._query_vectors(X)
        reference = self._reference_of(reference)
        screen = self._screening()
        Qa, qsq = screen.queries(Q, self.metric)  # made a block at a time (a memory map stays on disk)
        keep = keep if isinstance(keep, Integral) and not isinstance(keep, bool) and keep >= 1 else None
        few = (keep, qsq)
        if isinstance(reference, str) and reference == REF.QUERIES and len(Q) * self.n_index_ * 4 <= FUSED_BYTES:
            dist, ind, xs = self._fused(Qa, REF.width(self, len(Q)), few)
            return dist, ind, Q, xs
        xs = REF.index_stats(self, reference, Q, in_sample=False)
        XaT = self._index_rows32().T
        return (*self._best(Qa, lambda s: Qa[s] @ XaT, xs[0], few), Q, xs)

    def _index_rows32(self) -> np.ndarray:
        """The float32 screening rows of the whole index, which NNN scores for every query: made a
        block at a time (no float64 copy of a memory-mapped index), a float32 array of the index's size
        (an index in memory has them already: no copy)."""
        Xa = self._screening().Xa
        if isinstance(Xa, np.ndarray):
            return Xa
        out = np.empty(Xa.shape, np.float32)
        b = K.stream_rows(Xa.shape[1])
        for s in range(0, len(out), b):
            out[s:s + b] = Xa[s:s + b]
        return out

    def _key(self, D, r):
        """alpha r_x - s(q, x) up to a constant per call, from the screening's squared distances ``D``
        (its units: 2^exp) with r in the statistic's units (2^exp_): s = 1 - D/2 (cosine, unit rows),
        s = -d (Euclidean)."""
        screen = self._screening()
        if self.metric == "cosine":
            return (self.alpha * r).astype(np.float32) + np.float32(0.5) * D
        d = np.maximum(D, 0)
        np.sqrt(d, out=d)
        e = screen.exp - self.exp_
        return (self.alpha * r).astype(np.float32) + (np.ldexp(d, e) if e else d)

    def _best(self, Qa, products, r, few=(None, None)):
        """Each query's ``n_candidates`` best index points by NNN's score over the whole index:
        ``(dist, ind)`` sorted by distance. The exact backend's float32 screening (one BLAS product
        of the augmented rows per block of queries: ``products(rows)``); the picked pairs'
        distances are float32 too, each recomputed on its own, as the screened candidates are, so
        a query's row does not depend on the other queries of the call. ``few = (keep, qsq)``: only
        each row's ``keep`` first by secondary distance are read (``kneighbors``), so only the
        candidates that can be among them are picked and recomputed (:meth:`_few`)."""
        c, n, m = self.n_candidates_, self.n_index_, len(Qa)
        step = max(1, (1 << 21) // n)  # 8 MB of float32 scores at a time
        keep, qsq = few
        if keep is not None and keep < c < n:
            ind = self._few(Qa, products, r, keep, qsq, step)
            if ind is not None:
                return S.rescored(self._screening(), Qa, ind, self.metric)
        ind = np.empty((m, c), np.int64)
        for s in range(0, m, step):
            key = self._key(products(slice(s, s + step)), r)
            ind[s:s + step] = np.argpartition(key, c - 1, axis=1)[:, :c] if c < n else np.arange(n)
        return S.rescored(self._screening(), Qa, ind, self.metric)

    def _few(self, Qa, products, r, keep, qsq, step):
        """The candidates that can be among a query's ``keep`` best by the secondary distance, or None
        (then :meth:`_best` picks ``n_candidates`` as without ``keep``). The score's float32 key and
        the secondary distance of the recomputed pair differ by at most ``E``: both products of the
        same float32 rows err by ≤ δ = 2 (dim + 6) u (|q|² + max |x|²) (the bound of
        :meth:`kexue.hubness.knn._Prepared.tol`), so a distance by ≤ min(sqrt(2δ), 2δ / sqrt(D_min))
        (Euclidean, D_min the row's smallest squared distance: |sqrt a - sqrt b| ≤ |a - b| / sqrt a;
        cosine halves the squared distance: ≤ 2δ), plus the key's float32 rounding. A candidate whose key
        exceeds the ``keep``-th smallest by more than 2E is beaten by ``keep`` others, so the
        columns within 2E (:func:`kexue.hubness.screen.near_smallest`), when at most
        ``n_candidates`` (then all are among the ``n_candidates`` best keys), give the same top
        ``keep``, ties included, as the ``n_candidates``."""
        screen = self._screening()
        R = float(np.abs(self.alpha * r).max()) if len(r) else 0.0
        err = 2.0 * (self.n_features_in_ + 6) * K._U32 * (qsq + float(screen.xsq.max()))
        parts = []
        for s in range(0, len(Qa), step):
            D = products(slice(s, s + step))
            e = err[s:s + step]
            if self.metric == "cosine":
                e = 2.0 * e
            else:
                low = np.sqrt(np.maximum(D.min(1), 0).astype(np.float64))
                e = np.ldexp(np.minimum(np.sqrt(2.0 * e), 2.0 * e / np.maximum(low, _TINY)), screen.exp - self.exp_)
            key = self._key(D, r)
            ind = S.near_smallest(key, keep, lambda U, e=e: 2.0 * (e + 8.0 * K._U32 * (2.0 * R + np.abs(U) + 2.0 * e + 2.0)),
                                  self.n_candidates_)
            if ind is None:
                return None
            parts.append(ind)
        w = max(p.shape[1] for p in parts)
        return np.concatenate([np.pad(p, ((0, 0), (0, w - p.shape[1])), constant_values=-1) for p in parts])

    def _fused(self, Qa, w, few=(None, None)):
        """Transductive (the query batch is the reference): ONE product of the queries with the
        index gives both sides — each index point's ``w`` nearest queries (its statistic, read down
        the columns) and then each query's best candidates — where the two-pass path
        (:func:`REF.index_stats`, then :meth:`_best`) multiplies them twice. Used while the
        ``queries × index`` float32 matrix fits in ``FUSED_BYTES``. Returns ``(dist, ind, x_stats)``."""
        screen, n, XaT = self._screening(), self.n_index_, self._index_rows32().T
        D = np.empty((len(Qa), n), np.float32)
        step = max(1, (1 << 21) // n)
        for s in range(0, len(Qa), step):
            np.matmul(Qa[s:s + step], XaT, out=D[s:s + step])
        near = np.empty((n, w), np.float32)
        for j in range(0, n, 512):  # each index point's w smallest squared distances to the queries: a
            T = S._transposed(D[:, j:j + 512])  # contiguous copy of the columns, partitioned along its rows,
            if w < len(D):  # not a partition down the strided columns (2.4x the CPU time on MNIST's shapes)
                T.partition(w - 1, axis=1)
            near[j:j + 512] = T[:, :w]
        xs = self._scaled_stats(S._finish(np.sort(near, axis=1).astype(np.float64), self.metric, screen.exp), w)
        return (*self._best(Qa, lambda s: D[s], xs[0], few), xs)


class Centering(_Reduction):
    """Centering (Suzuki et al. 2013): rank candidates by the cosine distance of the centred
    vectors, ``1 - <q - c, x - c> / (|q - c| |x - c|)``, c = the index mean (learned by ``fit``).
    Candidates come from the primary metric; no per-point statistic is needed."""

    _needs_vectors = True

    def __init__(self, n_candidates: int = 100, metric: str = "euclidean", backend="exact",
                 backend_params: dict | None = None, n_samples: int | str | None = "auto", random_state: int = 0,
                 block_rows: int | None = None):
        _store(self, locals())

    def _width(self, reference=False):
        return 0

    def fit(self, X, y=None, graph: tuple | None = None, reference=None):
        super().fit(X, y, graph, reference)
        self.center_ = G.mean(self.X_)  # bit for bit X_.mean(0) in float64, a block at a time
        return self

    def _extra_tensors(self):
        return {"center": self.center_}

    def _load_extra(self, tensors):
        self.center_ = tensors["center"]

    def _secondary(self, dist, ind, q_stats, x_stats, Q):
        c = self._scaled(self.center_)
        A = G.rows_of(self.X_, lambda B: _centred(self._scaled(B), c))  # rows made when gathered
        B = _centred(self._scaled(rows64(np.asarray(Q), "euclidean")), c)  # Q: one block of queries (see _reduce)
        out = np.empty_like(dist)
        step = max(1, _CHUNK // (dist.shape[1] * A.shape[1]))
        for s in range(0, len(dist), step):
            out[s:s + step] = 1.0 - np.einsum("bd,bcd->bc", B[s:s + step], A[ind[s:s + step]])
        return out


def _centred(X, c):
    Y = np.asarray(X, np.float64) - c
    n = np.linalg.norm(Y, axis=1, keepdims=True)
    return Y / np.maximum(n, _TINY)  # a point at the mean has no direction: distance 1 to all


REDUCTIONS: dict[str, Callable[..., _Reduction]] = {
    "mp": lambda **kw: MutualProximity(method="gaussian", **kw),
    "mp-empirical": lambda **kw: MutualProximity(method="empirical", **kw),
    "ls": lambda **kw: LocalScaling(method="standard", **kw),
    "nicdm": lambda **kw: LocalScaling(method="nicdm", **kw),
    "csls": lambda **kw: CSLS(**kw),
    "nnn": lambda **kw: NNN(**kw),
    "centering": lambda **kw: Centering(**kw),
}


def make_reduction(name: str, **kw) -> _Reduction:
    """A reduction by short name: mp, mp-empirical, ls, nicdm, csls, nnn, centering."""
    validate.choice(name, REDUCTIONS, "hubness reduction")
    return REDUCTIONS[name](**kw)
