"""The file format of :class:`kexue.whitening.Whitening` (SPEC 5): ``save`` / ``load`` through
:func:`kexue.io.save_fitted`, and the reader of files written before that (.npz, or .safetensors
marked ``kexue.whitening/1``). Kept apart from the transform's arithmetic in :mod:`kexue.whitening`,
which calls these from :meth:`~kexue.whitening.Whitening.save` and :meth:`~kexue.whitening.Whitening.load`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kexue.io import load_fitted, save_fitted
from kexue.utils import KexueError

KIND = "Whitening"
LEGACY_FORMAT = "kexue.whitening/1"  # files written before save/load went through kexue.io


def save(w, path) -> Path:
    """Write the fitted Whitening ``w`` (β, γ, k, μ, U, Λ and the accumulators) to one
    ``.safetensors`` file, atomically."""
    w._check_fitted()
    tensors = {"mean": w.mean_, "eigenvalues": w.eigenvalues_, "eigenvectors": w.eigenvectors_,
               "shift": w.shift_, "scale": np.asarray([w.scale_]), "sum": w.sum_, "gram": w.gram_,
               "n_samples_seen": np.asarray([w.n_samples_seen_], dtype=np.int64)}
    config = {"beta": float(w.beta), "gamma": float(w.gamma),
              "n_components": None if w.n_components is None else int(w.n_components)}
    save_fitted(path, KIND, tensors, config)
    return Path(path)


def load(cls, path):
    """A ``cls`` (Whitening or a subclass) with the accumulators read from ``path`` (either format),
    decomposed; a one-line KexueError for a missing, corrupt or foreign file."""
    path = Path(path)
    legacy = _read_legacy(path)
    t, config = legacy if legacy is not None else load_fitted(path, KIND)
    need = {"mean", "eigenvalues", "eigenvectors", "shift", "sum", "gram", "n_samples_seen"}
    if not need <= set(t) or not {"beta", "gamma", "n_components"} <= set(config):
        raise KexueError(f"{path} lacks parts of a whitening transform; fit it again")
    w = cls(beta=config["beta"], gamma=config["gamma"], n_components=config["n_components"])
    d = len(t["mean"])
    if t["gram"].shape != (d, d) or t["eigenvectors"].shape != (d, d):
        raise KexueError(f"{path} has inconsistent shapes; fit it again")
    w.n_features_in_ = d
    w.n_samples_seen_ = int(t["n_samples_seen"][0])
    w.shift_, w.sum_, w.gram_ = t["shift"], t["sum"], t["gram"]
    w.scale_ = float(t["scale"][0]) if "scale" in t else 1.0  # files before the scaling held y unscaled
    return w._decompose()


def _read_legacy(path: Path) -> tuple[dict, dict] | None:
    """(tensors, config) of a file in the earlier format (.npz, or .safetensors whose metadata
    says ``format: kexue.whitening/1``); None for anything else (then :func:`load_fitted` judges)."""
    if not path.is_file() or path.suffix not in (".npz", ".safetensors"):
        return None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != LEGACY_FORMAT:
                    return None
                t = {k: f.get_tensor(k) for k in f.keys()}
        else:
            with np.load(path, allow_pickle=False) as z:
                t = {k: z[k] for k in z.files}
            meta = json.loads(str(t.pop("meta"))) if "meta" in t else {}
    except Exception as e:  # safetensors/zip raise assorted types for corrupt files
        if path.suffix == ".safetensors":
            return None  # load_fitted gives the message for a damaged .safetensors file
        raise KexueError(f"{path} is not a readable whitening transform ({type(e).__name__}); fit it again") from None
    if meta.get("format") != LEGACY_FORMAT:
        raise KexueError(f"{path} is not a kexue whitening transform; fit it again (transforms are .safetensors)")
    k = meta.get("n_components", "")
    return t, {"beta": float(meta["beta"]), "gamma": float(meta["gamma"]), "n_components": int(k) if k else None}
