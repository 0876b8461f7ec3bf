"""Hubness on large data (issue 29, items 1-2): any built FAISS index as the kNN backend of
kneighbors / k_occurrence / ``kexue hubness --index``, memory-mapped inputs read in ``block_rows``
blocks (same graph as in memory), and the CLI's peak memory on a memory-mapped file."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from kexue import hubness as h  # noqa: E402
from kexue.hubness import ann  # noqa: E402
from kexue.utils import KexueError  # noqa: E402

N, D, K = 1200, 12, 8


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(29).standard_normal((N, D))


@pytest.fixture(scope="module")
def exact(X):
    return h.kneighbors(X, K)


def _flat(X):
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(X.astype(np.float32))
    return index


def _ivf(X, pq=False):
    Xf = X.astype(np.float32)
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(X.shape[1]), X.shape[1], 16, 4, 6) if pq else \
        faiss.IndexIVFFlat(faiss.IndexFlatL2(X.shape[1]), X.shape[1], 16)
    index.cp.seed = 0
    index.train(Xf)
    index.add(Xf)
    return index


def _hnsw(X, ef=64):
    index = faiss.IndexHNSWFlat(X.shape[1], 16)
    index.hnsw.efSearch = ef
    index.add(X.astype(np.float32))
    return index


def _shards(X, make):
    shards = faiss.IndexShards(X.shape[1], False, True)  # successive ids: shard 2 continues shard 1's
    parts = [make(X[: len(X) // 2]), make(X[len(X) // 2:])]
    for p in parts:
        shards.add_shard(p)  # FAISS's wrapper keeps each shard alive with the IndexShards
    return shards


def _true_dist(X, Q, ind):
    return np.linalg.norm(Q[:, None, :] - X[ind], axis=2)


# ---------------------------------------------------------------- any FAISS index


@pytest.mark.parametrize("make, flat", [(_flat, True), (lambda X: _shards(X, _flat), True), (lambda X: _ivf(X), False),
                                        (lambda X: _ivf(X, pq=True), False), (_hnsw, False),
                                        (lambda X: _shards(X, _hnsw), False)],
                         ids=["flat", "shards-flat", "ivf-flat", "ivf-pq", "hnsw", "shards-hnsw"])
def test_any_faiss_index_gives_a_checked_self_excluded_graph(make, flat, X, exact):
    index = make(X)
    g = h.kneighbors(X, K, backend=index)
    assert g.backend == type(index).__name__ and g.recall_sample == 0 and np.isnan(g.recall)  # not asked
    assert not (g.ind == np.arange(N)[:, None]).any()
    # the found neighbours are re-scored in float64 from X and sorted
    np.testing.assert_allclose(g.dist, _true_dist(X, X, g.ind), rtol=1e-12)
    assert (np.diff(g.dist, axis=1) >= 0).all()
    nk = h.k_occurrence(X, K, backend=index)
    np.testing.assert_array_equal(nk, h.occurrences(g.ind, N))
    assert nk.sum() == K * N
    # recall when asked: the sample's, close to the whole graph's
    m = h.kneighbors(X, K, backend=index, recall_sample=400, seed=3)
    np.testing.assert_array_equal(m.ind, g.ind)
    whole = h.knn_recall(g.ind, exact.ind)
    assert m.recall_sample == 400 and abs(m.recall - whole) < 0.06
    if flat:
        np.testing.assert_array_equal(g.ind, exact.ind)  # a flat index (sharded or not) is exact here
        assert m.recall == 1.0


def test_index_parameter_is_set_on_every_shard_for_the_call_and_reported(X, exact):
    ivf = _ivf(X)
    configured = ivf.nprobe
    g = h.kneighbors(X, K, backend=ivf, backend_params={"nprobe": 16})  # all 16 lists: exhaustive
    assert g.params == {"nprobe": 16}
    np.testing.assert_array_equal(g.ind, exact.ind)
    assert ivf.nprobe == configured < 16  # the user's index is back as they configured it
    shards = _shards(X, lambda A: _hnsw(A, ef=16))
    g = h.kneighbors(X, K, backend=shards, backend_params={"ef_search": 200})
    assert g.params == {"ef_search": 200}
    assert all(faiss.downcast_index(shards.at(i)).hnsw.efSearch == 16 for i in range(2))
    assert h.knn_recall(g.ind, exact.ind) > 0.97
    assert h.kneighbors(X, K, backend=shards).params == {"ef_search": 16}  # as configured
    with pytest.raises(KexueError, match="no ef_search; its search parameter is nprobe"):
        h.kneighbors(X, K, backend=ivf, backend_params={"ef_search": 10})
    with pytest.raises(KexueError, match="no nprobe; drop it"):
        h.kneighbors(X, K, backend=_flat(X), backend_params={"nprobe": 2})
    idmap = faiss.IndexIDMap(faiss.IndexFlatL2(D))
    idmap.add_with_ids(X.astype(np.float32), np.arange(N) + 5000)  # ids that are not row numbers
    with pytest.raises(KexueError, match=f"returned id {N + 4999} but holds {N} vectors"):
        h.kneighbors(X, K, backend=idmap)


def test_an_index_without_its_vectors_searches_queries(X):
    Q = np.random.default_rng(1).standard_normal((90, D))
    ref = h.kneighbors(X, K, queries=Q)
    g = h.kneighbors(None, K, backend=_flat(X), queries=Q)  # FAISS's float32 distances
    np.testing.assert_array_equal(g.ind, ref.ind)
    np.testing.assert_allclose(g.dist, ref.dist, rtol=1e-5)
    nk = h.k_occurrence(None, K, backend=_flat(X), queries=Q)
    assert len(nk) == N and nk.sum() == K * len(Q)
    with pytest.raises(KexueError, match="recall needs the vectors"):
        h.kneighbors(None, K, backend=_flat(X), queries=Q, recall_sample=10)
    with pytest.raises(KexueError, match="X is None"):
        h.kneighbors(None, K, backend=_flat(X))


def test_cosine_on_an_inner_product_index_of_unit_vectors(X):
    U = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    ip = faiss.IndexFlatIP(D)
    ip.add(U)
    np.testing.assert_array_equal(h.kneighbors(X, K, metric="cosine", backend=ip).ind,
                                  h.kneighbors(X, K, metric="cosine").ind)


def test_a_mismatched_index_is_one_line_naming_both_values(X):
    empty = faiss.IndexFlatL2(D)
    l1 = faiss.IndexFlat(D, faiss.METRIC_L1)
    l1.add(X.astype(np.float32))
    ip = faiss.IndexFlatIP(D)
    ip.add(X.astype(np.float32))
    untrained = faiss.IndexIVFFlat(faiss.IndexFlatL2(D), D, 4)
    for index, kw, msg in [(empty, {}, f"empty \\(ntotal 0\\) but X has {N} rows"),
                           (_flat(X[:, :5]), {}, "dimension d=5 but X has 12 columns"),
                           (_flat(X[:100]), {}, f"holds 100 vectors but X has {N} rows"),
                           (ip, {}, "inner product \\(metric_type 0\\) but metric is euclidean"),
                           (ip, {"metric": "cosine"}, "norm .* not the unit vectors"),
                           (l1, {}, "metric_type 2, neither L2"), (untrained, {}, "not trained")]:
        with pytest.raises(KexueError, match=msg) as e:
            h.kneighbors(X, K, backend=index, **kw)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- out of core


def test_memory_map_and_any_block_size_give_the_same_graph(X, tmp_path):
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    M = np.load(tmp_path / "x.npy", mmap_mode="r")
    for backend in ("ivf", "hnsw"):
        ref = h.kneighbors(np.array(M), K, backend=backend, recall=0.9)
        got = h.kneighbors(M, K, backend=backend, recall=0.9, block_rows=97)
        np.testing.assert_array_equal(got.ind, ref.ind)
        np.testing.assert_array_equal(got.dist, ref.dist)
        assert got.params == ref.params and got.recall == ref.recall
    with pytest.raises(KexueError, match="block_rows"):
        h.kneighbors(M, K, backend="ivf", block_rows=0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_backend_reads_a_memory_map_in_blocks_with_the_same_graph(X, tmp_path, metric):
    # blocks of 97 rows: the centring mean, squared norms and screening rows are made block by block
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    M = np.load(tmp_path / "x.npy", mmap_mode="r")
    A = np.array(M)
    for queries in (None, A[::5] + 0.25):
        ref = h.kneighbors(A, K, metric=metric, queries=queries, block=len(A))
        got = h.kneighbors(M, K, metric=metric, queries=queries, block=97)
        np.testing.assert_array_equal(got.ind, ref.ind)
        np.testing.assert_array_equal(got.dist, ref.dist)


def test_a_zero_row_in_a_later_block_is_named_by_its_own_number(X):
    Z = X.copy()
    Z[1000] = 0.0
    with pytest.raises(KexueError, match="row 1000 is all zeros"):
        h.kneighbors(Z, K, metric="cosine", block=97)


def test_estimate_checks_a_memory_map_block_by_block(X, tmp_path):
    Z = X.astype(np.float32)
    Z[1100, 3] = np.nan
    np.save(tmp_path / "z.npy", Z)
    with pytest.raises(KexueError, match=r"X has a non-finite value .* at index \(1100, 3\)"):
        h.estimate_hubness(np.load(tmp_path / "z.npy", mmap_mode="r"), K, block_rows=100)
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    M = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert h.estimate_hubness(M, K, block=128, n_boot=10) == h.estimate_hubness(np.array(M), K, n_boot=10)


def test_nonfinite_rows_are_found_block_by_block(X):
    B = X.copy()
    B[1000, 3] = np.nan
    with pytest.raises(KexueError, match=r"X has a non-finite value \(NaN or inf\) at index \(1000, 3\)"):
        h.kneighbors(B, K, backend="ivf", block_rows=128)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_the_recall_truth_merged_over_blocks_is_the_exact_search(X, metric):
    rows = np.arange(0, N, 7)
    got = ann.exact_sample(X, X[rows], K, metric, rows, block_rows=101)
    np.testing.assert_array_equal(got, h.kneighbors(X, K, metric=metric).ind[rows])
    Q = np.random.default_rng(2).standard_normal((30, D))
    np.testing.assert_array_equal(ann.exact_sample(X, Q, K, metric, None, block_rows=64),
                                  h.kneighbors(X, K, metric=metric, queries=Q).ind)


def test_safetensors_rows_are_a_memory_map(X, tmp_path):
    from safetensors.numpy import save_file

    from kexue.io import open_matrix

    save_file({"emb": X.astype(np.float32)}, str(tmp_path / "x.safetensors"))
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    for name in ("x.safetensors", "x.npy"):
        rows = open_matrix(tmp_path / name).rows()
        assert isinstance(rows, np.memmap)
        np.testing.assert_array_equal(rows, X.astype(np.float32))


# ---------------------------------------------------------------- CLI


def _write_index(index, path):
    faiss.write_index(index, str(path))
    return path


def test_cli_index_matches_the_api(cli, X, tmp_path):
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    Xf = X.astype(np.float32).astype(np.float64)
    path = _write_index(_ivf(X, pq=True), tmp_path / "ivfpq.faiss")
    r = cli("hubness", tmp_path / "x.npy", "-k", K, "--index", path, "--recall-sample", 200,
            "--nk-out", tmp_path / "nk.npy", "--json", tmp_path / "m.json")
    assert r.code == 0, r.err
    m = json.loads((tmp_path / "m.json").read_text())
    g = h.kneighbors(Xf, K, backend=faiss.read_index(str(path)), recall_sample=200)
    assert m["backend"] == "IndexIVFPQ" and m["index"] == str(path) and m["recall_sample"] == 200
    assert m["recall"] == pytest.approx(g.recall) and m["params"] == g.params
    np.testing.assert_array_equal(np.load(tmp_path / "nk.npy"), h.occurrences(g.ind, N))
    assert "recall" in r.err and "200 sampled queries" in r.err
    r = cli("hubness", tmp_path / "x.npy", "-k", K, "--index", path, "--json", tmp_path / "m2.json")
    assert r.code == 0 and json.loads((tmp_path / "m2.json").read_text())["recall"] is None
    assert "not measured (give --recall-sample N)" in r.err


def test_cli_reads_npy_and_safetensors_alike_with_queries(cli, X, tmp_path):
    from safetensors.numpy import save_file

    Q = np.random.default_rng(7).standard_normal((150, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "q.npy", Q)
    save_file({"emb": X.astype(np.float32)}, str(tmp_path / "x.safetensors"))
    save_file({"emb": Q}, str(tmp_path / "q.safetensors"))
    for ext in ("npy", "safetensors"):
        r = cli("hubness", tmp_path / f"x.{ext}", "--queries", tmp_path / f"q.{ext}", "-k", K, "--backend", "ivf",
                "--recall", 0.9, "--block-rows", 40, "--nk-out", tmp_path / f"nk_{ext}.npy")
        assert r.code == 0, r.err
    got = np.load(tmp_path / "nk_npy.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "nk_safetensors.npy"), got)
    g = h.kneighbors(X.astype(np.float32), K, backend="ivf", recall=0.9, queries=Q)
    np.testing.assert_array_equal(got, h.occurrences(g.ind, N))


def test_cli_bad_index_is_one_line_and_writes_nothing(cli, X, tmp_path):
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    ip = faiss.IndexFlatIP(D)
    ip.add(X.astype(np.float32))
    (tmp_path / "junk.faiss").write_bytes(b"not an index at all")
    (tmp_path / "zero.faiss").write_bytes(b"")
    cases = [("missing.faiss", [], "not found"), ("junk.faiss", [], "not a readable FAISS index"),
             ("zero.faiss", [], "is empty; write the index again"),
             (_write_index(faiss.IndexFlatL2(D), tmp_path / "empty.faiss"), [], f"ntotal 0\\) but INDEX .* {N} rows"),
             (_write_index(_flat(X[:, :4]), tmp_path / "d4.faiss"), [], "d=4 but INDEX .* has 12 columns"),
             (_write_index(_flat(X[:50]), tmp_path / "n50.faiss"), [], f"50 vectors but INDEX .* has {N} rows"),
             (_write_index(ip, tmp_path / "ip.faiss"), [], "inner product .* but --metric is euclidean; use --metric cosine"),
             (_write_index(_flat(X), tmp_path / "ok.faiss"), ["--backend", "ivf"], "drop --backend ivf"),
             (None, ["--backend", "hnsw", "--recall-sample", "0"], "--recall-sample 0 leaves no queries")]
    for path, extra, msg in cases:
        out = tmp_path / "out"
        out.mkdir()
        index = [] if path is None else ["--index", tmp_path / Path(path).name]
        r = cli("hubness", tmp_path / "x.npy", "-k", K, *index, *extra,
                "--json", out / "m.json", "--nk-out", out / "nk.npy", "--graph-out", out / "g.npz")
        assert r.one_line_error, (path, r.err)
        assert re.search(msg, r.err), (msg, r.err)
        assert list(out.iterdir()) == [], path
        out.rmdir()


# ---------------------------------------------------------------- memory


# estimate_hubness PATH FRACTION in a child: the exact backend on a memory map, above its imports
_ESTIMATE_CHILD = textwrap.dedent("""
    import resource, sys
    import sklearn, threadpoolctl  # noqa: F401 -- imported before the baseline, as estimate_hubness imports them
    import numpy as np
    from kexue.hubness import estimate_hubness
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    est = estimate_hubness(np.load(sys.argv[1], mmap_mode="r"), 10, fraction=float(sys.argv[2]), n_boot=20)
    assert est.n_sampled == round(float(sys.argv[2]) * est.n_index)
    print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _clustered_file(tmp_path, n=200_000, d=64) -> tuple[Path, int]:
    """n × d float32, 500 Gaussian clusters, saved as .npy: (path, file size)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((500, d)).astype(np.float32) * 4
    X = centres[rng.integers(0, 500, n)] + rng.standard_normal((n, d)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    return tmp_path / "x.npy", (tmp_path / "x.npy").stat().st_size


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_cli_peak_memory_on_a_memory_mapped_file(tmp_path):
    """200,000 × 64 float32 (51 MB), clustered: the CLI's peak resident memory above its imports stays
    under 2 × the file (its memory-mapped pages and the IVF index's float32 copy) + 160 MB of working
    blocks. The old path (the whole file read, then float64 and float32 copies) peaked 584 MB above."""
    path, size = _clustered_file(tmp_path)
    from conftest import cli_peak_rss_above

    extra = cli_peak_rss_above("hubness", path, "-k", "10", "--backend", "ivf", "--recall", "0.8",
                               "--nk-out", tmp_path / "nk.npy", imports=("sklearn", "threadpoolctl", "faiss"))
    assert extra < 2 * size + (160 << 20), extra / size
    nk = np.load(tmp_path / "nk.npy")
    assert len(nk) == 200_000 and nk.sum() == 10 * 200_000


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_exact_backend_peak_memory_on_a_memory_mapped_file(tmp_path):
    """The exact backend reads the index in blocks too: 1,000 queries (CLI) and a 0.5 % sample
    (estimate_hubness) against the 200,000 × 64 file stay under the file's own pages + 100 MB of
    working blocks (a 1,000 × 4096 float32 screening block, gathered candidate rows). The old exact
    backend (float64 copy of the index, its centred float64 copy, the float32 screening rows) peaked
    305 MB and 297 MB above (the new one 96 MB and 88 MB; load 3.7)."""
    path, size = _clustered_file(tmp_path)
    Q = np.load(path, mmap_mode="r")[::200] + np.float32(0.5)
    np.save(tmp_path / "q.npy", Q)
    from conftest import cli_peak_rss_above, peak_rss_above

    extra = cli_peak_rss_above("hubness", path, "-k", "10", "--backend", "exact", "--queries", tmp_path / "q.npy",
                               "--nk-out", tmp_path / "nk.npy")
    assert extra < size + (100 << 20), extra / size
    nk = np.load(tmp_path / "nk.npy")
    assert len(nk) == 200_000 and nk.sum() == 10 * len(Q)
    extra = peak_rss_above(_ESTIMATE_CHILD, path, 0.005)
    assert extra < size + (100 << 20), extra / size


def test_an_unreachable_recall_target_stops_at_the_plateau_not_the_largest_value(monkeypatch):
    """PQ codes cap the recall (0.78 at 1M x 384 with IVF1000,PQ96): tuning then picks the smallest
    nprobe within ann.PLATEAU of the best recall tried, not nprobe = nlist (an exhaustive search)."""
    curve = {1: 0.50, 2: 0.70, 3: 0.74, 4: 0.776, 8: 0.779, 16: 0.780}  # 3: the bisection's probe
    now = {}
    idx = ann._Index(search=None, set_param=lambda v: now.update(v=v), name="nprobe", values=[1, 2, 4, 8, 16],
                     fixed=None)
    monkeypatch.setattr(ann, "knn_recall", lambda got, truth: curve[now["v"]])
    assert ann._tune(idx, lambda: None, None, 0.95) == (4, 0.776)
    assert now["v"] == 4  # the index is left at the chosen value
    assert ann._tune(idx, lambda: None, None, 0.75) == (4, 0.776)  # reachable: the smallest that reaches it
