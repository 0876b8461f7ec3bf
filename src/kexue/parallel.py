"""Worker processes for NumPy-heavy tasks without joblib's temporary files (issue 31 item 1).

joblib's loky backend dumps every argument array above ``max_nbytes`` into
``/dev/shm/joblib_memmapping_folder_*`` and reference-counts each file in loky's
``resource_tracker`` process: +1 when the parent pickles a task, -1 when a worker's copy is
garbage-collected, one extra reference dropped when the call ends. When the same array goes to
the workers of one ``Parallel`` object in more than one call, or a worker frees its copy after
the call has ended, the count reaches zero early and the tracker prints ``KeyError:
'/dev/shm/joblib_memmapping_folder_…'`` tracebacks on the console (joblib/joblib#1243; the
unargmax audit passed W to its pre-check and LP stages through one ``Parallel``).

So here the arrays never go through that machinery: :class:`SharedArrays` writes each large
array once to a ``.npy`` file in a temporary folder that this process owns and deletes, and
tasks receive an :class:`ArrayFile` (a path, a few bytes to pickle) that they open read-only
memory-mapped where they run: a loky worker or a Dask worker on a machine that sees the folder.
:func:`parallel` builds a ``Parallel`` with joblib's automatic memmapping off
(``max_nbytes=None``); each one is used for one call, and :func:`consume` runs its generator to
the end (or, when the caller stops early, closes it without joblib's "tasks … have been
cancelled" warning: the caller is already stopping on purpose).
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from collections.abc import Iterable, Iterator

import numpy as np

SMALL_BYTES = 1 << 16  # arrays below this are pickled with the task (cheaper than a file)


@dataclass(frozen=True)
class ArrayFile:
    """A picklable reference to an array in a ``.npy`` file (or at ``offset`` in a raw file),
    opened read-only memory-mapped by :meth:`open` in the process that uses it."""

    path: str
    shape: tuple
    dtype: str
    offset: int = 0
    npy: bool = True

    def open(self) -> np.ndarray:
        if self.npy:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset, shape=self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def opened(a):
    """``a.open()`` for an :class:`ArrayFile`, else ``a`` unchanged (task functions accept both)."""
    return a.open() if isinstance(a, ArrayFile) else a


def file_of(a) -> ArrayFile | None:
    """The :class:`ArrayFile` of a C-contiguous read-only ``np.memmap`` over a whole file region
    (e.g. ``np.load(path, mmap_mode="r")``), so that it is shared without a copy; else None."""
    if not isinstance(a, np.memmap) or getattr(a, "filename", None) is None or a.mode != "r":
        return None
    if not a.flags["C_CONTIGUOUS"] or not isinstance(a.base, mmap.mmap):
        return None  # a view into the map: its offset is not the file's
    return ArrayFile(str(a.filename), tuple(a.shape), a.dtype.str, int(a.offset), npy=False)


def _shm(nbytes: int) -> str | None:
    """/dev/shm (memory, like joblib's own choice) when it has room for twice ``nbytes``, else
    None (the system temporary folder)."""
    try:
        st = os.statvfs("/dev/shm")
        return "/dev/shm" if os.access("/dev/shm", os.W_OK) and st.f_bavail * st.f_frsize > 2 * nbytes else None
    except OSError:
        return None


class SharedArrays:
    """Arrays handed to worker processes as files in one temporary folder, deleted on ``close``
    (or at the end of a ``with`` block). ``share(a)`` returns an :class:`ArrayFile` for a large
    array (reusing the file of a read-only memmap, e.g. weights loaded with ``mmap_mode="r"``) and
    the array itself when it is small or None. ``folder`` picks where the files go (default:
    /dev/shm if it has room, else the system temporary folder; for a Dask cluster on several
    machines, a folder they all see)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.root, self.folder, self._n = folder, None, 0

    def share(self, a):
        if a is None or isinstance(a, ArrayFile):
            return a
        ref = file_of(a)
        if ref is not None:
            return ref
        a = np.ascontiguousarray(a)
        if a.nbytes < SMALL_BYTES:
            return a
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="kexue-shared-", dir=self.root or _shm(a.nbytes))
        path = os.path.join(self.folder, f"{self._n}.npy")
        self._n += 1
        np.save(path, a, allow_pickle=False)
        return ArrayFile(path, tuple(a.shape), a.dtype.str)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> SharedArrays:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fresh_pool(call_id: str) -> None:
    """Worker initializer; its argument only makes each call's executor settings unique."""


def parallel(n_jobs: int, ordered: bool = True):
    """A loky ``Parallel`` for one call, returning a generator, with joblib's automatic
    memmapping off (large arrays go as :class:`SharedArrays` files instead).

    Each call gets worker processes of its own: loky reuses one pool for every ``Parallel``
    with equal settings, and each worker takes its memory after its *first* task as the
    reference of a leak check (restart when it grows by 300 MB). A worker that first ran a
    small task of one phase (tabular data) and then a large one of the next (a CNN on MNIST)
    is restarted mid-call, with the warning "A worker stopped while some jobs were given to
    the executor"; a unique initializer argument makes loky start a new pool instead."""
    from uuid import uuid4

    from joblib import Parallel, parallel_config

    with parallel_config(backend="loky", initializer=_fresh_pool, initargs=(uuid4().hex,)):
        return Parallel(n_jobs=n_jobs, max_nbytes=None, return_as="generator" if ordered else "generator_unordered")


def consume(results: Iterable) -> Iterator:
    """Yield every result of a joblib generator. If the caller stops early (an exception, Ctrl-C
    or a ``break``), the call is aborted as joblib does for a dropped generator, without its
    "N tasks … have been cancelled" warning: the caller is already stopping on purpose."""
    it = iter(results)
    done = False
    try:
        for r in it:  # noqa: UP028 - not ``yield from``: that would close ``it`` outside the filter below
            yield r
        done = True
    finally:
        if not done and hasattr(it, "close"):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", _CANCELLED, UserWarning)
                it.close()


_CANCELLED = r".*(tasks have been successfully executed|tasks which were still being processed)"
