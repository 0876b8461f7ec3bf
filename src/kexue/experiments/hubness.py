"""Hubness (SPEC 8): ball/cube volumes, growth of N_k skewness with dimension, hubness reduction on
real embeddings (MNIST pixels, MiniLM on STS-B) with its effect on k-NN classification and
retrieval, exact vs approximate backends, and hub-prior latent sampling for our VAE decoder."""

from __future__ import annotations

import math
import time

import numpy as np

from kexue.experiments._hubness_shift import knn_vote, part_shift  # knn_vote: the shift section's too

TITLE = "Hubness: measures, reduction on real embeddings, hub-prior sampling"
SPEC = "8"

REDUCTIONS = ["mp", "mp-empirical", "ls", "nicdm", "csls", "centering"]


def _fig(w=6.0, h=3.8, ncols=1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    return fig, fig.subplots(1, ncols)


# ---------------------------------------------------------------------------------------------
# 8.1 ball vs cube


def ball_volume_log(n: int) -> float:
    """log V_n of the unit n-ball, V_n = π^{n/2} / Γ(n/2 + 1) (SPEC 8.1)."""
    return 0.5 * n * math.log(math.pi) - math.lgamma(n / 2 + 1)


def part_volumes(ctx):
    dims = [1, 2, 3, 5, 10, 20, 50, 100]
    rng = np.random.default_rng(ctx.seed)
    m = 20000 if ctx.quick else 200000
    rows = []
    for n in dims:
        lv = ball_volume_log(n)
        ratio = math.exp(lv - n * math.log(2))
        # Monte Carlo check of the rejection-sampling acceptance (points of the cube [-1, 1]^n in the ball)
        mc = float((np.sum(rng.uniform(-1, 1, (m, n)) ** 2, axis=1) <= 1).mean()) if n <= 10 else float("nan")
        shell = 1 - 0.99**n  # fraction of the ball's volume within 1 % of its surface
        rows.append([n, math.exp(lv), ratio, mc, shell])
    ctx.table("ball_cube", ["n", "V_n", "V_n / 2^n", f"Monte Carlo acceptance ({m} draws)", "volume in outer 1 % shell"],
              rows, caption="SPEC 8.1: unit n-ball volume, its share of the cube [-1, 1]^n (= acceptance of rejection "
              "sampling a ball from the cube), and the share of the ball's volume within 1 % of the surface")
    r10, r20 = rows[dims.index(10)][2], rows[dims.index(20)][2]
    ctx.metric("ball_cube_ratio_n10", r10)
    ctx.metric("ball_cube_ratio_n20", r20)
    ctx.text(f"SPEC 8.1 states V_n/2ⁿ ≈ 2.5e-3 at n = 10 and ≈ 2.5e-8 at n = 20; we get {r10:.3g} and "
             f"{r20:.3g} (exact formula), and the Monte Carlo acceptance at n = 10 is "
             f"{rows[dims.index(10)][3]:.2g}.")
    ns = np.arange(1, 101)
    fig, ax = _fig()
    ax.semilogy(ns, [math.exp(ball_volume_log(int(n)) - n * math.log(2)) for n in ns], label="V_n / 2^n")
    ax.semilogy(ns, [math.exp(ball_volume_log(int(n))) for n in ns], label="V_n")
    ax.set_xlabel("dimension n")
    ax.legend()
    ax.grid(alpha=0.3)
    ctx.figure("ball_cube", fig, caption="Unit-ball volume and its share of the enclosing cube vs dimension (SPEC 8.1).")


# ---------------------------------------------------------------------------------------------
# 8.2 skewness vs dimension


def part_dimension(ctx):
    from scipy.stats import spearmanr

    from kexue import hubness as H

    dims = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    n, k = 2000, 10
    seeds = [ctx.seed] if ctx.quick else [ctx.seed + i for i in range(3)]
    rows, keep = [], {}
    for d in ctx.track(dims, "skewness vs dimension"):
        sk, rho, rh = [], [], []
        for s in seeds:
            X = np.random.default_rng([s, d]).standard_normal((n, d))
            nk = H.k_occurrence(X, k)
            sk.append(H.skewness(nk))
            rh.append(H.robin_hood(nk))
            rho.append(spearmanr(nk, np.linalg.norm(X - X.mean(0), axis=1)).statistic)
            if d == 128 and s == seeds[0]:
                keep = (nk, np.linalg.norm(X - X.mean(0), axis=1))
        rows.append([d, float(np.mean(sk)), float(np.std(sk)), float(np.mean(rh)), float(np.mean(rho))])
    ctx.table("skew_vs_dim", ["d", "skewness of N_10", "± std over seeds", "robin-hood", "Spearman(N_10, |x - mean|)"],
              rows, caption=f"i.i.d. N(0, I_d), n = {n}, k = {k}, exact kNN, {len(seeds)} seed(s)")
    ctx.metric("skew_d2", rows[0][1])
    ctx.metric("skew_d1024", rows[-1][1])
    ctx.metric("spearman_d1024", rows[-1][4])
    fig, (a1, a2) = _fig(10, 3.6, 2)
    a1.errorbar([r[0] for r in rows], [r[1] for r in rows], yerr=[r[2] for r in rows], marker="o")
    a1.set_xscale("log", base=2)
    a1.set_xlabel("dimension d")
    a1.set_ylabel("skewness of N_10")
    a1.grid(alpha=0.3)
    a2.scatter(keep[1], keep[0], s=4, alpha=0.5)
    a2.set_xlabel("distance to the data mean")
    a2.set_ylabel("N_10")
    a2.set_title("d = 128")
    ctx.figure("skew_vs_dim", fig, caption="Left: N_k skewness grows with dimension. Right: hubs are the points "
               "closest to the mean (SPEC 8.2).")
    ctx.text(f"Skewness rises from {rows[0][1]:.2f} (d = 2) to {rows[-1][1]:.2f} (d = 1024) (maximum "
             f"{max(r[1] for r in rows):.2f}), robin-hood from {rows[0][3]:.2f} to {rows[-1][3]:.2f}, and N_k is strongly "
             f"anti-correlated with the distance to the mean (Spearman {rows[-1][4]:.2f} at d = 1024): the points "
             "near the centre are the hubs, as the post explains. (Skewness of one sample of 2000 points is itself "
             "very variable in high dimension — hence the spread over seeds in the full run.)")


# ---------------------------------------------------------------------------------------------
# 8.4 reduction on real embeddings


def _reduction_rows(ctx, X, Q, k, metric, score, label, n_candidates):
    """Rows (method, skewness, hub occ., antihub occ., max N_k, *scores, seconds) for primary and reductions;
    ``score(ind)`` returns a list of numbers for the re-ranked (n_queries, k) neighbour lists."""
    from kexue import hubness as H

    rows = []
    t = time.perf_counter()
    pd, pi = H.kneighbors(X, n_candidates, metric=metric, queries=Q)
    t_primary = time.perf_counter() - t
    # the index's own graph, shared by every reduction's fit (one search instead of six)
    graph = (pd, pi) if Q is None else H.kneighbors(X, n_candidates, metric=metric)
    nq = len(X) if Q is None else len(Q)
    nk = H.occurrences(pi[:, :k], len(X))
    m = H.hubness_measures(nk, k, nq)
    rows.append(["none", m["skewness"], m["hub_occurrence"], m["antihub_occurrence"], m["max_nk"], *score(pi[:, :k]), t_primary])
    for name in ctx.track(REDUCTIONS, f"{label}: reductions"):
        t = time.perf_counter()
        r = H.make_reduction(name, metric=metric, n_candidates=n_candidates)
        r.fit(X, graph=graph)
        _, ind = r.rerank(pd, pi, Q)
        ind = ind[:, :k]
        sec = time.perf_counter() - t
        m = H.hubness_measures(H.occurrences(ind, len(X)), k, nq)
        rows.append([name, m["skewness"], m["hub_occurrence"], m["antihub_occurrence"], m["max_nk"], *score(ind), sec])
    return rows


def _backend_rows(ctx, X, Q, k, metric, score):
    from kexue import hubness as H

    rows = []
    exact = None
    for backend in ["exact", "hnsw", "ivf"]:
        t = time.perf_counter()
        # approximate backends choose their search parameter for this recall on a query sample
        _, ind = H.kneighbors(X, k, metric=metric, backend=backend, queries=Q, recall=0.99, seed=ctx.seed)
        sec = time.perf_counter() - t
        exact = ind if exact is None else exact
        nq = len(X) if Q is None else len(Q)
        m = H.hubness_measures(H.occurrences(ind, len(X)), k, nq)
        rows.append([backend, sec, H.knn_recall(ind, exact), m["skewness"], m["hub_occurrence"], score(ind)[0]])
    return rows


def part_mnist(ctx):
    from kexue import data
    from kexue.quality import to_unit

    k = 10
    Xtr, ytr = data.load_mnist5k()
    Xte, yte = data.load_mnist_test(ctx.data_dir)
    nq = 1000 if ctx.quick else len(Xte)
    sel = np.random.default_rng(ctx.seed).permutation(len(Xte))[:nq]
    X, Q, yq = to_unit(Xtr).astype(np.float64), to_unit(Xte[sel]).astype(np.float64), yte[sel]

    def acc(ind):
        return [float((knn_vote(ind, ytr, 10) == yq).mean())]

    for metric in ["euclidean"] if ctx.quick else ["euclidean", "cosine"]:
        rows = _reduction_rows(ctx, X, Q, k, metric, acc, f"MNIST {metric}", n_candidates=100)
        ctx.table(f"mnist_{metric}", ["reduction", "skewness", "hub occ.", "antihub occ.", "max N_k", "10-NN accuracy", "seconds"],
                  rows, caption=f"MNIST pixels in [0, 1], {metric}: index = MNIST-5k train, queries = {nq} official "
                  f"test digits; N_{k} of index points from the queries (hub occ. normalised by k × {nq}); reductions "
                  "re-rank the 100 exact primary candidates")
        for r in rows:
            ctx.metric(f"mnist_{metric}_{r[0]}_skew", r[1])
            ctx.metric(f"mnist_{metric}_{r[0]}_acc", r[5])
    rows = _backend_rows(ctx, X, Q, k, "euclidean", acc)
    ctx.table("mnist_backends", ["backend", "seconds", "recall@10 vs exact", "skewness", "hub occ.", "10-NN accuracy"], rows,
              caption="MNIST euclidean, exact vs approximate kNN (FAISS HNSW, FAISS IVF; search parameter chosen for recall 0.99 on 1,000 sampled queries)")
    for r in rows:
        ctx.metric(f"mnist_backend_{r[0]}_recall", r[2])


# kiez 0.5.0 on part_retrieval's full-mode setting, seed 0 (time s, 10-NN accuracy, skewness), as measured
# by benchmarks/bench_hubness_reduction.py on this machine (kiez is not a dependency of kexue)
KIEZ_SEED0 = {"none": (1.13, 0.9445, 1.07), "csls": (2.21, 0.9590, 0.84), "ls": (2.15, 0.9540, 0.99),
              "mp": (2.20, 0.9595, 0.79)}  # 2026-11-29 18:59-19:03 UTC, idle, load 0.96 -> 1.00, median of 3


def part_retrieval(ctx):
    """New queries against a fitted index (issue 19): MNIST test digits, seeded index / query split."""
    from kexue import data
    from kexue import hubness as H

    X, y = data.load_mnist_test(ctx.data_dir)
    ni, nq = (4000, 1000) if ctx.quick else (8000, 2000)
    p = np.random.default_rng(ctx.seed).permutation(len(X))
    X = X.astype(np.float64) / 255.0
    Xi, yi, Q, yq = X[p[:ni]], y[p[:ni]], X[p[ni:ni + nq]], y[p[ni:ni + nq]]
    kiez = KIEZ_SEED0 if (not ctx.quick and ctx.seed == 0) else {}
    rows = []
    for name in ctx.track(["none", "csls", "ls", "nicdm", "mp", "mp-empirical"], "retrieval"):
        t = time.perf_counter()
        if name == "none":
            ind = H.kneighbors(Xi, 10, queries=Q)[1]
        else:  # everything from the vectors: fit on the index, then search and re-rank the queries
            ind = H.make_reduction(name, metric="euclidean", n_candidates=100).fit(Xi).kneighbors(Q, 10)[1]
        sec = time.perf_counter() - t
        acc = float((knn_vote(ind, yi, 10) == yq).mean())
        skew = H.skewness(H.occurrences(ind, ni))
        rows.append([name, sec, acc, skew, *kiez.get(name, ("–", "–", "–"))])
        ctx.metric(f"retrieval_{name}_skew", skew)
        ctx.metric(f"retrieval_{name}_acc", acc)
    ctx.table("retrieval", ["reduction", "kexue s", "kexue 10-NN acc.", "kexue skewness", "kiez s", "kiez acc.",
                            "kiez skewness"], rows,
              caption=f"MNIST test digits, seed-{ctx.seed} split: {ni} index points, {nq} new queries, Euclidean, "
              "k = 10, 100 exact candidates; index statistics with the default n_samples='auto' (exact rows up to "
              "7,999 index points, a 2,000-point sample at 8,000); time = fit on the index + search + re-rank, one "
              "thread; skewness of "
              "N_10 over the index. kiez 0.5.0 columns (full mode, seed 0 only): benchmarks/bench_hubness_reduction.py "
              "on this machine (sklearn brute neighbours), not re-run here")


def part_stsb(ctx):
    from kexue import data
    from kexue.encoders import encode

    k = 10
    st = data.load_stsb(ctx.data_dir)
    splits = ["test"] if ctx.quick else ["train", "dev", "test"]
    emb, s1, s2, score = {}, [], [], []
    t = time.perf_counter()
    for sp in splits:
        a, b = list(st[sp].sentence1), list(st[sp].sentence2)
        # one encode call per split on s1 + s2 (the on-disk cache key other experiments use too)
        E = encode(a + b, encoder="minilm", tracker=ctx.tracker)
        for txt, row in zip(a + b, E):
            emb.setdefault(txt, row)
        s1 += a
        s2 += b
        score.append(st[sp].score)
    ctx.log(f"STS-B: encoded in {time.perf_counter() - t:.1f} s")
    score = np.concatenate(score)
    uniq = list(emb)
    pos = {s: i for i, s in enumerate(uniq)}
    X = np.stack([emb[s] for s in uniq]).astype(np.float64)
    a = np.array([pos[s] for s in s1])
    b = np.array([pos[s] for s in s2])
    good = (score >= 4.0) & (a != b)
    # each near-paraphrase pair gives two queries: s1 must find s2 and s2 must find s1
    qa = np.r_[a[good], b[good]]
    qb = np.r_[b[good], a[good]]

    def recall(ind):
        return [float((ind[qa] == qb[:, None]).any(1).mean()), float((ind[qa, 0] == qb).mean())]

    rows = _reduction_rows(ctx, X, None, k, "cosine", recall, "STS-B", n_candidates=100)
    ctx.table("stsb", ["reduction", "skewness", "hub occ.", "antihub occ.", "max N_k", "partner in top-10", "partner is top-1",
                       "seconds"], rows,
              caption=f"MiniLM (all-MiniLM-L6-v2) embeddings of the {len(uniq)} distinct STS-B sentences of "
              f"{'+'.join(splits)}, cosine, N_{k} within the set (self excluded); retrieval: {len(qa)} queries from "
              "the pairs with gold score ≥ 4 (both directions), hit if the pair partner is among the neighbours")
    for r in rows:
        ctx.metric(f"stsb_{r[0]}_skew", r[1])
        ctx.metric(f"stsb_{r[0]}_r10", r[5])
        ctx.metric(f"stsb_{r[0]}_r1", r[6])
    rows = _backend_rows(ctx, X, None, k, "cosine", recall)
    ctx.table("stsb_backends", ["backend", "seconds", "recall@10 vs exact", "skewness", "hub occ.", "partner in top-10"], rows,
              caption="STS-B MiniLM, exact vs approximate kNN")
    ctx.metric("stsb_n_sentences", len(uniq))


def part_ddim(ctx):
    ctx.text("DDIM (η = 0) hub-prior sampling is part of the DDPM experiment (`kexue reproduce ddpm`, its table "
             "`hub_prior`), which trains the model it samples from: random vs hub-selected vs truncated x_T at "
             "matched acceptance, scored with the same classifier FD. It is not repeated here, where it would "
             "mean training a second DDPM.")


def run(ctx):
    mode = "quick" if ctx.quick else "full"
    ctx.text(f"Mode: **{mode}**. All kNN is exact (blocked, float64-verified) unless a table says otherwise; "
             "points are never their own neighbour; hub occurrence is normalised by k × number of queries.")
    ctx.text("### 8.1 Volume of the ball vs the cube")
    part_volumes(ctx)
    ctx.text("### 8.2 Hubness grows with dimension")
    part_dimension(ctx)
    ctx.text("### 8.4 Hubness reduction on MNIST pixels: k-NN classification")
    part_mnist(ctx)
    ctx.text("### 8.4 Hubness reduction for new queries against a fitted index (MNIST)")
    part_retrieval(ctx)
    ctx.text("### 8.4 Hubness reduction on MiniLM sentence embeddings: STS-B pair retrieval")
    part_stsb(ctx)
    ctx.text("### 8.4 Queries that differ from the index: a reference set for the index statistics (issue 28)")

    part_shift(ctx)
    ctx.text("### 8.3 Hub-prior latent sampling (our VAE decoder)")
    from kexue.experiments._hubness_sampling import part_sampling
    from kexue.train import num_threads

    with num_threads(1):  # busy 2-core machine: one thread is faster under contention
        part_sampling(ctx)
    part_ddim(ctx)
