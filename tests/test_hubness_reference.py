"""Hubness reductions with a reference set (issue 28): each index point's statistic from its nearest
reference points (a query bank, or the query batch itself), against a float64 brute force of the
definition; reference=None unchanged; every backend and a user's FAISS index; sampling; NNN against
the nnn-retrieval package; errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from kexue import hubness as h
from kexue.utils import KexueError

from test_hubness_reduction import brute_dist, nearest

WITH_STAT = ["mp", "ls", "nicdm", "csls", "nnn"]


def data(seed=3, n=90, nr=40, nq=25, d=7):
    """Index, reference bank and test queries; the queries and the bank come from a shifted,
    stretched distribution (the setting a reference set is for)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    shift = rng.standard_normal(d)
    R = 1.3 * rng.standard_normal((nr, d)) + shift
    Q = 1.3 * rng.standard_normal((nq, d)) + shift
    return X, R, Q


def make(name, c, k, metric, **kw):
    extra = {} if name == "mp" else {"k": k}
    return h.make_reduction(name, n_candidates=c, metric=metric, **extra, **kw)


def brute_reference(name, Dq, DR, c, k, metric, alpha=0.5, wx=None, exhaustive=False):
    """{(query row, x): secondary distance}: q's statistic from its own c candidates (its k or c
    nearest index points), x's from its k (MP: c; ``wx`` if given) nearest *reference* points
    (``DR``: index × reference, nothing excluded), the formulas of docs/hubness.md written out pair
    by pair. ``exhaustive`` (NNN): the candidates are the c best by NNN's score over all index
    points, not the c nearest."""
    sim = (lambda t: 1 - t) if metric == "cosine" else (lambda t: -t)
    w = c if name == "mp" else k
    wx = w if wx is None else wx
    out = {}
    for r, drow in enumerate(Dq):
        cand = nearest(drow, c)
        if exhaustive:
            score = [alpha * np.mean([sim(t) for t in sorted(DR[x])[:wx]]) - sim(drow[x]) for x in range(len(drow))]
            cand = sorted(range(len(drow)), key=lambda x: (score[x], x))[:c]
        nq = [drow[j] for j in cand[:w]]
        for x in cand:
            d = drow[x]
            nx = sorted(DR[x])[:wx]
            if name == "mp":
                v = 1 - norm.sf(d, np.mean(nq), np.std(nq)) * norm.sf(d, np.mean(nx), np.std(nx))
            elif name == "ls":
                v = 1 - np.exp(-d**2 / (nq[-1] * nx[-1]))
            elif name == "nicdm":
                v = d / np.sqrt(np.mean(nq) * np.mean(nx))
            elif name == "csls":  # Conneau et al. (2018): r_T(x) = mean similarity to its k nearest queries
                v = np.mean([sim(t) for t in nq]) + np.mean([sim(t) for t in nx]) - 2 * sim(d)
            else:  # nnn
                v = alpha * np.mean([sim(t) for t in nx]) - sim(d)
            out[r, x] = v
    return out


@pytest.mark.parametrize("k", [4, "auto"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("name", WITH_STAT)
def test_reference_statistics_equal_brute_force(name, metric, k):
    """Secondary distances and the re-ranked top k equal a float64 brute force of the definition:
    to float64 rounding with float64 rows (rerank of brute-force candidates, statistics from the
    brute-force reference rows), to float32 rounding as fitted and searched. ``k="auto"`` (the
    default) with a reference: both statistics over c points (q's candidate row, x's c nearest
    reference points), kiez's definition."""
    X, R, Q = data()
    c = 20
    Dq, DR = brute_dist(Q, X, metric), brute_dist(X, R, metric)
    want = brute_reference(name, Dq, DR, c, c if k == "auto" else k, metric)
    fitted = make(name, c, k, metric).fit(X, reference=R)
    assert fitted.n_reference_ == len(R)
    exact = make(name, c, k, metric).fit(X, reference=R)
    w = exact._width(True)
    assert w == (c if k == "auto" or name == "mp" else k)
    exact.stats_ = exact._stats(np.sort(DR, axis=1)[:, :w], w)
    ci = np.array([nearest(row, c) for row in Dq])
    # NNN searched anew ranks the whole index by its score (nnn-retrieval's definition); a given
    # candidate graph (rerank) is re-scored as given
    searched = brute_reference(name, Dq, DR, c, c if k == "auto" else k, metric, exhaustive=True) \
        if name == "nnn" else want
    if name == "nnn":
        assert searched.keys() != want.keys()  # the case does reach beyond the nearest c
    for (sec, ind), rtol, ref in [(exact.rerank(np.take_along_axis(Dq, ci, 1), ci, Q), 1e-9, want),
                                  (fitted.kneighbors(Q, n_neighbors=c), 1e-5, searched)]:
        got = {(i, x): s for i, (srow, irow) in enumerate(zip(sec, ind)) for s, x in zip(srow, irow)}
        assert got.keys() == ref.keys()
        np.testing.assert_allclose([got[key] for key in ref], list(ref.values()), rtol=rtol, atol=rtol)
        top = [[x for _, x in sorted((v, x) for (r2, x), v in ref.items() if r2 == r)][:5] for r in range(len(Q))]
        np.testing.assert_array_equal(ind[:, :5], np.array(top))


@pytest.mark.parametrize("name", WITH_STAT)
def test_transductive_spelling_and_none_unchanged(name):
    X, R, Q = data(seed=4)
    a = make(name, 20, 4, "euclidean").fit(X, reference=Q).kneighbors(Q, 5)
    plain = make(name, 20, 4, "euclidean").fit(X)
    before = [s.copy() for s in plain.stats_]
    b = plain.kneighbors(Q, 5, reference="queries")  # one float32 pass for candidates and reference rows
    trans = make(name, 20, 4, "euclidean").fit(X, reference="queries")
    assert trans.transductive_ and trans.stats_ == ()
    for got in [b, trans.kneighbors(Q, 5)]:  # the same products, read by row and by column: float32 rounding
        np.testing.assert_array_equal(got[1], a[1])
        np.testing.assert_allclose(got[0], a[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(trans.rerank(*h.kneighbors(X, 20, queries=Q), Q)[1],
                                  make(name, 20, 4, "euclidean").fit(X, reference=Q).rerank(
                                      *h.kneighbors(X, 20, queries=Q), Q)[1])
    for s0, s1 in zip(before, plain.stats_):  # the call's reference does not change the fitted state
        np.testing.assert_array_equal(s0, s1)
    # reference=None is the index-internal path, bit for bit; a bank passed per call equals fitting on it
    none = make(name, 20, 4, "euclidean").fit(X, reference=None)
    for s0, s1 in zip(none.stats_, plain.stats_):
        np.testing.assert_array_equal(s0, s1)
    np.testing.assert_array_equal(none.kneighbors(Q, 5, reference=None)[0], plain.kneighbors(Q, 5)[0])
    np.testing.assert_array_equal(plain.kneighbors(Q, 5, reference=R)[0],
                                  make(name, 20, 4, "euclidean").fit(X, reference=R).kneighbors(Q, 5)[0])
    G = plain.transform(Q, reference="queries")
    assert G.shape == (len(Q), len(X)) and G.nnz == 20 * len(Q)
    np.testing.assert_array_equal(plain.k_occurrence(Q, 5, reference="queries"), h.occurrences(a[1], len(X)))


@pytest.mark.parametrize("name", ["ls", "nicdm", "csls", "nnn"])
def test_auto_k(name):
    """k="auto" (the default): without a reference exactly k = 5, bit for bit (the SPEC 8.4
    random-split results); with a reference set smaller than n_candidates the index side reads the
    whole reference and the query side its whole candidate row (brute force); an explicit k beyond
    the reference stays an error."""
    X, R, Q = data(seed=10)
    auto, five = make(name, 20, "auto", "euclidean").fit(X), make(name, 20, 5, "euclidean").fit(X)
    for s0, s1 in zip(auto.stats_, five.stats_):
        np.testing.assert_array_equal(s0, s1)
    for a, b in [(auto.kneighbors(Q, 5), five.kneighbors(Q, 5)), (auto.kneighbors(None, 5), five.kneighbors(None, 5))]:
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    tiny = make(name, 3, "auto", "euclidean").fit(X)  # fewer candidates than 5: k = n_candidates
    assert tiny._width() == 3 and tiny.kneighbors(Q, 2)[1].shape == (len(Q), 2)
    small = Q[:8]  # a batch of 8 queries is its own reference: x reads all 8, q its 20 candidates
    Dq, DR = brute_dist(small, X, "euclidean"), brute_dist(X, small, "euclidean")
    want = brute_reference(name, Dq, DR, 20, 20, "euclidean", wx=8, exhaustive=name == "nnn")
    sec, ind = auto.kneighbors(small, 20, reference="queries")
    got = {(i, x): v for i, (srow, irow) in enumerate(zip(sec, ind)) for v, x in zip(srow, irow)}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[key] for key in want], list(want.values()), rtol=1e-5, atol=1e-5)
    with pytest.raises(KexueError, match="has 8 rows"):
        make(name, 20, 10, "euclidean").fit(X).kneighbors(small, 5, reference="queries")


@pytest.mark.parametrize("name", ["mp", "csls", "nnn"])
def test_every_backend_and_a_users_faiss_index(name):
    faiss = pytest.importorskip("faiss")
    X, R, Q = data(seed=5, n=400, nr=150, nq=60, d=12)
    want = make(name, 30, 5, "euclidean").fit(X, reference=R)
    # the 30 nearest re-scored, as the other backends do (NNN searched on the exact backend ranks the
    # whole index instead)
    wi = want.rerank(*h.kneighbors(X, 30, queries=Q), Q)[1][:, :10]
    index = faiss.IndexFlatL2(12)
    index.add(X.astype(np.float32))
    # exact searches of the reference (a user's index holds the index, so the reference is screened
    # by BLAS as on the exact backend; FAISS flat): the same statistics to float32 rounding
    for kw in [{"backend": index}, {"backend": "faiss", "backend_params": {"index": "flat"}}]:
        r = make(name, 30, 5, "euclidean", **kw).fit(X, reference=R)
        np.testing.assert_allclose(r.stats_[0], want.stats_[0], rtol=1e-5)
        assert h.knn_recall(r.kneighbors(Q, 10)[1], wi) >= 0.99, kw
    # approximate indexes over the reference, tuned for recall 0.95: statistics close, same top 10 mostly
    for kw in [{"backend": "hnsw"}, {"backend": "ivf"}, {"backend": "faiss"}]:
        r = make(name, 30, 5, "euclidean", **kw).fit(X, reference=R)
        assert np.median(np.abs(r.stats_[0] / want.stats_[0] - 1)) < 1e-3, kw
        assert h.knn_recall(r.kneighbors(Q, 10)[1], wi) >= 0.95, kw


def test_reference_sample():
    X, R, Q = data(seed=6, nr=200)
    r = make("csls", 20, 4, "euclidean", n_samples=50, random_state=3).fit(X, reference=R)
    ids = np.sort(np.random.default_rng(3).choice(len(R), 50, replace=False))  # the documented draw
    s = make("csls", 20, 4, "euclidean").fit(X, reference=R[ids])
    assert r.n_reference_ == 50
    np.testing.assert_array_equal(r.stats_[0], s.stats_[0])
    # "auto" and None read the whole reference
    assert make("csls", 20, 4, "euclidean").fit(X, reference=R).n_reference_ == 200


def test_nnn_matches_nnn_retrieval():
    """Same top k and scores as nnn-retrieval's NNNRanker (MIT licence; exhaustive torch scoring of
    inner products) on unit vectors: NNN's score s(q, x) - alpha · mean of x's k best reference
    similarities, s = cosine similarity."""
    nnn = pytest.importorskip("nnn", reason="nnn-retrieval is not installed (pip install nnn-retrieval)")
    rng = np.random.default_rng(7)

    def unit(A):
        return (A / np.linalg.norm(A, axis=1, keepdims=True)).astype(np.float32)

    X = unit(rng.standard_normal((300, 32)))
    R = unit(rng.standard_normal((120, 32)) + 0.4)
    Q = unit(rng.standard_normal((40, 32)) + 0.4)
    alpha, k, top = 0.75, 8, 10
    ranker = nnn.NNNRanker(nnn.NNNRetriever(32), X, R, alternate_ks=k, batch_size=64, alternate_weight=alpha)
    scores, ind = ranker.search(Q, top)
    red = h.NNN(alpha=alpha, k=k, n_candidates=299, metric="cosine").fit(X, reference=R)
    sec, ours = red.kneighbors(Q, top)
    np.testing.assert_array_equal(ours, ind)
    np.testing.assert_allclose(-sec, scores, atol=2e-6)
    # 20 candidates: still the best of the whole index by NNN's score, not of the 20 nearest
    sec, ours = h.NNN(alpha=alpha, k=k, n_candidates=20, metric="cosine").fit(X, reference=R).kneighbors(Q, top)
    np.testing.assert_array_equal(ours, ind)
    np.testing.assert_allclose(-sec, scores, atol=2e-6)
    near = h.kneighbors(X, 20, metric="cosine", queries=Q)[1]
    assert any(not set(row) <= set(n) for row, n in zip(ind, near))  # the case reaches beyond the 20 nearest
    # transductive: the queries as the reference, as NNNRanker(X, Q, ...)
    scores, ind = nnn.NNNRanker(nnn.NNNRetriever(32), X, Q, alternate_ks=k, alternate_weight=alpha).search(Q, top)
    sec, ours = h.NNN(alpha=alpha, k=k, n_candidates=299).fit(X).kneighbors(Q, top, reference="queries")
    np.testing.assert_array_equal(ours, ind)
    np.testing.assert_allclose(-sec, scores, atol=2e-6)


def test_reference_errors_are_one_line(tmp_path):
    from sklearn.neighbors import KNeighborsTransformer

    X, R, Q = data()
    cases = [
        (lambda: make("csls", 20, 4, "euclidean").fit(X, reference=R[:, :5]), "reference has 5 features"),
        (lambda: make("csls", 20, 4, "euclidean").fit(X, reference="bank"), "reference='bank'"),
        (lambda: make("csls", 20, 4, "euclidean").fit(X).kneighbors(Q[:3], 2, reference="queries"), "has 3 rows"),
        (lambda: make("mp", 20, 4, "euclidean").fit(X, reference=R[:10]), "has 10 rows"),
        (lambda: h.make_reduction("centering").fit(X, reference=R), "no per-point index statistic"),
        (lambda: h.make_reduction("mp-empirical", n_candidates=20).fit(X).kneighbors(Q, 5, reference="queries"),
         "no per-point index statistic"),
        (lambda: make("csls", 20, 4, "euclidean").fit(
            KNeighborsTransformer(n_neighbors=20, mode="distance").fit_transform(X), reference=R), "index vectors"),
        (lambda: make("csls", 20, 4, "euclidean").fit(X).kneighbors(
            KNeighborsTransformer(n_neighbors=20, mode="distance").fit(X).transform(Q), 5, reference="queries"),
         "query graph"),
        (lambda: make("csls", 20, 4, "euclidean").fit(X).kneighbors(Q, 5, reference=np.full((30, 7), np.nan)),
         "reference.*NaN"),
    ]
    for bad, msg in cases:
        with pytest.raises(KexueError, match=msg) as e:
            bad()
        assert "\n" not in str(e.value)


def test_save_load_keeps_reference_statistics(tmp_path):
    X, R, Q = data(seed=8)
    r = make("nnn", 20, 4, "cosine").fit(X, reference=R)
    r.save(tmp_path / "r.safetensors")
    s = h.NNN.load(tmp_path / "r.safetensors")
    assert s.n_reference_ == len(R)
    np.testing.assert_array_equal(s.kneighbors(Q, 5)[1], r.kneighbors(Q, 5)[1])
    t = make("csls", 20, 4, "cosine").fit(X, reference="queries")
    t.save(tmp_path / "t.safetensors")
    u = h.CSLS.load(tmp_path / "t.safetensors")
    assert u.transductive_
    np.testing.assert_array_equal(u.kneighbors(Q, 5)[1], t.kneighbors(Q, 5)[1])


# ---------------------------------------------------------------- CLI


def test_cli_queries_and_reference_equal_the_api(cli, tmp_path):
    import json

    X, R, Q = data(seed=9, n=300, nr=120, nq=80, d=10)
    for name, arr in [("X", X), ("R", R), ("Q", Q)]:
        np.save(tmp_path / f"{name}.npy", arr)
    g = h.kneighbors(X, 40, queries=Q)  # the CLI re-ranks the exact primary candidates of the queries
    nk0 = h.occurrences(g.ind[:, :5], len(X))
    for red, ref, kw in [("csls", "queries", {"reference": "queries"}), ("mp", tmp_path / "R.npy", {}),
                         ("nnn", tmp_path / "R.npy", {})]:
        out = tmp_path / f"g-{red}.npz"
        r = cli("hubness", tmp_path / "X.npy", "--queries", tmp_path / "Q.npy", "--reference", ref, "--reduce", red,
                "-k", 5, "--candidates", 40, "--json", "-", "--graph", out)
        assert r.code == 0, r.err
        doc = json.loads(r.out)
        est = h.make_reduction(red, n_candidates=40, metric="euclidean")
        est.fit(X, reference=None if kw else R)
        d, ind = est.rerank(g.dist, g.ind, Q, **kw)
        np.testing.assert_array_equal(np.load(out)["indices"], ind[:, :5])
        assert doc["n_queries"] == 80 and doc["n_reference"] == (80 if kw else 120)
        assert doc["measures"]["primary"] == h.hubness_measures(nk0, 5, 80)
        assert doc["measures"][red]["skewness"] == pytest.approx(h.skewness(h.occurrences(ind[:, :5], len(X))))
    # in sample with a reference bank: the index's own exact graph, statistics from the bank
    r = cli("hubness", tmp_path / "X.npy", "--reference", tmp_path / "R.npy", "--reduce", "ls", "-k", 5,
            "--candidates", 40, "--nk-out", tmp_path / "nk.npy")
    assert r.code == 0, r.err
    est = h.LocalScaling(n_candidates=40).fit(X, graph=h.kneighbors(X, 40), reference=R)
    np.testing.assert_array_equal(np.load(tmp_path / "nk.npy"), est.k_occurrence(n_neighbors=5))


@pytest.mark.parametrize("name", ["mp", "ls"])
def test_saturated_secondary_distances_keep_the_primary_order(name):
    """Where the formula rounds to exactly 1.0 in float64 (MP's SF_q · SF_x or LS's exp(-t) below
    2^-53), candidates are ranked by their primary distance, not by index id."""
    X, R, Q = data(seed=11)
    r = make(name, 20, 4, "euclidean").fit(X, reference=R)
    # every index point's reference points at distance ~0 with no spread: its survival function
    # (MP) or scale (LS) makes every candidate's secondary distance 1.0
    r.stats_ = (np.zeros(len(X)), np.full(len(X), 1e-9)) if name == "mp" else (np.full(len(X), 1e-9),)
    sec, ind = r.kneighbors(Q, 10)
    assert (sec == 1.0).all()
    np.testing.assert_array_equal(ind, h.kneighbors(X, 10, queries=Q)[1])
    by_id = np.sort(h.kneighbors(X, 20, queries=Q)[1], axis=1)[:, :10]  # what the id order would return
    assert (np.sort(ind, axis=1) != by_id).any()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nnn_transductive_one_product_equals_two_passes(metric, monkeypatch):
    """NNN with the query batch as its reference reads the index side and the candidates from one
    queries × index product (while it fits in FUSED_BYTES); the two-pass path (index statistics
    from the queries, then the candidates) gives the same neighbours and distances."""
    from kexue.hubness import reduction

    X, _, Q = data(seed=5, n=300, nq=120, d=9)
    r = make("nnn", 30, 6, metric).fit(X)
    one = r.kneighbors(Q, 10, reference="queries")
    monkeypatch.setattr(reduction, "FUSED_BYTES", 0)
    two = r.kneighbors(Q, 10, reference="queries")
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_allclose(one[0], two[0], rtol=1e-6, atol=1e-7)
    assert not np.array_equal(one[1], r.kneighbors(Q, 10)[1])  # the reference does change the ranking


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("case", ["shifted", "ties", "huge"])
def test_nnn_few_candidates_equal_all_candidates(metric, case, monkeypatch):
    """kneighbors(Q, k) on the exact backend recomputes only the candidates whose float32 score is
    within the error margin of the k-th (NNN._few); the neighbours and distances are bit for bit
    those of recomputing all n_candidates (the path taken without that margin), with a bank and
    transductive, also where scores tie exactly (duplicate index points) and on coordinates far
    from 1 (the power-of-two rescaling)."""
    from kexue.hubness.reduction import NNN

    X, R, Q = data(seed=9, n=400, nr=150, nq=60, d=12)
    if case == "ties":
        X = np.repeat(np.round(X[:100], 1), 4, axis=0)  # every index point four times, many equal scores
        Q = np.round(Q, 1)
    if case == "huge":
        X, R, Q = X * 2.0**60, R * 2.0**60, Q * 2.0**60
    runs = [(X, R), (X, "queries")]
    few = {}
    calls = []
    real = NNN._few

    def counted(self, *a):
        out = real(self, *a)
        calls.append(out is not None and out.shape[1] < self.n_candidates_)
        return out

    monkeypatch.setattr(NNN, "_few", counted)
    for i, (A, ref) in enumerate(runs):
        for k in (1, 10):
            few[i, k] = make("nnn", 60, 20, metric).fit(A, reference=ref).kneighbors(Q, k)
    assert any(calls)  # the margin did pick fewer than n_candidates
    monkeypatch.setattr(NNN, "_few", lambda self, *a: None)
    for i, (A, ref) in enumerate(runs):
        for k in (1, 10):
            full = make("nnn", 60, 20, metric).fit(A, reference=ref).kneighbors(Q, k)
            np.testing.assert_array_equal(few[i, k][1], full[1])
            np.testing.assert_array_equal(few[i, k][0], full[0])


def test_keep_smallest_block_by_block_equals_a_sort():
    """screen._keep_smallest, the selection behind every reduction's index statistics: each row's w
    smallest values merged block by block (the first block on its own, later ones through the
    entries under the row's current w-th value when few) are those of one sort of all the values,
    with exact ties, infinities and a constant row."""
    from kexue.hubness import screen

    rng = np.random.default_rng(4)
    A = np.round(rng.standard_normal((60, 3000)), 1).astype(np.float32)  # many exact ties
    A[3, :2500] = np.inf
    A[7] = 0.5
    for w in (1, 20, 100):
        best = np.full((60, w), np.inf, np.float32)
        for r0 in (0, 30):
            for j in range(0, 3000, 700):
                screen._keep_smallest(best, r0, A[r0:r0 + 30, j:j + 700].copy())
        np.testing.assert_array_equal(np.sort(best, axis=1), np.sort(A, axis=1)[:, :w])
