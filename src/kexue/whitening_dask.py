"""Whitening (SPEC 5.1) of a Dask array: row blocks summed where they live, sums added in a tree.

The fit needs only N, Σ(x − c) and Σ(x − c)ᵀ(x − c) about a fixed shift c (and a power-of-two
scale; :class:`kexue.whitening.Whitening`). Those add across row blocks, so each block's sums are
computed on the worker that holds (or reads) the block and only d² numbers per block travel.
With c the mean of the first ``CHUNK`` rows — the shift the in-memory fit picks — the result
equals ``Whitening().fit(X.compute())`` up to the order of float64 additions. Dask schedules;
this module only builds the graph. Use it through ``Whitening().fit(dask_array)`` and
``transform(dask_array)``; :func:`from_file` makes a Dask array whose blocks each worker reads
from a file it sees (no data is pickled into the graph, only the path and the row range).
"""

from __future__ import annotations

import numpy as np

from kexue.utils import KexueError, require

# kexue.whitening imports this module (for Dask input), so this one does not import it back:
# ``w`` below is a kexue.whitening.Whitening, new instances are ``type(w)()``, and the chunk size
# of the first rows comes from the caller


def _block(cls, block: np.ndarray, shift: np.ndarray, scale: float):
    """One block's accumulators, about the shift and scale the first rows pick (as the
    in-memory fit does), so blocks add without moving sums."""
    if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
        raise KexueError("the data holds NaN or inf values; remove or impute them before whitening")
    w = cls()
    w._begin(shift[None, :])
    w.shift_, w.scale_ = shift, scale
    w._accumulate(block)
    return w


def _add(a, b):
    return a._add_sums(b)


def _check(X) -> None:
    require("dask", "dask.array", "whitening a Dask array")
    if X.ndim != 2:
        raise KexueError(f"expected a 2-D Dask array (rows, dim); got shape {X.shape}")
    if np.dtype(X.dtype).kind not in "fiub":
        raise KexueError(f"the Dask array holds {X.dtype} values; expected real numbers")


def fit_dask(w, X, chunk: int):
    """Fit the Whitening ``w`` on the Dask array X (n, d) (SPEC 5.1), its shift and scale from the
    first ``chunk`` rows; blocks are re-chunked to whole rows."""
    _check(X)
    dask = require("dask", "dask")
    n, d = X.shape
    if n < 2:
        raise KexueError(f"got {n} sample; whitening needs at least 2 samples (N < 2) to estimate Σ")
    X = X.rechunk({1: -1}) if len(X.chunks[1]) > 1 else X
    start = type(w)()
    start._begin(X[: min(n, chunk)].astype(np.float64).compute())  # c and s from the first rows
    parts = [dask.delayed(_block)(type(w), b, start.shift_, start.scale_) for b in X.to_delayed().ravel()]
    while len(parts) > 1:  # a binary tree: the driver never holds more than one d×d sum
        parts = [dask.delayed(_add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    total = parts[0].compute()
    w._reset()
    for name in ("n_features_in_", "n_samples_seen_", "shift_", "scale_", "sum_", "gram_"):
        setattr(w, name, getattr(total, name))
    return w._decompose()


def transform_dask(w, X):
    """x̃ = (x − βμ) U_k Λ_k^{−γ/2} block by block: a lazy Dask array (n, k), float32 for float32."""
    _check(X)
    if X.shape[1] != w.n_features_in_:
        raise KexueError(f"the Dask array has dimension {X.shape[1]} but the transform was fitted on d={w.n_features_in_}")
    X = X.rechunk({1: -1}) if len(X.chunks[1]) > 1 else X
    k = w.components_.shape[0]
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    return X.map_blocks(w.transform, chunks=(X.chunks[0], (k,)), dtype=dtype)


def _read_rows(path: str, key: str | None, a: int, b: int) -> np.ndarray:
    """Rows a..b of an embedding file, read on the worker that runs the block (a memory-map slice)."""
    from kexue.io import open_matrix

    return open_matrix(path, key).block(a, b)


def from_file(path, key: str | None = None, block_rows: int = 65536):
    """A Dask array (n, d) of the 2-D array in a .npy/.npz/.safetensors file, one block per
    ``block_rows`` rows; each block reads its rows where it runs (only the path and the range are
    in the graph), so every worker must see ``path`` (this machine's workers, or a shared disk).
    A .npy file is memory-mapped and a .safetensors tensor sliced; a .npz archive has no slices, so
    every block decompresses it whole (save a .npy for a large fit)."""
    from pathlib import Path

    from kexue import validate
    from kexue.io import open_matrix

    da, dask = require("dask", "dask.array", "a Dask array of a file"), require("dask", "dask")
    block_rows = validate.integer(block_rows, "block_rows", 1)
    path = Path(path).resolve()
    src = open_matrix(path, key)
    spans = [(a, min(a + block_rows, src.n)) for a in range(0, src.n, block_rows)]
    if not spans:
        raise KexueError(f"{path} has no rows; whitening needs at least 2 vectors to estimate Σ")
    return da.concatenate([da.from_delayed(dask.delayed(_read_rows, pure=True)(str(path), key, a, b),
                                           shape=(b - a, src.d), dtype=src.dtype) for a, b in spans])


def _write_rows(path: str, rows: np.ndarray, start: int) -> int:
    """A block's output rows written into the .npy at ``path`` (mapped read-write on the worker)."""
    Y = np.load(path, mmap_mode="r+")
    Y[start:start + len(rows)] = rows
    Y.flush()
    return len(rows)


def transform_to_file(w, X, path) -> None:
    """Write ``w.transform(X)`` of the Dask array X into the existing .npy (n, k) at ``path``, each
    block by the worker that computes it (the file must be on a disk every worker sees)."""
    dask = require("dask", "dask")
    Z = transform_dask(w, X)
    starts = np.cumsum((0,) + Z.chunks[0][:-1])
    dask.compute(*[dask.delayed(_write_rows)(str(path), b, int(s)) for b, s in zip(Z.to_delayed().ravel(), starts)])
