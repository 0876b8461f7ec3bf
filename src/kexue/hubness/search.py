"""The public neighbour search of :mod:`kexue.hubness` (SPEC 8.2): :func:`kneighbors` and
:func:`k_occurrence` check their input and run the exact search (:mod:`kexue.hubness.knn`) or an
approximate backend (:mod:`kexue.hubness.ann`); both of those import only downwards.
"""

from __future__ import annotations

import numpy as np

from kexue import validate
from kexue.hubness import ann
from kexue.hubness.arrays import host_array, max_abs, pow2_exponent
from kexue.hubness.knn import BACKENDS, METRICS, KNNGraph, _exact, occurrences
from kexue.utils import KexueError, Tracker, tracker_or_null


def kneighbors(X, k: int, metric: str = "euclidean", backend: str = "exact", queries=None,
               exclude_self: bool = True, block: int | None = None, margin: int = 16,
               backend_params: dict | None = None, recall: float = 0.95, seed: int = 0,
               tracker: Tracker | None = None) -> KNNGraph:
    """The kNN graph of queries (default: ``X`` itself) among the rows of ``X`` (SPEC 8.2).

    Returns a :class:`KNNGraph` (unpacks as ``dist, ind``), rows sorted by the near-tie rule of
    this module. ``queries=None`` searches ``X`` against itself and, with ``exclude_self``, drops
    each row's own index. ``block``: rows and columns per screening block (default 4096, 64 MB of
    float32). Approximate backends (``hnsw``, ``ivf``, ``faiss``) pick their search parameter for
    ``recall`` (measured on a sample against exact search) unless ``backend_params`` fixes it;
    ``seed`` makes the sample and the index reproducible. ``tracker`` reports progress.
    """
    validate.choice(metric, METRICS, "metric")
    validate.choice(backend, BACKENDS, "backend")
    X = validate.matrix(host_array(X), "X", dtype=None)
    self_search = queries is None
    Q = X if self_search else validate.matrix(host_array(queries), "queries", dtype=None)
    if Q.shape[1] != X.shape[1]:
        raise KexueError(f"queries have {Q.shape[1]} features but X has {X.shape[1]}; embed both the same way")
    exclude_self = bool(exclude_self and self_search)
    n = X.shape[0]
    hi = n - (1 if exclude_self else 0)
    if hi < 1:
        raise KexueError(f"X has {n} row{'s' if n != 1 else ''}; a neighbour search needs at least "
                         f"{2 if exclude_self else 1} points")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= hi:
        raise KexueError(f"k must be an integer in 1..{hi} for {n} index points, got {k}")
    k, margin = int(k), validate.integer(margin, "margin", 0)
    tracker = tracker_or_null(tracker)
    self_ids = np.arange(n) if exclude_self else None
    recall = validate.real(recall, "recall", 0.0, 1.0, lo_open=True)
    e = 0 if metric == "cosine" else pow2_exponent(max(max_abs(X), 0.0 if self_search else max_abs(Q)))
    if e:  # coordinates beyond 2^±40 (float32 screening would overflow or vanish): search X / 2^e exactly
        X = np.ldexp(np.asarray(X, np.float64), -e)
        Q = X if self_search else np.ldexp(np.asarray(Q, np.float64), -e)
    if backend == "exact":
        g = _exact(X, Q, k, metric, self_ids, block, margin, tracker)
    else:
        g = ann.search(X, Q, k, metric, backend, self_ids, dict(backend_params or {}), recall, seed, tracker)
    if e:
        g.dist = np.ldexp(g.dist, e)
    return g


def k_occurrence(X, k: int, metric: str = "euclidean", backend: str = "exact", exclude_self: bool = True,
                 queries=None, **kw) -> np.ndarray:
    """N_k of every index point (SPEC 8.2): int64 array of length ``len(X)``.

    ``N_k(x) = |{q in queries : x in kNN_k(q)}|``; with ``queries=None`` the queries are ``X`` and a
    point is not its own neighbour unless ``exclude_self=False``. ``sum(N_k) = k × n_queries``.
    Further keywords go to :func:`kneighbors` (``block``, ``backend_params``, ``recall``, ``seed``,
    ``tracker``).
    """
    X = validate.matrix(host_array(X), "X", dtype=None)
    _, ind = kneighbors(X, k, metric=metric, backend=backend, queries=queries, exclude_self=exclude_self, **kw)
    return occurrences(ind, len(X))
