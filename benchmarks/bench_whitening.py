"""Benchmark: whitening fit + transform of 1,000,000 × 384 float32 vectors (SPEC 5).

kexue's streaming ``Whitening`` (float64 count/sum/Gram accumulators, one eigendecomposition)
against scikit-learn's ``PCA(whiten=True)`` (whole matrix in memory) and ``IncrementalPCA``
(whiten=True, partial_fit per chunk), in one run. The vectors are generated once into a .npy
file on disk with a realistic anisotropic spectrum (power-law eigenvalues λ_i ∝ i^-1.2 plus a
large common mean, like sentence embeddings) and every method reads the same file:

- kexue and IncrementalPCA read it in chunks with plain file reads (not mmap, so the page
  cache is not counted as their memory), fit, then transform chunk by chunk;
- PCA loads the whole matrix (it has no streaming fit), fits, then transforms chunk by chunk.

Each method runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.
Transformed chunks are reduced to a checksum rather than stored, so output storage is not
part of anyone's peak. Usage::

    .venv/bin/python benchmarks/bench_whitening.py            # 1,000,000 × 384
    .venv/bin/python benchmarks/bench_whitening.py --n 200000 # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _bench import load


def generate(path: Path, n: int, d: int, chunk: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.arange(1, d + 1, dtype=np.float64) ** -1.2
    W = (np.sqrt(lam)[:, None] * Q.T).astype(np.float32)  # rows scaled, then rotated
    mu = (2.0 * rng.standard_normal(d) * np.sqrt(lam[0])).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, chunk):
        g = np.random.default_rng([seed, s])
        m = min(chunk, n - s)
        out[s : s + m] = g.standard_normal((m, d), dtype=np.float32) @ W + mu
    out.flush()
    del out


def read_chunks(path: Path, chunk: int, limit: int | None = None):
    """Yield float32 row blocks of a .npy file with ordinary reads (bounded memory)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        assert not fortran and dtype == np.float32
        n, d = shape
        n = n if limit is None else min(n, limit)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            buf = np.empty((m, d), dtype=np.float32)
            f.readinto(memoryview(buf).cast("B"))
            yield buf


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork+exec, so every child would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_method(method: str, path: Path, chunk: int, ipca_rows: int | None = None) -> dict:
    n, d = np.load(path, mmap_mode="r").shape
    # imports first, so the timings are the work, not Python start-up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from sklearn.decomposition import PCA, IncrementalPCA

    from kexue.whitening import Whitening

    rows = n if method != "ipca" or not ipca_rows else min(n, ipca_rows)
    t0 = time.perf_counter()
    if method == "kexue":
        est = Whitening(beta=1.0, gamma=1.0).fit_chunks(read_chunks(path, chunk))
        lam = est.explained_variance_
    elif method == "ipca":
        est = IncrementalPCA(n_components=d, whiten=True)
        for C in read_chunks(path, chunk, rows):
            est.partial_fit(C)
        lam = est.explained_variance_ * (n - 1) / n
    elif method == "pca":
        X = np.load(path, allow_pickle=False)  # PCA needs the whole matrix
        est = PCA(whiten=True).fit(X)  # svd_solver="auto" picks covariance_eigh for n >> d
        del X
        lam = est.explained_variance_ * (n - 1) / n
    else:
        raise SystemExit(f"unknown method {method}")
    t_fit = time.perf_counter() - t0
    t1 = time.perf_counter()
    check = 0.0
    var = np.zeros(d)
    for C in read_chunks(path, chunk, rows):
        Z = est.transform(C)
        check += float(np.abs(Z[:, 0]).sum())
        var += (Z.astype(np.float64) ** 2).sum(0)
    t_tr = time.perf_counter() - t1
    n = rows
    peak = _peak_rss()
    return {"method": method, "rows": rows, "fit_s": t_fit, "transform_s": t_tr, "peak_bytes": peak, "checksum": check,
            "eigenvalues_head": [float(v) for v in lam[:5]],
            "max_abs_var_minus_1": float(np.max(np.abs(var / n - 1.0)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--methods", default="kexue,ipca,pca")
    ap.add_argument("--ipca-rows", type=int, default=None,
                    help="fit IncrementalPCA on only the first N rows (it is ~10x slower); its times are then "
                         "scaled by n/N for the ratios (its cost is linear in n), and the output says so")
    ap.add_argument("--dir", default=None, help="where to put the generated .npy (default: a temp dir)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_path", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(run_method(a._child, Path(a._path), a.chunk, a.ipca_rows)))
        return
    tmpdir = tempfile.mkdtemp(dir=a.dir, prefix="bench_whitening_")
    path = Path(tmpdir) / "X.npy"
    try:
        t = time.perf_counter()
        generate(path, a.n, a.d, a.chunk)
        print(f"generated {a.n:,} × {a.d} float32 ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.1f} s;"
              f" chunk {a.chunk:,} rows; {os.cpu_count()} CPU cores")
        print(f"before: {load()}", flush=True)
        res = {}
        for m in a.methods.split(","):
            out = subprocess.run([sys.executable, __file__, "--_child", m, "--_path", str(path), "--chunk", str(a.chunk)]
                                 + (["--ipca-rows", str(a.ipca_rows)] if a.ipca_rows else []),
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{m} failed:\n{out.stderr[-3000:]}")
            res[m] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[m]
            if r["rows"] < a.n:  # scale a partial IncrementalPCA run to n rows (cost linear in n)
                f = a.n / r["rows"]
                print(f"{m:6s} measured on {r['rows']:,} rows: fit {r['fit_s']:.2f} s, transform {r['transform_s']:.2f} s;"
                      f" scaled ×{f:.1f} to {a.n:,} rows below")
                r["fit_s"] *= f
                r["transform_s"] *= f
            print(f"{m:6s} fit {r['fit_s']:7.2f} s  transform {r['transform_s']:7.2f} s  total {r['fit_s'] + r['transform_s']:7.2f} s"
                  f"  peak RSS {r['peak_bytes'] / 2**30:5.2f} GiB  max|var(z)-1| {r['max_abs_var_minus_1']:.1e}"
                  f"  top eigenvalues {', '.join(f'{v:.4f}' for v in r['eigenvalues_head'][:3])}", flush=True)
        if "kexue" in res:
            k = res["kexue"]
            for m, r in res.items():
                if m == "kexue":
                    continue
                print(f"ratio {m}/kexue: fit {r['fit_s'] / k['fit_s']:.2f}x, fit+transform "
                      f"{(r['fit_s'] + r['transform_s']) / (k['fit_s'] + k['transform_s']):.2f}x, peak memory "
                      f"{r['peak_bytes'] / k['peak_bytes']:.2f}x")
            print(f"kexue peak memory {'<' if k['peak_bytes'] < 2 * 2**30 else '>='} 2 GiB "
                  f"({k['peak_bytes'] / 2**30:.2f} GiB)")
        print(f"after: {load()}")
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(tmpdir)


if __name__ == "__main__":
    main()
