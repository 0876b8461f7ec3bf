"""Hubness reductions (SPEC 8.4): both sides of the secondary distance against brute-force
implementations of each definition, out-of-sample vs in-sample N_k statistics, the scikit-learn
transformer contract (check_estimator, a KNeighborsTransformer pipeline), a user's built FAISS
index as backend, errors, save/load."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.stats import norm

from kexue import hubness as h
from kexue.utils import KexueError

NAMES = list(h.REDUCTIONS)


def brute_dist(A, B, metric):
    """Float64 distances, one pair at a time."""
    if metric == "cosine":
        A = A / np.linalg.norm(A, axis=1, keepdims=True)
        B = B / np.linalg.norm(B, axis=1, keepdims=True)
        return np.array([[1.0 - np.dot(a, b) for b in B] for a in A])
    return np.array([[np.sqrt(np.dot(a - b, a - b)) for b in B] for a in A])


def nearest(row, c, skip=None):
    """The c nearest column ids of a distance row, by (distance, id), without ``skip``."""
    ids = sorted((j for j in range(len(row)) if j != skip), key=lambda j: (row[j], j))
    return ids[:c]


def brute_secondary(name, X, Q, Dq, DX, c, k, metric, q_self=None):
    """{(row, x): secondary distance} by the documented definition. ``Dq``: queries × index,
    ``DX``: index × index; ``q_self[r]`` is the index id of query row r (in-sample) or None."""
    def row_stats(dist_row, skip):
        near = [dist_row[j] for j in nearest(dist_row, c if name.startswith("mp") else k, skip)]
        return np.mean(near), np.std(near), near

    out = {}
    for r, drow in enumerate(Dq):
        skip = None if q_self is None else q_self[r]
        cand = nearest(drow, c, skip)
        mq, sq, nq = row_stats(drow, skip)
        for x in cand:
            d = drow[x]
            mx, sx, nx = row_stats(DX[x], x)
            if name == "mp":
                v = 1 - norm.sf(d, mq, sq) * norm.sf(d, mx, sx)
            elif name == "mp-empirical":
                v = 1 - np.mean([drow[j] > d and DX[x, j] > d for j in cand])
            elif name == "ls":
                v = 1 - np.exp(-d**2 / (nq[k - 1] * nx[k - 1]))
            elif name == "nicdm":
                v = d / np.sqrt(mq * mx)
            elif name == "csls":
                s = (lambda t: 1 - t) if metric == "cosine" else (lambda t: -t)
                v = np.mean([s(t) for t in nq]) + np.mean([s(t) for t in nx]) - 2 * s(d)
            elif name == "nnn":  # alpha = 0.5, the default
                s = (lambda t: 1 - t) if metric == "cosine" else (lambda t: -t)
                v = 0.5 * np.mean([s(t) for t in nx]) - s(d)
            else:  # centering
                mu = X.mean(0)
                a, b = (X[q_self[r]] if q_self is not None else Q[r]) - mu, X[x] - mu
                v = 1 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
            out[r, x] = v
    return out


def exact_rows(DX, w):
    """Each row's w smallest distances to the other rows, sorted (the definition, float64)."""
    return np.sort(DX + np.diag(np.full(len(DX), np.inf)), axis=1)[:, :w]


@pytest.mark.parametrize("name", NAMES)
def test_both_sides_equal_brute_force_definition(name):
    """Query side (q's own candidate row) and index side (x's nearest in the index, self excluded),
    out of sample and in sample, equal a pair-by-pair implementation of each formula: to float64
    rounding given float64 index statistics and float64 candidate rows (``rerank`` of the
    brute-force candidates; in sample, the exact backend's graph), and to float32 rounding as
    fitted and searched (index statistics from nearest_rows, new queries' candidates screened)."""
    rng = np.random.default_rng(3)
    X, Q = rng.standard_normal((90, 7)), rng.standard_normal((25, 7))
    c, k = 20, 4
    metric = "cosine" if name == "csls" else "euclidean"
    kw = {} if name.startswith("mp") or name == "centering" else {"k": k}
    fitted = h.make_reduction(name, n_candidates=c, metric=metric, **kw).fit(X)
    DX = brute_dist(X, X, metric)
    exact = h.make_reduction(name, n_candidates=c, metric=metric, **kw).fit(X)
    if exact._width():
        exact.stats_ = exact._stats(exact_rows(DX, exact._width()), exact._width())
    for r, rtol, atol in [(exact, 1e-9, 1e-12), (fitted, 1e-5, 1e-6)]:
        for rows, Dq, q_self in [(Q, brute_dist(Q, X, metric), None), (None, DX, np.arange(len(X)))]:
            want = brute_secondary(name, X, Q, Dq, DX, c, k, metric, q_self)
            if name == "nnn" and r is fitted and rows is not None:  # searched anew: the c best of the whole index
                rx = -exact_rows(DX, k).mean(1)  # Euclidean: s = -d
                want = {(i, x): 0.5 * rx[x] + Dq[i, x] for i in range(len(Q))
                        for x in sorted(range(len(X)), key=lambda x: (0.5 * rx[x] + Dq[i, x], x))[:c]}
            sec, ind = r.kneighbors(rows, n_neighbors=c)
            if r is exact and rows is not None:
                ci = np.array([nearest(row, c) for row in Dq])
                sec, ind = r.rerank(np.take_along_axis(Dq, ci, 1), ci, rows)
            got = {(i, x): s for i, (srow, irow) in enumerate(zip(sec, ind)) for s, x in zip(srow, irow)}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[key] for key in want], list(want.values()), rtol=rtol, atol=atol)
            assert (np.diff(sec, axis=1) >= 0).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nearest_rows_fast_path_matches_reference(metric):
    """The index statistics' rows (float32 screening, one triangle of square blocks) equal the
    float64 definition and the exact kNN backend's distances to float32 rounding, for any block
    size (ragged last blocks), with duplicate points (self excluded by id, so a duplicate is a
    neighbour at distance ~0) and for a sample of columns; and a fitted reduction's statistics
    are the reference statistics computed from the exact backend's graph."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((230, 12)) + 3.0  # off-centre: the centring matters
    X[17] = X[4]
    X[90] = X[4]
    DX = brute_dist(X, X, metric)
    want = exact_rows(DX, 25)
    np.testing.assert_allclose(h.kneighbors(X, 25, metric=metric)[0], want, rtol=1e-12, atol=1e-12)
    for block in (7, 64, 100, 230, 4096):
        got = h.screen.nearest_rows(X, 25, metric, block=block)
        apart = want > 1e-9  # a duplicate's distance is sqrt(float32 rounding of |x|² terms), not 0
        np.testing.assert_allclose(got[apart], want[apart], rtol=1e-5)
        assert (~apart).sum() == 6 and got[~apart].max() < 1e-2
    cols = np.sort(rng.choice(len(X), 60, replace=False))
    sub = DX[:, cols].copy()
    sub[cols, np.arange(len(cols))] = np.inf
    np.testing.assert_allclose(h.screen.nearest_rows(X, 6, metric, among=cols, block=16),
                               np.sort(sub, axis=1)[:, :6], rtol=1e-5, atol=1e-2)
    # the sampled columns' own rows among all points, read from the same blocks transposed; with
    # the index's screening given or built for the sampled columns only
    screen = h.knn.streamed_screening(X, metric)
    for given in (None, screen):
        rows, full = h.screen.nearest_rows(X, 6, metric, among=cols, block=16, screen=given, among_width=9)
        np.testing.assert_allclose(rows, np.sort(sub, axis=1)[:, :6], rtol=1e-5, atol=1e-2)
        np.testing.assert_allclose(full, want[cols, :9], rtol=1e-5, atol=1e-2)
    for name in ["mp", "ls", "nicdm", "csls"]:
        r = h.make_reduction(name, n_candidates=40, metric=metric).fit(X)
        ref = r._stats(h.kneighbors(X, r._width(), metric=metric)[0], r._width())
        for a, b in zip(r.stats_, ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_screened_candidates_match_exact_backend(metric):
    """New queries' candidate rows (float32, no float64 re-check) hold the exact backend's
    neighbours, at its distances to float32 rounding, and a query's row is the same whatever other
    queries share the call (each pair is re-scored on its own, not read off a batch GEMM)."""
    rng = np.random.default_rng(9)
    X, Q = rng.standard_normal((400, 25)) + 2.0, rng.standard_normal((90, 25)) + 2.0
    Q[5] = X[11]  # a query equal to an index point: distance ~0 (float32), still the first candidate
    d, i = h.screen.screened(X, Q, 30, metric, block=64)
    D, I = h.kneighbors(X, 30, metric=metric, queries=Q)
    np.testing.assert_array_equal(i, I)
    far = D > 1e-9
    np.testing.assert_allclose(d[far], D[far], rtol=1e-5)
    assert d[5, 0] < 1e-2 and i[5, 0] == 11
    for rows in (slice(5, 6), slice(0, 1), slice(17, 90), slice(3, 40)):
        np.testing.assert_array_equal(h.screen.screened(X, Q[rows], 30, metric)[0], d[rows])
    r = h.MutualProximity(n_candidates=30, metric=metric).fit(X)
    np.testing.assert_array_equal(r.transform(Q[7:8]).toarray(), r.transform(Q).toarray()[7:8])


def _boot_skew(ind, n_index, rng, reps=200):
    """Mean and sd of the N_k skewness when the query rows are drawn with replacement."""
    v = [h.skewness(h.occurrences(ind[rng.integers(0, len(ind), len(ind))], n_index)) for _ in range(reps)]
    return np.mean(v), np.std(v)


@pytest.mark.parametrize("name", ["mp", "ls", "nicdm", "csls"])
def test_out_of_sample_matches_in_sample(name):
    """Fresh queries from the index distribution give the reduced N_k skewness of the in-sample
    path within sampling error. The in-sample queries (the index points) are resampled with
    replacement, i.e. drawn from the index's empirical distribution, so both sides carry the same
    query-sampling noise; the bootstrap spread is that noise."""
    rng = np.random.default_rng(11)
    X, Q = rng.standard_normal((1200, 30)), rng.standard_normal((1200, 30))
    r = h.make_reduction(name, n_candidates=40, metric="euclidean").fit(X)
    s_in, sd = _boot_skew(r.kneighbors(None, 10)[1], len(X), rng)
    s_out = h.skewness(r.k_occurrence(Q, 10))
    primary = h.skewness(h.k_occurrence(X, 10, queries=Q))
    assert abs(s_in - s_out) < 3 * np.sqrt(2) * sd, (s_in, s_out, sd)
    assert max(s_in, s_out) < primary - 1.0, (s_in, s_out, primary)


@pytest.mark.parametrize("name", ["mp", "ls", "nicdm", "csls"])
def test_sampled_index_statistics(name):
    """n_samples: statistics estimated from a sample track the exact ones and still reduce hubness."""
    rng = np.random.default_rng(5)
    X, Q = rng.standard_normal((1500, 30)), rng.standard_normal((500, 30))
    exact = h.make_reduction(name, n_candidates=60, metric="euclidean").fit(X)
    est = h.make_reduction(name, n_candidates=60, metric="euclidean", n_samples=500, random_state=1).fit(X)
    assert np.corrcoef(exact.stats_[0], est.stats_[0])[0, 1] > 0.9
    assert np.median(np.abs(est.stats_[0] / exact.stats_[0] - 1)) < 0.05
    primary = h.skewness(h.k_occurrence(X, 10, queries=Q))
    assert h.skewness(est.k_occurrence(Q, 10)) < primary
    again = h.make_reduction(name, n_candidates=60, metric="euclidean", n_samples=500, random_state=1).fit(X)
    for a, b in zip(again.stats_, est.stats_):
        np.testing.assert_array_equal(a, b)


def test_auto_sampling_rule():
    """n_samples="auto": exact rows below 8,000 index points, a max(2000, n // 20) sample from there
    on the exact backend and a flat FAISS index (the same statistics as that explicit n_samples),
    never on an approximate backend or a given graph."""
    rng = np.random.default_rng(6)
    small = rng.standard_normal((7999, 8))
    auto = h.CSLS(k=5, n_candidates=20, metric="euclidean").fit(small)
    exact = h.CSLS(k=5, n_candidates=20, metric="euclidean", n_samples=None).fit(small)
    assert auto.n_samples_ is None and exact.n_samples_ is None
    np.testing.assert_array_equal(auto.stats_[0], exact.stats_[0])
    big = np.vstack([small, rng.standard_normal((1, 8))])
    auto = h.LocalScaling(k=5, n_candidates=20, metric="euclidean", random_state=3).fit(big)
    fixed = h.LocalScaling(k=5, n_candidates=20, metric="euclidean", n_samples=2000, random_state=3).fit(big)
    assert auto.n_samples_ == 2000 == fixed.n_samples_
    np.testing.assert_array_equal(auto.stats_[0], fixed.stats_[0])
    assert h.LocalScaling(k=5, n_candidates=20)._sample_size(100_000) == 5000
    faiss = pytest.importorskip("faiss")
    assert h.CSLS(backend=faiss.IndexFlatL2(8))._sample_size(8000) == 2000  # a flat index: n² self-search
    assert h.CSLS(backend=faiss.IndexHNSWFlat(8, 16))._sample_size(8000) is None
    assert h.CSLS(backend="hnsw")._sample_size(8000) is None
    graph = h.kneighbors(big[:500], 20, metric="euclidean")
    assert h.CSLS(k=5, n_candidates=20, metric="euclidean").fit(big[:500], graph=graph).n_samples_ is None
    with pytest.raises(KexueError, match="n_samples"):
        h.CSLS(n_samples="all").fit(small)


@pytest.mark.parametrize("name", ["mp", "ls", "nicdm", "csls"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_sampled_statistics_equal_brute_force_definition(name, metric):
    """The sampled statistics (graph.sampled_stats) equal their definition computed from float64
    brute-force distances, to float32 rounding: each point's statistic over its J nearest sampled
    points (itself excluded), mapped by the least-squares affine fit of the sample points' exact
    statistic (over their nearest among all points) on their sampled one."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((400, 10)) + 1.0
    m, c = 120, 30
    r = h.make_reduction(name, n_candidates=c, metric=metric, n_samples=m, random_state=4).fit(X)
    ids = np.sort(np.random.default_rng(4).choice(len(X), m, replace=False))
    D = brute_dist(X, X, metric)
    np.fill_diagonal(D, np.inf)
    width = r._width()
    J = max(round(width * m / (len(X) - 1)), min(h.graph.SAMPLE_WINDOW, m - 1))
    rows = np.sort(D[:, ids], axis=1)[:, :J]
    full = np.sort(D[ids], axis=1)[:, :width]
    for got, est, exact in zip(r.stats_, r._stats(rows, J), r._stats(full, width)):
        slope, icept = np.polyfit(est[ids], exact, 1)
        np.testing.assert_allclose(got, slope * est + icept, rtol=2e-4, atol=2e-5)


def test_skewness_reduction_gaussian_d100():
    """SPEC 8.4 claim: MP and LS bring the N_10 skewness of N(0, I_100), n = 2000 from ≈ 8.7 below 2.5."""
    X = np.random.default_rng(0).standard_normal((2000, 100))
    base = h.skewness(h.k_occurrence(X, 10))
    assert 8.0 < base < 9.5
    got = {}
    for name in ["mp", "ls", "nicdm", "csls", "centering"]:
        r = h.make_reduction(name, metric="euclidean", n_candidates=50).fit(X)
        nk = r.k_occurrence(n_neighbors=10)
        assert nk.sum() == 10 * len(X)
        got[name] = h.skewness(nk)
    assert got["mp"] < 2.5 and got["ls"] < 2.5 and got["nicdm"] < 2.5, got
    assert all(v < base for v in got.values()), got


# ---------------------------------------------------------------- scikit-learn contract


@pytest.mark.parametrize("name", NAMES)
def test_check_estimator(name):
    from sklearn.utils.estimator_checks import check_estimator

    check_estimator(h.make_reduction(name, metric="euclidean"))


def test_pipeline_with_kneighbors_transformer():
    """KNeighborsTransformer → MutualProximity → KNeighborsClassifier(precomputed) equals the
    reduction applied by hand to the same graphs."""
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsTransformer
    from sklearn.pipeline import make_pipeline

    X, y = load_digits(return_X_y=True)
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]
    for red in [h.MutualProximity(), h.LocalScaling(k=5), h.CSLS(metric="euclidean")]:
        pipe = make_pipeline(KNeighborsTransformer(n_neighbors=30, mode="distance"), red,
                             KNeighborsClassifier(n_neighbors=5, metric="precomputed"))
        pred = pipe.fit(Xtr, ytr).predict(Xte)
        assert (pred == yte).mean() > 0.9
        knt = KNeighborsTransformer(n_neighbors=30, mode="distance").fit(Xtr)
        r = type(red)(**red.get_params()).fit(knt.transform(Xtr))
        g = r.transform(knt.transform(Xte))
        assert g.shape == (len(Xte), len(Xtr)) and (g.data >= 0).all()
        d, i = r.kneighbors(knt.transform(Xte), n_neighbors=5)
        votes = np.array([np.bincount(ytr[row], minlength=10) for row in i])
        agree = np.mean(votes[np.arange(len(pred)), pred] == votes.max(1))
        assert agree == 1.0


def test_faiss_index_as_backend():
    """A built FAISS index (flat, IVF, HNSW) serves the reduction without being rebuilt."""
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 16)).astype(np.float32)
    Q = rng.standard_normal((60, 16))
    want = h.MutualProximity(n_candidates=30).fit(X).kneighbors(Q, 10)[1]
    flat = faiss.IndexFlatL2(16)
    hnsw = faiss.IndexHNSWFlat(16, 16)
    hnsw.hnsw.efSearch = 128
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 8)
    ivf.train(X)
    ivf.nprobe = 8
    for index in (flat, hnsw, ivf):
        index.add(X)
        r = h.MutualProximity(n_candidates=30, backend=index).fit(X)
        got = r.kneighbors(Q, 10)[1]
        assert index.ntotal == len(X)
        assert h.knn_recall(got, want) > 0.97
        assert r.transform(Q).shape == (60, 600)
    with pytest.raises(KexueError, match="holds 600 vectors"):
        h.LocalScaling(backend=flat).fit(X[:100])
    ip = faiss.IndexFlatIP(16)
    ip.add(X)
    with pytest.raises(KexueError, match="metric='cosine'"):
        h.CSLS(metric="euclidean", backend=ip).fit(X)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    ip = faiss.IndexFlatIP(16)
    ip.add(Xn)
    got = h.CSLS(n_candidates=30, backend=ip).fit(X).kneighbors(Q, 10)[1]
    assert h.knn_recall(got, h.CSLS(n_candidates=30).fit(X).kneighbors(Q, 10)[1]) > 0.97
    with pytest.raises(KexueError, match="cannot be saved"):
        h.MutualProximity(backend=flat).fit(X).save("x.safetensors")


# ---------------------------------------------------------------- errors and persistence


def test_errors_are_one_line_kexue_errors():
    X = np.random.default_rng(0).standard_normal((50, 5))
    cases = [
        (lambda: h.LocalScaling(k=0).fit(X), "'k' parameter"),
        (lambda: h.LocalScaling(k=20, n_candidates=10).fit(X), "k=20 exceeds the 10 candidates"),
        (lambda: h.CSLS(k=12, metric="euclidean").fit(sparse.csr_matrix(np.ones((5, 5)))), "exceeds"),
        (lambda: h.MutualProximity(n_candidates=10).fit(X).kneighbors(X[:3], 11), "n_neighbors=11 exceeds"),
        (lambda: h.LocalScaling().kneighbors(), "not fitted"),
        (lambda: h.make_reduction("whiten"), "unknown hubness reduction"),
        (lambda: h.MutualProximity(method="normal").fit(X), "'method' parameter"),
        (lambda: h.LocalScaling(n_candidates=10).fit(X).rerank(np.ones((2, 3)), np.full((2, 3), 999), X[:2]), "outside"),
        (lambda: h.LocalScaling().fit(X).transform(X[:, :3]), "X has 3 features"),
        (lambda: h.Centering().fit(sparse.csr_matrix(np.ones((5, 5)))), "sparse input"),
        (lambda: h.LocalScaling(backend="annoy").fit(X), "unknown backend"),
        (lambda: h.LocalScaling().fit(X[:1]), "1 sample"),
    ]
    for fn, match in cases:
        with pytest.raises(KexueError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    rng = np.random.default_rng(4)
    X, Q = rng.standard_normal((200, 8)), rng.standard_normal((30, 8))
    r = h.make_reduction(name, n_candidates=25).fit(X)
    r.save(tmp_path / "r.safetensors")
    back = type(r).load(tmp_path / "r.safetensors")
    assert back.get_params() == r.get_params()
    for a, b in [(r.transform(Q), back.transform(Q))]:
        np.testing.assert_array_equal(a.toarray(), b.toarray())
    np.testing.assert_array_equal(r.kneighbors(None, 5)[1], back.kneighbors(None, 5)[1])
    other = h.CSLS if not isinstance(r, h.CSLS) else h.Centering
    with pytest.raises(KexueError, match="not a"):
        other.load(tmp_path / "r.safetensors")


def test_graph_mode_save_load(tmp_path):
    from sklearn.neighbors import KNeighborsTransformer

    X = np.random.default_rng(6).standard_normal((150, 6))
    knt = KNeighborsTransformer(n_neighbors=15, mode="distance").fit(X[:100])
    r = h.MutualProximity().fit(knt.transform(X[:100]))
    assert r.n_candidates_ == 15
    r.save(tmp_path / "g.safetensors")
    back = h.MutualProximity.load(tmp_path / "g.safetensors")
    G = knt.transform(X[100:])
    np.testing.assert_array_equal(r.transform(G).toarray(), back.transform(G).toarray())
