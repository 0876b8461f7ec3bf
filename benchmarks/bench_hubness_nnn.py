"""Benchmark: kexue's NNN against nnn-retrieval 1.0.1's NNNRanker on the shapes of the hubness
experiment's shift section (issue 28), interleaved, one thread each, medians of wall and CPU time.

Settings (k = 10 neighbours, 100 candidates, alpha 0.5, NNN's k = 100 reference points):

- ``mnist``: the experiment's MNIST writers split — index = the first 5,000 MNIST test digits,
  2,000 test queries and a disjoint 2,000-query bank from the last 5,000; Euclidean for kexue
  (nnn-retrieval works on unit vectors, as in the experiment);
- ``minilm``: 8,019 index × 384, 1,003 queries, 6,994 bank (STS-B with MiniLM), cosine;
- ``smollm2``: the same counts × 576 (SmolLM2 poolings), cosine.

The two STS-B shapes use seeded Gaussian vectors (queries = noise + half their index partner), not
the encoders' embeddings: the cost of both sides depends on the shapes, not on the values. Each
setting is timed with the bank (``fit(X, reference=B).kneighbors(Q, 10)``; nnn-retrieval:
``NNNRanker(X, B).search(Q, 10)``) and transductive (``reference="queries"``; ``NNNRanker(X, Q)``).
kexue runs in this process under ``threadpool_limits(1)``; nnn-retrieval in one child process of
``--peers-python`` (``$KEXUE_PEERS_PYTHON``, a venv with nnn-retrieval and torch; see
docs/hubness.md) with one torch/OpenBLAS/MKL thread, asked for one run at a time, so the two
sides alternate (A B A B …). As in the experiment, nnn-retrieval receives float32 unit vectors
made before its clock starts and kexue the float64 vectors (``--unit-inside``: count the unit
conversion in nnn-retrieval's time too). Printed: the load average before and after, per row
the median wall and CPU seconds (``time.process_time``, all threads of the process) of each
side and kexue/nnn-retrieval for both (below 1: kexue is faster).

    .venv/bin/python benchmarks/bench_hubness_nnn.py [--peers-python PY] [--repeats 7] \\
        [--settings mnist,minilm,smollm2] [--unit-inside]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import load  # noqa: E402

CHILD = r"""
import io, json, os, sys, time
from contextlib import redirect_stdout
import numpy as np, torch
torch.set_num_threads(1)
with redirect_stdout(io.StringIO()):  # its import prints a note about faiss-gpu
    import nnn
def unit(A):
    return np.ascontiguousarray((A / np.linalg.norm(A, axis=1, keepdims=True)).astype(np.float32))
print("ready", flush=True)
for line in sys.stdin:
    path, ref, inside = json.loads(line)
    with np.load(path) as f:
        raw = {k: f[k] for k in ("X", "Q", "B")}
    prep = {k: unit(v) for k, v in raw.items()}
    t, c = time.perf_counter(), time.process_time()
    X, Q, B = ({k: unit(v) for k, v in raw.items()} if inside else prep).values()
    r = nnn.NNNRanker(nnn.NNNRetriever(X.shape[1]), X, Q if ref == "queries" else B, alternate_ks=100,
                      batch_size=256, alternate_weight=0.5)
    r.search(Q, 10)
    print(json.dumps([time.perf_counter() - t, time.process_time() - c]), flush=True)
"""


def setting(name: str, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng([seed, 28])
    if name == "mnist":
        from kexue import data

        X = data.load_mnist_test()[0].reshape(10000, -1).astype(np.float64) / 255.0
        p = 5000 + rng.permutation(5000)
        return X[:5000], X[p[:2000]], X[p[2000:4000]], "euclidean"
    d = {"minilm": 384, "smollm2": 576}[name]
    X, Q, B = (rng.standard_normal((m, d)) for m in (8019, 1003, 6994))
    return X, Q + 0.5 * X[:1003], B, "cosine"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers-python", default=os.environ.get("KEXUE_PEERS_PYTHON"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--settings", default="mnist,minilm,smollm2")
    ap.add_argument("--unit-inside", action="store_true", help="count nnn-retrieval's unit conversion in its time")
    a = ap.parse_args()
    if not a.peers_python:
        sys.exit("set $KEXUE_PEERS_PYTHON or --peers-python to a Python with nnn-retrieval and torch")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import numpy as np
    from threadpoolctl import threadpool_limits

    from kexue.hubness.reduction import NNN

    child = subprocess.Popen([a.peers_python, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore"))
    assert child.stdout.readline().strip() == "ready", "the peers' Python could not import nnn-retrieval and torch"

    def peer(path, ref):
        child.stdin.write(json.dumps([path, ref, a.unit_inside]) + "\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    def ours(S, ref):
        X, Q, B, metric = S
        t, c = time.perf_counter(), time.process_time()
        NNN(metric=metric, n_candidates=100).fit(X, reference=B if ref == "bank" else "queries").kneighbors(Q, 10)
        return [time.perf_counter() - t, time.process_time() - c]

    print(f"NNN: kexue vs nnn-retrieval, one thread each, {a.repeats} interleaved repeats; {load()}")
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        for name in a.settings.split(","):
            S = setting(name)
            path = str(Path(tmp) / f"{name}.npz")
            np.savez(path, X=S[0], Q=S[1], B=S[2])
            for ref in ("bank", "queries"):
                ours(S, ref), peer(path, ref)  # warm-up
                got = {"kexue": [], "nnn": []}
                for _ in range(a.repeats):
                    got["kexue"].append(ours(S, ref))
                    got["nnn"].append(peer(path, ref))
                med = {k: [statistics.median(r[i] for r in v) for i in (0, 1)] for k, v in got.items()}
                print(f"{name:>8} {ref:>8}  wall kexue {med['kexue'][0]:6.3f} s  nnn {med['nnn'][0]:6.3f} s  "
                      f"ratio {med['kexue'][0] / med['nnn'][0]:5.2f}   cpu kexue {med['kexue'][1]:6.3f} s  "
                      f"nnn {med['nnn'][1]:6.3f} s  ratio {med['kexue'][1] / med['nnn'][1]:5.2f}")
    child.stdin.close()
    child.wait()
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
