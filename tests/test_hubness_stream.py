"""The reductions over a candidate graph kept on disk (issue 29, item 1; kexue.hubness.stream): the
approximate search writes it a block at a time, the statistics and the re-ranking read it back a
block at a time, and the results are bit for bit those of the graph in memory — API and CLI, in
sample and for queries, with and without a reference; ``block_rows`` bounds the working memory."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from kexue import hubness as H
from kexue.hubness import stream
from kexue.utils import KexueError

faiss = pytest.importorskip("faiss")

N, D, C, K = 600, 12, 24, 5
WITH_STATISTIC = [n for n in H.REDUCTIONS if n not in ("mp-empirical", "centering")]
CASES = [(n, None) for n in H.REDUCTIONS] + [(n, "bank") for n in WITH_STATISTIC]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(29)
    X = (rng.standard_normal((N, D)) + rng.integers(0, 3, (N, 1))).astype(np.float32)
    X[500] = X[3]  # a duplicate: a tie at distance 0
    Q = (rng.standard_normal((170, D)) + 1.0).astype(np.float32)
    R = (rng.standard_normal((150, D)) + 0.5).astype(np.float32)
    return X, Q, R


def test_disk_rows_store_and_read_row_ranges(tmp_path):
    with stream.scratch(tmp_path):
        dist, ind = stream.disk_graph(7, 3, 100)
    assert list(tmp_path.iterdir()) == []  # unnamed: nothing to leave behind, whatever happens
    A = np.arange(21, dtype=np.float64).reshape(7, 3) / 7
    dist[0:4], dist[4:7] = A[:4], A[4:]
    ind[0:7] = np.arange(21).reshape(7, 3)
    assert ind.stored == np.int32 and ind[2:5].dtype == np.int64
    np.testing.assert_array_equal(dist[2:6], A[2:6])
    np.testing.assert_array_equal(dist[1:5, :2], A[1:5, :2])
    np.testing.assert_array_equal(ind[0:7], np.arange(21).reshape(7, 3))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(dist)), A)  # pickled: the plain array
    with pytest.raises(KexueError, match="a block of shape"):
        dist[0:2] = A[:3]
    dist.close()
    with stream.scratch(tmp_path / "missing"), pytest.raises(KexueError, match="give a writable folder"):
        stream.disk_graph(3, 2, 10)


def _graphs(X, Q, on_disk, block_rows=64):
    """The ivf candidate graph (fixed nprobe: the same search whatever is measured), in memory or on disk."""
    kw = dict(backend="ivf", backend_params={"nprobe": 3}, seed=1, block_rows=block_rows, recall_sample=50)
    nq = N if Q is None else len(Q)
    out = stream.disk_graph(nq, C, N) if on_disk else None
    g = H.kneighbors(X, C, queries=Q, out=out, **kw)
    assert stream.is_disk(g.dist) == on_disk
    return g


@pytest.mark.parametrize("name, reference", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_in_sample_from_a_graph_on_disk_is_the_in_memory_one(data, name, reference):
    X, _, R = data
    ref = R if reference == "bank" else None
    want_g = _graphs(X, None, on_disk=False)
    want = H.make_reduction(name, n_candidates=C, backend="ivf", backend_params={"nprobe": 3}).fit(
        X, graph=(want_g.dist, want_g.ind), reference=ref).kneighbors(n_neighbors=K)
    g = _graphs(X, None, on_disk=True)
    for rows in (None, 37, 1):  # the default block, blocks that do not divide N, one row at a time
        red = H.make_reduction(name, n_candidates=C, backend="ivf", backend_params={"nprobe": 3}, block_rows=rows)
        got = red.fit(X, graph=(g.dist, g.ind), reference=ref).kneighbors(n_neighbors=K)
        assert stream.is_disk(red._graph[0])
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reference", [None, "bank", "queries"])
@pytest.mark.parametrize("name", list(H.REDUCTIONS))
def test_reranking_queries_from_a_graph_on_disk_is_the_in_memory_one(data, name, reference):
    if reference is not None and name not in WITH_STATISTIC:
        pytest.skip("no per-point index statistic: a reference does not apply")
    X, Q, R = data
    fit_ref = {"bank": R, "queries": "queries", None: None}[reference]
    mem = _graphs(X, Q, on_disk=False)
    red = H.make_reduction(name, n_candidates=C, backend="ivf", backend_params={"nprobe": 3}).fit(X, reference=fit_ref)
    want = red.rerank(mem.dist, mem.ind, Q)  # all C columns, the whole batch in one block
    g = _graphs(X, Q, on_disk=True)
    for rows in (None, 29):
        red.set_params(block_rows=rows)
        got = red.rerank(g.dist, g.ind, Q, n_neighbors=K)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b[:, :K])


def test_the_approximate_self_search_of_fit_and_kneighbors_is_on_disk(data, tmp_path):
    """Without a given graph, fit's self-search and the in-sample candidates go to disk, with the
    results the in-memory graph gives."""
    X, _, R = data
    for ref in (None, R):
        with stream.scratch(tmp_path):
            red = H.MutualProximity(n_candidates=C, backend="ivf", backend_params={"nprobe": 3}, block_rows=50)
            got = red.fit(X, reference=ref).kneighbors(n_neighbors=K)
        assert stream.is_disk(red._graph[0]) and list(tmp_path.iterdir()) == []
        g = H.kneighbors(X, C, backend="ivf", backend_params={"nprobe": 3}, seed=0)
        want = H.MutualProximity(n_candidates=C, backend="ivf", backend_params={"nprobe": 3}).fit(
            X, graph=tuple(g), reference=ref).kneighbors(n_neighbors=K)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def _cli_files(tmp_path, data):
    X, Q, R = data
    for name, A in (("x", X), ("q", Q), ("r", R)):
        np.save(tmp_path / f"{name}.npy", A)


def _in_memory(X, name, Q=None, ref=None, **kw):
    """Today's in-memory path of ``kexue hubness --reduce``: the whole graph, then fit + kneighbors or rerank."""
    g = H.kneighbors(X, C, backend="ivf", queries=Q, seed=0, recall=0.95, block_rows=kw.get("block_rows", 16384))
    red = H.make_reduction(name, n_candidates=C, backend="ivf", random_state=0, metric="euclidean")
    if Q is None:
        return red.fit(X, graph=(g.dist, g.ind), reference=ref).kneighbors(n_neighbors=K)
    d, i = red.fit(X, reference=ref).rerank(g.dist, g.ind, Q)
    return d[:, :K], i[:, :K]


@pytest.mark.parametrize("name, reference", CASES + [(n, "queries") for n in WITH_STATISTIC],
                         ids=[f"{n}-{r}" for n, r in CASES + [(n, "queries") for n in WITH_STATISTIC]])
def test_cli_reduce_through_a_graph_on_disk_gives_the_in_memory_results(cli, tmp_path, data, name, reference):
    """``kexue hubness --backend ivf --reduce NAME`` (in sample, or --queries for the transductive
    reference) in a --workdir: the reduced graph and N_k equal today's in-memory path bit for bit,
    and the workdir is left empty."""
    X, Q, R = data
    _cli_files(tmp_path, data)
    work = tmp_path / "work"
    work.mkdir()
    args = ["--queries", str(tmp_path / "q.npy"), "--reference", "queries"] if reference == "queries" else \
        ["--reference", str(tmp_path / "r.npy")] if reference == "bank" else []
    r = cli("hubness", str(tmp_path / "x.npy"), "-k", K, "--backend", "ivf", "--reduce", name, "--candidates", C,
            "--block-rows", 97, "--workdir", str(work), "--graph-out", str(tmp_path / "g.npz"),
            "--nk-out", str(tmp_path / "nk.npy"), *args)
    assert r.code == 0, r.err
    assert list(work.iterdir()) == []
    got = np.load(tmp_path / "g.npz")
    want = _in_memory(X, name, Q if reference == "queries" else None,
                      {"bank": R, "queries": "queries", None: None}[reference], block_rows=97)
    np.testing.assert_array_equal(got["distances"], want[0])
    np.testing.assert_array_equal(got["indices"], want[1])
    np.testing.assert_array_equal(np.load(tmp_path / "nk.npy"), H.occurrences(want[1], N))


# ---------------------------------------------------------------- memory


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_cli_in_sample_mp_on_a_memory_map_stays_bounded(tmp_path):
    """``kexue hubness X.npy --backend ivf --reduce mp --candidates 100`` on a 200,000 × 32 float32
    memory map (24.4 MiB): the candidate graph goes to disk, so the peak above the imports stays
    under the file's pages + the IVF index's float32 copy + 160 MB (the allowance of the primary
    search's own memory test, tests/test_hubness_large.py), where the graph held in memory is
    200,000 × 100 × (8 + 8) bytes = 305 MiB by itself and the old path copied it further.
    Measured (load 5-10): 180.1 MiB above the imports (178.9 MiB with --block-rows 4096: the
    re-ranking's blocks are not the peak); the whole process peaked at 527.5 MiB against 807.1 MiB
    for the code before (``/usr/bin/time -v``, same graph and N_k bit for bit)."""
    from conftest import cli_peak_rss_above

    n, c = 200_000, 100
    rng = np.random.default_rng(2)
    X = (rng.standard_normal((n, 32)) + rng.integers(0, 8, (n, 1))).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    del X
    size = (tmp_path / "x.npy").stat().st_size
    work = tmp_path / "work"
    work.mkdir()
    extra = cli_peak_rss_above("hubness", tmp_path / "x.npy", "-k", 10, "--backend", "ivf", "--reduce", "mp",
                               "--candidates", c, "--workdir", work, "--nk-out", tmp_path / "nk.npy",
                               imports=("sklearn", "threadpoolctl", "faiss"))
    assert extra < 2 * size + (160 << 20) < n * c * 16, (extra / 2**20, size / 2**20)
    nk = np.load(tmp_path / "nk.npy")
    assert len(nk) == n and nk.sum() == 10 * n
    assert list(work.iterdir()) == []
