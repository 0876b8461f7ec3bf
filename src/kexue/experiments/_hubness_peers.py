"""The peers' side of the hubness experiment's shift section (issue 28): kiez 0.5.0 and
nnn-retrieval 1.0.1 on the same vectors, in their own interpreter.

Not imported by kexue: ``kexue.experiments._hubness_shift`` runs this file with the Python named by
``$KEXUE_PEERS_PYTHON`` (a venv with kiez, nnn-retrieval and torch; see docs/hubness.md), since
kiez pins numpy < 2. It reads ``IN.npz`` (``X`` index, ``Q`` test queries, ``B`` reference bank,
``settings`` JSON: metric, k, candidates, alpha, nnn_k), runs every (library, method, reference)
with one thread, and writes ``OUT.npz``: each run's neighbour ids (``ind-<run>``) and a JSON list
of ``{"run", "seconds"}``; the seconds cover everything from the vectors to the queries'
neighbours (not the imports). Nothing is printed on stdout but the last line, "ok".
"""

from __future__ import annotations

import json
import os
import sys
import time

def kiez_sklearn_tags() -> None:
    """kiez 0.5.0 predates scikit-learn's ``__sklearn_tags__`` (1.6): its estimators borrow
    BaseEstimator's (also used by ``benchmarks/_scale_kiez.py``)."""
    try:
        from sklearn.base import BaseEstimator
        from kiez.hubness_reduction.base import HubnessReduction
        from kiez.neighbors.neighbor_algorithm_base import NNAlgorithm

        for cls in (HubnessReduction, NNAlgorithm):
            if not hasattr(cls, "__sklearn_tags__"):
                cls.__sklearn_tags__ = BaseEstimator.__sklearn_tags__
    except ImportError:
        pass


def kiez_run(method, X, Q, B, metric, c, k):
    """kiez: ``fit(source=B, target=X)`` learns each index point's statistic from its ``c`` nearest
    source points; the test queries are then searched and re-ranked by kiez's own pieces
    (``nn_algo.kneighbors(query=Q)``, ``hubness.transform``, ``_sort``); with B = Q this is exactly
    ``Kiez.fit(Q, X).kneighbors(k)``."""
    import numpy as np
    from kiez import Kiez

    hub, kw = {"none": (None, {}), "csls": ("CSLS", {}), "ls": ("LocalScaling", {"method": "standard"}),
               "nicdm": ("LocalScaling", {"method": "nicdm"}), "mp": ("MutualProximity", {"method": "normal"})}[method]
    t = time.perf_counter()
    kz = Kiez(n_candidates=c, algorithm="SklearnNN", algorithm_kwargs={"algorithm": "brute", "metric": metric},
              hubness=hub, hubness_kwargs=dict(kw))
    kz.fit(B, X)
    if B is Q:
        ind = kz.kneighbors(k)[1]
    else:
        h = kz.hubness
        d, i = h.nn_algo.kneighbors(k=c if hub else k, query=Q, return_distance=True)
        if hub:
            d, i = h.transform(d, i, Q)
            d, i = h._sort(d, i, k)
            o = np.argsort(d, axis=1, kind="stable")  # kiez's _sort partitions: order the top k
            i = np.take_along_axis(i, o, 1)
        ind = i
    return time.perf_counter() - t, np.asarray(ind)


def nnn_run(X, Q, B, alpha, k, top):
    """nnn-retrieval's NNNRanker (exhaustive torch scoring of inner products; the experiment passes
    unit vectors, so the similarity is the cosine) with ``B`` as ``reference_embeds``."""
    import io
    from contextlib import redirect_stdout

    import numpy as np

    with redirect_stdout(io.StringIO()):  # its import prints a note about faiss-gpu
        import nnn
    t = time.perf_counter()
    ranker = nnn.NNNRanker(nnn.NNNRetriever(X.shape[1]), X, B, alternate_ks=k, batch_size=256,
                           alternate_weight=alpha)
    ind = ranker.search(Q, top)[1]
    return time.perf_counter() - t, np.asarray(ind)


def main(src, dst):
    import numpy as np
    import torch

    torch.set_num_threads(1)
    os.environ["TQDM_DISABLE"] = "1"
    kiez_sklearn_tags()
    with np.load(src, allow_pickle=False) as f:
        X, Q, B = f["X"], f["Q"], f["B"]
        cfg = json.loads(str(f["settings"]))
    def unit(A):
        return np.ascontiguousarray((A / np.linalg.norm(A, axis=1, keepdims=True)).astype(np.float32))

    out, log = {}, []
    for run in cfg["runs"]:
        lib, method, ref = run.split(":")
        bank = Q if ref == "queries" else B
        if lib == "kiez":
            sec, ind = kiez_run(method, X, Q, bank, cfg["metric"], cfg["candidates"], cfg["k"])
        else:
            Xu, Qu = unit(X), unit(Q)
            sec, ind = nnn_run(Xu, Qu, Qu if ref == "queries" else unit(B), cfg["alpha"], cfg["nnn_k"], cfg["k"])
        out[f"ind-{run}"] = ind.astype(np.int64)
        log.append({"run": run, "seconds": sec})
    np.savez(dst, log=json.dumps(log), **out)


if __name__ == "__main__":
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # one thread, set before numpy is first imported (in main)
    import warnings

    warnings.simplefilter("ignore")
    main(sys.argv[1], sys.argv[2])
