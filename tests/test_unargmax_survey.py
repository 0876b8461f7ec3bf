"""The survey's split of unargmaxable classes (issue 32 item 3): exact duplicates, near
duplicates (a row within relative distance 1/32), and the rest (inside the hull of rows further away)."""

import numpy as np

from kexue.unargmax import audit, planted_layer
from kexue.unargmax.result import NEAR_DUPLICATE_TOL, duplicate_split


def test_duplicate_split_of_planted_rows():
    W, _, truth = planted_layer(400, 10, 12, seed=11)
    rng = np.random.default_rng(0)
    base = np.flatnonzero(truth)[:4]
    a, b_ = W[base[0]], W[base[0]] + 1e-3 * rng.standard_normal(10)  # two rows 1e-3 apart: their midpoint
    extra = np.vstack([W[base[1]], b_, 0.5 * (a + b_)])  # an exact duplicate, a vertex, a near duplicate
    W2 = np.vstack([W, extra])
    res = audit(W2, None)
    split = duplicate_split(W2, res)
    C = len(W)
    assert split["tolerance"] == NEAR_DUPLICATE_TOL
    assert {base[1], C} & set(split["exact"]) and C + 2 in split["near"]
    planted = set(np.flatnonzero(~truth).tolist())
    assert planted <= set(split["rest"]) | set(split["near"])
    assert sorted(split["exact"] + split["near"] + split["rest"]) == sorted(res.unargmaxable.tolist())
    for k in split["near"]:
        i, rel = split["nearest"][str(k)]
        assert i != k and np.linalg.norm(W2[k] - W2[i]) <= NEAR_DUPLICATE_TOL * np.linalg.norm(W2[k]) * (1 + 1e-12)
    for k in split["rest"]:  # the nearest row really is the nearest (brute force)
        dist = np.linalg.norm(W2 - W2[k], axis=1)
        dist[k] = np.inf
        assert split["nearest"][str(k)][0] == int(np.argmin(dist))
