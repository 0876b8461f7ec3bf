"""kiez 0.5.0's FAISS path on the scale benchmark's data, run by the peers' Python
(``$KEXUE_PEERS_PYTHON``; kiez pins numpy < 2, so it has its own venv: hubness_peers_venv.sh).

``python _scale_kiez.py JSON-ARGS`` loads the .npy into memory (kiez takes arrays; the load is
reported, not timed), then times ``Kiez(n_candidates=k+1, algorithm="Faiss",
algorithm_kwargs={"metric": "euclidean", "index_key": KEY, "index_param": PARAM}).fit(X)`` and
``kneighbors(k + 1)`` (kiez's self-search keeps each point's own row: it is dropped afterwards,
as kexue drops it). kiez builds its index with ``faiss.index_factory`` and ``add`` and never
trains it, so only indexes that need no training work (``Flat``, ``HNSW32``…; an IVF key fails
with FAISS's "'is_trained' failed"). Writes N_k to ``out`` and prints one JSON line. Imports
nothing from kexue (the peers' venv does not have it).
"""

from __future__ import annotations

import json
from pathlib import Path
import sys
import time


def main(a):
    import faiss
    import numpy as np

    # the shim the hubness experiment's peer script uses (a file, not kexue: this runs in the peers' venv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "kexue" / "experiments"))
    from _hubness_peers import kiez_sklearn_tags

    kiez_sklearn_tags()
    from kiez import Kiez

    k = a["k"]
    if a.get("threads"):  # the benchmark's --threads: both sides on as many threads
        faiss.omp_set_num_threads(a["threads"])
    t = time.perf_counter()
    X = np.ascontiguousarray(np.load(a["path"]), dtype=np.float32)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    kz = Kiez(n_candidates=k + 1, algorithm="Faiss",
              algorithm_kwargs={"metric": "euclidean", "index_key": a["index_key"], "index_param": a["index_param"]})
    kz.fit(X)
    ind = np.asarray(kz.kneighbors(k + 1)[1])
    sec = time.perf_counter() - t
    own = ind == np.arange(len(X))[:, None]
    drop = np.where(own.any(1), own.argmax(1), ind.shape[1] - 1)  # no own row: drop the last
    keep = np.ones_like(ind, dtype=bool)
    keep[np.arange(len(ind)), drop] = False
    ind = ind[keep].reshape(len(ind), k)
    with np.load(a["truth"]) as f:
        rows, T = f["rows"], f["truth"]
    recall = float(np.mean([len(set(ind[r]) & set(t_)) / k for r, t_ in zip(rows, T)]))
    nk = np.bincount(ind[ind >= 0].ravel(), minlength=len(X))
    np.save(a["out"], nk)
    return {"seconds": sec, "load_s": t_load, "recall": recall, "missing": int((ind < 0).sum()),
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    print(json.dumps(main(json.loads(sys.argv[1]))))
