"""Hubness (SPEC 8): kNN / N_k against brute force (ties, duplicates, both metrics), every measure
against its textbook definition, approximate-backend recall, hub sampling and the CLI (the
reductions of SPEC 8.4 are tested in test_hubness_reduction.py)."""

from __future__ import annotations

import importlib.util

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


def exact_key(q, x, metric):
    """A rational sort key of the distance from integer vectors q to x, free of rounding:
    squared distance, or for cosine -sign(<q,x>) <q,x>² / (|q|²|x|²), which orders like 1 - cos."""
    from fractions import Fraction

    q, x = [int(v) for v in q], [int(v) for v in x]
    if metric == "euclidean":
        return sum((a - b) ** 2 for a, b in zip(q, x))
    dot = sum(a * b for a, b in zip(q, x))
    return -(1 if dot >= 0 else -1) * Fraction(dot * dot, sum(a * a for a in q) * sum(b * b for b in x))


def exact_knn(X, k, metric):
    """Self-search kNN of integer data by exact arithmetic, equal distances ordered by index."""
    out = []
    for r, q in enumerate(X):
        cand = [j for j in range(len(X)) if j != r]
        cand.sort(key=lambda j: (exact_key(q, X[j], metric), j))
        out.append(cand[:k])
    return np.array(out)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ties_ordered_by_index_whatever_the_rounding(metric):
    """The near-tie promise on data with many mathematically equal distances (integer grid points,
    duplicates): the neighbours equal an exact-arithmetic reference, and permuting the columns (which
    changes every summation order, hence the rounding) or the block and margin changes nothing."""
    X = tie_data() + (5.0 if metric == "cosine" else 0.0)  # no zero vectors for cosine
    k = 7
    want = exact_knn(X, k, metric)
    ind = h.kneighbors(X, k, metric=metric)[1]
    np.testing.assert_array_equal(ind, want)
    np.testing.assert_array_equal(h.k_occurrence(X, k, metric=metric), np.bincount(want.ravel(), minlength=len(X)))
    perm = np.random.default_rng(1).permutation(X.shape[1])
    for Y, kw in [(X[:, perm], {}), (X[:, ::-1], {"block": 7}), (X, {"margin": 0, "block": 16})]:
        np.testing.assert_array_equal(h.kneighbors(Y, k, metric=metric, **kw)[1], want)


def test_near_tie_rule_and_zero_cosine_distance():
    Q = np.zeros((1, 2))
    # distances 1 + 1e-13 (index 0) and 1 (index 1): a near-tie, so index 0 comes first, both reported as 1
    X = np.array([[1 + 1e-13, 0.0], [1.0, 0.0], [5.0, 0.0]])
    d, ind = h.kneighbors(X, 2, queries=Q)
    assert ind.tolist() == [[0, 1]] and d.tolist() == [[1.0, 1.0]]
    # a gap of 1e-10 is a real difference: ordered by distance
    X[0, 0] = 1 + 1e-10
    assert h.kneighbors(X, 2, queries=Q)[1].tolist() == [[1, 0]]
    # a point's cosine distance to an identical point is exactly 0 (not 2.2e-16)
    Y = np.repeat(np.random.default_rng(0).standard_normal((20, 7)), 2, axis=0)
    d, ind = h.kneighbors(Y, 1, metric="cosine")
    assert (d[:, 0] == 0).all() and (ind[:, 0] == np.arange(40) ^ 1).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_fast_path_equals_float64_reference(metric):
    """The blocked float32 screening (both triangles, thresholds, merges) equals a plain float64
    search: every distance computed from differences, ordered by the same near-tie rule."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((500, 24)).astype(np.float32)
    X[250:300] = X[:50]  # duplicates
    Xn = X.astype(float)
    if metric == "cosine":
        Xn /= np.linalg.norm(Xn, axis=1, keepdims=True)
    D = h.pair_distances(Xn[:, None, :], Xn[None, :, :], metric)
    np.fill_diagonal(D, np.inf)
    want_d, want_i = h.order_rows(D, np.broadcast_to(np.arange(500), D.shape).copy(), 10, metric)
    for block in [None, 32, 100]:
        d, ind = h.kneighbors(X, 10, metric=metric, block=block)
        np.testing.assert_array_equal(ind, want_i)
        np.testing.assert_array_equal(d, want_d)
    # the query form (no symmetry, no self exclusion) against the same reference
    d, ind = h.kneighbors(X, 10, metric=metric, queries=X[:60] + 0.0, block=64)
    Dq = h.pair_distances(Xn[:60, None, :], Xn[None, :, :], metric)
    np.testing.assert_array_equal(ind, h.order_rows(Dq, np.broadcast_to(np.arange(500), Dq.shape).copy(), 10, metric)[1])


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


@pytest.mark.parametrize("backend", [pytest.param("hnsw", marks=pytest.mark.needs("faiss")),
                                     pytest.param("ivf", marks=pytest.mark.needs("faiss")),
                                     pytest.param("faiss", marks=pytest.mark.needs("faiss"))])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_approximate_backends_reach_requested_recall(backend, metric, gauss100):
    X = gauss100[:1500]
    exact = h.kneighbors(X, 10, metric=metric)
    g = h.kneighbors(X, 10, metric=metric, backend=backend, recall=0.9, seed=1)
    # the search parameter was chosen on a sample: the reported recall is the sample's, and the
    # recall of the whole graph is close to it
    assert g.recall >= 0.9 and g.recall_sample == 1000 and len(g.params) == 1
    assert h.knn_recall(g.ind, exact.ind) >= 0.87
    assert not (g.ind == np.arange(len(X))[:, None]).any()  # self excluded
    assert h.occurrences(g.ind, len(X)).sum() == 10 * len(X)
    # found neighbours carry the exact float64 distances
    same = g.ind == exact.ind
    np.testing.assert_allclose(g.dist[same], exact.dist[same], rtol=1e-12)
    # the chosen parameter given by hand skips the tuning and gives the same graph (same seed)
    fixed = h.kneighbors(X, 10, metric=metric, backend=backend, backend_params=dict(g.params), recall=0.9, seed=1)
    assert fixed.params == g.params and fixed.recall == g.recall
    np.testing.assert_array_equal(fixed.ind, g.ind)


@pytest.mark.needs("faiss")
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
                     (lambda: h.k_occurrence(X, 2, queries=np.ones((3, 4))), "features"),
                     (lambda: h.k_occurrence(X[:1], 1), "at least 2"), (lambda: h.k_occurrence(X[:0], 1), "0 rows"),
                     (lambda: h.kneighbors(X, 2, backend="ivf", recall=0), "recall"),
                     # without FAISS (the 'ann' extra) the missing extra is the error
                     (lambda: h.kneighbors(X, 2, backend="ivf", backend_params={"nprobes": 2}),
                      "nprobes" if importlib.util.find_spec("faiss") else "'ann' extra")]:
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


@pytest.fixture
def emb(tmp_path):
    X = np.random.default_rng(0).standard_normal((400, 20)).astype(np.float32)
    np.save(tmp_path / "emb.npy", X)
    return X, tmp_path / "emb.npy"


@pytest.mark.needs("matplotlib")
def test_cli_outputs(cli, emb, tmp_path, monkeypatch):
    import json

    from safetensors.numpy import save_file

    X, path = emb
    monkeypatch.chdir(tmp_path)
    r = cli("hubness", path, "-k", 5)
    assert r.code == 0, r.err
    assert f"{h.skewness(h.k_occurrence(X, 5)):.3f}" in r.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]  # no histogram unless asked
    out = {n: tmp_path / n for n in ["nk.png", "m.json", "nk.npy", "g.npz"]}
    r = cli("hubness", path, "-k", 5, "--reduce", "ls", "--candidates", 20, "--histogram", out["nk.png"],
            "--json", out["m.json"], "--nk-out", out["nk.npy"], "--graph-out", out["g.npz"])
    assert r.code == 0, r.err
    assert out["nk.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(out["m.json"].read_text())
    red = h.LocalScaling(n_candidates=20).fit(X, graph=h.kneighbors(X, 20))  # as the CLI: its exact graph
    d, ind = red.kneighbors(n_neighbors=5)
    assert doc["measures"]["ls"]["skewness"] == pytest.approx(h.skewness(h.occurrences(ind, 400)))
    np.testing.assert_array_equal(np.load(out["nk.npy"]), h.occurrences(ind, 400))
    g = np.load(out["g.npz"])
    np.testing.assert_array_equal(g["indices"], ind)
    np.testing.assert_array_equal(g["distances"], d)
    # JSON on stdout stays parseable (the table goes to stderr); .npz and .safetensors inputs with --key
    np.savez(tmp_path / "two.npz", a=X[:10], emb=X)
    save_file({"emb": X, "other": X[:5]}, str(tmp_path / "e.safetensors"))
    for src in [tmp_path / "two.npz", tmp_path / "e.safetensors"]:
        r = cli("hubness", src, "--key", "emb", "-k", 5, "--json", "-")
        assert r.code == 0, r.err
        assert json.loads(r.out)["measures"]["primary"]["skewness"] == pytest.approx(doc["measures"]["primary"]["skewness"])
    r = cli("hubness", path, "-k", 5, "--reduce", "mp", "--candidates", 30, "--seed", 3)
    assert r.code == 0 and "mp" in r.out, r.err
    r = cli("hubness", path, "-k", 5, "--backend", "ivf", "--recall", 0.9, "--json", "-")
    assert r.code == 0 and json.loads(r.out)["recall"] >= 0.9 and "recall" in r.err


def test_cli_errors(cli, emb, tmp_path):
    X, path = emb
    np.save(tmp_path / "one.npy", X[:1])
    np.save(tmp_path / "zero.npy", X[:0])
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("1 2 3\n")
    out = tmp_path / "o"
    out.mkdir()
    cases = [
        (["--reduce", "mp", "--candidates", 5], "--candidates 5 is smaller than -k 10"),
        (["--reduce", "mp", "--candidates", -1], "--candidates"),
        (["--candidates", 0], "--candidates"),
        (["--reduce", "pca"], "--reduce"),
        (["--metric", "l1"], "--metric"),
        (["--backend", "annoy"], "--backend"),
        (["-k", 0], "-k"),
        (["--recall", 1.5], "--recall"),
        (["--recall", 0], "--recall"),
        (["--histogram", out / "h.jpg"], ".png"),
        (["--histogram", tmp_path / "nodir" / "h.png"], "does not exist"),
        (["--json", out], "directory"),
        (["--nk-out", out / "nk.txt"], ".npy"),
        (["--graph-out", out / "g.npy"], ".npz"),
        (["--threads", 0], "--threads"),
    ]
    for extra, msg in cases:
        r = cli("hubness", path, *extra)
        assert r.one_line_error and msg in r.err, (extra, r.err)
    for name, msg in [("one.npy", "1 row;"), ("zero.npy", "0 rows"), ("empty.npy", "empty.npy"),
                      ("text.npy", "not a .npy"), ("missing.npy", "not found")]:
        r = cli("hubness", tmp_path / name)
        assert r.one_line_error and msg in r.err, (name, r.err)
        assert "1..0" not in r.err
    assert list(out.iterdir()) == []  # nothing half-written


# ---------------------------------------------------------------- experiment helpers


def test_experiment_helpers():
    import math

    from kexue.experiments.hubness import knn_vote, ball_volume_log

    assert math.exp(ball_volume_log(2)) == pytest.approx(math.pi)
    assert math.exp(ball_volume_log(3)) == pytest.approx(4 * math.pi / 3)
    assert math.exp(ball_volume_log(10)) / 2**10 == pytest.approx(2.49e-3, rel=0.01)  # SPEC 8.1
    y = np.array([0, 1, 2, 1, 2])
    # rows of neighbour ids, nearest first: majority wins; a tie goes to the nearest tied class
    ind = np.array([[1, 3, 0], [0, 2, 4], [2, 1, 0]])
    np.testing.assert_array_equal(knn_vote(ind, y, 3), [1, 2, 2])
