"""The kNN graph and N_k on a Dask cluster (SPEC 8.2; issue 29): one machine's search, spread.

:func:`kneighbors_dask` and :func:`k_occurrence_dask` take the arguments of
:func:`~kexue.hubness.kneighbors` / :func:`~kexue.hubness.k_occurrence` plus a
``dask.distributed.Client`` (``client=None``: the current one, as dask-ml's estimators do). The
queries are cut into blocks of ``block_rows`` rows; Dask runs one task per block, each searching
its block against the whole index with :func:`~kexue.hubness.kneighbors` (exact backend) on a
worker. Dask schedules; this module only submits the tasks and puts the answers back in order.

**The index reaches each worker once.** A file (``.npy``, ``.npz``, ``.safetensors``) that every
worker can read — this machine's workers (``local:N``) or a shared filesystem — is opened by the
workers themselves, a ``.npy`` as a memory map (only the path and a row range travel in a task; the
file is checked for NaN/inf once, streamed, on one worker). An array, or a file some
worker cannot see, goes to every worker once with ``client.scatter(..., broadcast=True)``; the
tasks refer to that copy. Query blocks of a file are read by the worker that searches them.

**Same answer as one process.** Each query row's neighbours are computed on the same float64 rows
with the same near-tie rule, so the graph and N_k equal the single-process ones. With ``Q = X`` a
block is searched for ``k + 1`` neighbours among all rows and the query's own row is dropped
(``exclude_self``): the remaining ``k`` are those of the single-process search, except that in
cosine a point within ~1e-12 relative of the query (distance below ~2e-24) shares the own row's
near-tie group and is reported at distance 0. N_k: :func:`k_occurrence_dask` counts each block on
its worker and adds the counts in a binary tree of tasks (the driver receives one vector);
:func:`kneighbors_dask` gathers the neighbour lists and the caller counts them
(:func:`~kexue.hubness.occurrences`). A FAISS index — a user's saved one (one file, or shards in
row order) or one built here for ``backend="ivf"``/``"hnsw"`` — is searched the same way, each
worker process reading the index file once (:mod:`kexue.hubness.distributed_index`). A
reduction re-ranks the gathered candidates (``kexue hubness --reduce`` does so on the driver).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kexue import validate
from kexue.hubness.arrays import host_array
from kexue.hubness.distributed_index import open_ref as _open
from kexue.hubness.knn import BACKENDS, METRICS, KNNGraph
from kexue.utils import KexueError, Tracker, require, tracker_or_null

BLOCK_ROWS = 4096  # queries per task: 4096 × n float32 screening values per index block of the search


# ------------------------------------------------------------------------------------------------
# what runs on a worker (module-level functions: pickled by name, not by value)


def _scan(ref) -> str | None:
    """Every row of a file checked for NaN/inf, streamed (once per search, on one worker): the
    message naming the file, row and column, or None."""
    from kexue.io import open_matrix

    try:
        for _ in open_matrix(ref[0], ref[1]).chunks(65536):
            pass
    except KexueError as e:
        return str(e)
    return None


def _drop_own(dist: np.ndarray, ind: np.ndarray, own: np.ndarray, k: int):
    """k + 1 neighbours per row without the row's own index (or, where it is not among them —
    more than k exact duplicates of smaller index — without the last)."""
    keep = ind != own[:, None]
    keep[keep.all(1), -1] = False
    return dist[keep].reshape(-1, k), ind[keep].reshape(-1, k)


def _search(index, queries, a: int, b: int, k: int, metric: str, exclude_self: bool, margin: int,
            count: int | None):
    """Query rows a..b against the whole index: (dist, ind), or with ``count`` (= n) their N_k.
    A user-input problem comes back as its message (a value, so no worker logs a failed task)."""
    from kexue.hubness.search import kneighbors

    try:
        X = _open(index)
        if queries is None:
            g = kneighbors(X, k + exclude_self, metric=metric, queries=X[a:b], exclude_self=False, margin=margin)
            dist, ind = _drop_own(g.dist, g.ind, np.arange(a, b), k) if exclude_self else (g.dist, g.ind)
        else:
            dist, ind = kneighbors(X, k, metric=metric, queries=_open(queries, a, b), margin=margin)
    except KexueError as e:
        return str(e)
    return (dist, ind) if count is None else np.bincount(ind.ravel(), minlength=count)


def _add(x, y):
    """Two blocks' N_k summed (an error message passes through)."""
    return x if isinstance(x, str) else y if isinstance(y, str) else x + y


# ------------------------------------------------------------------------------------------------
# the driver


def _client(client):
    distributed = require("dask", "dask.distributed", "a Dask cluster")
    if client is not None:
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise KexueError("no Dask client: pass client=Client('tcp://HOST:8786') (or a LocalCluster's), "
                         "or create one first") from None


def _is_path(X) -> bool:
    return isinstance(X, (str, os.PathLike))


_CLEAN: set = set()  # files (or shard directories) found finite here: (key, *io.version), not scanned again


def check_file(client, path, key: str | None = None) -> None:
    """Scan the file for NaN/inf on one worker of ``client`` (streamed), once per version of the
    file in this process; a bad value is the one-line error naming its row and column."""
    from kexue.io import version

    stamp = (key,) + version(path)
    if stamp not in _CLEAN:
        bad = client.submit(_scan, (stamp[1], key), pure=False).result()
        if bad is not None:
            raise KexueError(bad)
        _CLEAN.add(stamp)


def _share(client, X, key: str | None, what: str):
    """How tasks reach ``X``: ``(path, key)`` if every worker reads the same file, else a future of
    the array on every worker; and the array's shape."""
    if _is_path(X):
        from kexue.cluster import blind_workers
        from kexue.io import open_matrix

        path = Path(X).resolve()
        src = open_matrix(path, key, what)
        if not blind_workers(client, path):
            check_file(client, path, key)
            return (str(path), key), (src.n, src.d)
        X = src.read()  # some worker cannot see the file: send the rows instead
    else:
        X = validate.matrix(host_array(X), what, dtype=None)
    return client.scatter(X, broadcast=True, hash=False), X.shape  # a fresh key: an earlier call's copy may be going


def _run(X, k, client, metric, queries, exclude_self, block_rows, margin, key, count: bool, tracker, ann=None):
    validate.choice(metric, METRICS, "metric")
    client = _client(client)
    block_rows = validate.integer(block_rows, "block_rows", 1)
    margin = validate.integer(margin, "margin", 0)
    ann = ann or {}
    approximate = ann.get("index") is not None or ann.get("backend", "exact") != "exact"
    if approximate:
        require("ann", "faiss", "a FAISS index on Dask")
        validate.choice(ann["backend"], BACKENDS, "backend")
        if ann["index"] is not None and ann["backend"] != "exact":
            raise KexueError(f"index= searches the given FAISS index; drop backend={ann['backend']!r} (or index=)")
        if X is None:
            raise KexueError("X is None; the workers re-score the found neighbours on X's rows: pass the vectors "
                             "the index was built from")
    index, (n, d) = _share(client, X, key, "X")
    self_search = queries is None
    exclude_self = bool(exclude_self and self_search)
    hi = n - exclude_self
    if hi < 1:
        raise KexueError(f"X has {n} row{'s' if n != 1 else ''}; a neighbour search needs at least "
                         f"{1 + exclude_self} points")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= hi:
        raise KexueError(f"k must be an integer in 1..{hi} for {n} index points, got {k}")
    k = int(k)
    if self_search:
        nq, blocks = n, [None] * -(-n // block_rows)
    elif _is_path(queries):
        qref, (nq, dq) = _share(client, queries, key, "queries")
        blocks = [qref] * -(-nq // block_rows)
    else:
        Q = validate.matrix(host_array(queries), "queries", dtype=None)
        nq, dq = Q.shape
        blocks = client.scatter([Q[a:a + block_rows] for a in range(0, nq, block_rows)], hash=False)  # each to one worker
    if not self_search and dq != d:
        raise KexueError(f"queries have {dq} features but X has {d}; embed both the same way")
    spans = [(a, min(a + block_rows, nq)) for a in range(0, nq, block_rows)]
    prep = None
    if approximate:
        from kexue.hubness.distributed_index import prepare

        prep = prepare(client, X, queries, key, n, d, k, metric, exclude_self, ann["index"], ann["backend"],
                       ann["backend_params"], ann["recall"], ann["seed"], ann["recall_sample"], block_rows,
                       ann["workdir"])
    try:
        futs = [_submit(client, prep, index, q, a, b, k, metric, exclude_self, margin, block_rows, n if count else None)
                for q, (a, b) in zip(blocks, spans)]
        return _gather(client, futs, count, tracker, prep)
    finally:
        if prep is not None:
            prep.close()


def _submit(client, prep, index, q, a, b, k, metric, exclude_self, margin, block_rows, count):
    """One query block's task: rows a..b of a file or of X, or a scattered block (read from row 0)."""
    if not (q is None or isinstance(q, tuple)):
        a, b = 0, b - a
    if prep is None:
        return client.submit(_search, index, q, a, b, k, metric, exclude_self, margin, count, pure=False)
    from kexue.hubness.distributed_index import _search as _search_index

    return client.submit(_search_index, prep.paths, prep.params, index, q, a, b, k, metric, exclude_self, block_rows,
                         count, pure=False)


def _gather(client, futs, count, tracker, prep):
    from dask.distributed import as_completed

    try:
        if count:
            while len(futs) > 1:  # a binary tree of sums: no worker or driver holds more than two counts
                futs = [client.submit(_add, futs[i], futs[i + 1], pure=False) if i + 1 < len(futs) else futs[i]
                        for i in range(0, len(futs), 2)]
            out = futs[0].result()
            if isinstance(out, str):
                raise KexueError(out)
            return out.astype(np.int64)
        pos = {f.key: i for i, f in enumerate(futs)}
        parts: list = [None] * len(futs)
        label = "exact" if prep is None else prep.label
        for f in tracker_or_null(tracker).track(as_completed(futs), f"kNN search on Dask ({label})", total=len(futs)):
            parts[pos[f.key]] = f.result()
            if isinstance(parts[pos[f.key]], str):
                raise KexueError(parts[pos[f.key]])
        dist, ind = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int64)
        if prep is None:
            return KNNGraph(dist, ind)
        return KNNGraph(dist, ind, prep.label, prep.recall, prep.n_sample, prep.graph_params)
    except BaseException:  # a failed block or Ctrl-C: the other blocks need not run
        client.cancel(futs)
        raise


def kneighbors_dask(X, k: int, client=None, metric: str = "euclidean", queries=None, exclude_self: bool = True,
                    block_rows: int = BLOCK_ROWS, margin: int = 16, key: str | None = None,
                    tracker: Tracker | None = None, index=None, backend: str = "exact", backend_params: dict | None = None,
                    recall: float = 0.95, seed: int = 0, recall_sample: int | None = None, workdir=None) -> KNNGraph:
    """The kNN graph of :func:`~kexue.hubness.kneighbors`, its query blocks searched on a Dask
    cluster (SPEC 8.2): equal to the single-process graph (module docstring).

    ``X`` and ``queries`` are arrays or paths of embedding files or directories of .npy shards
    (``key`` names the array inside a .npz/.safetensors file with several); a path every worker can
    read is opened by the workers. ``client``: a ``dask.distributed.Client`` (None: the current
    one). ``block_rows``: queries per task. ``tracker`` reports the blocks as they finish.
    Approximate search (issue 29): ``index`` — a saved FAISS index's path (several paths: shards
    holding consecutive row ranges, in order) or a built index — or ``backend`` ``"ivf"``/``"hnsw"``/
    ``"faiss"`` (built and tuned here for ``recall`` on ``recall_sample`` queries, as
    :func:`~kexue.hubness.kneighbors` does) is searched by the workers, each process reading the
    index file once (:mod:`kexue.hubness.distributed_index`); an index built or passed here is
    written to ``workdir`` (default: a temporary folder of this machine). ``backend_params``,
    ``recall``, ``seed``, ``recall_sample`` as in :func:`~kexue.hubness.kneighbors`.
    """
    return _run(X, k, client, metric, queries, exclude_self, block_rows, margin, key, False, tracker,
                dict(index=index, backend=backend, backend_params=backend_params, recall=recall, seed=seed,
                     recall_sample=recall_sample, workdir=workdir))


def k_occurrence_dask(X, k: int, client=None, metric: str = "euclidean", queries=None, exclude_self: bool = True,
                      block_rows: int = BLOCK_ROWS, margin: int = 16, key: str | None = None, index=None,
                      backend: str = "exact", backend_params: dict | None = None, recall: float = 0.95, seed: int = 0,
                      recall_sample: int | None = None, workdir=None) -> np.ndarray:
    """N_k of every index point (SPEC 8.2) as :func:`~kexue.hubness.k_occurrence` gives it, each
    query block counted on its worker and the counts summed in a tree of tasks. Arguments as
    :func:`kneighbors_dask`."""
    return _run(X, k, client, metric, queries, exclude_self, block_rows, margin, key, True, None,
                dict(index=index, backend=backend, backend_params=backend_params, recall=recall, seed=seed,
                     recall_sample=recall_sample, workdir=workdir))

