"""Section 5 of the unargmax experiment: the synthetic wide head and its planted set (issue 32)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("psutil")  # the peak-memory sampler
pytest.importorskip("joblib")

from kexue.experiments import _unargmax_wide as wide  # noqa: E402
from kexue.unargmax import ARGMAXABLE, UNARGMAXABLE  # noqa: E402

NAMES = ("wide_C", "wide_d", "wide_real", "wide_seconds", "wide_undecided", "wide_peak_gib")


def _ref(n=1500, d=48, seed=1):
    """Reference rows with a decaying spectrum and uneven norms, standing in for SmolLM2's head."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.geomspace(1, 0.05, d) * rng.uniform(0.5, 2, (n, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def small_head(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "head.npy"
    planted = wide.synthetic_head(path, _ref(), C=700, d=24, seed=3)
    return path, planted


def test_head_is_bfloat16_valued_and_plants_exact_combinations(small_head):
    path, planted = small_head
    W = np.load(path)
    assert W.shape == (700, 24) and W.dtype == np.float32
    n_dup, n_in, n_near = wide.planted_counts(700)
    assert [len(planted[k]) for k in ("duplicates", "interior", "near_hull")] == [n_dup, n_in, n_near]
    base = 700 - n_dup - n_in - n_near
    assert not (W[:base].view(np.uint32) & 0xFFFF).any()  # base rows: bfloat16 values
    for k, i in planted["duplicates"]:
        assert np.array_equal(W[k], W[i]) and i < base
    for k, a, b, c in planted["interior"]:  # exactly ½a + ¼b + ¼c: in the hull, no rounding
        W64 = W.astype(np.float64)
        assert np.array_equal(W64[k], 0.5 * W64[a] + 0.25 * W64[b] + 0.25 * W64[c])
    assert all(m > 0 for _, m in planted["near_hull"])
    assert wide.cached_head(path, None, 700, 24, 3) == (planted, False)  # reused: no reference needed


def test_audit_recovers_planted_set_and_check_can_fail(small_head):
    path, planted = small_head
    r = wide.audit_wide(str(path), planted, 1)
    assert r["counts"]["undecided"] == 0
    verdicts = r["planted_verdicts"]
    check = wide.planted_check(planted, verdicts)
    assert check["ok"], check
    assert check["interior"] == [len(planted["interior"])] * 2
    # a planted row missing from the verdicts, or one wrong verdict, fails the check
    for kind in ("duplicates", "interior", "near_hull"):
        dropped = {**verdicts, kind: verdicts[kind][:-1]}
        assert not wide.planted_check(planted, dropped)["ok"]
    flipped = {**verdicts, "near_hull": [UNARGMAXABLE] + verdicts["near_hull"][1:]}
    assert not wide.planted_check(planted, flipped)["ok"]
    flipped = {**verdicts, "interior": [ARGMAXABLE] + verdicts["interior"][1:]}
    assert wide.planted_check(planted, flipped)["interior"][0] == len(planted["interior"]) - 1


@pytest.mark.slow  # 3.4-4.4 s at nice 19 with the machine busy (load ~4): at the ~5 s line
def test_quick_section_publishes_metrics_and_resumes(tmp_path, monkeypatch):
    from kexue.report import Context

    ctx = Context(name="unargmax", quick=True, root=tmp_path)
    wide.run(ctx, _ref(d=96), 2)
    for name in NAMES:
        assert name in ctx.metrics, name
    assert (ctx.metrics["wide_C"], ctx.metrics["wide_d"]) == wide.QUICK
    assert ctx.metrics["wide_real"] is False
    assert ctx.metrics["wide_undecided"] == 0 and ctx.metrics["wide_planted_ok"] is True
    assert ctx.metrics["wide_peak_gib"] > 0 and "wide" in ctx.tables
    goal = (ctx.metrics["wide_seconds"] <= wide.GOAL_SECONDS
            and ctx.metrics["wide_peak_gib"] <= ctx.tables["wide"]["rows"][0][1] + wide.GOAL_EXTRA_GIB)
    assert ctx.metrics["wide_goal_met"] is goal

    # a second run into the same report folder reuses the head and the stored audit
    def boom(*a, **k):
        raise AssertionError("the finished audit was redone")

    monkeypatch.setattr(wide, "audit_wide", boom)
    monkeypatch.setattr(wide, "synthetic_head", boom)
    again = Context(name="unargmax", quick=True, root=tmp_path)
    wide.run(again, None, 2)
    assert again.metrics["wide_seconds"] == ctx.metrics["wide_seconds"]
    assert again.metrics["wide_planted_ok"] is True
