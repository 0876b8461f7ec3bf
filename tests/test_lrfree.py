"""The learning-rate-free study (kexue.experiments.lrfree, issue 33): its workloads, optimisers,
divergence rule, steps-to-target and profile computations, and a small end-to-end run."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from kexue import report  # noqa: E402
from kexue.experiments import lrfree  # noqa: E402
from kexue.experiments._lrfree_report import goals, mean_curve  # noqa: E402
from kexue.experiments._lrfree_runs import (ANCHORS, KNOBS, OPTIMISERS, DivergenceGuard, _Diverged, diverged,  # noqa: E402
                                            make_optimizer, one_run, profile, steps_to_target, train_mode_hooks)
from kexue.experiments._lrfree_workloads import WORKLOADS, build, char_windows, corpus_info  # noqa: E402


# ------------------------------------------------------------------------------------------ workloads
@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_builds_and_a_step_lowers_nothing_to_nan(name):
    from kexue.train import train

    w = build(name, 0, full=False, held_out_rows=16)
    before = [p.detach().clone() for p in w.model.parameters()]
    h0 = w.held_out(w.model)
    res = train(w.model, w.loss, w.data, steps=2, batch_size=w.batch_size,
                optimizer=torch.optim.Adam(w.model.parameters(), lr=1e-3), seed=0)
    assert len(res.losses) == 2 and all(math.isfinite(v) for v in res.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, w.model.parameters()))
    h1 = w.held_out(w.model)
    assert math.isfinite(h0) and math.isfinite(h1) and h0 != h1
    # the same seed builds the same model; another seed another one
    again, other = build(name, 0, full=False), build(name, 1, full=False)
    p0 = [p for p in again.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, p0))
    assert any(not torch.equal(a, b) for a, b in zip(before, other.model.parameters()))


def test_char_corpus_is_split_into_disjoint_windows():
    tr, te, vocab = char_windows()
    assert tr.shape[1] == te.shape[1] == 65 and len(tr) > 8 * len(te) > 0
    assert int(tr.max()) < vocab and int(tr.min()) >= 0
    info = corpus_info()
    assert info["characters"] >= len(tr) * 64 + len(te) * 64 and len(info["sha256"]) == 16


# ------------------------------------------------------------------------------------------ optimisers
@pytest.mark.parametrize("name", OPTIMISERS)
def test_every_optimiser_constructs_and_steps(name):
    if name in ANCHORS:
        pytest.importorskip(ANCHORS[name])
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    opt = make_optimizer(name, lin.parameters(), 1.0)
    start, wrap = train_mode_hooks(opt)
    start()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # the sweep knob scales the right hyper-parameter
    big = make_optimizer(name, torch.nn.Linear(5, 3).parameters(), 10.0)
    g = big.param_groups[0]
    value = g.get("d0", g.get("d")) if KNOBS[name][0] == "d0" else g["lr"]  # DAdaptAdam keeps d0 as "d"
    assert value == pytest.approx(10 * KNOBS[name][1])


def test_schedule_free_evaluates_at_its_averaged_weights():
    sf = pytest.importorskip("schedulefree")
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    opt = make_optimizer("SF-AdamW", lin.parameters(), 1.0)
    assert isinstance(opt, sf.AdamWScheduleFree)
    start, wrap = train_mode_hooks(opt)
    start()
    for _ in range(5):
        opt.zero_grad()
        lin(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    y = lin.weight.detach().clone()
    seen = wrap(lambda m, step: {"w": m.weight.detach().clone()})(lin, 5)["w"]
    assert not torch.equal(seen, y)  # evaluated at x, not at the gradient point y
    assert torch.equal(lin.weight, y)  # and back at y for the next step
    plain = torch.optim.SGD(lin.parameters(), lr=0.1)
    f = lambda m, step: 1  # noqa: E731
    assert train_mode_hooks(plain)[1](f) is f


# ------------------------------------------------------------------------------------------ measures
def test_divergence_rule():
    g = DivergenceGuard()
    g(0, 2.0)
    g(1, 19.9)
    with pytest.raises(_Diverged):
        g(2, 20.1)
    assert "20.1" in g.why and g.steps == 3
    assert not diverged([2.0, 1.0, 19.0])
    assert diverged([2.0, 1.0, 21.0]) and diverged([2.0, float("nan")]) and diverged([2.0, float("inf")])
    assert not diverged([])


def test_a_run_that_blows_up_is_stopped_and_counted():
    r = one_run("logreg", "SGD", 1e4, 0, 50, 5, False, 64)  # SGD at lr 100 on logistic regression
    assert r["diverged"] and math.isnan(r["final"]) and r["steps"] < 50 and r["why"]
    ok = one_run("logreg", "SGD", 1.0, 0, 20, 4, False, 64)
    assert not ok["diverged"] and [s for s, _ in ok["curve"]] == [0, 5, 10, 15, 20]
    assert ok["final"] == ok["curve"][-1][1] < ok["curve"][0][1]


def test_steps_to_target_on_synthetic_curves():
    curve = [(0, 2.3), (10, 1.0), (20, 0.5), (30, 0.6), (40, 0.4)]
    assert steps_to_target(curve, 0.5) == 20  # the first evaluation at or below, even if it rises again
    assert steps_to_target(curve, 0.45) == 40
    assert steps_to_target(curve, 0.1) == math.inf
    assert steps_to_target([(0, 3.0), (5, float("nan")), (10, 0.2)], 1.0) == 10
    assert steps_to_target(curve, 5.0) == 0


def test_profile_counts_problems_within_tau():
    steps = {("a", "x"): 10, ("a", "y"): 20, ("b", "x"): math.inf, ("b", "y"): 30, ("c", "x"): math.inf,
             ("c", "y"): math.inf}
    p = profile(steps, [1.0, 2.0, 4.0])
    assert p["x"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert p["y"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])


def _run(final, curve_at=None, div=False):
    curve = [(0, 3.0)] + ([] if div else [(s, v) for s, v in (curve_at or [(10, final)])])
    return {"curve": curve, "final": float("nan") if div else final, "diverged": div, "seconds": 1.0, "steps": 10}


def test_measures_on_synthetic_runs():
    cfg = lrfree.Config(workloads=("p",), optimisers=("EGAdapt(SGD)", "AdamW", "SGD"), steps={"p": 10},
                        seeds={"p": 2}, mults=(0.1, 1.0, 10.0), tune_extra=(3.0,), evals=2)
    sweep = {("p", "AdamW", m): _run(v) for m, v in ((0.1, 2.0), (1.0, 1.0), (3.0, 0.8), (10.0, 0.0), )}
    sweep[("p", "AdamW", 10.0)] = _run(0, div=True)
    sweep.update({("p", "SGD", m): _run(v) for m, v in ((0.1, 2.5), (1.0, 1.5), (3.0, 1.2), (10.0, 1.1))})
    sweep.update({("p", "EGAdapt(SGD)", m): _run(v, [(5, 0.86), (10, v)]) for m, v in ((0.1, 1.6), (1.0, 0.85),
                                                                                         (10.0, 0.9))})
    assert lrfree.headline_mult(sweep, "p", "AdamW", cfg) == 3.0
    assert lrfree.headline_mult(sweep, "p", "EGAdapt(SGD)", cfg) == 1.0
    seeds = {("p", "AdamW"): [sweep[("p", "AdamW", 3.0)], _run(0.84)],
             ("p", "SGD"): [sweep[("p", "SGD", 10.0)], _run(1.3)],
             ("p", "EGAdapt(SGD)"): [sweep[("p", "EGAdapt(SGD)", 1.0)], _run(0.84, [(5, 0.855), (10, 0.84)])]}
    m = lrfree.measures(cfg, sweep, seeds)
    assert m["target"]["p"] == pytest.approx(0.82 * 1.05)
    assert m["steps"][("p", "AdamW")] == 10 and m["steps"][("p", "EGAdapt(SGD)")] == 5
    assert m["steps"][("p", "SGD")] == math.inf and m["reached"][("p", "SGD")] == 0
    assert m["final"][("p", "EGAdapt(SGD)")] == pytest.approx(0.845)
    assert m["ratio"][("p", "EGAdapt(SGD)")] == pytest.approx(1.6 / 0.8)
    assert m["ratio"][("p", "AdamW")] == math.inf  # its × 10 run diverged
    assert m["div_sweep"][("p", "AdamW")] == 1 and m["div_all"][("p", "EGAdapt(SGD)")] == 0
    g = goals(cfg, m, "EGAdapt(SGD)")
    assert g == {"slow": [], "divergences": 0, "behind": []}
    assert mean_curve(seeds[("p", "EGAdapt(SGD)")]) == ([0, 5, 10], pytest.approx([3.0, 0.8575, 0.845]))


def test_full_mode_fits_its_time_budget_and_quick_is_small():
    assert lrfree.Config.full().estimate_seconds() <= 2.5 * 3600
    q = lrfree.Config.quick()
    train_s = sum(n * q.steps[w] * lrfree.STEP_MS[w] / 1e3 for w, n in q.runs().items())  # on one core
    assert train_s <= 60 and set(q.workloads) == set(WORKLOADS) and q.full_data is False
    assert min(lrfree.Config.full().seeds.values()) >= 3 and len(lrfree.Config.full().workloads) >= 5


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_small_study_end_to_end_and_resumes(tmp_path):
    cfg = lrfree.Config(workloads=("logreg", "vae"), optimisers=("EGAdapt(SGD)", "AdamW", "SGD"),
                        steps={"logreg": 8, "vae": 4}, seeds={"logreg": 2, "vae": 1}, mults=(1e-2, 1.0),
                        tune_extra=(3.0,), evals=2, held_out_rows=64, jobs=1)
    ctx = report.Context(name="lrfree", root=tmp_path, quick=True)
    ctx.out.mkdir(parents=True)
    lrfree.run(ctx, cfg)
    m = ctx.metrics
    assert m["lrfree/workloads"] == 2 and m["lrfree/seeds"] == 1
    for w in cfg.workloads:
        for o in cfg.optimisers:
            assert f"lrfree/steps_to_target/{w}/{o}" in m
    for o in cfg.optimisers:
        assert isinstance(m[f"lrfree/divergences/{o}"], int)
    assert {f["key"] for f in ctx.figures} == {"curves", "profile", "sweep"}
    assert all((tmp_path / f["path"]).is_file() for f in ctx.figures)
    assert "quick mode" in ctx.markdown()
    runs = sorted((ctx.out / "runs").glob("*.json"))
    assert len(runs) == sum(cfg.runs().values())
    # a second run into the same folder reads every stored run back and reports the same numbers
    stamp = {p: p.stat().st_mtime_ns for p in runs}
    again = report.Context(name="lrfree", root=tmp_path, quick=True)
    lrfree.run(again, cfg)
    assert {p: p.stat().st_mtime_ns for p in runs} == stamp
    keys = [k for k in m if k.startswith("lrfree/") and "seconds" not in k]
    assert json.dumps({k: again.metrics[k] for k in keys}, sort_keys=True) == json.dumps({k: m[k] for k in keys},
                                                                                        sort_keys=True)


def test_a_missing_anchor_is_named_before_any_run(tmp_path, monkeypatch):
    import sys

    from kexue.utils import KexueError

    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # as if not installed
    ctx = report.Context(name="lrfree", root=tmp_path, quick=True)
    cfg = lrfree.Config(workloads=("logreg",), optimisers=("Prodigy", "AdamW", "SGD"), steps={"logreg": 2},
                        seeds={"logreg": 1}, mults=(1.0,), evals=1, jobs=1)
    with pytest.raises(KexueError, match=r"prodigyopt.*kexue\[experiments\]"):
        lrfree.run(ctx, cfg)
    assert not (ctx.out / "runs").exists()


@pytest.mark.parametrize("base", ["SGD", "Adam"])
def test_egadapt_depends_on_lr_times_scale_only(base):
    # the docs' reason a smaller starting scale would only shift EGAdapt's sweep, not widen it
    from kexue.eg import EGAdapt

    def run(lr, s0):
        torch.manual_seed(0)
        lin = torch.nn.Linear(6, 3).double()
        cls = {"SGD": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9), "Adam": lambda p: torch.optim.Adam(p, lr=lr)}
        opt = EGAdapt(cls[base](lin.parameters()))
        opt.param_groups[0]["scale"] = s0
        for k in range(25):
            g = torch.Generator().manual_seed(k)
            x, y = torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(x), y).backward()
            opt.step()
        return lin.weight.detach(), opt.effective_lrs()[0]

    (w1, e1), (w2, e2) = run(1e-2, 1.0), run(1.0, 1e-2)
    torch.testing.assert_close(w1, w2, rtol=1e-9, atol=1e-12)
    assert e1 == pytest.approx(e2, rel=1e-9)
    w3, _ = run(1e-1, 1.0)
    assert not torch.allclose(w1, w3)
