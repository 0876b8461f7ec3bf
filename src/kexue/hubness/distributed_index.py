"""A FAISS index searched on Dask workers (SPEC 8.2; issue 29): the approximate half of
:mod:`kexue.hubness.distributed`.

**Each worker process reads the index once, from a file.** Tasks carry the index's file path(s),
never the index: a worker reads it with :func:`~kexue.hubness.faiss_index.read_shards`
(memory-mapped, ``faiss.IO_FLAG_MMAP_IFC``, so the worker processes of one machine share the
file's pages) on its first task and keeps it, keyed by the files' path, size and modification
time (a rewritten file is read again). A user's saved index is such a file (or several: shards in
row order, combined with ``faiss.IndexShards``); an index built for ``backend="ivf"``/``"hnsw"``/
``"faiss"`` — or a built index object passed in — is built and tuned here, exactly as
:func:`~kexue.hubness.kneighbors` builds it, and written once to ``workdir`` (default: a
temporary folder of this machine, which ``local:N`` workers see; workers on other machines need a
folder every one of them mounts), removed when the search ends.

**Same answer as one process.** A worker searches its query block with the code of the
single-process search (:func:`kexue.hubness.ann.search`: each row's own id dropped, the found
neighbours re-scored in float64 on ``X``'s rows), with the search parameter chosen here, so each
row's neighbours are those :func:`~kexue.hubness.kneighbors` gives with the same index.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from kexue.utils import NULL_TRACKER, KexueError, require

_INDEXES: dict = {}  # this worker process's indexes: files' versions -> (index, lock), read once
_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------------
# what runs on a worker


def open_ref(ref, a: int | None = None, b: int | None = None) -> np.ndarray:
    """The array a task refers to: itself (a scattered copy) or rows a..b of a file or shard
    directory ``(path, key)`` (the whole of it: a memory map, or :class:`~kexue.shards.ShardedRows`)."""
    if isinstance(ref, np.ndarray):
        return ref if a is None else ref[a:b]
    from kexue.io import open_matrix

    src = open_matrix(ref[0], ref[1])
    if a is None or b is None:  # the whole index: a .npy stays a memory map (checked once, by _scan)
        return src.rows()
    return src.block(a, b)


def _load(paths: tuple) -> tuple:
    """The index stored in ``paths`` (read on this process's first use of this version of the files)
    and a lock for searching it."""
    from kexue.hubness.faiss_index import read_shards
    from kexue.io import version

    stamp = tuple(version(p) for p in paths)
    with _LOCK:
        got = _INDEXES.get(stamp)
        if got is None:
            while len(_INDEXES) >= 2:  # an earlier search's index (a temporary file's, or an older version)
                _INDEXES.pop(next(iter(_INDEXES)))
            got = _INDEXES[stamp] = (read_shards(paths, "the FAISS index", mmap=True), threading.Lock())
    return got


def _probe(paths: tuple, n: int, d: int, metric: str, params: dict):
    """Check the stored index against ``X`` (one-line message on a mismatch) and say what it is:
    ``(None, type name, {parameter: value})`` or ``(message, None, None)``."""
    from kexue.hubness import ann
    from kexue.hubness.faiss_index import check_index

    try:
        index, lock = _load(paths)
        check_index(index, n, d, metric, "the FAISS index " + " + ".join(paths), "X")
        left = dict(params)
        with lock:
            idx = ann._given(index, left)
            value = None if idx.current is None else idx.current()
        if left:
            raise KexueError(f"unknown {type(index).__name__} backend parameters: {', '.join(left)}")
    except KexueError as e:
        return str(e), None, None
    return None, type(index).__name__, {} if value is None else {idx.name: value}


def _search(paths: tuple, params: dict, xref, qref, a: int, b: int, k: int, metric: str, exclude_self: bool,
            block_rows: int, count: int | None):
    """Query rows a..b searched in the stored index as one process would: (dist, ind), or with
    ``count`` (= n) their N_k; a user-input problem comes back as its message."""
    from kexue.hubness import ann

    try:
        index, lock = _load(paths)
        X = open_ref(xref)
        Q = X[a:b] if qref is None else open_ref(qref, a, b)
        with lock:  # an IVF search may widen nprobe for a few rows: one search of this index at a time
            g = ann.search(X, Q, k, metric, index, np.arange(a, b) if exclude_self else None, dict(params), 1.0, 0,
                           NULL_TRACKER, sample=0, block_rows=block_rows)
    except KexueError as e:
        return str(e)
    return (g.dist, g.ind) if count is None else np.bincount(g.ind.ravel(), minlength=count)


# ------------------------------------------------------------------------------------------------
# the driver


class Prepared:
    """What the tasks need (``paths``, ``params``) and what the graph reports (``label``,
    ``recall``, ``n_sample``, ``graph_params``); :meth:`close` removes a written index."""

    def __init__(self):
        self.paths: tuple = ()
        self.params: dict = {}
        self.label, self.recall, self.n_sample, self.graph_params = "", float("nan"), 0, {}
        self.folder: Path | None = None

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _local(ref, key, what: str):
    """The driver's view of ``X``/queries given as a path or an array (a memory map stays one)."""
    from kexue.hubness.search import checked_matrix
    from kexue.io import open_matrix

    if isinstance(ref, (str, os.PathLike)):
        return open_matrix(ref, key).rows()
    return checked_matrix(ref, what)


def prepare(client, X, queries, key, n: int, d: int, k: int, metric: str, exclude_self: bool, index, backend: str,
            backend_params, recall: float, seed: int, recall_sample, block_rows: int, workdir) -> Prepared:
    """The index files every worker reads, checked on a worker; an index built or passed here is
    tuned (or its recall measured, when ``recall_sample`` asks) and written to ``workdir``."""
    from kexue import validate
    from kexue.hubness import ann
    from kexue.hubness.faiss_index import is_faiss_index, read_shards, shard_parts

    faiss = require("ann", "faiss", "a FAISS index on Dask")
    p = Prepared()
    params = dict(backend_params or {})
    p.params = params
    given_paths = index is not None and not is_faiss_index(index)
    measured = backend != "exact" or (recall_sample is not None and validate.integer(recall_sample, "recall_sample", 0) > 0)
    if workdir is not None and not Path(workdir).is_dir():
        raise KexueError(f"workdir {workdir} is not a folder; create it (on storage every worker mounts) or drop it")
    try:
        built = index
        if measured:  # build, tune or measure here, on the driver's view of the rows (memory maps stay on disk)
            Xd = _local(X, key, "X")
            Qd = Xd if queries is None else _local(queries, key, "queries")
            target = backend if index is None else read_shards(index, "index", mmap=True) if given_paths else index
            idx, p.label, value, p.recall, p.n_sample = ann.tuned(
                Xd, Qd, k, metric, target, np.arange(n) if exclude_self else None, dict(params), recall, seed,
                recall_sample, block_rows)
            built = idx.index
            p.params = {} if value is None else {idx.name: value}  # the build's own parameters are spent
            p.graph_params = {} if value is None else {idx.name: value}
        if given_paths:
            p.paths = tuple(str(Path(f).resolve()) for f in ([index] if isinstance(index, (str, os.PathLike)) else index))
        else:  # written once, for the workers to read
            p.folder = Path(tempfile.mkdtemp(prefix="kexue-index-", dir=workdir))
            p.paths = tuple(_write(part, p.folder / f"shard-{i:03d}.faiss", faiss)
                            for i, part in enumerate(shard_parts(built)))
        _reachable(client, p.paths, given_paths)
        msg, label, current = client.submit(_probe, p.paths, n, d, metric, p.params, pure=False).result()
        if msg is not None:
            raise KexueError(msg)
        if not measured:
            p.label, p.graph_params = label, current
        return p
    except BaseException:
        p.close()
        raise


def _write(index, path: Path, faiss) -> str:
    from kexue.utils import atomic_path

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return str(path)


def _reachable(client, paths, given: bool) -> None:
    """Every worker must read the index files itself (an index is never sent in a task)."""
    from kexue.cluster import blind_workers

    for f in paths:
        if not os.path.isfile(f):
            raise KexueError(f"index {f} not found; give a file written by faiss.write_index")
        blind = blind_workers(client, f)
        if blind:
            fix = ("put it on storage every worker mounts, at the same path" if given else
                   "pass workdir= (CLI: --workdir DIR), a folder every worker mounts at the same path, "
                   "for the index built here")
            raise KexueError(f"Dask worker{'s' if len(blind) > 1 else ''} {', '.join(blind[:3])} cannot read the "
                             f"FAISS index {f}; {fix}")
