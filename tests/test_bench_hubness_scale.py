"""benchmarks/bench_hubness_scale.py keeps working: an end-to-end run at a tiny size writes every
figure to its JSON, and the kiez row is skipped with a reason when the peers' Python is absent."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

ROW = {"wall_s", "recall", "params", "skewness", "hub_occurrence", "antihub_occurrence", "load_1min_at_start", "memory"}
MEMORY = {"maxrss_bytes", "maxrss_source", "rss_peak_bytes", "anon_peak_bytes", "private_dirty_peak_bytes",
          "index_bytes", "goal_bytes", "rss_within_goal", "private_within_goal"}
WHITEN = {"rows", "dim", "block_rows", "stream_fit_s", "stream_bytes_per_s", "partial_fit_block_s",
          "partial_fit_bytes_per_s", "merge_s", "decompose_s", "memory"}


@pytest.mark.slow
def test_tiny_run_writes_every_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KEXUE_PEERS_PYTHON"}
    env["PYTHONPATH"] = str(REPO / "src")
    env["OMP_NUM_THREADS"] = "1"  # FAISS's OpenMP threads spin on a busy machine; one is quick at this size
    out = tmp_path / "scale.json"
    n = 3000
    r = subprocess.run([sys.executable, str(BENCH / "bench_hubness_scale.py"), "--rows", str(n), "--dim", "16",
                        "--data-dir", str(tmp_path / "data"), "--json", str(out), "--recall-sample", "300",
                        "--whiten-rows", "8192", "--whiten-block", "4096", "--machines", "1,4",
                        "--gaussian", "--gaussian-rows", "2000"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "kiez FAISS row skipped: no $KEXUE_PEERS_PYTHON" in r.stdout
    res = json.loads(out.read_text())
    assert {"machine", "commit", "load_before", "load_after", "n", "dim", "seed", "k", "datasets", "whitening",
            "kiez_skipped"} <= set(res)
    assert res["n"] == n and res["dim"] == 16 and res["machine"]["cores"] >= 1 and res["machine"]["ram_bytes"] > 0
    assert len(res["commit"]) == 40 and len(res["load_before"]) == 3 and len(res["load_after"]) == 3
    ds = res["datasets"]["clustered"]
    assert "kiez-faiss" not in ds and res["kiez_skipped"]
    for name in ("kexue-ivf", "kexue-ivf+mp", "kexue-ivfpq", "kexue-ivfpq-refine", "estimate"):
        assert (ROW if name != "estimate" else {"wall_s", "seconds", "memory"}) <= set(ds[name]), name
        assert MEMORY <= set(ds[name]["memory"]), name
        m = ds[name]["memory"]
        assert 0 < m["anon_peak_bytes"] <= m["rss_peak_bytes"] and m["maxrss_bytes"] > 0
        assert m["goal_bytes"] == m["index_bytes"] + 2**30
    assert ds["kexue-ivf"]["recall"] >= 0.95  # tuned on the sample for the target
    assert ds["kexue-ivf"]["params"]["nprobe"] >= 1
    assert ds["kexue-ivf+mp"]["ratio_to_nk"] > 0 and ds["kexue-ivf+mp"]["candidates"] == 100
    b = ds["kexue-ivfpq"]["build"]
    assert b["factory"] == f"IVF{round(n ** 0.5)},PQ4" and b["index_bytes"] == ds["kexue-ivfpq"]["memory"]["index_bytes"]
    assert ds["kexue-ivfpq"]["params"] == {"nprobe": b["nprobe"]}  # the saved index's nprobe, as tuned
    rb = ds["kexue-ivfpq-refine"]["build"]
    assert rb["factory"].endswith(",Refine(SQ8)") and rb["k_factor"] == 8 and rb["index_bytes"] > b["index_bytes"]
    sk = ds["sklearn-brute"]
    assert sk["recall"] == 1.0 and sk["n_queries"] == 300  # exact search finds the exact sample's neighbours
    assert sk["extrapolated_s"] == pytest.approx(sk["fit_s"] + sk["query_s"] * n / 300, rel=1e-9)  # one round
    est = ds["estimate"]
    assert est["n_sampled"] <= 0.05 * n and est["full_scan_skewness"] == ds["kexue-ivf"]["skewness"]
    lo, hi = est["skewness_ci"]
    assert lo <= est["skewness"] <= hi and est["inside_ci"] == (lo <= est["full_scan_skewness"] <= hi)
    gs = res["datasets"]["gaussian"]  # the side row: the three-way comparison only
    assert {"kexue-ivf", "sklearn-brute"} <= set(gs) and "kexue-ivf+mp" not in gs and "estimate" not in gs
    assert gs["sklearn-brute"]["n"] == 2000 and ROW <= set(gs["kexue-ivf"])
    w = res["whitening"]
    assert WHITEN <= set(w["data"]) and WHITEN <= set(w["768"])
    assert w["data"]["dim"] == 16 and w["768"]["dim"] == 768 and w["768"]["rows"] == 8192
    t = w["plan"]["machines"]
    assert set(t) == {"1", "4"} and t["4"] < t["1"]
    assert w["plan"]["bytes"] == 100_000_000 * 768 * 4
    assert "sklearn / kexue-ivf" in r.stdout and "plan 100,000,000 × 768" in r.stdout
    # the generated file is cached by (N, d, seed) and is the documented clustered set: unit rows
    X = np.load(tmp_path / "data" / f"clustered-n{n}-d16-seed0-v1.npy", mmap_mode="r")
    assert X.shape == (n, 16) and X.dtype == np.float32
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_peers_python_reasons(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_hubness_scale as B
    finally:
        sys.path.remove(str(BENCH))
    assert B.peers(argparse.Namespace(peers_python=None))[1].startswith("no $KEXUE_PEERS_PYTHON")
    missing = tmp_path / "nope" / "python"
    assert "does not exist" in B.peers(argparse.Namespace(peers_python=str(missing)))[1]
    fake = tmp_path / "python"  # a Python without kiez
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import kiez_not_there'\n")
    fake.chmod(0o755)
    py, why = B.peers(argparse.Namespace(peers_python=str(fake)))
    assert py is None and "cannot import kiez and faiss" in why and "hubness_peers_venv.sh" in why
