"""Read a softmax output layer (W, b) and its vocabulary from the files models ship in.

Formats: ``.npy`` (W), ``.npz`` (W and optionally b, keys by option), ``.safetensors`` (tensor
names by option, listed when ambiguous), a Hugging Face model folder (``lm_head.weight``, or the
tied input embeddings, plus a bias if the head has one) and GGUF (``output.weight`` or the tied
``token_embd.weight``, dequantised with ``gguf.quants``). Nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kexue.utils import KexueError, require

# output heads first, then input embeddings that a tied head reuses
HEAD_NAMES = ["lm_head.weight", "cls.predictions.decoder.weight", "output.weight", "embed_out.weight",
              "decoder/projection/weight", "output/output/kernel:0"]
EMBED_NAMES = ["model.embed_tokens.weight", "embed_tokens.weight", "embeddings.word_embeddings.weight",
               "bert.embeddings.word_embeddings.weight", "transformer.wte.weight", "wte.weight", "shared.weight",
               "gpt_neox.embed_in.weight", "tok_embeddings.weight", "word_embeddings.weight",
               "decoder/embeddings/weight"]
BIAS_NAMES = ["lm_head.bias", "cls.predictions.bias", "cls.predictions.decoder.bias", "final_logits_bias", "output.bias",
              "embed_out.bias"]


@dataclass
class OutputLayer:
    """W (C, d) float32/float64, b (C,) or None, the tensor names used, and the vocabulary."""

    W: np.ndarray
    b: np.ndarray | None
    source: str
    weight_name: str = ""
    bias_name: str | None = None
    tied: bool = False
    vocab: list | None = None
    info: dict = field(default_factory=dict)

    def token(self, i: int) -> str:
        if self.vocab is None or not 0 <= i < len(self.vocab):
            return f"<id {i}>"
        return self.vocab[i]

    @property
    def precision(self) -> str:
        """The format the weights were stored in (GGUF type, safetensors dtype or NumPy dtype):
        what :func:`~kexue.unargmax.default_min_margin` reads."""
        return str(self.info.get("quantisation") or self.info.get("dtype") or self.W.dtype)

    def normalized(self) -> OutputLayer:
        """The same layer with every row scaled to unit norm (SPEC 3.5: then every distinct row
        is argmaxable without a bias), in float64."""
        W = np.asarray(self.W, np.float64)
        W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-300)
        return OutputLayer(W, self.b, self.source, self.weight_name, self.bias_name, self.tied, self.vocab,
                           {**self.info, "normalized": True})


def _check_matrix(W, what):
    if W.ndim != 2:
        raise KexueError(f"{what} must be a 2-D matrix (classes × dim); got shape {tuple(W.shape)}; pick another tensor with --tensor")
    if W.shape[0] < 2 or W.shape[1] < 1:
        raise KexueError(f"{what} has shape {tuple(W.shape)}; an output layer needs ≥ 2 classes and ≥ 1 dimension")
    if not np.issubdtype(W.dtype, np.floating):
        raise KexueError(f"{what} has dtype {W.dtype}; expected floating-point weights")
    return W if W.dtype in (np.float32, np.float64) else np.asarray(W, np.float32)


def _check_bias(b, C, what):
    b = np.asarray(b)
    if b.ndim == 2 and 1 in b.shape:
        b = b.reshape(-1)
    if b.shape != (C,):
        raise KexueError(f"{what} has shape {tuple(b.shape)} but the layer has {C} classes; pass the right tensor with --bias-tensor or use --bias none")
    return np.asarray(b, np.float64)


def _pick(names, wanted, kind, path, shapes):
    if wanted is not None:
        if wanted not in names:
            raise KexueError(f"no tensor named {wanted!r} in {path}; it has: {', '.join(_listing(names, shapes))}")
        return wanted
    for n in HEAD_NAMES + EMBED_NAMES:
        if n in names:
            return n
    for n in HEAD_NAMES + EMBED_NAMES:  # the same under a prefix (ONNX exports of wrapped models)
        hits = [m for m in names if m.endswith("." + n)]
        if len(hits) == 1:
            return hits[0]
    mats = [n for n in names if len(shapes[n]) == 2]
    if len(mats) == 1:
        return mats[0]
    raise KexueError(f"cannot tell which tensor of {path} is the output layer; pass --tensor NAME, one of: {', '.join(_listing(mats or names, shapes))}")


def _listing(names, shapes, limit=30):
    out = [f"{n} {tuple(shapes[n])}" for n in sorted(names)[:limit]]
    if len(names) > limit:
        out.append(f"… ({len(names) - limit} more)")
    return out


def _bias_name(names, shapes, C, wanted, weight_name):
    if wanted is not None:
        if wanted not in names:
            raise KexueError(f"no bias tensor named {wanted!r}; 1-D tensors: {', '.join(n for n in names if len(shapes[n]) == 1) or 'none'}")
        return wanted
    cands = list(BIAS_NAMES)
    for w, bn in ((".weight", ".bias"), ("/weight", "/bias"), ("kernel:0", "bias:0")):
        if weight_name.endswith(w):
            cands.insert(0, weight_name[: -len(w)] + bn)
    for n in cands:
        if n in names and int(np.prod(shapes[n])) == C:
            return n
    return None


# ---------------------------------------------------------------------------------------------


def _load_npy(path, tensor, bias_tensor, bias):
    if tensor is not None or bias_tensor is not None:
        raise KexueError(f"{path} is a .npy file holding one array (W, no bias); --tensor/--bias-tensor name tensors of "
                         ".npz/.safetensors/.gguf files: save W and b together with np.savez(path, W=W, b=b)")
    from kexue.io import load_npy

    W = load_npy(path, "the output layer", mmap=True)
    return OutputLayer(_check_matrix(W, str(path)), None, str(path), weight_name="(npy)", info={"dtype": str(W.dtype)})


def _load_npz(path, tensor, bias_tensor, bias):
    try:
        z = np.load(path, allow_pickle=False)
        names = list(z.files)
        shapes = {n: z[n].shape for n in names}
    except (ValueError, OSError, EOFError, Exception) as e:  # zipfile.BadZipFile and friends
        raise KexueError(f"cannot read {path} as a .npz archive ({type(e).__name__}: {e})") from None
    default = [n for n in ("W", "w", "weight", "weights") if n in names]
    wname = tensor or (default[0] if default else None)
    wname = _pick(names, wname, "weight", path, shapes)
    W = _check_matrix(np.asarray(z[wname]), f"{path}:{wname}")
    bname = None
    if bias != "none":
        if bias_tensor is not None:
            bname = _bias_name(names, shapes, W.shape[0], bias_tensor, wname)
        else:
            bname = next((n for n in ("b", "bias", "biases") if n in names), None)
    b = _check_bias(z[bname], W.shape[0], f"{path}:{bname}") if bname else None
    return OutputLayer(W, b, str(path), weight_name=wname, bias_name=bname)


def _safetensors_index(files):
    """name -> (file, shape) over one or several safetensors files (header only)."""
    from safetensors import safe_open

    where, shapes = {}, {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as h:
                for n in h.keys():
                    where[n] = f
                    shapes[n] = tuple(h.get_slice(n).get_shape())
        except Exception as e:  # corrupt header, truncated file
            raise KexueError(f"cannot read {f} as safetensors ({type(e).__name__}: {e})") from None
    return where, shapes


def _st_dtype(f, name) -> str:
    """The stored dtype of a safetensors tensor ("BF16", "F16", "F32"…), read from the header."""
    with open(f, "rb") as h:
        n = int.from_bytes(h.read(8), "little")
        return str(json.loads(h.read(n)).get(name, {}).get("dtype", ""))


def _read_tensor(f, name):
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="numpy") as h:
            return h.get_tensor(name)
    except (TypeError, ValueError):  # bfloat16 has no NumPy dtype: go through torch
        torch = require("torch", "torch", "reading bfloat16 safetensors")
        pt_open = require("torch", "safetensors.torch", "reading bfloat16 safetensors").safe_open

        with pt_open(str(f), framework="pt") as h:
            return h.get_tensor(name).to(torch.float32).numpy()


def _load_safetensors(files, source, tensor, bias_tensor, bias, tied_hint=None):
    where, shapes = _safetensors_index(files)
    names = list(where)
    wname = _pick(names, tensor, "weight", source, shapes)
    W = _check_matrix(_read_tensor(where[wname], wname), f"{source}:{wname}")
    bname = None if bias == "none" else _bias_name(names, shapes, W.shape[0], bias_tensor, wname)
    b = _check_bias(_read_tensor(where[bname], bname), W.shape[0], f"{source}:{bname}") if bname else None
    tied = wname in EMBED_NAMES
    return OutputLayer(W, b, str(source), weight_name=wname, bias_name=bname, tied=tied,
                       info={"dtype": _st_dtype(where[wname], wname)})


def _load_tensor_file(tf, source, tensor, bias_tensor, bias):
    """W and b from a :class:`~kexue.unargmax.formats.TensorFile` (ONNX, Keras HDF5, CTranslate2)."""
    names = list(tf.shapes)
    wname = _pick(names, tensor, "weight", source, tf.shapes)
    W = _check_matrix(np.asarray(tf.read(wname)), f"{source}:{wname}")
    bname = None if bias == "none" else _bias_name(names, tf.shapes, W.shape[0], bias_tensor, wname)
    b = _check_bias(tf.read(bname), W.shape[0], f"{source}:{bname}") if bname else None
    tied = any(n == e or n.endswith("." + e) for e in EMBED_NAMES for n in (wname, tf.aliases.get(wname, "")))
    return OutputLayer(W, b, str(source), weight_name=wname, bias_name=bname, tied=tied,
                       info={"dtype": tf.dtypes.get(tf.aliases.get(wname, wname), str(W.dtype))})


def _load_other(p: Path, tensor, bias_tensor, bias):
    from kexue.unargmax import formats

    suf = p.suffix.lower()
    if suf == ".onnx":
        return _load_tensor_file(formats.read_onnx(p), p, tensor, bias_tensor, bias)
    if suf in (".h5", ".hdf5"):
        return _load_tensor_file(formats.read_keras_h5(p), p, tensor, bias_tensor, bias)
    if suf == ".bin" and formats.is_e5s1(p):
        tf = formats.read_e5s1(p)
        layer = _load_tensor_file(tf, p, tensor or "emb.word", bias_tensor, bias)
        layer.vocab, layer.tied = tf.vocab, True
        return layer
    if suf == ".bin" and formats.is_ctranslate2(p):
        layer = _load_tensor_file(formats.read_ctranslate2(p), p, tensor, bias_tensor, bias)
        layer.vocab = _hf_vocab(p.parent)
        return layer
    raise KexueError(f"unsupported file type {p.suffix!r}; use .npy, .npz, .safetensors, .gguf, .onnx, .h5, a CTranslate2 "
                     "model.bin or a model folder (pickled .bin/.pt weights are never read)")


def _hf_vocab(folder: Path):
    tj = folder / "tokenizer.json"
    if tj.is_file():
        Tokenizer = require("lm", "tokenizers", "reading tokenizer.json").Tokenizer
        tok = Tokenizer.from_file(str(tj))
        n = tok.get_vocab_size(with_added_tokens=True)
        return [tok.id_to_token(i) for i in range(n)]
    for name in ("vocab.txt", "vocabulary.txt"):
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8").splitlines()
    return None


def _load_hf_folder(folder: Path, tensor, bias_tensor, bias):
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (ValueError, KeyError) as e:
            raise KexueError(f"{index} is not a valid safetensors index ({e})") from None
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files and list(folder.glob("*.gguf")):
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) > 1:
            raise KexueError(f"{folder} holds several GGUF files; pass one of them: {', '.join(g.name for g in ggufs)}")
        return _load_gguf(ggufs[0], tensor, bias_tensor, bias)
    if not files and (folder / "model.bin").is_file():
        return _load_other(folder / "model.bin", tensor, bias_tensor, bias)
    if not files:
        if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
            raise KexueError(f"{folder} has only pickled PyTorch weights, which kexue never unpickles; convert them to safetensors first")
        raise KexueError(f"{folder} has no .safetensors weights (and is not a model folder)")
    layer = _load_safetensors(files, folder, tensor, bias_tensor, bias)
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            layer.info["config"] = {k: v for k, v in json.loads(cfg.read_text()).items()
                                    if k in ("model_type", "architectures", "tie_word_embeddings", "vocab_size")}
        except ValueError:
            pass
    vocab = _hf_vocab(folder)
    if vocab is not None:
        layer.vocab = vocab
    return layer


def _load_gguf(path, tensor, bias_tensor, bias):
    gguf = require("lm", "gguf", "reading .gguf files")
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:
        raise KexueError(f"cannot read {path} as GGUF ({type(e).__name__}: {e})") from None
    tensors = {t.name: t for t in r.tensors}
    shapes = {n: tuple(int(x) for x in reversed(t.shape.tolist())) for n, t in tensors.items()}
    wname = tensor
    if wname is None:
        wname = "output.weight" if "output.weight" in tensors else ("token_embd.weight" if "token_embd.weight" in tensors else None)
    wname = _pick(list(tensors), wname, "weight", path, shapes)

    def deq(t):
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shapes[t.name])

    W = _check_matrix(deq(tensors[wname]), f"{path}:{wname}")
    bname = None
    if bias != "none":
        bname = bias_tensor or ("output.bias" if "output.bias" in tensors else None)
        if bname is not None and bname not in tensors:
            raise KexueError(f"no bias tensor named {bname!r} in {path}")
    b = _check_bias(deq(tensors[bname]), W.shape[0], f"{path}:{bname}") if bname else None
    vocab = None
    f = r.fields.get("tokenizer.ggml.tokens")
    if f is not None:
        vocab = [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
    info = {"quantisation": tensors[wname].tensor_type.name}
    arch = r.fields.get("general.architecture")
    if arch is not None:
        info["architecture"] = bytes(arch.parts[arch.data[0]]).decode()
    return OutputLayer(W, b, str(path), weight_name=wname, bias_name=bname, tied=wname == "token_embd.weight",
                       vocab=vocab, info=info)


def load_output_layer(path, *, tensor: str | None = None, bias_tensor: str | None = None, bias: str = "auto") -> OutputLayer:
    """Read the output layer at ``path`` (see the module docstring for formats and names).

    ``tensor`` / ``bias_tensor`` name the tensors (or .npz keys); ``bias="none"`` ignores any
    bias. Raises KexueError for missing files, unknown formats, wrong ranks, missing names."""
    if bias not in ("auto", "none"):
        raise KexueError(f"--bias must be 'auto' or 'none'; got {bias!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise KexueError(f"{p} does not exist; pass a .npy/.npz/.safetensors/.gguf file or a Hugging Face model folder")
    if p.is_dir():
        layer = _load_hf_folder(p, tensor, bias_tensor, bias)
    else:
        if p.stat().st_size == 0:
            raise KexueError(f"{p} is empty")
        suf = p.suffix.lower()
        if suf == ".npy":
            layer = _load_npy(p, tensor, bias_tensor, bias)
        elif suf == ".npz":
            layer = _load_npz(p, tensor, bias_tensor, bias)
        elif suf == ".safetensors":
            layer = _load_safetensors([p], p, tensor, bias_tensor, bias)
            vocab = _hf_vocab(p.parent)
            if vocab is not None:
                layer.vocab = vocab
        elif suf == ".gguf":
            layer = _load_gguf(p, tensor, bias_tensor, bias)
        else:
            layer = _load_other(p, tensor, bias_tensor, bias)
    if bias == "none":
        layer.b, layer.bias_name = None, None
    return layer
