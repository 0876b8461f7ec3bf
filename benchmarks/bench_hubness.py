"""Benchmark: the kNN graph behind N_k (SPEC 8.2), ours against scikit-learn's brute force.

1. Exact: 100,000 × 384 float32 i.i.d. Gaussian points (seed 0), k = 10, self excluded —
   ``kneighbors(X, 10)`` against ``NearestNeighbors(algorithm="brute").kneighbors()``, timed
   interleaved (A B A B, medians; ``benchmarks/_bench.py``), with the neighbour sets compared.
2. Approximate at ``recall=0.95`` (the search parameter chosen on a 1,000-query sample): IVF
   (FAISS) on the same Gaussian data — no cluster structure, the hardest case — and IVF and HNSW
   (FAISS HNSW, 2 build threads) on MNIST's 60,000 training images (784-d, real data), each against
   scikit-learn brute on the same data. Recall is reported twice: the sample's (what the library
   returns) and the whole graph's against our exact graph.

    .venv/bin/python benchmarks/bench_hubness.py [--n 100000] [--dim 384] [--repeats 2] [--parts 1,2,3]

``--parts`` picks the parts (3 is the MNIST one; 2 needs 1's exact graph and time). IVF at recall 0.95
on the structureless Gaussian data (part 2) probes most lists and may run for a long time.

Heavy (about 10 minutes on 2 cores): run it under the CPU lock.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import interleaved, load  # noqa: E402


def sklearn_brute(X, k):
    from sklearn.neighbors import NearestNeighbors

    # kneighbors() without X excludes each point itself, as ours does
    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(return_distance=False)


def same_sets(a, b) -> float:
    return float((np.sort(a, 1) == np.sort(b, 1)).all(1).mean())


def exact_part(X, k, repeats):
    from kexue.hubness import kneighbors

    got = {}

    def ours():
        got["ours"] = kneighbors(X, k).ind

    def peer():
        got["sklearn"] = sklearn_brute(X, k)

    t = interleaved({"sklearn-brute": peer, "ours-exact": ours}, repeats=repeats, warmup=0)
    print(f"  sklearn brute  {t['sklearn-brute']:8.1f} s")
    print(f"  ours exact     {t['ours-exact']:8.1f} s   ours/sklearn {t['ours-exact'] / t['sklearn-brute']:.2f}x   "
          f"rows with the same neighbour set as sklearn: {same_sets(got['ours'], got['sklearn']):.4f}", flush=True)
    return t["sklearn-brute"], got["ours"]


def approx_part(X, k, peer_seconds, exact_ind, backends=("ivf", "hnsw")):
    from kexue.hubness import kneighbors, knn_recall

    for backend in backends:
        params = {"num_threads": 2} if backend == "hnsw" else {}
        t = time.perf_counter()
        g = kneighbors(X, k, backend=backend, recall=0.95, backend_params=params)
        sec = time.perf_counter() - t
        true = knn_recall(g.ind, exact_ind)
        print(f"  ours {backend:<9} {sec:8.1f} s   sklearn/ours {peer_seconds / sec:5.2f}x   {g.params}   "
              f"recall: sample {g.recall:.3f}, whole graph {true:.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--parts", default="1,2,3", help="comma-separated: 1 exact Gaussian, 2 IVF Gaussian, 3 MNIST")
    ap.add_argument("--no-mnist", action="store_true", help="same as leaving 3 out of --parts")
    a = ap.parse_args()
    parts = {int(x) for x in a.parts.split(",") if x.strip()} - ({3} if a.no_mnist else set())
    import faiss
    import sklearn
    from threadpoolctl import threadpool_info

    blas = [f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"sklearn {sklearn.__version__}, faiss {faiss.__version__}, BLAS: {', '.join(sorted(set(blas)))}")
    print(load(), flush=True)
    if parts & {1, 2}:
        X = np.random.default_rng(0).standard_normal((a.n, a.dim), dtype=np.float32)
        print(f"\n1. exact kNN, {a.n} × {a.dim} float32 Gaussian, k = {a.k} (median of {a.repeats}, interleaved)")
        peer, exact_ind = exact_part(X, a.k, a.repeats)
    if 2 in parts:
        print("\n2. approximate at recall 0.95, same data (vs the sklearn median above; HNSW is not timed on")
        print("   this structureless data: its build alone would take minutes)")
        approx_part(X, a.k, peer, exact_ind, ("ivf",))
    if 3 in parts:
        from kexue.data import load_mnist_train
        from kexue.hubness import kneighbors

        M = np.asarray(load_mnist_train()[0], dtype=np.float32).reshape(60000, -1)
        print(f"\n3. MNIST train {M.shape[0]} × {M.shape[1]}, k = {a.k}", flush=True)
        t = time.perf_counter()
        sklearn_brute(M, a.k)
        peer = time.perf_counter() - t
        print(f"  sklearn brute  {peer:8.1f} s", flush=True)
        approx_part(M, a.k, peer, kneighbors(M, a.k).ind)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
