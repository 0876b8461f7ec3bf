"""Hubness at the edges (issue 31): coordinates near the ends of the float range, torch tensors of
any float dtype, counts that do not match k, candidate rows in any order, kNN graphs without the
points themselves, and the CLI's candidate cap and --recall range."""

from __future__ import annotations

import numpy as np
import pytest

from kexue import hubness as h
from kexue.utils import KexueError


def brute(X, Q, k, metric, self_search):
    """Float64 brute force from differences, ties by index (X of moderate scale)."""
    X, Q = np.asarray(X, float), np.asarray(Q, float)
    if metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    D = h.pair_distances(Q[:, None, :], X[None, :, :], metric)
    if self_search:
        np.fill_diagonal(D, np.inf)
    return h.order_rows(D, np.broadcast_to(np.arange(len(X)), D.shape).copy(), k, metric)


# 2^e scales from ~1e-301 to ~1e180: every distance scales by exactly 2^e (cosine: not at all)
SCALES = [-1000, -700, -150, 64, 70, 130, 600]


@pytest.mark.parametrize("e", SCALES)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_extreme_coordinates_equal_float64_brute_force(e, metric, backend):
    if backend != "exact":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    X, Q = rng.standard_normal((120, 9)), rng.standard_normal((15, 9))
    kw = {} if backend == "exact" else {"backend_params": {"index": "flat"}}
    for queries, self_search in [(None, True), (Q, False)]:
        want_d, want_i = brute(X, X if self_search else Q, 6, metric, self_search)
        Xs = np.ldexp(X, e)
        d, ind = h.kneighbors(Xs, 6, metric=metric, backend=backend,
                              queries=None if queries is None else np.ldexp(queries, e), **kw)
        assert ind.min() >= 0 and np.isfinite(d).all()
        np.testing.assert_array_equal(ind, want_i)
        scale = 1.0 if metric == "cosine" else 2.0**e
        np.testing.assert_allclose(d / scale if metric == "euclidean" else d, want_d, rtol=1e-12, atol=1e-300)
    if e in (70, 130):  # float64 brute force is direct here (squares stay finite): no scaling argument
        want_d, want_i = brute(Xs, Xs, 6, metric, True)
        d, ind = h.kneighbors(Xs, 6, metric=metric)
        np.testing.assert_array_equal(ind, want_i)
        np.testing.assert_allclose(d, want_d, rtol=1e-12)


def test_extreme_coordinates_through_the_reductions_and_cli(cli, tmp_path):
    rng = np.random.default_rng(5)
    X, Q = rng.standard_normal((150, 12)), rng.standard_normal((20, 12))
    for name in ["mp", "ls", "nicdm", "csls"]:
        base = h.make_reduction(name, n_candidates=30, metric="euclidean").fit(X).kneighbors(Q, 5)
        for e in (70, -700):  # LS, NICDM, MP are scale-free; Euclidean CSLS scales by 2^e
            got = h.make_reduction(name, n_candidates=30, metric="euclidean").fit(np.ldexp(X, e)).kneighbors(
                np.ldexp(Q, e), 5)
            np.testing.assert_array_equal(got[1], base[1])
            assert np.isfinite(got[0]).all()
    # the CLI on 1e19-sized coordinates: no traceback, the same measures as at scale 1
    np.save(tmp_path / "big.npy", X * 1e19)
    np.save(tmp_path / "one.npy", X)
    a, b = cli("hubness", tmp_path / "big.npy", "-k", 5, "--json", "-"), cli("hubness", tmp_path / "one.npy", "-k", 5,
                                                                          "--json", "-")
    assert a.code == 0 and b.code == 0, a.err
    import json

    assert json.loads(a.out)["measures"] == json.loads(b.out)["measures"]


def test_tiny_vectors_are_not_called_zero():
    X = np.random.default_rng(6).standard_normal((40, 5))
    want = h.kneighbors(X, 3, metric="cosine")
    got = h.kneighbors(X * 1e-200, 3, metric="cosine")
    np.testing.assert_array_equal(got.ind, want.ind)
    np.testing.assert_allclose(got.dist, want.dist, rtol=1e-12, atol=1e-15)
    Z = X.copy()
    Z[3] = 0.0  # a real zero row is still refused, by its index
    with pytest.raises(KexueError, match="row 3 is all zeros"):
        h.kneighbors(Z, 3, metric="cosine")


def test_torch_tensors_of_every_float_dtype():
    torch = pytest.importorskip("torch")
    X = np.random.default_rng(7).standard_normal((80, 6)).astype(np.float32)
    for dt in [torch.bfloat16, torch.float16, torch.float32, torch.float64]:
        t = torch.from_numpy(X).to(dt)
        ref = t.float().numpy().astype(np.float64)  # the values the tensor holds
        np.testing.assert_array_equal(h.k_occurrence(t, 5), h.k_occurrence(ref, 5))
        np.testing.assert_array_equal(h.kneighbors(ref, 4, queries=t[:7])[1], h.kneighbors(ref, 4, queries=ref[:7])[1])
        red = h.LocalScaling(n_candidates=20).fit(t)
        np.testing.assert_array_equal(red.kneighbors(t[:5], 3)[1], h.LocalScaling(n_candidates=20).fit(ref).kneighbors(
            ref[:5], 3)[1])


def test_measures_refuse_counts_made_with_another_k():
    X = np.random.default_rng(8).standard_normal((100, 5))
    nk5 = h.k_occurrence(X, 5)
    with pytest.raises(KexueError, match=r"N_k sums to 500 but k × n_queries = 10 × 100 = 1000"):
        h.hubness_measures(nk5, k=10)
    nkq = h.k_occurrence(X, 5, queries=X[:30])
    with pytest.raises(KexueError, match="n_queries"):
        h.hubness_measures(nkq, 5)  # the query form needs its n_queries
    assert h.hubness_measures(nkq, 5, n_queries=30)["max_nk"] == nkq.max()
    assert h.hubness_measures(nk5, 5)["skewness"] == pytest.approx(h.skewness(nk5))


@pytest.mark.parametrize("name", ["mp", "ls", "nicdm", "csls"])
def test_rerank_reads_rows_in_any_order(name):
    """The issue's reproduction: new queries' candidate rows reversed or shuffled re-rank the same."""
    rng = np.random.default_rng(0)
    X, Q = rng.standard_normal((100, 20)), rng.standard_normal((30, 20))
    d, i = h.kneighbors(X, 20, queries=Q)
    red = h.make_reduction(name, k=5, n_candidates=20) if name != "mp" else h.make_reduction(name, n_candidates=10)
    red.fit(X)
    want = red.rerank(d, i, Q)
    perm = np.argsort(rng.random(d.shape), axis=1)
    for dd, ii in [(d[:, ::-1], i[:, ::-1]), (np.take_along_axis(d, perm, 1), np.take_along_axis(i, perm, 1))]:
        got = red.rerank(dd, ii, Q)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)


@pytest.mark.parametrize("name", ["mp", "ls", "csls"])
def test_graph_without_the_points_themselves(name):
    """scikit-learn's kneighbors_graph() without X lists each point's neighbours, itself excluded:
    read it as it is (no row loses its farthest neighbour), the same as the graph with self."""
    from sklearn.neighbors import NearestNeighbors

    X = np.random.default_rng(1).standard_normal((120, 8))
    nn = NearestNeighbors(n_neighbors=20).fit(X)
    without = nn.kneighbors_graph(mode="distance")  # 20 neighbours, self excluded
    with_self = nn.kneighbors_graph(X, n_neighbors=21, mode="distance")  # self + the same 20
    a = h.make_reduction(name, n_candidates=20).fit(without)
    b = h.make_reduction(name, n_candidates=20).fit(with_self)
    assert a.n_candidates_ == b.n_candidates_ == 20
    for sa, sb in zip(a.stats_, b.stats_):
        np.testing.assert_allclose(sa, sb, rtol=1e-12)
    np.testing.assert_array_equal(a.kneighbors(n_neighbors=5)[1], b.kneighbors(n_neighbors=5)[1])


def test_cli_caps_candidates_and_one_recall_message(cli, tmp_path):
    import json

    X = np.random.default_rng(2).standard_normal((60, 8))
    np.save(tmp_path / "e.npy", X)
    r = cli("hubness", tmp_path / "e.npy", "-k", 5, "--reduce", "ls", "--json", "-")  # default --candidates 100
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["candidates"] == 59
    d, ind = h.LocalScaling(n_candidates=100).fit(X, graph=h.kneighbors(X, 59)).kneighbors(n_neighbors=5)
    assert doc["measures"]["ls"]["skewness"] == pytest.approx(h.skewness(h.occurrences(ind, 60)))
    for bad in ["0", "1.5", "-0.1"]:
        r = cli("hubness", tmp_path / "e.npy", "--recall", bad)
        assert r.one_line_error and "--recall must be in (0, 1]" in r.err, r.err
