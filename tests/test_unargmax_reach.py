"""The reachable probability (SPEC 3.8, issue 32 item 4): certified intervals around
max_{‖h‖₂ ≤ R} softmax(Wh + b)_i, checked against closed forms, a generic solver and the verdicts."""

import json

import numpy as np
import pytest

from kexue import KexueError
from kexue.unargmax import audit, planted_layer, reachable


def _solver(W, b, i, R, rng, starts=3):
    """The same maximum by SciPy's SLSQP (gradient, ball constraint), best of a few starts."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    bb = np.zeros(len(W)) if b is None else b

    def f(h):
        return logsumexp(W @ h + bb) - (W[i] @ h + bb[i])

    def g(h):
        z = W @ h + bb
        return W.T @ np.exp(z - logsumexp(z)) - W[i]

    best = np.inf
    for _ in range(starts):
        h0 = rng.standard_normal(W.shape[1])
        h0 *= 0.5 * R / np.linalg.norm(h0)
        r = minimize(f, h0, jac=g, method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000},
                     constraints=[{"type": "ineq", "fun": lambda h: R * R - h @ h, "jac": lambda h: -2 * h}])
        if R * R - r.x @ r.x >= -1e-12:
            best = min(best, r.fun)
    return np.exp(-best)


def _check_against_solver(seed, n_layers):
    rng = np.random.default_rng(seed)
    for t in range(n_layers):
        C, d = int(rng.integers(4, 18)), int(rng.integers(2, 5))
        W = rng.standard_normal((C, d)) * np.exp(0.3 * rng.standard_normal((C, 1)))
        b = rng.standard_normal(C) if t % 2 else None
        R = float(rng.uniform(0.3, 4.0))
        rr = reachable(W, b, R, reach_tol=1e-7)
        for i in range(C):
            p = _solver(W, b, i, R, rng)
            assert p <= rr.upper[i] + 1e-9, (t, i, p, rr.upper[i])  # the upper bound holds for the solver's point
            assert rr.lower[i] >= p - 1e-6 and rr.upper[i] - rr.lower[i] <= 1e-6, (t, i, rr.lower[i], p, rr.upper[i])


def test_matches_a_generic_convex_solver_on_small_layers():
    _check_against_solver(1, 4)


@pytest.mark.slow
def test_matches_a_generic_convex_solver_on_twenty_layers_with_and_without_bias():
    _check_against_solver(2, 20)  # 10 with a bias, 10 without


def test_closed_forms_two_classes_and_the_simplex():
    # two classes: p_1 = σ((w_1 - w_2)·h + b_1 - b_2), largest along w_1 - w_2
    W, b, R = np.array([[1.0, 2.0, 0.5], [-0.5, 1.0, 2.0]]), np.array([0.3, -0.2]), 1.7
    rr = reachable(W, b, R, reach_tol=1e-9)
    for i, j in ((0, 1), (1, 0)):
        exact = 1 / (1 + np.exp(-(R * np.linalg.norm(W[i] - W[j]) + b[i] - b[j])))
        assert rr.lower[i] <= exact <= rr.upper[i] and rr.upper[i] - rr.lower[i] < 1e-8
    # W = I (C classes): by symmetry h = (a, -c, …, -c) with a² + (C-1)c² = R², so
    # P = 1 / (1 + (C-1) exp(-R √(C/(C-1))))
    for C, R in ((7, 2.5), (30, 6.0)):
        rr = reachable(np.eye(C), None, R, reach_tol=1e-9)
        exact = 1 / (1 + (C - 1) * np.exp(-R * np.sqrt(C / (C - 1))))
        assert np.all(rr.lower <= exact) and np.all(exact <= rr.upper) and rr.width.max() < 1e-8


def test_zero_radius_is_the_softmax_of_the_bias_and_the_interval_grows_with_r():
    rng = np.random.default_rng(4)
    W, b = rng.standard_normal((40, 6)), rng.standard_normal(40)
    r0 = reachable(W, b, 0.0)
    p = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
    assert np.allclose(r0.lower, p, rtol=1e-12) and np.allclose(r0.upper, p, rtol=1e-12)
    r1, r2 = reachable(W, b, 1.0, reach_tol=1e-6), reachable(W, b, 3.0, reach_tol=1e-6)
    assert np.all(r1.upper >= r0.lower - 1e-12) and np.all(r2.upper >= r1.lower - 1e-12)
    assert np.all(r2.lower >= r1.lower - 1e-6)  # a larger ball only adds witnesses


@pytest.mark.parametrize("bias", [False, True])
def test_planted_interior_rows_and_duplicates_stay_at_or_below_one_half(bias):
    """A certified unargmaxable class (a convex combination of others with no larger bias) can
    at best tie: P_i(R) ≤ 1/2 for every R (SPEC 3.8); argmaxable rows approach 1 as R grows."""
    W, b, truth = planted_layer(300, 8, 20, bias=bias, seed=5)
    W = np.vstack([W, W[:1]])  # and an exact duplicate of row 0
    if bias:
        b = np.append(b, b[0])
    res = audit(W, b, reach=25.0)
    ua = res.unargmaxable
    assert set(np.flatnonzero(~truth)) <= set(ua) and {0, 300} <= set(ua)
    assert np.all(res.reach.lower[ua] <= 0.5) and np.all(res.reach.upper[ua] <= 0.5 + res.reach.tol)
    assert res.reach.width.max() <= res.reach.tol
    ok = np.setdiff1d(np.flatnonzero(truth[:300]), [0])
    assert np.median(res.reach.lower[ok]) > 0.9 and res.reach.below(0.5).size >= len(ua)
    assert set(res.reach.below(0.5)) >= set(ua) - set(res.reach.unresolved(0.5))


def test_parallel_intervals_equal_sequential_ones():
    rng = np.random.default_rng(6)
    W, b = rng.standard_normal((500, 12)).astype(np.float32), rng.standard_normal(500)
    r1 = reachable(W, b, 2.0, block=64)
    r2 = reachable(W, b, 2.0, block=64, n_jobs=2)
    assert np.array_equal(r1.lower, r2.lower) and np.array_equal(r1.upper, r2.upper)


def test_reachable_needs_a_radius_and_checks_it():
    with pytest.raises(KexueError, match="radius"):
        reachable(np.eye(3))
    with pytest.raises(KexueError, match="reach"):
        reachable(np.eye(3), None, -1.0)


def test_cli_reach_json_and_below(tmp_path, cli):
    W, _, truth = planted_layer(120, 5, 6, seed=7)
    np.save(tmp_path / "w.npy", W)
    r = cli("unargmax", tmp_path / "w.npy", "--reach", "4", "--below", "0.9", "--json", tmp_path / "out.json")
    assert r.code == 0, r.err
    doc = json.loads((tmp_path / "out.json").read_text())
    reach = doc["reach"]
    assert reach["radius"] == 4.0 and len(reach["lower"]) == len(reach["upper"]) == 120
    lo, up = np.array(reach["lower"]), np.array(reach["upper"])
    assert np.all(lo <= up) and np.all(up - lo <= reach["tol"])
    assert reach["below"]["p"] == 0.9 and reach["below"]["classes"] == np.flatnonzero(up < 0.9).tolist()
    assert "cannot reach" in r.out and str(len(reach["below"]["classes"])) in r.out


@pytest.mark.parametrize("args,words", [(["--reach", "-1"], "--reach"), (["--reach", "2", "--below", "0"], "--below"),
                                        (["--reach", "2", "--reach-tol", "2"], "--reach-tol")])
def test_cli_bad_reach_options_are_one_line_errors(tmp_path, cli, args, words):
    np.save(tmp_path / "w.npy", np.eye(4))
    r = cli("unargmax", tmp_path / "w.npy", *args, "--json", tmp_path / "o.json")
    assert r.code == 2 and r.one_line_error and words in r.err
    assert not (tmp_path / "o.json").exists()
