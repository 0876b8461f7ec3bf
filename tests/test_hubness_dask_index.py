"""A FAISS index searched on Dask workers (issue 29 item 3): each worker process reads the saved
index once from its file (a user's Flat or IVF-Flat index, shards in row order, or the index built
here for --backend ivf) and the kNN graph and N_k equal the single-process ones with the same
index; a mismatched index or an index some worker cannot read is one line (exit 2 in the CLI)."""

from __future__ import annotations

import numpy as np
import pytest

from kexue import KexueError
from kexue.hubness import kneighbors, occurrences

faiss = pytest.importorskip("faiss")
distributed = pytest.importorskip("dask.distributed")

NOISE = ("Traceback", "Warning", "warning", "distributed.", "tornado", "Error")
N, D = 1200, 12


def _data(seed=0):
    X = np.random.default_rng(seed).standard_normal((N, D)).astype(np.float32)
    X[[40, N - 1]] = X[7]  # exact duplicates: ties resolved by index
    return X


def _indexes(tmp_path, X):
    """Saved Flat and IVF-Flat indexes of X, and X's rows in two Flat shards; their paths."""
    flat = faiss.IndexFlatL2(D)
    flat.add(X)
    faiss.write_index(flat, str(tmp_path / "flat.faiss"))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(D), D, 16)
    ivf.cp.seed = 1
    ivf.train(X)
    ivf.add(X)
    ivf.nprobe = 3  # searched as configured: an approximate graph, the same in every process
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))
    for name, rows in (("a", X[:500]), ("b", X[500:])):
        part = faiss.IndexFlatL2(D)
        part.add(rows)
        faiss.write_index(part, str(tmp_path / f"{name}.faiss"))
    return {"flat": str(tmp_path / "flat.faiss"), "ivf": str(tmp_path / "ivf.faiss"),
            "shards": [str(tmp_path / "a.faiss"), str(tmp_path / "b.faiss")]}


@pytest.mark.slow
def test_workers_search_a_saved_index_as_one_process_does(tmp_path, capfd):
    from kexue.hubness import distributed_index
    from kexue.hubness.distributed import k_occurrence_dask, kneighbors_dask
    from kexue.hubness.faiss_index import read_shards

    X, Q = _data(), np.random.default_rng(1).standard_normal((250, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "sh").mkdir()
    np.save(tmp_path / "sh" / "0.npy", X[:700])
    np.save(tmp_path / "sh" / "1.npy", X[700:])
    paths = _indexes(tmp_path, X)
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        for kind, path in paths.items():
            one = kneighbors(X, 5, backend=read_shards(path))
            assert one.backend == ("IndexShards" if kind == "shards" else type(read_shards(path)).__name__)
            for rows in (tmp_path / "x.npy", tmp_path / "sh", X):  # a file, a directory of shards, scattered rows
                g = kneighbors_dask(rows, 5, client, index=path, block_rows=256)  # 5 blocks, the last short
                np.testing.assert_array_equal(g.ind, one.ind)
                np.testing.assert_array_equal(g.dist, one.dist)
                assert (g.backend, g.params) == (one.backend, one.params)
            nk = k_occurrence_dask(tmp_path / "x.npy", 5, client, index=path, block_rows=300)
            np.testing.assert_array_equal(nk, occurrences(one.ind, N))
            q = kneighbors_dask(tmp_path / "x.npy", 4, client, index=path, queries=Q, block_rows=100)
            np.testing.assert_array_equal(q.ind, kneighbors(X, 4, backend=read_shards(path), queries=Q).ind)
        g = kneighbors_dask(tmp_path / "sh", 5, client, block_rows=256)  # the exact search of a shard directory
        np.testing.assert_array_equal(g.ind, kneighbors(X, 5).ind)
        # the index each worker read on its first task is the one its later tasks use: read once per process
        ids = client.run(lambda: sorted(id(v[0]) for v in distributed_index._INDEXES.values()))
        kneighbors_dask(tmp_path / "x.npy", 5, client, index=paths["shards"], block_rows=256)
        assert client.run(lambda: sorted(id(v[0]) for v in distributed_index._INDEXES.values())) == ids
        # a built index, and one built here for a backend: written once for the workers, then removed
        ivf = read_shards(paths["ivf"])
        np.testing.assert_array_equal(kneighbors_dask(X, 5, client, index=ivf, block_rows=400).ind,
                                      kneighbors(X, 5, backend=ivf).ind)
        workdir = tmp_path / "work"
        workdir.mkdir()
        for metric in ("euclidean", "cosine"):
            one = kneighbors(X, 5, metric=metric, backend="ivf")
            g = kneighbors_dask(tmp_path / "x.npy", 5, client, metric=metric, backend="ivf", block_rows=400,
                                workdir=workdir)
            np.testing.assert_array_equal(g.ind, one.ind)
            np.testing.assert_array_equal(g.dist, one.dist)
            assert (g.params, g.recall, g.recall_sample) == (one.params, one.recall, one.recall_sample)
        assert list(workdir.iterdir()) == []
        # a mismatched index: one line, checked on a worker
        ip = faiss.IndexFlatIP(D)
        ip.add(X)
        faiss.write_index(ip, str(tmp_path / "ip.faiss"))
        with pytest.raises(KexueError, match=r"ip.faiss ranks by inner product .* but metric is euclidean"):
            kneighbors_dask(tmp_path / "x.npy", 5, client, index=tmp_path / "ip.faiss")
        with pytest.raises(KexueError, match=r"flat.faiss has dimension d=12 but X has 6 columns"):
            kneighbors_dask(X[:, :6], 5, client, index=paths["flat"])
        with pytest.raises(KexueError, match=r"holds 1200 vectors but X has 1000 rows"):
            k_occurrence_dask(X[:1000], 5, client, index=paths["ivf"])
        with pytest.raises(KexueError, match=r"x.npy is not a readable FAISS index"):
            kneighbors_dask(X, 5, client, index=tmp_path / "x.npy")
    err = capfd.readouterr().err
    assert not any(s in err for s in NOISE), err


def test_an_index_some_worker_cannot_read_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    import kexue.cluster
    from kexue.hubness.distributed import kneighbors_dask

    X = _data()[:300]
    flat = faiss.IndexFlatL2(D)
    flat.add(X)
    faiss.write_index(flat, str(tmp_path / "flat.faiss"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        np.testing.assert_array_equal(kneighbors_dask(X, 3, client, index=tmp_path / "flat.faiss").ind,
                                      kneighbors(X, 3, backend=flat).ind)
        monkeypatch.setattr(kexue.cluster, "blind_workers", lambda c, p: ["tcp://elsewhere:1"])
        with pytest.raises(KexueError, match="Dask worker tcp://elsewhere:1 cannot read the FAISS index .*flat.faiss; "
                                             "put it on storage every worker mounts"):
            kneighbors_dask(X, 3, client, index=tmp_path / "flat.faiss")
        with pytest.raises(KexueError, match="pass workdir= \\(CLI: --workdir DIR\\), a folder every worker mounts"):
            kneighbors_dask(X, 3, client, backend="ivf", workdir=tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.faiss"]  # the built index's folder is removed
        with pytest.raises(KexueError, match="drop backend='ivf'"):
            kneighbors_dask(X, 3, client, backend="ivf", index=tmp_path / "flat.faiss")


@pytest.mark.slow
def test_cli_index_on_a_cluster_gives_the_local_nk_quietly(tmp_path, cli):
    from conftest import run_kexue

    X = _data()
    np.save(tmp_path / "x.npy", X)
    _indexes(tmp_path, X)
    out = run_kexue("hubness", "x.npy", "-k", 5, "--index", "a.faiss", "--index", "b.faiss", "--cluster", "local:2",
                    "--nk-out", "nk_dask.npy", "--graph-out", "g_dask.npz", cwd=tmp_path)
    assert out.returncode == 0 and not any(s in out.stderr for s in NOISE), out.stderr
    here = cli("hubness", tmp_path / "x.npy", "-k", 5, "--index", tmp_path / "flat.faiss", "--nk-out", tmp_path / "nk.npy",
               "--graph-out", tmp_path / "g.npz")
    assert here.code == 0, here.err
    np.testing.assert_array_equal(np.load(tmp_path / "nk_dask.npy"), np.load(tmp_path / "nk.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "g_dask.npz")["indices"], np.load(tmp_path / "g.npz")["indices"])


@pytest.mark.parametrize("make, args, match", [
    ("d6", ["--index", "d6.faiss"], "--index d6.faiss has dimension d=6 but INDEX x.npy has 12 columns"),
    ("ip", ["--index", "ip.faiss"], "--index ip.faiss ranks by inner product (metric_type 0) but --metric is euclidean"),
    ("d6", ["--index", "flat.faiss", "--index", "d6.faiss"], "d6.faiss has dimension 6 and metric_type 1 but"),
    (None, ["--backend", "ivf", "--workdir", "nowhere"], "--workdir nowhere is not a folder; create it on storage every"),
    ("local", ["--workdir", "nowhere"], "--workdir nowhere is not a folder; create it"),  # scratch space, no Dask
])
def test_cli_bad_index_on_a_cluster_is_one_line_before_any_work(cli, tmp_path, monkeypatch, make, args, match):
    X = _data()[:200]
    np.save(tmp_path / "x.npy", X)
    flat = faiss.IndexFlatL2(D)
    flat.add(X)
    faiss.write_index(flat, str(tmp_path / "flat.faiss"))
    if make not in (None, "local"):
        index = faiss.IndexFlatL2(6) if make == "d6" else faiss.IndexFlatIP(D)
        index.add(np.ascontiguousarray(X[:, :6]) if make == "d6" else X)
        faiss.write_index(index, str(tmp_path / f"{make}.faiss"))
    monkeypatch.chdir(tmp_path)
    cluster = [] if make == "local" else ["--cluster", "local:2"]
    r = cli("hubness", "x.npy", "-k", 3, "--nk-out", "nk.npy", *args, *cluster)
    assert r.one_line_error and match in r.err, r.err
    assert make != "local" or "Dask" not in r.err, r.err
    assert not (tmp_path / "nk.npy").exists()


def test_only_the_slow_exit_of_a_closing_local_worker_is_dropped():
    import logging

    from kexue.cluster import _SlowExitFilter

    def record(msg):
        return logging.LogRecord("distributed.nanny", logging.WARNING, __file__, 1, msg, (), None)

    assert not _SlowExitFilter().filter(record("Worker process still alive after 4.0 seconds, killing"))
    assert _SlowExitFilter().filter(record("Restarting worker"))
