"""The public neighbour search of :mod:`kexue.hubness` (SPEC 8.2): :func:`kneighbors` and
:func:`k_occurrence` check their input and run the exact search (:mod:`kexue.hubness.knn`) or an
approximate backend (:mod:`kexue.hubness.ann`); both of those import only downwards.
"""

from __future__ import annotations

import numpy as np

from kexue import validate
from kexue.hubness import ann
from kexue.hubness.arrays import host_array, max_abs, pow2_exponent, row_blocks
from kexue.hubness.faiss_index import check_index, is_faiss_index
from kexue.hubness.knn import BACKENDS, METRICS, KNNGraph, _exact, occurrences
from kexue.shards import ShardedRows
from kexue.utils import KexueError, Tracker, tracker_or_null

BLOCK_ROWS = ann.BLOCK_ROWS


def kneighbors(X, k: int, metric: str = "euclidean", backend="exact", queries=None,
               exclude_self: bool = True, block: int | None = None, margin: int = 16,
               backend_params: dict | None = None, recall: float = 0.95, seed: int = 0,
               tracker: Tracker | None = None, block_rows: int = BLOCK_ROWS,
               recall_sample: int | None = None, out=None) -> KNNGraph:
    """The kNN graph of queries (default: ``X`` itself) among the rows of ``X`` (SPEC 8.2).

    Returns a :class:`KNNGraph` (unpacks as ``dist, ind``), rows sorted by the near-tie rule of
    this module. ``queries=None`` searches ``X`` against itself and, with ``exclude_self``, drops
    each row's own index. ``block``: rows and columns per screening block of the exact backend
    (default 4096, 64 MB of float32). Approximate backends (``hnsw``, ``ivf``, ``faiss``) pick their
    search parameter for ``recall`` (measured on ``recall_sample`` random queries, default 1,000,
    against exact search) unless ``backend_params`` fixes it; ``seed`` makes the sample and the
    index reproducible. ``tracker`` reports progress.

    ``backend`` may also be a built FAISS index of any kind (flat, IVF-Flat, IVF-PQ, HNSW,
    ``IndexShards``; :mod:`kexue.hubness.ann`) holding ``X``'s rows in order: it is searched as
    configured and its recall measured only when ``recall_sample`` is given; with ``queries``, ``X``
    may be None (distances are then FAISS's float32 ones). Large data: ``X`` and ``queries`` may be
    memory maps (``np.load(path, mmap_mode="r")``); approximate backends and a FAISS index read them
    ``block_rows`` rows at a time and make no float32 or float64 copy of them; the exact backend
    reads them ``block`` rows at a time (float64 only for the candidates' rows).

    ``out``: a pair ``(dist, ind)`` of (n_queries, k) arrays the graph is stored into, a block of
    ``block_rows`` rows at a time, and returned in the :class:`KNNGraph` — e.g. an on-disk graph
    (:func:`kexue.hubness.stream.disk_graph`) that a reduction then reads back in blocks, so that an
    ``n × k`` graph never sits in memory. Approximate backends and FAISS indexes write each block as
    it is searched; the exact backend (quadratic, for smaller data) makes its graph first.
    """
    validate.choice(metric, METRICS, "metric")
    given = is_faiss_index(backend)
    if not given:
        validate.choice(backend, BACKENDS, "backend")
    block_rows = validate.integer(block_rows, "block_rows", 1)
    self_search = queries is None
    if X is None and not (given and not self_search):
        raise KexueError("X is None; pass the index vectors (only a FAISS index searched by queries can do without)")
    if self_search:
        Q = X = checked_matrix(X, "X", block_rows)
    else:
        X = None if X is None else checked_matrix(X, "X", block_rows)
        Q = checked_matrix(queries, "queries", block_rows)
        X = Q[:0] if X is None else X  # no vectors: only their width is known
    n = backend.ntotal if given and len(X) == 0 else X.shape[0]
    if Q.shape[1] != X.shape[1]:
        raise KexueError(f"queries have {Q.shape[1]} features but X has {X.shape[1]}; embed both the same way")
    if given:
        check_index(backend, None if len(X) == 0 else n, X.shape[1], metric)
    exclude_self = bool(exclude_self and self_search)
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
    # a user's index holds its own float32 rows: they are searched as they are, never rescaled
    e = 0 if metric == "cosine" or given else pow2_exponent(max(max_abs(X), 0.0 if self_search else max_abs(Q)))
    if e:  # coordinates beyond 2^±40 (float32 screening would overflow or vanish): search X / 2^e exactly
        X = np.ldexp(np.asarray(X, np.float64), -e)
        Q = X if self_search else np.ldexp(np.asarray(Q, np.float64), -e)
    streamed = out is not None and not e and (given or backend != "exact")
    if not given and backend == "exact":
        g = _exact(X, Q, k, metric, self_ids, block, margin, tracker)
    else:
        g = ann.search(None if len(X) == 0 else X, Q, k, metric, backend, self_ids, dict(backend_params or {}),
                       recall, seed, tracker, sample=recall_sample, block_rows=block_rows,
                       out=out if streamed else None)
    if e:
        g.dist = np.ldexp(g.dist, e)
    if out is not None and not streamed:  # made in memory: stored into out a block at a time
        for s in range(0, len(g.dist), block_rows):
            out[0][s:s + block_rows], out[1][s:s + block_rows] = g.dist[s:s + block_rows], g.ind[s:s + block_rows]
        g.dist, g.ind = out
    return g


def checked_matrix(X, name: str, block_rows: int = BLOCK_ROWS):
    """A 2-D real array kept as it is (a memory map stays one), its finiteness checked block by block
    (no n × dim mask of a file larger than memory). A directory's shards (:class:`~kexue.shards.ShardedRows`,
    2-D and real by construction) stay as they are: the search reads them block by block."""
    A = X if isinstance(X, ShardedRows) else validate.matrix(host_array(X), name, dtype=None, allow_nonfinite=True)
    if A.dtype.kind == "f":
        for s, B in row_blocks(A, block_rows):
            if not np.isfinite(B).all():
                r, c = np.argwhere(~np.isfinite(B))[0]
                raise KexueError(f"{name} has a non-finite value (NaN or inf) at index ({s + int(r)}, {int(c)}); "
                                 "clean or drop those entries")
    return A


def k_occurrence(X, k: int, metric: str = "euclidean", backend="exact", exclude_self: bool = True,
                 queries=None, **kw) -> np.ndarray:
    """N_k of every index point (SPEC 8.2): int64 array of length ``len(X)`` (or the FAISS index's
    ``ntotal`` when ``X`` is None).

    ``N_k(x) = |{q in queries : x in kNN_k(q)}|``; with ``queries=None`` the queries are ``X`` and a
    point is not its own neighbour unless ``exclude_self=False``. ``sum(N_k) = k × n_queries``.
    Further keywords go to :func:`kneighbors` (``block``, ``backend_params``, ``recall``, ``seed``,
    ``tracker``, ``block_rows``, ``recall_sample``); ``backend`` may be a built FAISS index.
    """
    g = kneighbors(X, k, metric=metric, backend=backend, queries=queries, exclude_self=exclude_self, **kw)
    n = backend.ntotal if X is None and is_faiss_index(backend) else len(X)
    return occurrences(g.ind, n)
