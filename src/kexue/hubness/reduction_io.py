"""Saving and loading a fitted hubness reduction: one ``.safetensors`` file (``kexue.io.save_fitted``)
holding its parameters, fitted statistics and, fitted on vectors, the index vectors (else its graph)."""

from __future__ import annotations

from kexue.utils import KexueError


def save_reduction(est, path) -> None:
    from kexue.hubness.arrays import check_is_fitted
    from kexue.io import save_fitted

    check_is_fitted(est)
    if not isinstance(est.backend, str):
        raise KexueError("a reduction over your own FAISS index cannot be saved with it; save the index "
                         "with faiss.write_index and fit again on load")
    tensors = {f"stat{i}": s for i, s in enumerate(est.stats_)}
    tensors.update({"X": est.X_} if est.X_ is not None else {"gd": est._graph[0], "gi": est._graph[1]})
    tensors.update(est._extra_tensors())
    config = {"params": est.get_params(), "n_index": est.n_index_, "n_candidates": est.n_candidates_,
              "n_features_in": est.n_features_in_, "fit_mode": est.fit_mode_, "n_stats": len(est.stats_),
              "n_samples_used": est.n_samples_, "exp": est.exp_, "n_reference": est.n_reference_,
              "transductive": est.transductive_}
    save_fitted(path, f"hubness.{type(est).__name__}", tensors, config)


def load_reduction(cls, path):
    from kexue.io import load_fitted

    t, cfg = load_fitted(path, f"hubness.{cls.__name__}")
    est = cls(**cfg["params"])
    est.n_index_, est.n_candidates_ = cfg["n_index"], cfg["n_candidates"]
    est.n_features_in_, est.fit_mode_ = cfg["n_features_in"], cfg["fit_mode"]
    est.n_samples_ = cfg.get("n_samples_used")  # absent in files saved before "auto" existed
    est.exp_ = cfg.get("exp", 0)  # absent before issue 31: no rescale
    est.n_reference_ = cfg.get("n_reference")  # absent before issue 28: index-internal statistics
    est.transductive_ = cfg.get("transductive", False)
    est.stats_ = tuple(t[f"stat{i}"] for i in range(cfg["n_stats"]))
    est.X_ = t.get("X")
    est._graph = (t["gd"], t["gi"]) if "gd" in t else None
    est._screen = None
    est._screening()
    est._load_extra(t)
    return est
