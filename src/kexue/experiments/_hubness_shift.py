"""The ``shift`` section of the hubness experiment (issue 28): retrieval where the queries come from
another distribution than the index, with every reduction's index statistics read from the index
itself, from a reference bank of queries disjoint from the test queries, and from the test queries
themselves (transductive); kiez 0.5.0 and nnn-retrieval 1.0.1 side by side when
``$KEXUE_PEERS_PYTHON`` names an interpreter that has them (``_hubness_peers.py`` runs there).

Settings, all from data that is offline here:

- ``mnist-writers``: index = the first 5,000 MNIST test digits (NIST SD-3, written by Census Bureau
  employees), test queries and bank = disjoint random digits of the last 5,000 (NIST SD-1, written
  by high-school students; LeCun et al. describe them as less clean). Euclidean on pixels in [0, 1];
  10-NN vote accuracy and 1-NN accuracy.
- ``stsb-minilm``: STS-B pairs; index = every distinct sentence2, test queries = sentence1 of half of
  the pairs scored ≥ 4 (the partner is that pair's sentence2), bank = sentence1 of the other pairs;
  MiniLM embeddings, cosine; R@1, R@10, MRR@10.
- ``stsb-smollm2-pool``: the same pairs, a cross-encoder shift: queries pooled one way (SmolLM2-135M,
  mean of the first and last layers), index another (mean of the last layer), cosine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

REDS = ["csls", "ls", "nicdm", "mp", "nnn"]
K, C = 10, 100
PEERS_ENV = "KEXUE_PEERS_PYTHON"


def knn_vote(neigh_ind, y_index, n_classes):
    """Majority vote of the k neighbours; ties go to the class of the nearest tied neighbour."""
    labels = y_index[neigh_ind]
    counts = np.zeros((len(labels), n_classes), int)
    np.add.at(counts, (np.repeat(np.arange(len(labels)), labels.shape[1]), labels.ravel()), 1)
    best = counts.max(1, keepdims=True)
    tied = counts[np.arange(len(labels))[:, None], labels] == best  # neighbour's class is among the winners
    return labels[np.arange(len(labels)), tied.argmax(1)]


def _mnist(ctx):
    from kexue import data

    X, y = data.load_mnist_test(ctx.data_dir)
    X = X.reshape(len(X), -1).astype(np.float64) / 255.0
    nq = 1000 if ctx.quick else 2000
    p = 5000 + np.random.default_rng([ctx.seed, 28]).permutation(5000)
    return dict(X=X[:5000], Q=X[p[:nq]], B=X[p[nq:2 * nq]], y=y[:5000], yq=y[p[:nq]], metric="euclidean",
                what=f"MNIST test digits: index = the first 5,000 (NIST SD-3 writers), {nq} test queries and a "
                     f"disjoint bank of {nq} from the last 5,000 (NIST SD-1 writers); Euclidean, pixels in [0, 1]")


def _stsb(ctx, encoder, q_pool, x_pool):
    from kexue import data
    from kexue.encoders import encode

    st = data.load_stsb(ctx.data_dir)
    splits = ["test"] if ctx.quick else ["train", "dev", "test"]
    s1, s2, score, E1, E2 = [], [], [], [], []
    for sp in splits:
        a, b = list(st[sp].sentence1), list(st[sp].sentence2)
        E = {p: encode(a + b, encoder=encoder, pooling=p, tracker=ctx.tracker) for p in {q_pool, x_pool}}
        E1.append(E[q_pool][:len(a)])
        E2.append(E[x_pool][len(a):])
        s1 += a
        s2 += b
        score.append(st[sp].score)
    E1, E2, score = np.concatenate(E1), np.concatenate(E2), np.concatenate(score)
    uniq = {}
    for i, s in enumerate(s2):  # the index: each distinct sentence2 once
        uniq.setdefault(s, i)
    rows = np.array(list(uniq.values()))
    pos = {s: j for j, s in enumerate(uniq)}
    partner = np.array([pos[s] for s in s2])
    good = np.flatnonzero((score >= 4.0) & (np.array(s1) != np.array(s2)))
    rng = np.random.default_rng([ctx.seed, 28])
    test = np.sort(rng.permutation(good)[:len(good) // 2])
    test_s1, test_ids = {s1[i] for i in test}, set(test.tolist())
    bank = np.array([i for i in range(len(s1)) if i not in test_ids and s1[i] not in test_s1])
    _, first = np.unique(np.array(s1)[bank], return_index=True)  # each bank sentence once
    bank = bank[np.sort(first)]
    return dict(X=E2[rows].astype(np.float64), Q=E1[test].astype(np.float64), B=E1[bank].astype(np.float64),
                partner=partner[test], metric="cosine",
                what=f"STS-B {'+'.join(splits)}: index = the {len(rows)} distinct sentence2, {len(test)} test queries "
                     f"= sentence1 of half the pairs scored >= 4 (partner: their sentence2), bank = the {len(bank)} "
                     f"other distinct sentence1; {encoder} ({'queries ' + q_pool + ', index ' + x_pool if q_pool != x_pool else 'default pooling'}), cosine")


def _scores(S, ind):
    """[accuracy or R@1, second score] for a (n_queries, K) neighbour array."""
    if "y" in S:

        return [float((knn_vote(ind, S["y"], 10) == S["yq"]).mean()), float((S["y"][ind[:, 0]] == S["yq"]).mean())]
    hit = ind == S["partner"][:, None]
    rank = np.where(hit.any(1), hit.argmax(1) + 1, 0)
    return [float(hit[:, 0].mean()), float(hit.any(1).mean()), float(np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0).mean())]


def _kexue(S, name, ref):
    """Seconds and neighbours of the queries, everything from the vectors (one thread)."""
    from threadpoolctl import threadpool_limits

    from kexue import hubness as H

    X, Q, B, metric = S["X"], S["Q"], S["B"], S["metric"]
    with threadpool_limits(1):
        t = time.perf_counter()
        if name == "none":
            ind = H.kneighbors(X, K, metric=metric, queries=Q)[1]
        else:
            r = H.make_reduction(name, metric=metric, n_candidates=C)
            # transductive: fit(X, reference="queries") learns no index statistics; each batch is its own
            # reference, its candidates and the index side from one float32 pass
            ind = r.fit(X, reference={"index": None, "bank": B, "queries": "queries"}[ref]).kneighbors(Q, K)[1]
        return time.perf_counter() - t, ind


def _peers(S, runs, alpha, nnn_k):
    """{run: (seconds, ind)} from the peers' interpreter, or a reason why not."""
    py = os.environ.get(PEERS_ENV)
    if not py:
        return f"not run: set ${PEERS_ENV} to a Python with kiez 0.5.0 and nnn-retrieval (docs/hubness.md)"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        cfg = {"metric": S["metric"], "k": K, "candidates": C, "alpha": alpha, "nnn_k": nnn_k, "runs": runs}
        np.savez(src, X=S["X"], Q=S["Q"], B=S["B"], settings=json.dumps(cfg))
        p = subprocess.run([py, str(Path(__file__).with_name("_hubness_peers.py")), str(src), str(dst)],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if p.returncode or not dst.exists():
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            return f"not run: the peers' interpreter failed ({tail})"
        with np.load(dst, allow_pickle=False) as f:
            log = json.loads(str(f["log"]))
            return {e["run"]: (e["seconds"], f[f"ind-{e['run']}"]) for e in log}


def part_shift(ctx):
    from kexue import hubness as H
    from kexue.hubness.reduction import NNN

    # NNN's k: its default "auto" reads n_candidates reference points when a reference is given, as
    # every run compared with nnn-retrieval does; nnn-retrieval gets the same k
    alpha, nnn_k = NNN().alpha, (C if NNN().k == "auto" else NNN().k)
    settings = [("mnist-writers", lambda: _mnist(ctx)),
                ("stsb-minilm", lambda: _stsb(ctx, "minilm", "default", "default")),
                ("stsb-smollm2-pool", lambda: _stsb(ctx, "smollm2", "first-last-mean", "last-mean"))]
    for key, build in ctx.track(settings, "shifted retrieval"):
        t = time.perf_counter()
        S = build()
        ctx.log(f"{key}: data in {time.perf_counter() - t:.1f} s")
        score_cols = ["10-NN acc.", "1-NN acc."] if "y" in S else ["R@1", "R@10", "MRR@10"]
        peer_runs = [f"kiez:{m}:{r}" for m in ["none", "csls", "ls", "nicdm", "mp"]
                     for r in (["queries"] if m == "none" else ["bank", "queries"])]
        peer_runs += [f"nnn:nnn:{r}" for r in ["bank", "queries"]]
        peers = _peers(S, peer_runs, alpha, nnn_k)
        rows, got = [], {}

        def add(lib, name, ref, sec, ind, S=S, got=got, rows=rows):  # this setting's S, got, rows
            nk = H.occurrences(ind, len(S["X"]))
            m = H.hubness_measures(nk, K, len(S["Q"]))
            got[lib, name, ref] = (m["skewness"], _scores(S, ind)[0], sec)
            rows.append([name, ref, lib, m["skewness"], m["antihub_occurrence"], *_scores(S, ind), sec])

        for name in ["none", *REDS]:
            for ref in (["-"] if name == "none" else ["index", "bank", "queries"]):
                sec, ind = _kexue(S, name, ref)
                add("kexue", name, ref, sec, ind)
            if isinstance(peers, dict):
                for run, (sec, ind) in peers.items():
                    lib, m, r = run.split(":")
                    if m == name:
                        add(lib, name, "-" if m == "none" else r, sec, ind)
        ctx.table(f"shift_{key}", ["reduction", "index statistics from", "library", f"skewness N_{K}", "antihubs",
                                   *score_cols, "seconds"], rows,
                  caption=f"{S['what']}. k = {K}, {C} candidates; kexue reductions at their defaults (k = 'auto': "
                  f"LS, NICDM, CSLS and NNN read 5 neighbours with index statistics, {C} with a reference; NNN "
                  f"alpha = {alpha}); 'index' = statistics from the index itself, 'bank' = from the "
                  "reference bank, 'queries' = from the test queries (transductive). kiez 0.5.0 (sklearn brute, its "
                  f"statistics over {C} neighbours) and nnn-retrieval 1.0.1 (NNNRanker, same alpha, k = {nnn_k}, unit "
                  "vectors, exhaustive) in their own process. Seconds: one thread, from the vectors to the "
                  "queries' neighbours. Skewness and antihubs (share of index points never retrieved) over the index."
                  + ("" if isinstance(peers, dict) else f" kiez and nnn-retrieval: {peers}."))
        _goals(ctx, key, got)


def _goals(ctx, key, got):
    """Metrics for issue 28's goals: per reduction with a reference, skew and accuracy vs kiez's and
    NNN's, time ratio, and whether it stays at or below "none"."""
    none = got["kexue", "none", "-"]
    ctx.metric(f"shift_{key}_none_skew", none[0])
    for (lib, name, ref), (skew, acc, sec) in got.items():
        if lib != "kexue" or ref not in ("bank", "queries"):
            continue
        tag = f"shift_{key}_{name}_{ref}"
        ctx.metric(f"{tag}_skew", skew)
        ctx.metric(f"{tag}_acc", acc)
        ctx.metric(f"{tag}_not_above_none", skew <= none[0])
        peer = got.get(("kiez", name, ref)) or (got.get(("nnn", name, ref)) if name == "nnn" else None)
        if peer:
            ctx.metric(f"{tag}_skew_minus_peer", skew - peer[0])
            ctx.metric(f"{tag}_acc_minus_peer", acc - peer[1])
            ctx.metric(f"{tag}_time_ratio", sec / peer[2])
        nnn = got.get(("nnn", "nnn", ref))
        if nnn:
            ctx.metric(f"{tag}_acc_minus_nnn", acc - nnn[1])
