"""Benchmark: hubness of 1,000,000 × 384 float32 embeddings out of core, and the whitening plan for
100,000,000 × 768 (issue 29, items 4–5 and the goals).

Data (``benchmarks/_scale_data.py``, documented there): a clustered synthetic set — a Gaussian
mixture of 256 centres on a random 48-dimensional subspace plus isotropic noise, rows unit length
— written chunk by chunk to a float32 .npy memory map and cached by (N, d, seed) in ``--data-dir``;
``--gaussian`` adds the i.i.d. Gaussian side row (the known worst case for IVF: at recall 0.95 it
probes most lists; measures 1–3 only, ``--gaussian-rows`` to make it smaller); ``--real gemma3-270m``
adds the largest real set available offline (``_scale_real.py``): Gemma 3 270M's token embeddings,
262,144 × 640, from the kexue cache (never downloaded; skipped with the reason when absent), rows
not normalised, measures 1–3 only, label ``real-gemma3-270m``. k = 10, Euclidean, on every row.

Every measure runs in its own process, so its peak memory is its own: the kernel's peak resident
set (``/usr/bin/time -v``; it counts the memory map's file pages) and the sampled peak of the
process tree's anonymous memory (RssAnon, its own allocations) and private dirty pages, both set
against the goal "≤ the index's own size + 1 GiB". Measures, per data set:

1. ``kexue-ivf``: ``kexue hubness X.npy -k 10 --backend ivf --recall 0.95`` on the memory map (nprobe
   chosen by kexue's tuning on a 1,000-query sample) — wall seconds of the whole command, recall,
   skewness, hub occurrence and antihub fraction of N_10;
2. ``sklearn-brute``: ``NearestNeighbors(algorithm="brute")`` fitted on all rows, queried with the
   recall sample only, its query time **extrapolated linearly to all N queries**;
3. ``kiez-faiss``: kiez 0.5.0's FAISS path through ``$KEXUE_PEERS_PYTHON`` (``--peers-python``),
   ``index_key`` ``--kiez-index`` (kiez cannot train an index, so IVF is out of its reach; HNSW32
   by default) — skipped with a printed reason when that Python lacks kiez or faiss;
   1–3 alternate (A B C A B C …, ``--repeats`` rounds, medians; ``benchmarks/_bench.py``). kexue's
   figure is the whole command's wall (Python start-up, imports, the file's NaN pass included);
   scikit-learn's and kiez's exclude their imports and kiez's the loading of the file into memory;
4. ``kexue-ivf+mp``: the same command with ``--reduce mp`` (its wall against 1's);
5. ``kexue-ivfpq`` (``IVF√N,PQ{d/4}``: d bytes a vector) and ``kexue-ivfpq-refine`` (the same
   with ``Refine(SQ8)``, 8 candidates per neighbour re-ranked by 8-bit codes: plain PQ codes cap
   the recall below 0.95 on this data): built from the memory map with nprobe tuned by kexue's
   recall tuning (build timed apart), then ``kexue hubness X.npy --index pq.faiss``;
6. ``estimate``: ``estimate_hubness`` from ``--estimate-fraction`` (5 %) of the queries, against
   the full-scan (1's) skewness: the estimate, its CI and whether the full value lies inside;
7. ``kexue-ivf-cluster`` with ``--cluster local:2`` when this tree's ``kexue hubness`` has it.

Threads: by default each side runs as its users get it (kexue's CLI on 1 thread, ``KEXUE_THREADS``;
kiez's FAISS on all cores). ``--threads N`` gives every timed kexue command ``--threads N`` and kiez's
FAISS N threads, for a like-for-like ratio; those measures are saved under keys ending ``@Nt``.

Whitening (once, on clustered data read in blocks from a memory map): bytes/s of the streaming fit
and of ``partial_fit`` per block, merge and decomposition times and peak memory, at the data's
width and at 768 (``--whiten-rows`` rows of a second clustered file), and the printed plan for
100M × 768 on this machine and on ``--machines`` machines combined with ``Whitening.merge``.

    .venv/bin/python benchmarks/bench_hubness_scale.py --data-dir /data/scale --json scale.json \\
        [--rows 1000000] [--dim 384] [--gaussian] [--real gemma3-270m] [--repeats 1] [--cluster local:2]

At full size the clustered measures took about 70 minutes of wall time on 2 cores, and the
``--threads 2`` round 18 more (2026-12-06, docs/hubness.md "Measured at 1,000,000 × 384": MP, the
one-thread IVF scan, the plain IVF-PQ search and kiez's HNSW row are the longest, 9-18 min each;
the Gaussian row's IVF search would be longer still). It needs ~4 GB
of disk in ``--data-dir`` (the 1.5 GB file, the Gaussian one, a 0.8 GB 768-wide file, the IVF-PQ
indexes; ``--real gemma3-270m`` adds a 0.67 GB file, whose extraction took 26-34 s and 2.16 GiB
peak resident at load 1.1-2.6); run it on an otherwise idle machine.

**Resumable** (``benchmarks/_scale_state.py``): the measures' outputs (the CLI's JSON and N_k files,
the IVF-PQ indexes, kiez's N_k) and ``state.json`` live in ``--workdir`` (default
``<data-dir>/run-n{rows}-d{dim}-seed{seed}``); every completed measure is saved there at once with
its date, load and commit. Stopped part-way (SIGTERM or Ctrl-C end the running measure's processes
too; ``--stop-after N`` stops after N measures, exit 3), the same command runs only what is
missing; other result-affecting arguments are refused in one line (``--fresh`` discards the saved
measures). The data and truth files are written whole or not at all. Since rows may then come from
different sessions, the report ends with every row's date, load and commit and says so plainly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _bench import interleaved, load  # noqa: E402
from _scale_data import dataset, dataset_path, machine, revision, run_measured  # noqa: E402
from _scale_real import RealUnavailable, describe, source  # noqa: E402
from _scale_report import GIB, PLAN_DIM, report  # noqa: E402
from _scale_state import Mismatch, State, print_provenance  # noqa: E402

PLAN_ROWS = 100_000_000
SIDES = ("kexue-ivf", "sklearn-brute", "kiez-faiss")


def _env(kexue: bool = True) -> dict:
    env = dict(os.environ)
    if kexue:  # this checkout's code, whatever is installed
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def measure(cmd: list[str], kexue: bool = True) -> dict:
    """One process: run_measured plus the load at its start; a failure stops the benchmark."""
    one = os.getloadavg()[0]
    r = run_measured(cmd, _env(kexue))
    if r["returncode"] != 0:
        raise SystemExit(f"failed ({r['returncode']}): {' '.join(cmd)}\n{r['stderr'][-3000:]}")
    r["load_1min_at_start"] = one
    r.pop("stderr")
    return r


def child(name: str, **args) -> dict:
    r = measure([sys.executable, str(HERE / "_scale_children.py"), name, json.dumps(args)])
    r["result"] = json.loads(r.pop("stdout").strip().splitlines()[-1])
    return r


def cli(a, path: Path, out: Path, extra: list[str]) -> dict:
    """``kexue hubness`` on the memory map; its JSON and N_k file land in ``out``."""
    js, nk = out.with_suffix(".json"), out.with_suffix(".nk.npy")
    r = measure([sys.executable, "-m", "kexue", "hubness", str(path), "-k", str(a.k), "--recall", str(a.recall),
                 "--seed", str(a.seed), "--block-rows", str(a.block_rows), "--json", str(js), "--nk-out", str(nk)]
                + (["--threads", str(a.threads)] if a.threads else []) + extra)
    r.pop("stdout")
    r["result"] = json.loads(js.read_text())
    r["nk_path"] = str(nk)
    return r


def peers(a) -> tuple[str | None, str]:
    """The peers' Python if it can import kiez and faiss, else (None, why)."""
    py = a.peers_python
    if not py:
        return None, "no $KEXUE_PEERS_PYTHON / --peers-python (make one: bash benchmarks/hubness_peers_venv.sh)"
    if not Path(py).exists():
        return None, f"{py} does not exist (make it: bash benchmarks/hubness_peers_venv.sh)"
    r = subprocess.run([py, "-c", "import kiez, faiss"], capture_output=True, text=True)
    if r.returncode:
        return None, (f"{py} cannot import kiez and faiss ({(r.stderr.strip().splitlines() or ['?'])[-1]}); "
                      "re-run bash benchmarks/hubness_peers_venv.sh, which installs faiss-cpu")
    return py, ""


def has_cluster() -> bool:
    r = subprocess.run([sys.executable, "-m", "kexue", "hubness", "--help"], capture_output=True, text=True, env=_env())
    return "--cluster" in r.stdout


def _ivf_index_bytes(n: int, d: int) -> int:
    """An IndexIVFFlat of n float32 rows: the vectors, their int64 ids, √n centroids."""
    return n * (4 * d + 8) + round(math.sqrt(n)) * d * 4


def _mem(r: dict, index_bytes: int | None) -> dict:
    goal = None if index_bytes is None else index_bytes + GIB
    return {"maxrss_bytes": r["maxrss_bytes"], "maxrss_source": r["maxrss_source"], "rss_peak_bytes": r["rss_peak_bytes"],
            "anon_peak_bytes": r["anon_peak_bytes"], "private_dirty_peak_bytes": r["private_dirty_peak_bytes"],
            "index_bytes": index_bytes, "goal_bytes": goal,
            "rss_within_goal": None if goal is None else r["maxrss_bytes"] <= goal,
            "private_within_goal": None if goal is None else max(r["anon_peak_bytes"], r["private_dirty_peak_bytes"]) <= goal}


def _cli_row(r: dict, label: str, index_bytes) -> dict:
    res = r["result"]
    m = res["measures"][label]
    return {"wall_s": r["wall_s"], "recall": res["recall"], "params": res["params"], "skewness": m["skewness"],
            "hub_occurrence": m["hub_occurrence"], "antihub_occurrence": m["antihub_occurrence"],
            "load_1min_at_start": r["load_1min_at_start"], "memory": _mem(r, index_bytes)}


def run_dataset(a, kind: str, tmp: Path, py_peer: str | None, cluster: bool, st: State) -> dict:
    label, path, n, d, gen_s, src = source(a, kind, st, child)
    T = f"@{a.threads}t" if a.threads else ""
    print(f"\n{label}: {path} ({path.stat().st_size / GIB:.2f} GiB), "
          + ("from the cache" if gen_s is None else f"made in {gen_s:.1f} s"), flush=True)
    if src:
        print("  " + describe(src), flush=True)
    out: dict = {"path": str(path), "file_bytes": path.stat().st_size, "generate_s": gen_s, "threads": a.threads,
                 "n": n, "dim": d, **({"source": src} if src else {})}
    tpath = Path(a.data_dir) / f"{path.stem}-truth-k{a.k}-s{a.recall_sample}-seed{a.seed}.npz"
    out["truth_s"] = st.run(label, "truth", lambda: {"seconds": None} if tpath.exists() else child(
        "truth", path=str(path), k=a.k, sample=a.recall_sample, seed=a.seed, block_rows=a.block_rows,
        out=str(tpath))["result"], need=[tpath])["seconds"]
    ivf_bytes = _ivf_index_bytes(n, d)
    runs: dict[str, list] = {s: [] for s in SIDES}
    side = lambda name, fn: st.rounds(label, name + T, fn, runs[name])  # noqa: E731  (round i: saved or measured)
    fns = {"kexue-ivf": side("kexue-ivf", lambda: cli(a, path, tmp / f"{label}-ivf{T}", [
               "--backend", "ivf", "--recall-sample", str(a.recall_sample)])),
           "sklearn-brute": side("sklearn-brute", lambda: child("sklearn", path=str(path), k=a.k, truth=str(tpath)))}
    if py_peer and "kiez" not in a.skip:
        args = {"path": str(path), "k": a.k, "truth": str(tpath), "index_key": a.kiez_index,
                "index_param": a.kiez_param or None, "out": str(tmp / f"{label}-kiez{T}-nk.npy"), "threads": a.threads}
        fns["kiez-faiss"] = side("kiez-faiss", lambda: _kiez(py_peer, args, n))
    if "sklearn" in a.skip:
        fns.pop("sklearn-brute")
    interleaved(fns, repeats=a.repeats, warmup=0)
    ivf = runs["kexue-ivf"]
    row = _cli_row(ivf[-1], "primary", ivf_bytes)
    row["wall_s"] = statistics.median(r["wall_s"] for r in ivf)
    row["wall_runs_s"] = [r["wall_s"] for r in ivf]
    out["kexue-ivf"] = row
    if runs["sklearn-brute"]:
        res = [r["result"] for r in runs["sklearn-brute"]]
        out["sklearn-brute"] = {**res[-1], "extrapolated_s": statistics.median(x["extrapolated_s"] for x in res),
                                "extrapolated_runs_s": [x["extrapolated_s"] for x in res],
                                "note": f"queried with {res[-1]['n_queries']} of {n} points; query time scaled ×"
                                        f"{n / res[-1]['n_queries']:.0f} (linear in the number of queries)",
                                "memory": _mem(runs["sklearn-brute"][-1], None)}
        out["sklearn_over_kexue"] = out["sklearn-brute"]["extrapolated_s"] / row["wall_s"]
    if runs["kiez-faiss"]:
        kz = runs["kiez-faiss"]
        m = kz[-1]["measures"]
        out["kiez-faiss"] = {**kz[-1]["result"], "seconds": statistics.median(r["result"]["seconds"] for r in kz),
                             "wall_s": statistics.median(r["wall_s"] for r in kz), "index_key": a.kiez_index,
                             "index_param": a.kiez_param, "skewness": m["skewness"],
                             "hub_occurrence": m["hub_occurrence"], "antihub_occurrence": m["antihub_occurrence"],
                             "memory": _mem(kz[-1], None)}
        out["kexue_over_kiez"] = row["wall_s"] / out["kiez-faiss"]["seconds"]
    if kind != "clustered":  # the Gaussian and real side rows: the three-way comparison only
        return out
    if "mp" not in a.skip:
        r = st.run(label, "kexue-ivf+mp" + T, lambda: cli(a, path, tmp / f"{label}-mp{T}", [
            "--backend", "ivf", "--recall-sample", str(a.recall_sample), "--reduce", "mp", "--candidates",
            str(a.mp_candidates)]))
        out["kexue-ivf+mp"] = {**_cli_row(r, "mp", ivf_bytes), "candidates": a.mp_candidates,
                               "ratio_to_nk": r["wall_s"] / row["wall_s"]}
    for key, template in (("kexue-ivfpq", a.pq_factory), ("kexue-ivfpq-refine", a.pq_refine_factory)):
        if "pq" in a.skip or not template:
            continue
        factory = template.format(nlist=round(math.sqrt(n)), m=a.pq_m or d // 4)
        pq = tmp / f"{label}-{key}.faiss"
        b = st.run(label, key + ":build", partial(
            child, "build_pq", path=str(path), k=a.k, truth=str(tpath), factory=factory, seed=a.seed,
            block_rows=a.block_rows, recall=a.recall, k_factor=a.k_factor, out=str(pq)), need=[pq])
        r = st.run(label, key + T, partial(cli, a, path, tmp / f"{label}-{key}{T}", [
            "--index", str(pq), "--recall-sample", str(a.recall_sample)]))
        pbytes = b["result"]["index_bytes"]
        out[key] = {**_cli_row(r, "primary", pbytes), "build": {**b["result"], "wall_s": b["wall_s"],
                                                                "memory": _mem(b, pbytes)},
                    "total_s": b["wall_s"] + r["wall_s"]}
    if "estimate" not in a.skip:
        r = st.run(label, "estimate", lambda: child("estimate", path=str(path), k=a.k, fraction=a.estimate_fraction,
                                                   recall=a.recall, seed=a.seed, block_rows=a.block_rows))
        e = r["result"]
        lo, hi = e["skewness_ci"]
        out["estimate"] = {**e, "wall_s": r["wall_s"], "memory": _mem(r, ivf_bytes), "full_scan_skewness": row["skewness"], "inside_ci": lo <= row["skewness"] <= hi,
                           "full_scan_hub_occurrence": row["hub_occurrence"],
                           "full_scan_antihub_occurrence": row["antihub_occurrence"]}
    if a.cluster and cluster:
        # keyed by the cluster spec, so that --cluster can be added to (or changed in) a resumed run
        r = st.run(label, f"kexue-ivf-cluster({a.cluster}){T}",
                   lambda: _cluster(a, path, tmp / f"{label}-cluster{T}", ivf[-1]["nk_path"]))
        out["kexue-ivf-cluster"] = {**_cli_row(r, "primary", ivf_bytes), "cluster": a.cluster,
                                    "identical_nk": r["identical_nk"]}
    return out


def _cluster(a, path: Path, out: Path, local_nk: str) -> dict:
    """The N_k run on ``--cluster``, compared with the local run's N_k file (kept in the work directory)."""
    import numpy as np

    if not Path(local_nk).exists():
        raise SystemExit(f"the local run's N_k file {local_nk} is gone; start again with --fresh")
    r = cli(a, path, out, ["--backend", "ivf", "--recall-sample", str(a.recall_sample), "--cluster", a.cluster])
    r["identical_nk"] = bool(np.array_equal(np.load(r["nk_path"]), np.load(local_nk)))
    return r


def _kiez(py: str, args: dict, n: int) -> dict:
    import numpy as np

    from kexue.hubness import hubness_measures

    r = measure([py, str(HERE / "_scale_kiez.py"), json.dumps(args)], kexue=False)
    r["result"] = json.loads(r.pop("stdout").strip().splitlines()[-1])
    m = hubness_measures(np.load(args["out"]), args["k"], n)  # now: the next round overwrites the file
    r["measures"] = {key: float(m[key]) for key in ("skewness", "hub_occurrence", "antihub_occurrence")}
    return r


def whitening(a, path: Path, st: State) -> dict:
    """Throughput and memory at the data's width and at 768 (a second clustered file, cached), and the plan."""
    out = {}
    wide = dataset_path(Path(a.data_dir), "clustered", a.whiten_rows, PLAN_DIM, a.seed)
    st.run("whitening", f"generate-{PLAN_DIM}", lambda: {"generate_s": dataset(
        Path(a.data_dir), "clustered", a.whiten_rows, PLAN_DIM, a.seed)[1]}, need=[wide])
    for label, p in (("data", path), (str(PLAN_DIM), wide)):
        r = st.run("whitening", label, partial(child, "whiten", path=str(p), block_rows=a.whiten_block))
        out[label] = {**r["result"], "wall_s": r["wall_s"], "memory": _mem(r, None)}
    w = out[str(PLAN_DIM)]
    total = PLAN_ROWS * PLAN_DIM * 4
    mem = max(w["memory"]["anon_peak_bytes"], w["memory"]["private_dirty_peak_bytes"])
    plan = {"rows": PLAN_ROWS, "dim": PLAN_DIM, "bytes": total, "bytes_per_s_per_machine": w["stream_bytes_per_s"],
            "private_memory_per_process_bytes": mem, "machines": {}}
    for m in a.machines:
        plan["machines"][str(m)] = total / (m * w["stream_bytes_per_s"]) + math.ceil(math.log2(m)) * w["merge_s"] + w["decompose_s"]
    out["plan"] = plan
    return out


def main(argv=None) -> dict:
    from kexue.unargmax.zoo import BY_KEY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-k", "--k", type=int, default=10)
    ap.add_argument("--data-dir", default="scale-data", help="cache of the generated .npy files (default ./scale-data)")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--gaussian", action="store_true", help="also the i.i.d. Gaussian side row (measures 1-3 only)")
    ap.add_argument("--real", default=None, choices=sorted(BY_KEY), metavar="MODEL",
                    help="also the real row: a zoo model's matrix from the kexue cache (gemma3-270m: 262,144 × 640)")
    ap.add_argument("--gaussian-rows", type=int, default=None, help="rows of the Gaussian set (default --rows)")
    ap.add_argument("--recall", type=float, default=0.95)
    ap.add_argument("--recall-sample", type=int, default=1000, help="queries searched exactly (recall; sklearn's subset)")
    ap.add_argument("--block-rows", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds of kexue / sklearn / kiez (medians)")
    ap.add_argument("--mp-candidates", type=int, default=100)
    ap.add_argument("--pq-factory", default="IVF{nlist},PQ{m}", help="FAISS factory string; {nlist} = √N, {m} = --pq-m")
    ap.add_argument("--pq-refine-factory", default="IVF{nlist},PQ{m},Refine(SQ8)",
                    help="the second IVF-PQ row: PQ candidates re-ranked by 8-bit codes ('' skips it)")
    ap.add_argument("--k-factor", type=int, default=8, help="candidates per neighbour re-ranked by the Refine index")
    ap.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantisers (default d/4: d bytes a vector)")
    ap.add_argument("--estimate-fraction", type=float, default=0.05)
    ap.add_argument("--peers-python", default=os.environ.get("KEXUE_PEERS_PYTHON"))
    ap.add_argument("--kiez-index", default="HNSW32")
    ap.add_argument("--kiez-param", default="efSearch=128")
    ap.add_argument("--cluster", default=None, help="e.g. local:2, if kexue hubness has --cluster")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of every timed kexue command (its --threads) and of kiez's FAISS; unset: each "
                         "side's own default (kexue's CLI 1, FAISS all cores); set, the measures are saved apart")
    ap.add_argument("--whiten-rows", type=int, default=262_144, help="rows of the 768-wide whitening measure")
    ap.add_argument("--whiten-block", type=int, default=65_536)
    ap.add_argument("--machines", default="1,4,16", help="machine counts of the whitening plan")
    ap.add_argument("--skip", default="", help="comma list of: sklearn, kiez, mp, pq, estimate, whiten")
    ap.add_argument("--workdir", default=None, help="the run's outputs and saved state, which a stopped run resumes "
                                                     "from (default <data-dir>/run-n{rows}-d{dim}-seed{seed})")
    ap.add_argument("--fresh", action="store_true", help="discard the work directory's saved measures")
    ap.add_argument("--stop-after", type=int, default=None, help="stop (exit 3) after this many newly run measures")
    a = ap.parse_args(argv)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    a.machines = [int(m) for m in a.machines.split(",")]
    info = machine()
    res: dict = {"machine": info, "commit": info["commit"], "load_before": os.getloadavg(), "load_before_text": load(),
                 "n": a.rows, "dim": a.dim, "seed": a.seed, "k": a.k, "args": {k: sorted(v) if isinstance(v, set) else v
                                                                           for k, v in vars(a).items()}}
    print(f"{a.rows:,} × {a.dim} float32, k = {a.k}, seed {a.seed}; {info['cores']} cores, "
          f"{info['ram_bytes'] / GIB:.1f} GiB RAM; commit {info['commit'][:12]}{' (dirty)' if info['dirty'] else ''}")
    print(f"before: {load()}", flush=True)
    work = Path(a.workdir or Path(a.data_dir) / f"run-n{a.rows}-d{a.dim}-seed{a.seed}")
    try:
        st = State(work, vars(a), info["commit"], info["dirty"], fresh=a.fresh, stop_after=a.stop_after,
                   revision=revision)
    except Mismatch as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"work directory {work} ({len(st.measures)} measures saved{', discarded the rest' if a.fresh else ''})")
    res["workdir"] = str(work)
    py_peer, why = peers(a) if "kiez" not in a.skip else (None, "--skip kiez")
    res["kiez_skipped"] = None if py_peer else why
    if not py_peer:
        print(f"kiez FAISS row skipped: {why}", flush=True)
    cluster = bool(a.cluster) and has_cluster()
    res["cluster_skipped"] = None if cluster or not a.cluster else "this tree's kexue hubness has no --cluster option"
    res["datasets"] = {}
    Path(a.data_dir).mkdir(parents=True, exist_ok=True)
    res["real_skipped"] = None
    for kind in ["clustered"] + (["gaussian"] if a.gaussian else []) + ([f"real-{a.real}"] if a.real else []):
        try:
            res["datasets"][kind] = run_dataset(a, kind, work, py_peer, cluster, st)
        except RealUnavailable as e:  # the model is not in the kexue cache: never downloaded from here
            res["real_skipped"] = f"real-{a.real}: {e}"
            print(f"real-{a.real} row skipped: {e}", flush=True)
    if "whiten" not in a.skip:
        res["whitening"] = whitening(a, Path(res["datasets"]["clustered"]["path"]), st)
    res["load_after"] = os.getloadavg()
    res["load_after_text"] = load()
    res["provenance"] = st.provenance()
    report(res, a)
    print_provenance(res["provenance"])
    print(f"after: {load()}")
    if a.json:
        from kexue.utils import atomic_write

        with atomic_write(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
        print(f"wrote {a.json}")
    return res


if __name__ == "__main__":
    # SIGTERM (a session's end, ``kill``) unwinds like Ctrl-C: run_measured ends the running measure's
    # processes, and every measure completed before it is already in the saved state
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main()
