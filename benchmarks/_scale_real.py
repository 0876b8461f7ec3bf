"""The real-embedding row of ``bench_hubness_scale.py`` (``--real KEY``): a matrix of real vectors
from a model in kexue's zoo (``kexue.unargmax.zoo``), written once as a float32 .npy in ``--data-dir``.

The largest real set available offline is **Gemma 3 270M's tied token embedding matrix**
(``--real gemma3-270m``): ``token_embd.weight`` of the zoo's GGUF, 262,144 tokens × 640, stored as
Q8_0 and dequantised to float32 by kexue's loader (``load_output_layer``). Its rows are written as
they are, **not normalised** (``row_norms`` in the JSON gives min / median / max; in the zoo's file
they lie between 1.028 and 1.035), and the row runs the benchmark's Euclidean k = 10 search like
the synthetic rows, so all rows compare. For token similarity cosine (unit rows) is the usual
metric; with norms this close the Euclidean neighbours are nearly the cosine ones, but not
exactly (a cosine row, on normalised rows, would be another row; not built here).

The model is never downloaded by the benchmark: ``zoo.fetch(download=False)`` takes it from the
kexue cache (``$KEXUE_CACHE``, default ``~/.cache/kexue``; ``make zoo`` fills it) or raises, and
:class:`RealUnavailable` carries that one-line reason, which the benchmark prints as the row's
skip. The .npy is named by the model key and the zoo's recorded sha256 (so a new model file makes
a new cache entry); a sidecar ``.json`` holds the source's description and the sha256 of the GGUF
actually read (hashed when the .npy is written; ``sha256_matches_zoo`` compares it with the
zoo's record). Both are written whole or not at all (``kexue.utils.atomic_path``), the sidecar
last, so the pair exists only complete; a cached pair is used without the model. The benchmark
runs the extraction in its own process (``_scale_children.py real``; its wall time and memory go
to the JSON as ``source.extraction``).

:func:`source` is the benchmark's one way to any of its data sets (the synthetic ones come from
``_scale_data.py``), with the labels its saved measures are keyed by.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from _scale_data import dataset, dataset_path


class RealUnavailable(Exception):
    """The real set cannot be built on this machine (the one-line reason says why and what to do)."""


def _model(key: str):
    from kexue.unargmax import zoo

    if key not in zoo.BY_KEY:
        raise RealUnavailable(f"no zoo model {key!r}; pass one of {', '.join(sorted(zoo.BY_KEY))}")
    return zoo.BY_KEY[key]


def real_path(folder: Path, key: str) -> Path:
    """The cached float32 .npy of zoo model ``key`` in ``folder``."""
    return Path(folder) / f"real-{key}-{_model(key).sha256[:12]}.npy"


def _info_path(path: Path) -> Path:
    return path.with_suffix(".json")


def real_info(folder: Path, key: str) -> dict:
    """The sidecar of a cached real set: source, tensor, shape, quantisation, sha256, row norms."""
    return json.loads(_info_path(real_path(folder, key)).read_text())


def real_dataset(folder: Path, key: str) -> tuple[Path, float | None, dict]:
    """Path of the cached .npy of zoo model ``key``, written from the kexue cache's model if missing;
    the extraction's seconds (None when cached) and the sidecar's description. Raises
    :class:`RealUnavailable` when the model is not in the cache (or cannot be read)."""
    from kexue.unargmax import zoo
    from kexue.utils import KexueError, atomic_path, atomic_write

    model = _model(key)
    path = real_path(folder, key)
    if path.exists() and _info_path(path).exists():
        return path, None, real_info(folder, key)
    t = time.perf_counter()
    try:
        source = zoo.fetch(model, download=False)
        layer = zoo.load(model, download=False)
    except KexueError as e:  # not in the cache, or the lm extra (gguf) missing: one line, no download
        raise RealUnavailable(str(e).splitlines()[0]) from None
    W = np.asarray(layer.W, dtype=np.float32)
    Path(folder).mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.save(tmp, W)
    norms = np.linalg.norm(W, axis=1)
    got = zoo.sha256(source)
    info = {"model": key, "title": model.title, "source": str(source), "tensor": layer.weight_name,
            "quantisation": layer.info.get("quantisation"), "rows": int(W.shape[0]), "dim": int(W.shape[1]),
            "source_dtype": str(np.asarray(layer.W[:1]).dtype), "normalised": False, "metric": "euclidean",
            "source_sha256": got, "zoo_sha256": model.sha256, "sha256_matches_zoo": got == model.sha256,
            "row_norms": {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())}}
    with atomic_write(_info_path(path), "w") as f:
        json.dump(info, f, indent=1)
    return path, time.perf_counter() - t, info


def _make_real(folder: Path, key: str, child) -> dict:
    """The cached set's description, or the extraction run by ``child("real", ...)`` in its own process
    (it holds the GGUF and the float32 matrix, 2.16 GiB at its peak for Gemma: the benchmark's process,
    which lives for hours, would keep ~0.75 GB of it), with its wall time and memory."""
    path = real_path(folder, key)
    if path.exists() and _info_path(path).exists():
        return {"generate_s": None, "source": real_info(folder, key)}
    r = child("real", folder=str(folder), key=key)
    if "unavailable" in r["result"]:
        raise RealUnavailable(r["result"]["unavailable"])
    ext = {"wall_s": r["wall_s"], "maxrss_bytes": r["maxrss_bytes"], "anon_peak_bytes": r["anon_peak_bytes"],
           "load_1min_at_start": r["load_1min_at_start"]}
    return {"generate_s": r["result"]["generate_s"], "source": {**r["result"]["source"], "extraction": ext}}


def source(a, kind: str, st, child) -> tuple[str, Path, int, int, float | None, dict | None]:
    """A data set of the benchmark (``kind``: clustered, gaussian or real-KEY) made or taken from the
    cache through the saved state ``st``: its measures' label, path, n, d, the seconds it took to make
    (None if cached) and the real set's description (None for the synthetic ones). ``child(name,
    **args)`` runs ``_scale_children.py``'s ``name`` in its own process (the benchmark's ``child``)."""
    folder = Path(a.data_dir)
    if kind.startswith("real-"):  # RealUnavailable (not saved) when the model is not in the kexue cache
        key = kind.removeprefix("real-")
        path = real_path(folder, key)
        r = st.run(kind, "generate", lambda: _make_real(folder, key, child), need=[path, _info_path(path)])
        return kind, path, r["source"]["rows"], r["source"]["dim"], r["generate_s"], r["source"]
    n = (a.gaussian_rows or a.rows) if kind == "gaussian" else a.rows
    path = dataset_path(folder, kind, n, a.dim, a.seed)
    # the saved measures' keys: the Gaussian row's by its size (the timed commands' by --threads, in the
    # benchmark), so that a resumed run can add it without touching what is saved
    label = kind if kind == "clustered" else f"{kind}-n{n}"
    gen_s = st.run(label, "generate", lambda: {"generate_s": dataset(folder, kind, n, a.dim, a.seed)[1]},
                   need=[path])["generate_s"]
    return label, path, n, a.dim, gen_s, None


def describe(src: dict) -> str:
    """One line on a real set: what it is, that its rows are not normalised, the GGUF's sha256."""
    nm = src["row_norms"]
    return (f"{src['title']}: {src['tensor']} {src['rows']:,} × {src['dim']}, {src['quantisation']} read as float32, "
            f"rows not normalised (norms {nm['min']:.4g} to {nm['max']:.4g}, median {nm['median']:.4g}); source "
            f"sha256 {src['source_sha256']}" + ("" if src["sha256_matches_zoo"] else " (NOT the zoo's recorded one)"))
