"""Several ``.npy`` memory maps read as one matrix of their rows (a directory of shards,
:func:`kexue.io.open_shards`; issue 29): blocks and gathered rows are read from the shards that
hold them, so a matrix larger than memory is never joined."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ShardedRows:
    """The rows of several .npy memory maps one after another, as one read-only (n, d) matrix that
    is never joined in memory: ``rows[a:b]`` (a view when inside one shard, else only those rows
    copied), ``rows[ids]`` (any int array shape), ``rows[r]``, ``rows[a:b, cols]``, ``len``,
    ``shape``, ``dtype``, ``max()``/``min()`` (shard by shard). ``np.asarray(rows)`` reads it
    all (as for a memory map, what a caller asking for one array gets)."""

    ndim = 2

    def __init__(self, maps: list, paths: list[Path]):
        self.maps, self.paths = maps, paths
        self.starts = np.cumsum([0] + [len(m) for m in maps])
        self.shape = (int(self.starts[-1]), int(maps[0].shape[1]))
        self.dtype = maps[0].dtype

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def _shard(self, row: int) -> int:
        return int(np.searchsorted(self.starts, row, side="right")) - 1

    def locate(self, row: int) -> tuple[Path, int]:
        """The shard file holding global row ``row`` and the row's number inside it."""
        s = self._shard(row)
        return self.paths[s], row - int(self.starts[s])

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head = self[key[0]]
            return head[key[1:]] if isinstance(key[0], (int, np.integer)) else head[(slice(None),) + key[1:]]
        n = len(self)
        if isinstance(key, slice):
            a, b, step = key.indices(n)
            if step != 1:
                return self[np.arange(a, b, step)]
            b = max(a, b)
            i, j = self._shard(a), self._shard(max(a, b - 1))
            if i == j or a == b:
                i = min(i, len(self.maps) - 1)
                return self.maps[i][a - self.starts[i]:b - self.starts[i]]
            return np.concatenate([self.maps[s][max(a - self.starts[s], 0):b - self.starts[s]] for s in range(i, j + 1)])
        if isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"row {key} is out of range for {n} rows")
            s = self._shard(int(key) % n)
            return self.maps[s][int(key) % n - self.starts[s]]
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        flat = key.ravel().astype(np.int64)
        if flat.size and (flat.min() < -n or flat.max() >= n):
            raise IndexError(f"row ids out of range for {n} rows")
        flat = flat % max(n, 1)
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty((len(flat), self.shape[1]), self.dtype)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.maps[s][flat[sel] - self.starts[s]]
        return out.reshape(*key.shape, self.shape[1])

    def max(self):
        return max(m.max() for m in self.maps if m.size)

    def min(self):
        return min(m.min() for m in self.maps if m.size)

    def __array__(self, dtype=None, copy=None):
        A = np.concatenate(self.maps)
        return A if dtype is None else A.astype(dtype, copy=False)
