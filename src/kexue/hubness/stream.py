"""Candidate graphs kept on disk while a reduction streams over them (issue 29, item 1).

A hubness reduction re-ranks each point's ``c`` primary candidates; in sample (every index point a
query) that graph is ``n × c`` float64 distances and ids — 1.6 GB at a million points and 100
candidates, more than the data itself at modest widths. The approximate searches write it here a
block of rows at a time (:func:`disk_graph`), and the reductions read it back a block of rows at a
time (one pass for the per-point statistics, one for the re-ranking: ``_scaled_stats`` and
``_reduce`` in :mod:`kexue.hubness.reduction_base`), so only the final ``k`` neighbours stay in RAM.

Why on disk and not searched twice: the second search would cost as much as the first (the
dominant cost at 1M × 384: minutes of IVF probing), where writing and reading the graph back costs
``n × c × 12`` bytes of sequential I/O (1.2 GB at 1M × 100), seconds. Distances are stored as
float64 so that the re-ranking sees the very values the search returned — results are bit for bit
those of the in-memory graph; ids as int32 while ``n < 2^31`` (read back as int64).

The file is an anonymous temporary (``tempfile.TemporaryFile``: on Linux ``O_TMPFILE``, never
named in the folder), so it is gone when its last reference goes or the process ends, whichever
way (an error, Ctrl-C, a kill). It is read and written with ``pread``/``pwrite`` into the blocks,
not memory-mapped: pages of a mapping touched by a pass would count as the process's resident
memory up to the whole file, whereas file I/O leaves them in the kernel's page cache, which the
kernel reclaims under pressure. The folder is the system temporary one unless :func:`scratch` (the
CLI's ``--workdir``) names another.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile

import numpy as np

from kexue.utils import KexueError

_SCRATCH: contextvars.ContextVar[str | None] = contextvars.ContextVar("kexue_hubness_scratch", default=None)


@contextlib.contextmanager
def scratch(folder):
    """Write the on-disk candidate graphs made inside this block in ``folder`` (None: the system's
    temporary folder, ``tempfile.gettempdir()``)."""
    token = _SCRATCH.set(None if folder is None else str(folder))
    try:
        yield
    finally:
        _SCRATCH.reset(token)


class DiskRows:
    """An ``(n, width)`` array on disk, read and written a slice of rows at a time: ``rows[a:b]``
    returns those rows as a new array of ``dtype`` (``rows[a:b, :j]`` its first columns),
    ``rows[a:b] = block`` stores them. The last slice read is kept (a pass asks for a block twice).
    Pickled or deep-copied it becomes the plain array of its rows."""

    def __init__(self, n: int, width: int, stored, dtype=None):
        self.shape = (int(n), int(width))
        self.stored, self.dtype = np.dtype(stored), np.dtype(dtype or stored)
        folder = _SCRATCH.get()
        try:
            self._file = tempfile.TemporaryFile(dir=folder)
        except OSError as e:
            raise KexueError(f"cannot make a temporary file in {folder or tempfile.gettempdir()} for the candidate "
                             f"graph ({e.strerror}); give a writable folder (CLI: --workdir DIR)") from None
        self._row = self.shape[1] * self.stored.itemsize
        self._last = (None, None)

    def __len__(self) -> int:
        return self.shape[0]

    def _span(self, key) -> tuple[int, int]:
        a, b, step = key.indices(len(self))
        if step != 1:
            raise KexueError("DiskRows reads contiguous row ranges only")
        return a, max(a, b)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None),) + key[1:]]
        if not isinstance(key, slice):
            raise KexueError("DiskRows reads row ranges (rows[a:b]) only")
        a, b = self._span(key)
        if self._last[0] != (a, b):
            buf = np.empty((b - a, self.shape[1]), self.stored)
            _io(os.preadv, self._file.fileno(), buf, a * self._row)
            self._last = ((a, b), buf.astype(self.dtype, copy=False))
        return self._last[1]

    def __setitem__(self, key, value) -> None:
        a, b = self._span(key)
        block = np.ascontiguousarray(value, dtype=self.stored)
        if block.shape != (b - a, self.shape[1]):
            raise KexueError(f"a block of shape {block.shape} written to rows {a}:{b} of {self.shape}")
        _io(os.pwritev, self._file.fileno(), block, a * self._row)
        self._last = (None, None)

    def __reduce__(self):
        return (_identity, (self[0:len(self)],))

    def close(self) -> None:
        """Remove the file now (it also goes when the object does)."""
        self._last = (None, None)
        self._file.close()


def _identity(a):
    return a


def _io(call, fd: int, buf: np.ndarray, offset: int) -> None:
    """``os.preadv``/``os.pwritev`` of all of ``buf`` (the kernel moves at most ~2 GiB per call)."""
    view = buf.reshape(-1).view(np.uint8).data  # bytes of the (contiguous) block itself: read into in place
    done = 0
    while done < len(view):
        got = call(fd, [view[done:done + (1 << 30)]], offset + done)
        if got <= 0:
            raise KexueError("the on-disk candidate graph was cut short (disk full?); free space in the "
                             "temporary folder or give another (CLI: --workdir DIR)")
        done += got


def disk_graph(n: int, width: int, n_index: int) -> tuple[DiskRows, DiskRows]:
    """``(dist, ind)`` of an ``n × width`` candidate graph on disk: float64 distances, ids stored as
    int32 while ``n_index < 2^31`` and read back as int64."""
    ids = np.int32 if n_index < 2**31 else np.int64
    return DiskRows(n, width, np.float64), DiskRows(n, width, ids, np.int64)


def is_disk(a) -> bool:
    return isinstance(a, DiskRows)


def first_occurrences(ind, k: int, n_index: int, rows: int) -> np.ndarray:
    """N_k from the first ``k`` columns of a graph's ids, read ``rows`` rows at a time."""
    nk = np.zeros(n_index, np.int64)
    for s in range(0, len(ind), rows):
        nk += np.bincount(np.asarray(ind[s:s + rows, :k]).ravel(), minlength=n_index)
    return nk
