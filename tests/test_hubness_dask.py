"""Hubness on a Dask cluster (issue 29 item 3): query blocks searched on worker processes give the
single-process kNN graph and N_k, quietly; bad cluster options are one line, exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from kexue import KexueError
from kexue.hubness import k_occurrence, kneighbors

NOISE = ("Traceback", "Warning", "warning", "distributed.", "tornado", "Error")


def _data(n=1500, d=12, seed=0, dtype=np.float32):
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)
    X[[40, n - 1]] = X[7]  # exact duplicates: near-ties resolved by index, a point's twin still its neighbour
    return X


@pytest.mark.slow
def test_local_cluster_of_processes_gives_the_single_process_graph_and_nk_quietly(tmp_path, capfd):
    distributed = pytest.importorskip("dask.distributed")
    from kexue.hubness.distributed import k_occurrence_dask, kneighbors_dask

    X, Q = _data(), np.random.default_rng(1).standard_normal((333, 12))
    np.save(tmp_path / "x.npy", X)
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        for metric in ("euclidean", "cosine"):
            ref = kneighbors(X, 6, metric=metric)
            for index in (X, tmp_path / "x.npy"):  # scattered once / opened by every worker
                g = kneighbors_dask(index, 6, client, metric=metric, block_rows=256)  # 6 blocks, the last short
                np.testing.assert_array_equal(g.ind, ref.ind)
                np.testing.assert_array_equal(g.dist, ref.dist)
            nk = k_occurrence_dask(tmp_path / "x.npy", 6, client, metric=metric, block_rows=200)  # a tree of 8 counts
            np.testing.assert_array_equal(nk, k_occurrence(X, 6, metric=metric))
            q = kneighbors_dask(X, 4, client, metric=metric, queries=Q, block_rows=100)
            ref_q = kneighbors(X, 4, metric=metric, queries=Q)
            np.testing.assert_array_equal(q.ind, ref_q.ind)
            np.testing.assert_array_equal(q.dist, ref_q.dist)
        with_self = kneighbors_dask(X, 3, client, exclude_self=False, block_rows=500)
        np.testing.assert_array_equal(with_self.ind, kneighbors(X, 3, queries=X).ind)
        bad = X.copy()
        bad[1234, 5] = np.inf
        np.save(tmp_path / "bad.npy", bad)  # read on a worker: the error comes back as one line
        with pytest.raises(KexueError, match=r"bad.npy has a non-finite value \(inf\) at row 1234, column 5"):
            kneighbors_dask(tmp_path / "bad.npy", 3, client, block_rows=500)
        with pytest.raises(KexueError, match="k must be an integer in 1..1499"):
            kneighbors_dask(X, 1500, client)
        with pytest.raises(KexueError, match="queries have 3 features"):
            kneighbors_dask(X, 2, client, queries=np.ones((4, 3)))
    err = capfd.readouterr().err  # the worker processes write to the same stderr
    assert not any(s in err for s in NOISE), err


def test_no_client_is_one_line():
    distributed = pytest.importorskip("dask.distributed")
    from kexue.hubness.distributed import kneighbors_dask

    try:
        distributed.get_client()
        pytest.skip("a Dask client is already running in this process")
    except ValueError:
        pass
    with pytest.raises(KexueError, match="no Dask client: pass client="):
        kneighbors_dask(_data(n=60), 2)


@pytest.mark.slow
def test_cli_cluster_gives_the_local_nk_and_graph_quietly(tmp_path, cli):
    from conftest import run_kexue

    pytest.importorskip("dask.distributed")
    np.save(tmp_path / "x.npy", _data(n=3000, d=16, seed=3))
    out = run_kexue("hubness", "x.npy", "-k", 10, "--cluster", "local:2", "--nk-out", "nk_dask.npy",
                    "--graph-out", "g_dask.npz", "--json", "m_dask.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not any(s in out.stderr for s in NOISE), out.stderr
    here = cli("hubness", tmp_path / "x.npy", "-k", 10, "--nk-out", tmp_path / "nk.npy", "--graph-out", tmp_path / "g.npz",
               "--json", tmp_path / "m.json")
    assert here.code == 0, here.err
    np.testing.assert_array_equal(np.load(tmp_path / "nk_dask.npy"), np.load(tmp_path / "nk.npy"))
    a, b = np.load(tmp_path / "g_dask.npz"), np.load(tmp_path / "g.npz")
    np.testing.assert_array_equal(a["indices"], b["indices"])
    np.testing.assert_array_equal(a["distances"], b["distances"])
    import json

    assert json.loads((tmp_path / "m_dask.json").read_text())["measures"] == json.loads((tmp_path / "m.json").read_text())["measures"]
    np.save(tmp_path / "q.npy", np.random.default_rng(4).standard_normal((700, 16)))
    for extra in (["--reduce", "mp", "--candidates", 30], ["--queries", "q.npy", "--reduce", "csls", "--reference", "queries"]):
        # the candidates are searched on the cluster and re-ranked here: the same reduced graph
        out = run_kexue("hubness", "x.npy", "-k", 10, "--cluster", "local:2", "--nk-out", "nk_dask.npy",
                        "--graph-out", "g_dask.npz", *extra, cwd=tmp_path)
        assert out.returncode == 0 and not any(s in out.stderr for s in NOISE), out.stderr
        extra = [tmp_path / e if str(e).endswith(".npy") else e for e in extra]
        assert cli("hubness", tmp_path / "x.npy", "-k", 10, "--nk-out", tmp_path / "nk.npy", "--graph-out",
                   tmp_path / "g.npz", *extra).code == 0
        np.testing.assert_array_equal(np.load(tmp_path / "nk_dask.npy"), np.load(tmp_path / "nk.npy"))
        a, b = np.load(tmp_path / "g_dask.npz"), np.load(tmp_path / "g.npz")
        np.testing.assert_array_equal(a["indices"], b["indices"])
        np.testing.assert_array_equal(a["distances"], b["distances"])
    X = np.load(tmp_path / "x.npy")
    X[2345, 7] = np.nan
    np.save(tmp_path / "bad.npy", X)  # scanned before the header line: the one error line
    bad = run_kexue("hubness", "bad.npy", "-k", 10, "--cluster", "local:1", "--nk-out", "nk_bad.npy", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "kexue: error: bad.npy has a non-finite value (nan) at row 2345, column 7; clean or drop those rows"], bad.stderr
    assert not (tmp_path / "nk_bad.npy").exists()


@pytest.mark.parametrize("args,match", [
    (["--cluster", "local:0"], "--cluster must be local:N with N ≥ 1"),
    (["--cluster", "local:2", "--scheduler", "tcp://127.0.0.1:8786"], "not both"),
    (["--scheduler", "127.0.0.1:8786"], "--scheduler must be a Dask address"),
    pytest.param(["--cluster", "local:2", "--index", "i.faiss"], "--index i.faiss not found", marks=pytest.mark.needs("faiss")),
])
def test_cli_bad_cluster_options_are_one_line(cli, tmp_path, args, match):
    np.save(tmp_path / "x.npy", _data(n=50))
    r = cli("hubness", tmp_path / "x.npy", "-k", 3, "--nk-out", tmp_path / "nk.npy", *args)
    assert r.one_line_error and match in r.err, r.err
    assert not (tmp_path / "nk.npy").exists()


def test_cli_unreachable_scheduler_is_one_line(cli, tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    import kexue.cluster

    monkeypatch.setattr(kexue.cluster, "CONNECT_TIMEOUT", 1)  # port 9: nothing listens; fail fast
    np.save(tmp_path / "x.npy", _data(n=50))
    r = cli("hubness", tmp_path / "x.npy", "-k", 3, "--nk-out", tmp_path / "nk.npy", "--scheduler", "tcp://127.0.0.1:9")
    assert r.one_line_error and "cannot reach the Dask scheduler tcp://127.0.0.1:9" in r.err, r.err
    assert not (tmp_path / "nk.npy").exists()
    r = cli("whiten", "fit", tmp_path / "x.npy", "-o", tmp_path / "w.safetensors", "--scheduler", "tcp://127.0.0.1:9")
    assert r.one_line_error and "cannot reach the Dask scheduler" in r.err, r.err
    assert not (tmp_path / "w.safetensors").exists()
    assert cli("whiten", "fit", tmp_path / "x.npy", "-o", tmp_path / "w.safetensors").code == 0
    r = cli("whiten", "apply", tmp_path / "w.safetensors", tmp_path / "x.npy", "-o", tmp_path / "z.npy",
            "--scheduler", "tcp://127.0.0.1:9")
    assert r.one_line_error and "cannot reach the Dask scheduler" in r.err, r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "x.npy"]  # no output, no temporary
    (tmp_path / "w.safetensors").unlink()
    for args in (["--cluster", "local:0"], ["--cluster", "local:1", "--scheduler", "tcp://h:1"]):
        r = cli("whiten", "fit", tmp_path / "x.npy", "-o", tmp_path / "w.safetensors", *args)
        assert r.one_line_error, r.err
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.slow
def test_cli_whiten_fit_names_a_worker_that_cannot_read_the_file(cli, tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    import kexue.cluster

    monkeypatch.setattr(kexue.cluster, "blind_workers", lambda c, p: ["tcp://elsewhere:1"])
    np.save(tmp_path / "x.npy", _data(n=50))
    r = cli("whiten", "fit", tmp_path / "x.npy", "-o", tmp_path / "w.safetensors", "--cluster", "local:1")
    assert r.one_line_error and "Dask worker tcp://elsewhere:1 cannot read" in r.err, r.err
    assert not (tmp_path / "w.safetensors").exists()


def test_the_current_client_is_used_when_none_is_given():
    """``client=None`` takes the client the caller created, as dask-ml's estimators do."""
    distributed = pytest.importorskip("dask.distributed")
    from kexue.hubness.distributed import k_occurrence_dask

    X = _data(n=300)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            distributed.Client(lc):
        np.testing.assert_array_equal(k_occurrence_dask(X, 5, block_rows=64), k_occurrence(X, 5))


def test_a_file_some_worker_cannot_see_is_sent_to_every_worker(tmp_path, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    import kexue.cluster
    from kexue.hubness.distributed import kneighbors_dask

    X = _data(n=400)
    np.save(tmp_path / "x.npy", X)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        assert kexue.cluster.blind_workers(client, tmp_path / "x.npy") == []
        assert kexue.cluster.blind_workers(client, tmp_path / "gone.npy") == list(client.scheduler_info()["workers"])
        monkeypatch.setattr(kexue.cluster, "blind_workers", lambda c, p: ["tcp://elsewhere:1"])
        seen = []
        orig = client.scatter
        monkeypatch.setattr(client, "scatter", lambda data, **kw: seen.append(type(data)) or orig(data, **kw))
        g = kneighbors_dask(tmp_path / "x.npy", 4, client, block_rows=128)
    assert seen == [np.ndarray]  # the rows, read here, sent once
    np.testing.assert_array_equal(g.ind, kneighbors(X, 4).ind)


@pytest.mark.parametrize("logger, msg, args, kept", [
    ("distributed.worker.state_machine", "Async instruction for <Task cancelled name=\"execute(('x', 1))\"> ended with "
     "CancelledError", (), False),
    ("distributed.worker.state_machine", "Async instruction for <Task> ended with ValueError()", (), True),
    ("distributed.worker", "Compute Failed\nKey: %s\nState: %s\nTask: %s\nException: %s", ("k", "s", "t", "KexueError('x')"),
     False),
    ("distributed.worker", "Compute Failed\nKey: %s\nState: %s\nTask: %s\nException: %s", ("k", "s", "t", "OSError('x')"),
     True),
])
def test_worker_log_filters_drop_only_what_the_cli_reports_itself(logger, msg, args, kept):
    import logging

    from kexue import cluster

    cluster._quiet_user_errors()
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None)
    assert all(f.filter(record) for f in logging.getLogger(logger).filters) is kept
