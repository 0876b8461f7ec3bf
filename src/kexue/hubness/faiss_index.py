"""A user's built FAISS index as a kNN backend (SPEC 8.2, issue 29): recognising it, checking it
against the data and the metric, reading it from a file, and finding its search parameter.

Any kind works — ``IndexFlat``, ``IndexIVFFlat``, ``IndexIVFPQ``, ``IndexHNSWFlat``, an
``IndexShards`` of them, or one wrapped in ``IndexPreTransform``/``IndexIDMap``/``IndexRefine``: it
is searched through ``index.search`` only. Its search parameter (``nprobe`` of an IVF index,
``efSearch`` of an HNSW graph; none for flat or PQ indexes) is set through FAISS's
``ParameterSpace``, which also reaches every shard.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kexue.utils import KexueError, require


def is_faiss_index(obj) -> bool:
    """True for a FAISS index object (any ``faiss.Index`` subclass)."""
    return type(obj).__module__.split(".")[0] == "faiss" and hasattr(obj, "search") and hasattr(obj, "ntotal")


def is_flat_faiss(obj) -> bool:
    """True for a flat (brute-force) FAISS index, whose self-search costs n² distances."""
    if not is_faiss_index(obj):
        return False
    faiss = require("ann", "faiss", "a FAISS index")

    return isinstance(obj, faiss.IndexFlat)


def check_index(index, n: int | None, d: int, metric: str, name: str = "the FAISS index",
                data: str = "X", metric_name: str = "metric") -> None:
    """One-line errors for an index that cannot serve queries of dimension ``d`` under ``metric``
    with ids ``0..n-1`` (``n`` None: no vectors given, any size): empty, untrained, another
    dimension or size, or a metric kexue's distances are not (L2 for euclidean or cosine on unit
    vectors; inner product for cosine on unit vectors)."""
    faiss = require("ann", "faiss", "a FAISS index")

    if not index.is_trained:
        raise KexueError(f"{name} is not trained; train it and add the vectors before searching it")
    if index.ntotal == 0:
        raise KexueError(f"{name} is empty (ntotal 0)" + ("" if n is None else f" but {data} has {n} rows")
                         + "; add the vectors (index.add(X)) before searching it")
    if index.d != d:
        raise KexueError(f"{name} has dimension d={index.d} but {data} has {d} columns; "
                         f"build the index on these vectors (or pass the vectors it was built from)")
    if n is not None and index.ntotal != n:
        raise KexueError(f"{name} holds {index.ntotal} vectors but {data} has {n} rows; pass the vectors the "
                         "index was built from, in the order they were added")
    mt = index.metric_type
    if mt == faiss.METRIC_INNER_PRODUCT and metric != "cosine":
        raise KexueError(f"{name} ranks by inner product (metric_type {mt}) but {metric_name} is {metric}; "
                         f"use {metric_name} cosine (unit vectors in the index) or an L2 index")
    if mt not in (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT):
        raise KexueError(f"{name} has metric_type {mt}, neither L2 ({faiss.METRIC_L2}) nor inner product "
                         f"({faiss.METRIC_INNER_PRODUCT}) as {metric_name} {metric} needs; build it with METRIC_L2")
    if metric == "cosine" and isinstance(faiss.downcast_index(index), (faiss.IndexFlat, faiss.IndexHNSWFlat)):
        # cosine ranks by L2 or inner product of unit vectors only; an index storing raw rows can say so
        norm = np.linalg.norm(index.reconstruct_n(0, min(index.ntotal, 16)), axis=1)
        if np.abs(norm - 1).max() > 1e-3:
            raise KexueError(f"{name} holds vectors of norm {norm[np.argmax(np.abs(norm - 1))]:.4g}, not the unit "
                             f"vectors {metric_name} cosine needs; add X / |X| (rows normalised) to the index")


def read_index(path: Path, flag: str = "--index", mmap: bool = False):
    """A FAISS index from ``faiss.write_index``'s file; a missing, empty or unreadable file is one line.
    ``mmap``: map the stored vectors and lists instead of reading them (``faiss.IO_FLAG_MMAP_IFC``,
    which serves flat, IVF, PQ and HNSW indexes; a plain read where FAISS refuses it): a process
    then holds the pages it touches, shared with every other process mapping the file."""
    faiss = require("ann", "faiss", f"{flag}")

    path = Path(path)
    if not path.is_file():
        raise KexueError(f"{flag} {path} not found; give a file written by faiss.write_index")
    if path.stat().st_size == 0:
        raise KexueError(f"{flag} {path} is empty; write the index again with faiss.write_index")
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0
    for tried in dict.fromkeys((flags, 0)):
        try:
            return faiss.read_index(str(path), tried)
        except RuntimeError as e:  # FAISS reports a bad file as a C++ exception text: keep its last clause
            why = str(e).strip().splitlines()[0].rsplit(": ", 1)[-1][:120] if str(e).strip() else "unreadable"
    raise KexueError(f"{flag} {path} is not a readable FAISS index ({why}); write it with faiss.write_index")


def read_shards(paths, flag: str = "--index", mmap: bool = False):
    """The index in one file (:func:`read_index`) or, given several, one ``faiss.IndexShards`` of
    them with ``successive_ids``: file i holds the rows that follow those of files 0..i-1 (ids
    0..ntotal-1 in each file), FAISS offsets their ids and merges their top-k. This is how a
    sharded index is stored: FAISS cannot write an ``IndexShards`` as one file
    (:func:`shard_parts`)."""
    faiss = require("ann", "faiss", f"{flag}")

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise KexueError(f"{flag}: no index file given")
    parts = [read_index(p, flag, mmap) for p in paths]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for p, part in zip(paths[1:], parts[1:]):
        if (part.d, part.metric_type) != (first.d, first.metric_type):
            raise KexueError(f"{flag} {p} has dimension {part.d} and metric_type {part.metric_type} but {paths[0]} has "
                             f"{first.d} and {first.metric_type}; every shard indexes the same kind of vectors")
    shards = faiss.IndexShards(first.d, False, True)  # not threaded: FAISS's own threads search each shard
    for part in parts:
        shards.add_shard(part)  # the Python wrapper keeps a reference to each part
    return shards


def shard_parts(index) -> list:
    """The indexes to write, one file each, for ``index``: itself, or the shards of an
    ``IndexShards`` with ``successive_ids`` (which ``faiss.write_index`` cannot serialise)."""
    faiss = require("ann", "faiss", "a FAISS index")

    down = faiss.downcast_index(index)
    if not isinstance(down, faiss.IndexShards):
        return [index]
    if not down.successive_ids:
        raise KexueError("the FAISS IndexShards does not use successive_ids, so its shards' ids are not row "
                         "numbers of X; build it with faiss.IndexShards(d, False, True)")
    return [faiss.downcast_index(down.at(i)) for i in range(down.count())]


def knob(index):
    """``(name, leaf, largest)`` of the index's search parameter — ``"nprobe"`` (leaf: the IVF
    index, largest: nlist) or ``"efSearch"`` (leaf: the HNSW index, largest: None) — looking
    through shards, replicas and wrappers; None for an index with nothing to tune."""
    faiss = require("ann", "faiss", "a FAISS index")

    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexShards, faiss.IndexReplicas)):
        return knob(index.at(0)) if index.count() else None
    if isinstance(index, faiss.IndexHNSW):
        return "efSearch", index, None
    if isinstance(index, faiss.IndexIVF):
        return "nprobe", index, int(index.nlist)
    for attr in ("index", "base_index"):  # IndexPreTransform, IndexIDMap, IndexRefine
        inner = getattr(index, attr, None)
        if inner is not None and is_faiss_index(inner):
            return knob(inner)
    return None


def get_param(leaf, name: str) -> int:
    return int(leaf.nprobe if name == "nprobe" else leaf.hnsw.efSearch)


def set_param(index, name: str, value: int) -> None:
    """Set ``nprobe``/``efSearch`` on the index and every shard of it."""
    faiss = require("ann", "faiss", "a FAISS index")

    faiss.ParameterSpace().set_index_parameter(index, name, float(value))


def faiss_distances(D: np.ndarray, index, metric: str) -> np.ndarray:
    """FAISS's float32 scores as kexue distances (when the vectors are not there to re-score):
    Euclidean ``|q - x|`` from squared L2; cosine ``|q̂ - x̂|² / 2`` (L2 index of unit vectors) or
    ``1 - <q̂, x̂>`` (inner-product index)."""
    faiss = require("ann", "faiss", "a FAISS index")

    D = D.astype(np.float64)
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return 1.0 - D
    D = np.maximum(D, 0.0)
    return D / 2.0 if metric == "cosine" else np.sqrt(D)
