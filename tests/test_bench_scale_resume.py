"""benchmarks/bench_hubness_scale.py resumes: a run stopped part-way (--stop-after, SIGTERM) continues
from its saved state with the same arguments, reusing the measures it completed without re-running
them; other arguments stop it with a one-line error; SIGTERM ends the running measure's processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
from _bench import interleaved  # noqa: E402
from _scale_state import STOPPED, Mismatch, State  # noqa: E402

sys.path.remove(str(BENCH))

ARGS = {"rows": 4000, "dim": 16, "seed": 0, "k": 10, "recall": 0.95, "recall_sample": 200, "block_rows": 16384,
        "mp_candidates": 100, "pq_factory": "IVF{nlist},PQ{m}", "pq_refine_factory": "", "pq_m": None, "k_factor": 8,
        "kiez_index": "HNSW32", "kiez_param": "efSearch=128", "estimate_fraction": 0.05, "cluster": None,
        "gaussian_rows": None, "whiten_rows": 8192, "whiten_block": 4096}


def _three_way(st: State, calls: list) -> dict[str, list]:
    """The benchmark's A B C interleaving over two rounds, each call logged when it really runs."""
    runs: dict[str, list] = {s: [] for s in "ABC"}

    def fn(name):
        return lambda: (calls.append(name), {"name": name, "n": len(calls)})[1]

    interleaved({s: st.rounds("clustered", s, fn(s), runs[s]) for s in "ABC"}, repeats=2, warmup=0)
    return runs


def test_rounds_resume_in_order_and_skip_saved(tmp_path, capsys):
    calls: list = []
    with pytest.raises(SystemExit) as stop:  # stopped after A B C A: round 1's B and C are missing
        _three_way(State(tmp_path, ARGS, "c" * 40, False, stop_after=4), calls)
    assert stop.value.code == STOPPED and calls == ["A", "B", "C", "A"]
    saved = json.loads((tmp_path / "state.json").read_text())["measures"]
    assert sorted(saved) == ["clustered/A/0", "clustered/A/1", "clustered/B/0", "clustered/C/0"]
    calls.clear()
    st = State(tmp_path, ARGS, "d" * 40, False)
    runs = _three_way(st, calls)
    assert calls == ["B", "C"]  # round 0 all saved: skipped; round 1 runs only what is missing, in order
    assert [r["n"] for r in runs["A"]] == [1, 4] and [r["n"] for r in runs["B"]] == [2, 1]
    assert "clustered/A/1: from the saved state" in capsys.readouterr().out
    now = json.loads((tmp_path / "state.json").read_text())["measures"]
    assert {k: now[k] for k in saved} == saved  # the reused records untouched
    p = st.provenance()
    assert len(p["sessions"]) == 2 and p["commits"] == ["c" * 40, "d" * 40] and len(p["measures"]) == 6
    assert p["measures"]["clustered/C/1"]["session"] == p["this_session"] != p["measures"]["clustered/C/0"]["session"]


def test_missing_file_reruns_and_mismatch_is_one_line(tmp_path):
    out = tmp_path / "x.bin"
    st = State(tmp_path, ARGS, "c" * 40, False)
    n = []
    st.run("clustered", "build", lambda: (out.write_bytes(b"1"), n.append(1), {"ok": 1})[2], need=[out])
    st.run("clustered", "build", lambda: (n.append(1), {"ok": 2})[1], need=[out])
    assert len(n) == 1  # saved and its file there: reused
    out.unlink()
    assert State(tmp_path, ARGS, "c" * 40, False).run("clustered", "build", lambda: {"ok": 3}, need=[out]) == {"ok": 3}
    with pytest.raises(Mismatch) as e:
        State(tmp_path, {**ARGS, "k": 5, "recall_sample": 300}, "c" * 40, False)
    msg = str(e.value)
    assert "\n" not in msg and "--k 10 (now 5)" in msg and "--recall-sample 200 (now 300)" in msg
    assert "--fresh" in msg and "--workdir" in msg and "--rows" not in msg
    st = State(tmp_path, {**ARGS, "k": 5}, "c" * 40, False, fresh=True)
    assert st.measures == {} and json.loads((tmp_path / "state.json").read_text())["args"]["k"] == 5


def test_each_record_names_the_checkout_it_ran_at(tmp_path):
    revs = iter([("a" * 40, False), ("b" * 40, True)])
    st = State(tmp_path, ARGS, "s" * 40, False, revision=lambda: next(revs))
    st.run("clustered", "one", lambda: {"x": 1})
    st.run("clustered", "two", lambda: {"x": 2})
    rec = st.measures
    assert (rec["clustered/one/0"]["commit"], rec["clustered/one/0"]["dirty"]) == ("a" * 40, False)
    assert (rec["clustered/two/0"]["commit"], rec["clustered/two/0"]["dirty"]) == ("b" * 40, True)
    assert State(tmp_path, ARGS, "c" * 40, False).provenance()["commits"] == []  # nothing used yet


def test_gaussian_rows_do_not_invalidate_saved_measures(tmp_path):
    State(tmp_path, ARGS, "c" * 40, False).run("clustered", "x", lambda: {"x": 1})
    st = State(tmp_path, {**ARGS, "gaussian_rows": 2000}, "c" * 40, False)  # its measures carry the size in the key
    assert list(st.measures) == ["clustered/x/0"]


def _bench(tmp_path, *extra, wait=True):
    pytest.importorskip("faiss")
    env = {k: v for k, v in os.environ.items() if k != "KEXUE_PEERS_PYTHON"}
    env["PYTHONPATH"] = str(REPO / "src")
    env["OMP_NUM_THREADS"] = "1"  # FAISS's OpenMP threads spin on a busy machine; one is quick at this size
    cmd = [sys.executable, str(BENCH / "bench_hubness_scale.py"), "--rows", "4000", "--dim", "16", "--data-dir",
           str(tmp_path / "data"), "--recall-sample", "200", "--skip", "sklearn,kiez,pq,whiten,mp", *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def _state(tmp_path) -> dict:
    return json.loads((tmp_path / "data" / "run-n4000-d16-seed0" / "state.json").read_text())


@pytest.mark.slow
def test_stopped_run_resumes_from_saved_measures(tmp_path):
    r = _bench(tmp_path, "--stop-after", "3")
    assert r.returncode == STOPPED, r.stderr[-3000:]
    first = _state(tmp_path)["measures"]
    assert list(first) == ["clustered/generate/0", "clustered/truth/0", "clustered/kexue-ivf/0"]
    nk = tmp_path / "data" / "run-n4000-d16-seed0" / "clustered-ivf.nk.npy"
    assert nk.exists()  # the measure's outputs live in the work directory, not a temporary one
    nk_mtime = nk.stat().st_mtime_ns
    js = tmp_path / "scale.json"
    r = _bench(tmp_path, "--json", str(js))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clustered/kexue-ivf/0: from the saved state" in r.stdout
    second = _state(tmp_path)["measures"]
    assert {k: second[k] for k in first} == first and nk.stat().st_mtime_ns == nk_mtime  # not re-run
    assert set(second) - set(first) == {"clustered/estimate/0"}
    assert second["clustered/estimate/0"]["session"] != first["clustered/kexue-ivf/0"]["session"]
    res = json.loads(js.read_text())
    ds = res["datasets"]["clustered"]
    assert ds["kexue-ivf"]["wall_s"] == first["clustered/kexue-ivf/0"]["result"]["wall_s"]
    assert ds["estimate"]["full_scan_skewness"] == ds["kexue-ivf"]["skewness"]
    assert len(res["provenance"]["sessions"]) == 2 and "These rows come from 2 sessions" in r.stdout
    r = _bench(tmp_path, "--threads", "1", "--skip", "sklearn,kiez,pq,whiten,mp,estimate")
    assert r.returncode == 0, r.stderr[-3000:]  # --threads: its own measures, the saved ones kept
    third = _state(tmp_path)["measures"]
    assert set(third) - set(second) == {"clustered/kexue-ivf@1t/0"} and {k: third[k] for k in second} == second
    assert (tmp_path / "data" / "run-n4000-d16-seed0" / "clustered-ivf@1t.nk.npy").exists()
    second = third
    r = _bench(tmp_path, "-k", "5")  # other arguments: refused, one line, the state left alone
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--k 10 (now 5)" in r.stderr and "--fresh" in r.stderr
    assert _state(tmp_path)["measures"] == second
    r = _bench(tmp_path, "-k", "5", "--fresh", "--stop-after", "1")
    assert r.returncode == STOPPED, r.stderr[-3000:]
    st = _state(tmp_path)
    assert st["args"]["k"] == 5 and list(st["measures"]) == ["clustered/generate/0"]


def _ours(tmp_path) -> list[int]:
    """Processes other than this test's whose command line names tmp_path (the measures' children)."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and str(tmp_path) in (p / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_sigterm_ends_the_running_measure_and_keeps_the_finished_ones(tmp_path):
    p = _bench(tmp_path, wait=False)
    state = tmp_path / "data" / "run-n4000-d16-seed0" / "state.json"
    deadline = time.monotonic() + 600
    while not (state.exists() and "clustered/truth/0" in state.read_text()):  # kexue-ivf starts next
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(0.2)
    assert p.poll() is None, "the run ended before the signal: nothing to stop"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    time.sleep(0.5)
    assert _ours(tmp_path) == []  # no measure left running
    assert {"clustered/generate/0", "clustered/truth/0"} <= set(_state(tmp_path)["measures"])
    r = _bench(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clustered/truth/0: from the saved state" in r.stdout
