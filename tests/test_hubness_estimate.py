"""Hubness of an index from a sample of queries (issue 29, item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from kexue import KexueError
from kexue.hubness import kneighbors, skewness
from kexue.hubness.estimate import _measures, estimate_hubness, skewness_from_sample


@pytest.fixture(scope="module")
def graph():
    X = np.random.default_rng(0).normal(size=(3000, 24)).astype(np.float32)
    _, ind = kneighbors(X, 10)
    return X, np.asarray(ind)


def test_factorial_moments_are_unbiased(graph):
    # E[F_r] equals the population mean of N_(r) exactly; check F_2, F_3 over many samples
    _, ind = graph
    n, m = len(ind), 150
    nk = np.bincount(ind.ravel(), minlength=n).astype(float)
    truth = [np.mean(nk * (nk - 1)), np.mean(nk * (nk - 1) * (nk - 2))]
    F = []
    for s in range(400):
        S = np.random.default_rng(s).choice(n, m, replace=False)
        Y = np.bincount(ind[S].ravel(), minlength=n).astype(float)
        F.append([np.mean(Y * (Y - 1)) * n * (n - 1) / (m * (m - 1)),
                  np.mean(Y * (Y - 1) * (Y - 2)) * n * (n - 1) * (n - 2) / (m * (m - 1) * (m - 2))])
    F = np.array(F)
    se = F.std(0) / np.sqrt(len(F))
    assert np.all(np.abs(F.mean(0) - truth) < 4 * se)
    # and the whole sample gives the exact skewness
    assert skewness_from_sample(nk, n, n) == pytest.approx(skewness(nk), rel=1e-12)


def test_estimate_covers_the_full_scan(graph):
    X, ind = graph
    nk = np.bincount(ind.ravel(), minlength=len(X))
    e = estimate_hubness(X, 10, fraction=0.2, n_boot=60, seed=1)
    assert e.n_sampled == 600 and e.k == 10 and e.n_index == 3000
    lo, hi = e.skewness_ci
    assert lo < e.skewness < hi and lo <= skewness(nk) <= hi
    full_hub = nk[nk > 20].sum() / (10 * len(X))
    assert e.hub_occurrence_ci[0] <= full_hub <= e.hub_occurrence_ci[1]


def test_each_query_is_not_its_own_neighbour(graph):
    X, ind = graph
    rng = np.random.default_rng(5)
    S = np.sort(rng.choice(len(X), 30, replace=False))
    # the estimator's rows for S are the self-excluding kNN rows of the full graph
    _, q = kneighbors(X, 11, queries=X[S])
    q = np.asarray(q)
    own = q == S[:, None]
    assert own[:, 0].all()
    np.testing.assert_array_equal(q[:, 1:], ind[S])
    assert _measures(ind[S], len(X), 10, 2.0).shape == (3,)


def test_bad_input():
    X = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(KexueError, match="fraction"):
        estimate_hubness(X, 5, fraction=0)
    with pytest.raises(KexueError, match="k must be"):
        estimate_hubness(X, 49)
    with pytest.raises(KexueError, match="confidence"):
        estimate_hubness(X, 5, confidence=1.0)
