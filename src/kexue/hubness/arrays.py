"""Arrays at the hubness entry points: torch tensors of any dtype as NumPy arrays, and the exact
power-of-two rescale that keeps coordinates near the ends of the float range searchable (issue 31);
rows derived block by block from a memory map (:class:`BlockRows`, :func:`row_blocks`: the pages
read are released as they are consumed); the reductions' input check and fitted check, shared by
their modules."""

from __future__ import annotations

import numpy as np
from sklearn.exceptions import NotFittedError

from kexue import validate
from kexue.io import read_only_maps, release_pages
from kexue.utils import KexueError, KexueTypeError


def host_array(X):
    """A torch tensor as a NumPy array (bfloat16 and other dtypes NumPy lacks become float32), without
    importing torch; anything else unchanged. The hubness entry points call it before validation."""
    if type(X).__module__.split(".")[0] == "torch" and hasattr(X, "detach"):
        X = X.detach().cpu()
        if str(X.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            X = X.float()
        return X.numpy()
    return X


_SAFE_EXP = 40  # |coordinates| within 2^±40: float32 squared norms (≤ 2^80 · dim) neither overflow nor vanish


def pow2_exponent(max_abs: float) -> int:
    """The power of two to divide data by so that its largest |coordinate| lies in [0.5, 1), or 0 when
    it is already safe (2^-40 ≤ max ≤ 2^40; then nothing is rescaled and results are bit-identical).
    Scaling by a power of two is exact, and every distance scales by the same power."""
    if not np.isfinite(max_abs) or max_abs == 0 or 2.0**-_SAFE_EXP <= max_abs <= 2.0**_SAFE_EXP:
        return 0
    return int(np.frexp(max_abs)[1])


def max_abs(A) -> float:
    """``max |A|`` with no ``|A|`` copy of a large matrix, over blocks of rows (a memory map's pages
    released as they are read); max and min are exact in any order, NaN propagates as in one pass."""
    if not A.size:
        return 0.0
    b = max(1, (1 << 22) // max(1, A.size // len(A)))  # 4M values (16 MB of float32) per block
    ends = np.array([(B.max(), -B.min()) for _, B in row_blocks(A, b)], dtype=np.float64)
    return float(ends.max())


def row_blocks(X, block: int, start: int = 0):
    """``(s, X[s:s + block])`` for s = start, start + block, ... (the rows as an array: a view of a
    memory map stays one), the memory map's pages released (:func:`kexue.io.release_pages`) when the
    next block is asked for, i.e. once the caller is done with this one."""
    for s in range(start, len(X), block):
        yield s, np.asarray(X[s:s + block])
        release_pages(X)


GATHER_ROWS = 64  # rows gathered between releases of a memory map: ≤ 128 MB resident (see gather_rows)


def gather_rows(X, ids) -> np.ndarray:
    """``X[ids]`` (ids 1-D; the same values). From a read-only memory map (:func:`kexue.io.read_only_maps`)
    the rows are read in increasing id order, ``GATHER_ROWS`` at a time, and the map's pages released
    after each (:func:`kexue.io.release_pages`): a read maps the whole page-cache folio around it (Linux
    6.18 here: 2 MB), so a few thousand scattered rows would map most of a file. Cost (200 MB map, 27,300
    random rows, unsorted, load 2): 0.6 µs a row mapped already, 1.8 µs at first read, 3-6 µs released
    every 32-256 rows."""
    if len(ids) <= 1 or not read_only_maps(X):  # in memory: one gather
        return np.asarray(X[ids])
    out = np.empty((len(ids), X.shape[1]), X.dtype)
    order = np.argsort(ids, kind="stable")  # neighbouring ids share folios: fewer of them mapped
    for s in range(0, len(ids), GATHER_ROWS):
        o = order[s:s + GATHER_ROWS]
        out[o] = X[ids[o]]
        release_pages(X)
    return out


class BlockRows:
    """Rows derived from a matrix (a memory map stays on disk) block by block, never whole:
    ``rows[a:b]``, ``rows[ids]`` (any int array shape), ``rows[r]``, ``rows[a:b, None, :]`` are
    ``f`` of those rows of ``src``. ``f`` works row by row, so a block's rows are bit for bit the
    rows the whole matrix would give. The last slice is kept: the screening asks for one query
    block against every index block. The memory map's pages are released after each read
    (:func:`kexue.io.release_pages`): ``f``'s rows are what is kept."""

    def __init__(self, src, f, width: int):
        self.src, self.f, self.shape = src, f, (len(src), width)
        self._last = (None, None)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None),) + key[1:]]
        if isinstance(key, slice):
            a, b, _ = key.indices(len(self))
            if self._last[0] != (a, b):
                self._last = ((a, b), self.f(np.asarray(self.src[a:b])))
                release_pages(self.src)
            return self._last[1]
        if isinstance(key, (int, np.integer)):
            return self[int(key):int(key) + 1][0]
        key = np.asarray(key)
        return self.f(gather_rows(self.src, key.ravel())).reshape(*key.shape, self.shape[1])  # pages released


class NotFitted(KexueError, NotFittedError):
    """A reduction used before ``fit`` (a KexueError and scikit-learn's NotFittedError)."""


def _vectors(X, what: str = "X") -> np.ndarray:
    """A float64 matrix; scikit-learn's array checks first (their wording is what its estimator
    checks expect), each failure re-raised as one KexueError line, then kexue's own checks."""
    from sklearn.utils import check_array

    X = host_array(X)
    try:
        X = check_array(X, dtype=np.float64, input_name=what)
    except TypeError as e:
        raise KexueTypeError(f"{what}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise KexueError(f"{what}: {' '.join(str(e).split())}") from None
    return validate.matrix(X, what)


def check_is_fitted(est) -> None:
    if not hasattr(est, "stats_"):
        raise NotFitted(f"{type(est).__name__} is not fitted; call fit(X) first")
