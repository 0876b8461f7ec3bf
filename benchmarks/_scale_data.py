"""Helpers of ``bench_hubness_scale.py``: the synthetic data sets, written chunk by chunk to .npy
memory maps and cached, and the per-measure subprocess runner that records wall time and memory.

**Clustered set** (``clustered``; the main rows). A Gaussian mixture of ``CENTRES`` = 256 centres
living on a random ``RANK`` = 48-dimensional subspace of R^d, plus isotropic noise in all d
coordinates, each row then scaled to unit length:

    x = normalise( B (c_j + SPREAD · z) + NOISE · e ),   j ~ Categorical(w),  w ~ Dirichlet(1, …, 1),
    c_j ~ N(0, I_48),  z ~ N(0, I_48),  e ~ N(0, I_d),  B: d × 48 with orthonormal columns,

with SPREAD = 1 and NOISE = sqrt(6 / d) (the noise carries ~6 % of the energy whatever d). The
clusters overlap: two centres lie ~√96 ≈ 9.8 apart, less than a cluster's diameter (~2√48 ≈ 13.9),
so a point's neighbours often sit in the next cluster, as topics overlap in real embeddings (with
SPREAD = 0.5 the clusters separate and IVF found 96 % of the neighbours in one list at 20,000 × 384).
Why this shape: sentence and passage embeddings have a low intrinsic dimension, topical clusters
of unequal sizes (the Dirichlet weights) and a small full-rank residue, and are used as unit
vectors; on unit rows the Euclidean ranking equals the cosine one, so the benchmark's Euclidean
runs (FAISS L2, scikit-learn, kiez) stand for cosine retrieval as well. The 48-dimensional
Gaussian spread inside each cluster keeps a realistic amount of hubness (skewness of N_10 about 2
at 20,000 × 384) without being the structureless worst case.

**Gaussian set** (``gaussian``; the side row): i.i.d. N(0, 1) float32 coordinates, not normalised
— the known worst case for IVF and HNSW (no structure for the coarse quantiser to exploit).

Both are generated in chunks of ``GEN_CHUNK`` rows, chunk i from ``default_rng([seed, i])`` (and
the subspace, centres and weights from ``default_rng(seed)``), so a file depends only on
(N, d, seed), never on memory; it is written to ``<name>.partial`` and renamed when complete, so
an interrupted run leaves no half file in the cache.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

CENTRES, RANK, SPREAD = 256, 48, 1.0
GEN_CHUNK = 65536
VERSION = 1  # bump when the generator changes: the cache key includes it


def _mixture(d: int, seed: int):
    rng = np.random.default_rng(seed)
    r = min(RANK, d)
    B, _ = np.linalg.qr(rng.standard_normal((d, r)))
    return B.T.astype(np.float32), rng.standard_normal((CENTRES, r)).astype(np.float32), rng.dirichlet(np.ones(CENTRES))


def clustered_chunk(i: int, m: int, d: int, seed: int, mixture=None) -> np.ndarray:
    """Rows of chunk ``i`` (m of them) of the clustered set (module docstring)."""
    Bt, centres, w = mixture or _mixture(d, seed)
    rng = np.random.default_rng([seed, i])
    lab = rng.choice(CENTRES, m, p=w)
    Z = centres[lab] + SPREAD * rng.standard_normal((m, Bt.shape[0]), dtype=np.float32)
    X = Z @ Bt + np.float32(np.sqrt(6.0 / d)) * rng.standard_normal((m, d), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def gaussian_chunk(i: int, m: int, d: int, seed: int, mixture=None) -> np.ndarray:
    return np.random.default_rng([seed, i]).standard_normal((m, d), dtype=np.float32)


KINDS = {"clustered": clustered_chunk, "gaussian": gaussian_chunk}


def dataset_path(folder: Path, kind: str, n: int, d: int, seed: int) -> Path:
    return Path(folder) / f"{kind}-n{n}-d{d}-seed{seed}-v{VERSION}.npy"


def dataset(folder: Path, kind: str, n: int, d: int, seed: int) -> tuple[Path, float | None]:
    """Path of the cached .npy for (kind, n, d, seed), generated if missing; and the generation's
    seconds (None when it came from the cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = dataset_path(folder, kind, n, d, seed)
    if path.exists():
        return path, None
    t = time.perf_counter()
    part = path.with_name(path.name + ".partial")
    out = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(n, d))
    mix = _mixture(d, seed) if kind == "clustered" else None
    for i, s in enumerate(range(0, n, GEN_CHUNK)):
        m = min(GEN_CHUNK, n - s)
        out[s:s + m] = KINDS[kind](i, m, d, seed, mix)
    out.flush()
    del out
    os.replace(part, path)
    return path, time.perf_counter() - t


# ----- one measure in its own process: wall time and memory -------------------------------------

def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    out, i = [pid], 0
    while i < len(out):
        try:
            for t in os.listdir(f"/proc/{out[i]}/task"):
                with open(f"/proc/{out[i]}/task/{t}/children") as f:
                    out += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return out


def _fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    got = dict.fromkeys(names, 0)
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in got:
                    got[key] = int(rest.split()[0]) * 1024  # kB
    except OSError:
        pass
    return got


def _sample(pid: int) -> dict[str, int]:
    """Summed over the process tree: resident set (counts the memory map's file pages), anonymous
    resident memory (RssAnon: the process's own allocations) and private dirty pages."""
    tot = {"rss": 0, "anon": 0, "private_dirty": 0}
    for p in _tree(pid):
        st = _fields(f"/proc/{p}/status", ("VmRSS", "RssAnon"))
        tot["rss"] += st["VmRSS"]
        tot["anon"] += st["RssAnon"]
        tot["private_dirty"] += _fields(f"/proc/{p}/smaps_rollup", ("Private_Dirty",))["Private_Dirty"]
    return tot


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_measured(cmd: list[str], env: dict | None = None, interval: float = 0.5) -> dict:
    """Run ``cmd`` in its own process; wall seconds, exit code, output, and memory: peaks of the
    sampled tree sums (every ``interval`` s; a shorter peak can be missed) and the kernel's peak
    resident set (``/usr/bin/time -v`` if present, else ``wait4``'s ru_maxrss, which on Linux also
    counts this parent's resident set at the fork — this script keeps it small).

    Every 0.5 s by default: reading smaps_rollup of a process that maps a 1.5 GB file walks its
    page tables, and at 0.1 s this sampler took ~28 % of a core from the 2-core machine it was
    timing (seen at 1M × 384). A peak shorter than the interval can be missed by these sums; the
    kernel's maximum resident set of ``/usr/bin/time -v`` still catches the largest process's."""
    with tempfile.TemporaryDirectory(prefix="scale_run_") as tmp:
        tfile = Path(tmp) / "time.txt"
        full = ([TIME, "-v", "-o", str(tfile)] if TIME else []) + cmd
        with open(Path(tmp) / "out", "w+") as out, open(Path(tmp) / "err", "w+") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(full, stdout=out, stderr=err, env=env)
            peak = {"rss": 0, "anon": 0, "private_dirty": 0}
            try:
                while True:
                    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                    if pid:
                        break
                    for key, v in _sample(p.pid).items():
                        peak[key] = max(peak[key], v)
                    time.sleep(interval)
            except BaseException:  # a stopped benchmark (SIGTERM, Ctrl-C) leaves no measure running
                _stop_tree(p)
                raise
            wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        maxrss, source = ru.ru_maxrss * 1024, "wait4 ru_maxrss"
        if TIME and tfile.exists():
            for line in tfile.read_text().splitlines():
                if "Maximum resident set size" in line:
                    maxrss, source = int(line.split(":")[1]) * 1024, "/usr/bin/time -v"
    return {"wall_s": wall, "returncode": p.returncode, "stdout": stdout, "stderr": stderr,
            "rss_peak_bytes": peak["rss"], "anon_peak_bytes": peak["anon"],
            "private_dirty_peak_bytes": peak["private_dirty"], "maxrss_bytes": maxrss, "maxrss_source": source,
            "sample_interval_s": interval}


def _stop_tree(p: subprocess.Popen) -> None:
    """SIGTERM to the measure's whole process tree (``time``, the command, its workers), SIGKILL to
    what is left after 10 s; the tree is walked first, before its parents die and it scatters."""
    pids = _tree(p.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            p.wait(10)
            pids = [q for q in pids if os.path.exists(f"/proc/{q}")]
            if not pids:
                return
        except subprocess.TimeoutExpired:
            pass


def revision() -> tuple[str, bool | None]:
    """The checkout's commit now and whether tracked files differ from it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        return "unknown", None
    return commit or "unknown", dirty


def machine() -> dict:
    """Cores, RAM, load average and the checkout's commit, for the JSON and the header."""
    mem = _fields("/proc/meminfo", ("MemTotal", "MemAvailable"))
    commit, dirty = revision()
    return {"cores": os.cpu_count(), "ram_bytes": mem["MemTotal"], "ram_available_bytes": mem["MemAvailable"],
            "commit": commit, "dirty": dirty}
