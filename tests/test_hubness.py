"""Hubness (SPEC 8): kNN / N_k against brute force (ties, duplicates, both metrics), every measure
against its textbook definition, approximate-backend recall, hub sampling and the CLI (the
reductions of SPEC 8.4 are tested in test_hubness_reduction.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kexue import hubness as h
from kexue.utils import KexueError


# ---------------------------------------------------------------- brute-force references


def ref_dist(X, Q, metric):
    """Full float64 distance matrix, one np.dot / difference per pair (no BLAS blocking)."""
    X = np.asarray(X, float)
    Q = np.asarray(Q, float)
    if metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        return np.array([[1.0 - np.dot(q, x) for x in X] for q in Q])
    return np.array([[np.sqrt(np.dot(q - x, q - x)) for x in X] for q in Q])


def ref_knn(X, k, metric, Q=None):
    self_search = Q is None
    D = ref_dist(X, X if self_search else Q, metric)
    ind = []
    for r, row in enumerate(D):
        cand = [j for j in range(len(X)) if not (self_search and j == r)]
        cand.sort(key=lambda j: (row[j], j))  # documented tie-break: smaller index first
        ind.append(cand[:k])
    return np.array(ind)


def ref_nk(X, k, metric, Q=None):
    nk = np.zeros(len(X), int)
    for row in ref_knn(X, k, metric, Q):
        for j in row:
            nk[j] += 1
    return nk


def tie_data(seed=0, n=150, d=3):
    """Integer points on a small grid: many exact duplicates and equal distances (exact in float64)."""
    return np.random.default_rng(seed).integers(0, 3, (n, d)).astype(float)


def dup_data(seed=0, n=120, d=6):
    """Continuous points, a third of them duplicated (ties only between duplicates)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    m = n // 3
    X[m:2 * m] = X[:m]
    return X[rng.permutation(n)]


# ---------------------------------------------------------------- kNN and N_k


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("make", [tie_data, dup_data])
def test_knn_and_nk_equal_brute_force(metric, make):
    X = make() + (5.0 if metric == "cosine" and make is tie_data else 0.0)  # no zero vectors for cosine
    k = 7
    ind = h.kneighbors(X, k, metric=metric)[1]
    np.testing.assert_array_equal(ind, ref_knn(X, k, metric))
    nk = h.k_occurrence(X, k, metric=metric)
    np.testing.assert_array_equal(nk, ref_nk(X, k, metric))
    assert nk.sum() == k * len(X)
    # the screening margin and block size must not change the answer: margin 0 forces the float64
    # fallback on every row with a tie at the k-th place, block 7 splits the work oddly
    np.testing.assert_array_equal(h.kneighbors(X, k, metric=metric, margin=0, block=7)[1], ref_knn(X, k, metric))
    np.testing.assert_array_equal(h.kneighbors(X, k, metric=metric, n_jobs=2, block=16)[1], ind)


def test_duplicates_are_neighbours_self_is_not():
    X = np.repeat(np.random.default_rng(1).standard_normal((30, 5)), 2, axis=0)  # rows 2i and 2i+1 equal
    ind = h.kneighbors(X, 1)[1][:, 0]
    np.testing.assert_array_equal(ind, np.arange(60) ^ 1)  # each point's neighbour is its twin, never itself
    np.testing.assert_array_equal(h.k_occurrence(X, 1), np.ones(60, int))
    # exclude_self=False: a point and its twin are each other's two nearest neighbours (distance 0 both)
    ind0 = h.kneighbors(X, 2, exclude_self=False)[1]
    np.testing.assert_array_equal(np.sort(ind0, 1), np.stack([np.arange(0, 60, 2)] * 2, 1).repeat(2, 0) + [0, 1])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_query_form_equals_brute_force(metric):
    rng = np.random.default_rng(2)
    X, Q = rng.standard_normal((90, 8)), rng.standard_normal((40, 8))
    Q[:5] = X[:5]  # queries identical to index points still count them (no self exclusion here)
    nk = h.k_occurrence(X, 5, metric=metric, queries=Q)
    np.testing.assert_array_equal(nk, ref_nk(X, 5, metric, Q))
    assert nk.sum() == 5 * len(Q)


def test_large_offset_falls_back_to_float64():
    # huge common offset + tiny differences: float32 screening alone would mis-rank
    rng = np.random.default_rng(3)
    X = 1e6 + rng.standard_normal((200, 4)) * 1e-2
    np.testing.assert_array_equal(h.kneighbors(X, 5)[1], ref_knn(X, 5, "euclidean"))


@pytest.mark.parametrize("backend", ["faiss", "hnsw"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_approximate_backends_recall(backend, metric, gauss100):
    exact = h.kneighbors(gauss100, 10, metric=metric)
    d, ind = h.kneighbors(gauss100, 10, metric=metric, backend=backend)
    assert h.knn_recall(ind, exact[1]) >= 0.95
    assert not (ind == np.arange(len(ind))[:, None]).any()  # self excluded
    assert h.occurrences(ind, len(gauss100)).sum() == 10 * len(gauss100)
    # distances are in the same units as the exact backend's (float32 search, so not bit-equal)
    same = ind == exact[1]
    np.testing.assert_allclose(d[same], exact[0][same], rtol=1e-4, atol=1e-5)


def test_faiss_flat_is_exact():
    X = np.random.default_rng(4).standard_normal((200, 10))
    ind = h.kneighbors(X, 6, backend="faiss", backend_params={"index": "flat"})[1]
    np.testing.assert_array_equal(ind, ref_knn(X, 6, "euclidean"))


def test_bad_inputs():
    X = np.random.default_rng(0).standard_normal((20, 3))
    for bad, msg in [(lambda: h.k_occurrence(X, 20), "k must"), (lambda: h.k_occurrence(X, 3, metric="l1"), "metric"),
                     (lambda: h.k_occurrence(X, 3, backend="annoy"), "backend"),
                     (lambda: h.k_occurrence(np.ones(5), 1), "2-D"),
                     (lambda: h.k_occurrence(np.where(X > 1, np.nan, X), 3), "non-finite"),
                     (lambda: h.k_occurrence(np.zeros((5, 2)), 2, metric="cosine"), "non-zero"),
                     (lambda: h.k_occurrence(X, 2, queries=np.ones((3, 4))), "features")]:
        with pytest.raises(KexueError, match=msg):
            bad()


# ---------------------------------------------------------------- measures


def test_measures_equal_definitions():
    rng = np.random.default_rng(5)
    for nk in [rng.poisson(10, 300), np.r_[np.zeros(50), rng.pareto(1.5, 250) * 10].round(), np.full(40, 7)]:
        x = nk.astype(float)
        n, mu = len(x), x.mean()
        assert h.skewness(x) == pytest.approx(stats.skew(x) if x.std() > 0 else 0.0, abs=1e-12)
        assert h.robin_hood(x) == pytest.approx(sum(abs(v - mu) for v in x) / (2 * x.sum()))
        assert h.gini(x) == pytest.approx(sum(abs(a - b) for a in x for b in x) / (2 * n * x.sum()))
        if (x > 0).all():
            assert h.atkinson(x, 1) == pytest.approx(1 - stats.gmean(x) / mu)
        assert h.atkinson(x, 0.5) == pytest.approx(1 - np.mean(np.sqrt(x)) ** 2 / mu)
        assert h.atkinson(x, 0) == pytest.approx(0.0, abs=1e-12)
        k, nq = 10, 3 * n  # query form: mean N_k = k * nq / n
        thr = 2 * k * nq / n
        assert h.hub_occurrence(x, k, nq) == pytest.approx(sum(v for v in x if v > thr) / (k * nq))
        assert h.antihub_occurrence(x) == pytest.approx(sum(1 for v in x if v == 0) / n)
    # extremes: one point takes everything
    one = np.r_[100.0, np.zeros(9)]
    assert h.gini(one) == pytest.approx(0.9) and h.robin_hood(one) == pytest.approx(0.9)
    assert h.atkinson(one, 1) == 1.0 and h.antihub_occurrence(one) == 0.9
    assert h.hub_occurrence(one, 10, 10) == 1.0


def test_measures_on_real_graph_match_reference():
    X = tie_data(6, 120, 4)
    nk_ref = ref_nk(X, 5, "euclidean")
    m = h.hubness_measures(h.k_occurrence(X, 5), 5)
    assert m["skewness"] == pytest.approx(stats.skew(nk_ref))
    assert m["hub_occurrence"] == pytest.approx(nk_ref[nk_ref > 10].sum() / (5 * 120))
    with pytest.raises(KexueError):
        h.gini([-1, 2])


# ---------------------------------------------------------------- shared data (reductions: test_hubness_reduction.py)


@pytest.fixture(scope="module")
def gauss100():
    return np.random.default_rng(0).standard_normal((2000, 100))


# ---------------------------------------------------------------- hub sampling


def test_hub_sample():
    s = h.hub_sample(50, 32, k=5, t=15, pool=1500, seed=3)
    assert s.z.shape == (50, 32) and (s.nk >= 15).all()
    assert 0 < s.acceptance_rate < 1 and s.n_drawn == 1500 * s.n_pools
    s2 = h.hub_sample(50, 32, k=5, t=15, pool=1500, seed=3)
    np.testing.assert_array_equal(s.z, s2.z)
    # hubs sit near the centre: their norms are smaller than those of plain draws
    assert np.linalg.norm(s.z, axis=1).mean() < np.sqrt(32) - 0.3
    # mapped space: N_k in space(z) (here a fixed linear map)
    W = np.random.default_rng(0).standard_normal((32, 8))
    s3 = h.hub_sample(10, 32, k=5, t=10, pool=800, space=lambda z: z @ W, seed=1)
    assert s3.z.shape == (10, 32) and (s3.nk >= 10).all()
    with pytest.raises(KexueError, match="lower t"):
        h.hub_sample(10, 8, k=2, t=500, pool=300, max_pools=2)


# ---------------------------------------------------------------- CLI


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from kexue.cli import app

    X = np.random.default_rng(0).standard_normal((400, 20)).astype(np.float32)
    np.save(tmp_path / "emb.npy", X)
    hist = tmp_path / "nk.png"
    res = CliRunner().invoke(app, ["hubness", str(tmp_path / "emb.npy"), "-k", "5", "--reduce", "ls", "--histogram", str(hist)])
    assert res.exit_code == 0, res.output
    assert "skewness" in res.output and hist.stat().st_size > 1000
    sk = h.skewness(h.k_occurrence(X, 5))
    assert f"{sk:.3f}" in res.output
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    from kexue.cli import main

    with pytest.raises(SystemExit) as e:
        main(["hubness", str(tmp_path / "bad.npy")])
    assert e.value.code == 2


# ---------------------------------------------------------------- experiment helpers


def test_experiment_helpers():
    import math

    from kexue.experiments.hubness import _vote, ball_volume_log

    assert math.exp(ball_volume_log(2)) == pytest.approx(math.pi)
    assert math.exp(ball_volume_log(3)) == pytest.approx(4 * math.pi / 3)
    assert math.exp(ball_volume_log(10)) / 2**10 == pytest.approx(2.49e-3, rel=0.01)  # SPEC 8.1
    y = np.array([0, 1, 2, 1, 2])
    # rows of neighbour ids, nearest first: majority wins; a tie goes to the nearest tied class
    ind = np.array([[1, 3, 0], [0, 2, 4], [2, 1, 0]])
    np.testing.assert_array_equal(_vote(ind, y, 3), [1, 2, 2])
