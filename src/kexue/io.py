"""Reading users' arrays safely: .npy, .npz and .safetensors, never unpickling.

:func:`read_matrix` gives a whole 2-D array; :func:`matrix_chunks` streams row blocks of files
larger than memory (.npy is memory-mapped, safetensors is sliced). Every problem — a missing or
empty file, a text file named ``.npy``, a pickled object array, a tensor of the wrong rank, an
unsupported extension — is a one-line :class:`~kexue.utils.KexueError`.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np

from kexue.utils import KexueError

FORMATS = (".npy", ".npz", ".safetensors")


def _exists(path: Path, what: str) -> None:
    if not path.exists():
        raise KexueError(f"{what} file {path} not found; pass an existing {'/'.join(FORMATS)} file")
    if path.is_dir():
        raise KexueError(f"{what} path {path} is a directory; pass a {'/'.join(FORMATS)} file")
    if path.stat().st_size == 0:
        raise KexueError(f"{what} file {path} is empty; write the array again")


def load_npy(path: str | os.PathLike, what: str = "data", mmap: bool = False) -> np.ndarray:
    """Read a .npy array without unpickling; a missing or unreadable file is a one-line KexueError."""
    path = Path(path)
    _exists(path, what)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise KexueError(f"{path} is not a .npy array (no NumPy header); save it with numpy.save")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise KexueError(f"{path} holds Python objects, not numbers; save a numeric array") from None
        raise KexueError(f"{path} is a damaged .npy array ({e}); write it again") from None
    except (OSError, EOFError) as e:
        raise KexueError(f"{path} is a damaged .npy array ({type(e).__name__}); write it again") from None


def _npz(path: Path, key: str | None, what: str) -> np.ndarray:
    try:
        z = np.load(path, allow_pickle=False)
        keys = list(z.keys())
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise KexueError(f"{path} is not a readable .npz archive ({type(e).__name__}); save it with numpy.savez") from None
    key = _pick(keys, key, path)
    try:
        return z[key]
    except ValueError:
        raise KexueError(f"array {key!r} in {path} holds Python objects, not numbers; save a numeric array") from None


def _pick(keys: list[str], key: str | None, path: Path) -> str:
    if key is None:
        if len(keys) != 1:
            raise KexueError(f"{path} holds {', '.join(keys) or 'no arrays'}; choose one with --key")
        return keys[0]
    if key not in keys:
        raise KexueError(f"{path} has no array {key!r}; it holds {', '.join(keys)}")
    return key


@dataclass
class MatrixSource:
    """A 2-D array on disk: its shape, dtype and a factory of row-chunk iterators."""
    path: Path
    n: int
    d: int
    dtype: np.dtype
    chunks: Callable[[int], Iterator[np.ndarray]]

    def read(self) -> np.ndarray:
        return np.concatenate(list(self.chunks(max(self.n, 1))), axis=0) if self.n else np.empty((0, self.d), self.dtype)


def open_matrix(path: str | os.PathLike, key: str | None = None, what: str = "embedding") -> MatrixSource:
    """A 2-D real array in a .npy (memory-mapped), .npz or .safetensors file, ready to stream."""
    path = Path(path)
    _exists(path, what)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        X = load_npy(path, what, mmap=True)
    elif suffix == ".npz":
        X = _npz(path, key, what)
    elif suffix == ".safetensors":
        return _safetensors(path, key)
    else:
        raise KexueError(f"unsupported {what} file {path.name}: use {', '.join(FORMATS)}")
    _check_2d(X.shape, X.dtype, path)
    return MatrixSource(path, X.shape[0], X.shape[1], X.dtype,
                        lambda c: (np.asarray(X[s:s + c]) for s in range(0, X.shape[0], c)))


def _check_2d(shape, dtype, path: Path) -> None:
    if len(shape) != 2:
        raise KexueError(f"{path} holds an array of shape {tuple(shape)}; expected 2-D (rows, dim)")
    if np.dtype(dtype).kind not in "fiub":
        raise KexueError(f"{path} holds {np.dtype(dtype)} values; expected real numbers")


def _safetensors(path: Path, key: str | None) -> MatrixSource:
    from safetensors import safe_open

    try:
        f = safe_open(str(path), framework="numpy")
        keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise KexueError(f"cannot read {path} as safetensors ({str(e).splitlines()[0][:120]})") from None
    key = _pick(keys, key, path)
    sl = f.get_slice(key)
    shape = sl.get_shape()
    dtype = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.float32}.get(sl.get_dtype(), np.float32)
    if len(shape) != 2:
        raise KexueError(f"tensor {key} in {path} has shape {tuple(shape)}; expected 2-D (rows, dim)")
    return MatrixSource(path, shape[0], shape[1], np.dtype(dtype),
                        lambda c: (sl[s:min(s + c, shape[0])] for s in range(0, shape[0], c)))


def read_matrix(path: str | os.PathLike, key: str | None = None, what: str = "embedding") -> np.ndarray:
    """The whole 2-D array in a .npy, .npz or .safetensors file (see :func:`open_matrix`)."""
    return open_matrix(path, key, what).read()


# ------------------------------------------------------------------ fitted objects
# Every fitted thing saves as ONE .safetensors file: its tensors, plus its JSON config and kind
# in the header's metadata. Loading checks the kind, so a DDPM file given to the VAE loader is a
# one-line error, and nothing is ever unpickled.

def save_fitted(path: str | os.PathLike, kind: str, tensors: dict, config: dict) -> None:
    """Write ``tensors`` (name -> numpy array or torch tensor) and ``config`` (JSON-able) to
    ``path`` (.safetensors), atomically."""
    import json

    from safetensors.numpy import save_file

    from kexue.utils import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        raise KexueError(f"cannot save to {path.name}: use a .safetensors file name")
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
              for k, v in tensors.items()}
    meta = {"kexue_kind": kind, "config": json.dumps(config)}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=meta)


def load_fitted(path: str | os.PathLike, kind: str) -> tuple[dict, dict]:
    """``(tensors, config)`` from a file written by :func:`save_fitted` for ``kind``."""
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise KexueError(f"{kind} file {path} not found; pass a .safetensors file written by {kind}.save")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors has its own error types for corrupt headers
        raise KexueError(f"cannot read {path} as safetensors ({str(e).splitlines()[0][:120]}); write it again") from None
    found = meta.get("kexue_kind")
    if found != kind:
        what = f"a {found}" if found else "not a kexue file"
        raise KexueError(f"{path} is {what}, not a {kind}; pass a file written by {kind}.save")
    try:
        config = json.loads(meta.get("config", "{}"))
    except ValueError:
        raise KexueError(f"{path} has a damaged config; write it again") from None
    return tensors, config
