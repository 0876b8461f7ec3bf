"""Reading users' arrays safely: .npy, .npz and .safetensors, never unpickling.

:func:`read_matrix` gives a whole 2-D array; :func:`open_matrix` streams row blocks of files
larger than memory (.npy is memory-mapped, safetensors is sliced) and of a directory of ``.npy``
shards (:class:`ShardedRows`: the shards' rows one after another, in file-name order). Every problem — a missing or
empty file, a text file named ``.npy``, a pickled object array, a tensor of the wrong rank, an
unsupported extension, a ``key`` given for a .npy file, a NaN or inf in the rows read — is a one-line
:class:`~kexue.utils.KexueError` naming the file.
"""

from __future__ import annotations

import mmap
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np

from kexue.shards import ShardedRows
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
    if _npy_dtype(path).hasobject:
        raise KexueError(_OBJECT.format(what=f"{path} is an object array"))
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise KexueError(f"{path} holds Python objects, not numbers; save a numeric array") from None
        raise KexueError(f"{path} is a damaged .npy array ({e}); write it again") from None
    except (OSError, EOFError) as e:
        raise KexueError(f"{path} is a damaged .npy array ({type(e).__name__}); write it again") from None


# kexue never unpickles (np.load(allow_pickle=True) runs code from the file); say so and how to fix it
_OBJECT = ("{what} (dtype object: pickled Python objects), which kexue never unpickles; "
           "save a numeric array instead, e.g. np.asarray(x, dtype=np.float32) before np.save/np.savez")


def _npy_dtype(path: Path) -> np.dtype:
    """The dtype in a .npy header (read without loading the data; a broken header gives object
    dtype False and the loader's own message later)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            return reader(f)[2] if reader else np.dtype(np.float64)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return np.dtype(np.float64)


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
        raise KexueError(_OBJECT.format(what=f"array {key!r} in {path} is an object array")) from None


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
    mmap: np.ndarray | ShardedRows | None = None  # the rows as a memory map (or memory-mapped shards), where the file stores them as NumPy does
    slicer: Callable[[int, int], np.ndarray] | None = None  # rows a..b, unchecked (what block() reads)

    def read(self) -> np.ndarray:
        return np.concatenate(list(self.chunks(max(self.n, 1))), axis=0) if self.n else np.empty((0, self.d), self.dtype)

    def rows(self) -> np.ndarray | ShardedRows:
        """The rows without reading them into memory where the file allows (.npy, and safetensors of
        NumPy dtypes: a memory map), else the whole array (:meth:`read`). Not checked for NaN/inf:
        stream :meth:`chunks` for that."""
        return self.read() if self.mmap is None else self.mmap

    def block(self, a: int, b: int) -> np.ndarray:
        """Rows ``a`` to ``b`` (clipped to the file), checked finite, read alone: a slice of the
        memory map or of the safetensors tensor, not the file (a Dask worker's block)."""
        a, b = max(0, int(a)), min(int(b), self.n)
        if b <= a:
            return np.empty((0, self.d), self.dtype)
        if self.slicer is None:  # a source built without one: stream up to b
            return next(iter(self.chunks(b)))[a:b]
        locate = self.mmap.locate if isinstance(self.mmap, ShardedRows) else None
        return next(_finite(self.path, iter([np.asarray(self.slicer(a, b))]), start=a, locate=locate))


def open_matrix(path: str | os.PathLike, key: str | None = None, what: str = "embedding") -> MatrixSource:
    """A 2-D real array in a .npy (memory-mapped), .npz or .safetensors file, or a directory of
    ``.npy`` shards (:func:`open_shards`), ready to stream."""
    path = Path(path)
    if path.is_dir():
        return open_shards(path, key, what)
    _exists(path, what)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise KexueError(f"{path} is a .npy file, which holds one array; a key ({key!r}) names an array inside "
                             ".npz or .safetensors files only, so drop it")
        X = load_npy(path, what, mmap=True)
    elif suffix == ".npz":
        X = _npz(path, key, what)
    elif suffix == ".safetensors":
        return _safetensors(path, key)
    else:
        raise KexueError(f"unsupported {what} file {path.name}: use {', '.join(FORMATS)}")
    _check_2d(X.shape, X.dtype, path)
    return MatrixSource(path, X.shape[0], X.shape[1], X.dtype,
                        lambda c: _finite(path, (np.asarray(X[s:s + c]) for s in range(0, X.shape[0], c))),
                        X if isinstance(X, np.memmap) else None, slicer=lambda a, b: X[a:b])


def _finite(path: Path, chunks: Iterator[np.ndarray], start: int = 0,
            locate: Callable[[int], tuple[Path, int]] | None = None) -> Iterator[np.ndarray]:
    """The chunks (the first at row ``start``), checked: a NaN or inf is a one-line error naming the
    file, row and column (the library's checks further on only know the array as "X");
    ``locate(row)``: the shard file and its own row number, for a directory of shards."""
    row = start
    for C in chunks:
        if C.dtype.kind == "f" and not np.isfinite(C).all():
            r, c = np.argwhere(~np.isfinite(C))[0]
            where, at = (path, row + int(r)) if locate is None else locate(row + int(r))
            raise KexueError(f"{where} has a non-finite value ({C[r, c]}) at row {at}, column {int(c)}"
                             + ("" if locate is None else f" (row {row + int(r)} of {path})")
                             + "; clean or drop those rows")
        row += len(C)
        yield C


def _check_2d(shape, dtype, path: Path) -> None:
    if len(shape) != 2:
        raise KexueError(f"{path} holds an array of shape {tuple(shape)}; expected 2-D (rows, dim)")
    if np.dtype(dtype).kind == "V" and np.dtype(dtype).itemsize in (1, 2):
        raise KexueError(f"{path} holds raw {np.dtype(dtype).itemsize}-byte values ({np.dtype(dtype)}), e.g. bfloat16 "
                         "saved by ml_dtypes, which .npy/.npz cannot label; save float32 (x.astype('float32')) "
                         "or a .safetensors file, which records bfloat16")
    if np.dtype(dtype).kind not in "fiub":
        raise KexueError(f"{path} holds {np.dtype(dtype)} values; expected real numbers")


def open_shards(path: Path, key: str | None = None, what: str = "embedding") -> MatrixSource:
    """A directory of ``.npy`` files (sorted by name: zero-pad numbered names, ``part-0001.npy``),
    each a 2-D array of one width and dtype, as one matrix of their rows in that order, each file
    memory-mapped (:class:`ShardedRows`). Other files, and names starting with ``.``, are ignored."""
    if key is not None:
        raise KexueError(f"{path} is a directory of .npy shards, each one array; a key ({key!r}) names an array "
                         "inside .npz or .safetensors files only, so drop it")
    files = _shard_files(path)
    if not files:
        raise KexueError(f"{what} directory {path} holds no .npy shards; put the rows there as .npy files "
                         "(read in name order, e.g. part-0001.npy, part-0002.npy)")
    maps: list[np.ndarray] = []
    for f in files:
        M = load_npy(f, what, mmap=True)
        _check_2d(M.shape, M.dtype, f)
        if maps and (M.shape[1], M.dtype) != (maps[0].shape[1], maps[0].dtype):
            raise KexueError(f"shard {f.name} in {path} is {M.shape[1]} columns of {M.dtype} but {files[0].name} is "
                             f"{maps[0].shape[1]} of {maps[0].dtype}; save every shard with the same width and dtype")
        maps.append(M)
    R = ShardedRows(maps, files)
    return MatrixSource(path, R.shape[0], R.shape[1], R.dtype,
                        lambda c: _finite(path, (np.asarray(R[s:s + c]) for s in range(0, len(R), c)), locate=R.locate),
                        R, slicer=lambda a, b: R[a:b])


def _shard_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.npy") if not p.name.startswith(".") and p.is_file())


def release_pages(A) -> None:
    """Unmap from this process the pages of the read-only file memory map behind ``A`` — an
    ``np.memmap`` opened with mode ``"r"`` (``np.load(mmap_mode="r")``, a memory-mapped safetensors
    tensor), any view of one, or each shard of a :class:`ShardedRows` — so that a pass over a file
    keeps only the blocks it reads since the last call resident, not every page it touched (issue 29:
    the kernel's max RSS counts them). Anything else (in-memory, writable or copy-on-write maps;
    platforms other than Linux): nothing. Linux ``madvise(MADV_DONTNEED)`` on a shared file mapping
    drops only this process's page-table entries; the file and the page cache are untouched and a
    later read faults the same bytes back in from the cache, so results do not change. The whole map
    is released, not a row range: gathered rows are scattered over it, and the call is cheap (200 MB
    map, load 1.7: 4 µs with few pages resident — the kernel skips empty page tables — 1.1 ms with
    all of them; 2,730 gathered rows of 384 float32 took 3.1 ms released after each gather against
    2.1 ms, their first read, without)."""
    if sys.platform.startswith("linux") and hasattr(mmap.mmap, "madvise"):
        for m in read_only_maps(A):
            try:
                m.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # e.g. a closed map: nothing resident to drop
                pass


def read_only_maps(A) -> list:
    """The ``mmap.mmap`` objects of the read-only (mode ``"r"``) ``np.memmap`` behind ``A`` (a view,
    or ``np.asarray`` of one: the chain of bases is walked) or behind each shard of a
    :class:`ShardedRows`; ``[]`` for anything else."""
    if isinstance(A, ShardedRows):
        return [m for s in A.maps for m in read_only_maps(s)]
    a = A
    while isinstance(a, np.ndarray):
        m = getattr(a, "_mmap", None)
        if isinstance(a, np.memmap) and isinstance(m, mmap.mmap):  # ACCESS_READ is MAP_SHARED: nothing of ours
            return [m] if a.mode == "r" else []  # to lose; a copy-on-write map ("c") would drop its edits
        a = a.base
    return []


def version(path: str | os.PathLike) -> tuple:
    """What changes when a file, or a directory's ``.npy`` shards, is rewritten: resolved path,
    sizes and modification times (a key for caches of what was read or checked)."""
    path = Path(path).resolve()
    files = _shard_files(path) if path.is_dir() else [path]
    return (str(path),) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


# safetensors dtypes NumPy has: read through safetensors' own slicing
_ST_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
             "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
             "BOOL": np.bool_}


def _f8e4m3_table() -> np.ndarray:
    """float32 value of each of the 256 float8 E4M3 (FN) codes: sign, 4 exponent bits (bias 7),
    3 mantissa bits, subnormals at exponent 0, no infinities, NaN at S.1111.111."""
    code = np.arange(256)
    e, m = (code >> 3) & 0xF, code & 0x7
    mag = np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e - 7))
    mag = np.where((e == 15) & (m == 7), np.nan, mag)
    return np.where(code & 0x80, -mag, mag).astype(np.float32)


def _upcast(raw: np.ndarray, dt: str) -> np.ndarray:
    """Rows of a dtype NumPy lacks, from their raw bits, as exact float32 values."""
    if dt == "BF16":  # bfloat16 is the upper half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dt == "F8_E5M2":  # float8 E5M2 is the upper byte of a float16
        return (raw.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    return _f8e4m3_table()[raw]  # F8_E4M3


# safetensors dtypes NumPy lacks: the raw integer type their bits are read as; they upcast to float32
_ST_RAW = {"BF16": np.uint16, "F8_E5M2": np.uint8, "F8_E4M3": np.uint8}


def _safetensors(path: Path, key: str | None) -> MatrixSource:
    from safetensors import safe_open

    try:
        f = safe_open(str(path), framework="numpy")
        keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise KexueError(f"cannot read {path} as safetensors ({str(e).splitlines()[0][:120]})") from None
    key = _pick(keys, key, path)
    sl = f.get_slice(key)
    shape, dt = sl.get_shape(), sl.get_dtype()
    if len(shape) != 2:
        raise KexueError(f"tensor {key} in {path} has shape {tuple(shape)}; expected 2-D (rows, dim)")
    if dt in _ST_NUMPY:
        _check_2d(shape, _ST_NUMPY[dt], path)
        return MatrixSource(path, shape[0], shape[1], np.dtype(_ST_NUMPY[dt]),
                            lambda c: _finite(path, (sl[s:min(s + c, shape[0])] for s in range(0, shape[0], c))),
                            _raw_tensor(path, key, _ST_NUMPY[dt], shape) if dt != "BOOL" else None,
                            slicer=lambda a, b: sl[a:b])
    if dt not in _ST_RAW:
        raise KexueError(f"tensor {key} in {path} is {dt}, which kexue does not read; "
                         f"save it as F32, F16, BF16 or F8_E4M3/F8_E5M2")
    raw = _raw_tensor(path, key, _ST_RAW[dt], shape)
    return MatrixSource(path, shape[0], shape[1], np.dtype(np.float32),
                        lambda c: _finite(path, (_upcast(raw[s:s + c], dt) for s in range(0, shape[0], c))),
                        slicer=lambda a, b: _upcast(raw[a:b], dt))


def _raw_tensor(path: Path, key: str, raw, shape) -> np.ndarray:
    """A memory map of one tensor's bytes. The layout is the safetensors format: an 8-byte
    little-endian header length, the JSON header (``data_offsets`` relative to the data that
    follows it), then the data; safe_open has already checked the header."""
    import json

    with open(path, "rb") as h:
        n = int.from_bytes(h.read(8), "little")
        begin, end = json.loads(h.read(n))[key]["data_offsets"]
    if end - begin != int(np.prod(shape)) * np.dtype(raw).itemsize:
        raise KexueError(f"tensor {key} in {path} is damaged (its size does not match its shape); write it again")
    if end == begin:
        return np.zeros(shape, dtype=raw)
    return np.memmap(path, dtype=np.dtype(raw).newbyteorder("<"), mode="r", offset=8 + n + begin, shape=tuple(shape))


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
