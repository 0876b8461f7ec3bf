"""Worker processes without joblib noise (issue 31 item 1, issue 32 item 5): the audit's arrays go
to the workers as memory-mapped files of our own, never through joblib's temporary folder and
loky's resource tracker; each call gets a fresh pool; an abandoned call is closed quietly."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kexue.parallel import ArrayFile, SharedArrays, file_of, opened
from kexue.unargmax import audit, planted_layer

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC), "JOBLIB_TEMP_FOLDER": str(tmp_path / "joblib")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)


def test_shared_arrays_are_files_read_back_exactly_and_removed(tmp_path):
    a = np.random.default_rng(0).standard_normal((300, 70))
    with SharedArrays(tmp_path) as sh:
        ref = sh.share(a)
        assert isinstance(ref, ArrayFile) and len(pickle.dumps(ref)) < 500  # a path, not the data
        m = opened(ref)
        assert isinstance(m, np.memmap) and not m.flags.writeable and np.array_equal(m, a)
        assert sh.share(np.ones(3)) is not None and not isinstance(sh.share(np.ones(3)), ArrayFile)  # small: by value
        folder = sh.folder
        del m
    assert not os.path.exists(folder)
    np.save(tmp_path / "w.npy", a.astype(np.float32))
    w = np.load(tmp_path / "w.npy", mmap_mode="r")
    ref = file_of(w)  # a read-only map of a whole file is shared as that file, no copy
    assert ref is not None and ref.path == str(tmp_path / "w.npy") and np.array_equal(ref.open(), w)
    assert file_of(w[1:]) is None and file_of(np.asarray(a)) is None


def test_audit_never_registers_files_with_the_resource_tracker(tmp_path):
    """By construction: the parent sends the tracker no file (the KeyError tracebacks of
    joblib#1243 are about those counts) and joblib creates no memmapping folder."""
    out = _run("""
        import numpy as np
        from joblib.externals.loky.backend import resource_tracker
        from joblib import _memmapping_reducer as mr
        seen = []
        orig = resource_tracker.register
        def spy(name, rtype):
            seen.append(rtype)
            return orig(name, rtype)
        resource_tracker.register = mr.resource_tracker.register = spy
        from kexue.unargmax import audit, planted_layer
        W, b, t = planted_layer(3000, 64, 100, seed=1)   # 1.5 MB float64: joblib would memmap it
        r = audit(W, None, n_jobs=2, block=128)
        r2 = audit(W, np.zeros(3000), n_jobs=2, block=128)
        assert (r.verdict == r2.verdict).all(), "bias 0 changed verdicts"
        print(sorted(set(seen)), r.counts()["unargmaxable"] + r.counts()["near-unargmaxable"])
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "file" not in out.stdout.split("]")[0] and out.stdout.strip().endswith("100")
    assert out.stderr == ""
    assert not (tmp_path / "joblib").exists() or not os.listdir(tmp_path / "joblib")


@pytest.mark.slow
def test_no_worker_restart_warning_and_quiet_abandoned_calls(tmp_path):
    """A pool first used for small tasks, then for tasks that keep 360 MB resident, was restarted
    by loky's leak check mid-call ("A worker stopped while some jobs were given to the executor");
    with a fresh pool per call it is not. A call abandoned half-way prints nothing either, and an
    audit on two processes of a layer joblib would have memory-mapped prints nothing at all."""
    out = _run("""
        import os, sys, time
        import numpy as np
        from joblib import delayed
        from kexue.parallel import consume, parallel
        def small(i):
            return os.getpid()
        def big(i):
            sys.__dict__["_kexue_test_keep"] = np.ones(45_000_000)  # held like a torch allocator's cache
            time.sleep(1.2)
            return os.getpid()
        if __name__ == "__main__":
            a = set(consume(parallel(2)(delayed(small)(i) for i in range(4))))
            b = set(consume(parallel(2)(delayed(big)(i) for i in range(6))))
            assert not a & b, "the second call reused the first call's workers"
            g = consume(parallel(2)(delayed(small)(i) for i in range(50)))
            next(g); next(g)
            g.close()
            from kexue.unargmax import audit, planted_layer
            W, _, t = planted_layer(4000, 48, 120, seed=2)
            r = audit(W, None, n_jobs=2, block=256)
            assert r.counts()["unargmaxable"] == 120
            print("ok")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok" and out.stderr == ""


def test_parallel_stage_verdicts_equal_sequential_with_a_memmapped_float32_layer(tmp_path):
    W, b, truth = planted_layer(1500, 24, 60, bias=True, seed=3)
    np.save(tmp_path / "W.npy", W.astype(np.float32))
    Wm = np.load(tmp_path / "W.npy", mmap_mode="r")
    r1 = audit(Wm, b, block=128)
    r2 = audit(Wm, b, n_jobs=2, block=128, shared_dir=str(tmp_path))
    assert (r1.verdict == r2.verdict).all() and r1.counts()["undecided"] == 0
    assert [p for p in os.listdir(tmp_path) if p.startswith("kexue-shared-")] == []  # cleaned up


def test_shared_dir_must_exist(tmp_path):
    from kexue import KexueError

    with pytest.raises(KexueError, match="not a folder"):
        audit(np.eye(3), None, shared_dir=str(tmp_path / "nope"))


# ---- wide heads (issue 32 item 1): streamed witnesses, float32 W, workers read W from a file

def test_streamed_witnesses_and_float32_w_give_the_in_memory_verdicts(tmp_path):
    W, b, truth = planted_layer(900, 16, 40, bias=True, seed=8)
    W32 = W.astype(np.float32)
    mem = audit(W32, b, keep_witnesses=True, block=128)  # float64 copy of W (below f64_mb)
    path = tmp_path / "z.npy"
    streamed = audit(W32, b, witness_path=str(path), f64_mb=0, block=128, n_jobs=2)  # W stays float32
    assert np.array_equal(mem.verdict, streamed.verdict) and mem.counts()["undecided"] == 0
    assert isinstance(streamed.witnesses, np.memmap) and np.array_equal(np.load(path), streamed.witnesses)
    ok = np.flatnonzero(mem.verdict == 1)
    assert np.array_equal(mem.witnesses[ok], streamed.witnesses[ok])
    assert [p.name for p in tmp_path.iterdir()] == ["z.npy"]  # published once, no temporary left
    small = audit(W32, b, block=128)  # keep_witnesses=None keeps them for a small layer
    assert small.witnesses is not None and audit(W32, b, keep_witnesses=False).witnesses is None


def test_dask_tasks_get_w_as_a_file_not_a_copy(monkeypatch, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    import importlib

    audit_mod = importlib.import_module("kexue.unargmax.audit")
    orig, log = audit_mod.precheck_block, str(tmp_path / "seen.txt")

    def spy(W, W32, b, ks, stats):  # runs on a worker (a deserialised copy): it writes to a file
        with open(log, "a") as f:
            f.write(type(W).__name__ + "\n")
        return orig(W, W32, b, ks, stats)

    monkeypatch.setattr(audit_mod, "precheck_block", spy)
    W, _, _ = planted_layer(3000, 12, 30, seed=9)  # 288 kB: shared as a file
    with distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None) as cluster:
        # a tcp:// cluster gets W as a file when shared_dir names a folder every worker sees
        res = audit(W, None, scheduler=cluster.scheduler_address, block=256, shared_dir=str(tmp_path))
    seen = open(log).read().split()
    assert res.counts()["undecided"] == 0 and len(seen) == -(-3000 // 256) and set(seen) == {"ArrayFile"}


@pytest.mark.slow
def test_dask_local_cluster_of_processes_gives_the_local_verdicts_quietly(tmp_path):
    pytest.importorskip("dask.distributed")
    out = _run("""
        import numpy as np
        from kexue.unargmax import audit, planted_layer
        if __name__ == "__main__":
            W, b, truth = planted_layer(2500, 24, 80, bias=True, seed=10)   # 480 kB float64, 2 x 1.5 MB: shared as files
            W = np.vstack([W, np.random.default_rng(0).standard_normal((2500, 24))])
            b = np.concatenate([b, np.full(2500, -50.0)])
            local = audit(W, b, block=256)
            remote = audit(W, b, scheduler="local:2", block=256)
            assert np.array_equal(local.verdict, remote.verdict), "verdicts differ"
            print("ok", local.counts()["unargmaxable"])
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
    for bad in ("Traceback", "KeyError", "resource_tracker", "UserWarning"):
        assert bad not in out.stderr, out.stderr
