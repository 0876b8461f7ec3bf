"""SPEC 2.3 against the learning-rate-free optimisers: EGAdapt, EGStep and hypergradient descent
beside Prodigy, Schedule-Free AdamW and D-Adapt Adam, with AdamW and SGD(momentum) tuned per
workload on a grid as the reference (issue 33).

Five workloads (``_lrfree_workloads``: logistic regression, MLP and CNN on MNIST, a character
LSTM on the CPython documentation's help topics, the VAE on MNIST), each with a fixed step budget.
Measures:
1. steps to target — the first held-out evaluation at or below 1.05 × the tuned AdamW's final
   held-out loss (mean over the seeds), every method at its default (the tuned ones at their best
   grid value), ``seeds`` seeds each; final loss; divergences (NaN/inf, or a training loss above
   10 × the first step's);
2. robustness — each method's knob (initial LR, d0 or base LR; ``_lrfree_runs.KNOBS``) times
   10^-3 … 10^2 on one seed: divergences and the worst final loss over the best tuned one;
3. figures: held-out loss curves per workload and a performance profile over the workloads.

Every run is one ``kexue.train.train`` call in a joblib worker (one torch thread), stored as it
finishes (``Context.resumable``): a killed full run resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from kexue.experiments._lrfree_runs import (ANCHORS, DIVERGE_FACTOR, KNOBS, OPTIMISERS, TUNED, anchor_versions,
                                            one_run, steps_to_target)
from kexue.experiments._lrfree_workloads import WORKLOADS, corpus_info

TITLE = "Meta-learned step sizes against learning-rate-free optimisers"
SPEC = "2.3"

# Sizing of the full mode. STEP_MS: ms per training step on one torch thread, measured by
# benchmarks/bench_lrfree.py --full (20 steps, median of 3) at load average 3.0-5.2 on 2 cores, the
# slowest optimiser of each workload rounded up. EVAL_S: seconds of one held-out evaluation on
# 2,000 rows (the 10,000-row time measured at load 7-8, scaled). An idle machine is faster.
STEP_MS = {"logreg": 3.7, "mlp": 9.0, "cnn": 34.0, "charlm": 53.0, "vae": 15.0}
EVAL_S = {"logreg": 0.01, "mlp": 0.03, "cnn": 0.7, "charlm": 0.29, "vae": 0.1}


@dataclass(frozen=True)
class Config:
    """Settings of one run of the study (``Config.quick()`` / ``Config.full()``)."""

    workloads: tuple[str, ...] = WORKLOADS
    optimisers: tuple[str, ...] = OPTIMISERS
    steps: dict = field(default_factory=dict)  # workload -> training steps
    seeds: dict = field(default_factory=dict)  # workload -> seeds at the default / tuned setting
    mults: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # the robustness sweep (× the knob)
    tune_extra: tuple[float, ...] = (0.3, 3.0)  # AdamW/SGD grid points besides the sweep's
    evals: int = 16  # held-out evaluations per run (steps to target is read off them)
    full_data: bool = False  # the 60,000 / 10,000 MNIST images (else MNIST-5k split 4,500 / 500)
    held_out_rows: int | None = None  # cap on the held-out rows (None: all)
    jobs: int = 2  # joblib worker processes, one torch thread each

    @classmethod
    def quick(cls) -> Config:
        return cls(steps={"logreg": 40, "mlp": 30, "cnn": 12, "charlm": 8, "vae": 30},
                   seeds={w: 1 for w in WORKLOADS}, mults=(1e-3, 1.0, 100.0), tune_extra=(), evals=4,
                   held_out_rows=256, jobs=1)

    @classmethod
    def full(cls) -> Config:
        # ≈ 6.4 epochs (logreg, MLP), 3.2 (CNN), 4.2 (VAE) of the 60,000 images; 4.9 of the corpus;
        # held-out loss on the first 2,000 test images (an evaluation of all 10,000 cost the CNN as
        # much as its training); ≈ 2.3 h on 2 cores at STEP_MS (Config.estimate_seconds)
        return cls(steps={"logreg": 3000, "mlp": 3000, "cnn": 1500, "charlm": 1000, "vae": 2500},
                   seeds={"logreg": 5, "mlp": 3, "cnn": 3, "charlm": 3, "vae": 3}, full_data=True,
                   held_out_rows=2000)

    def grid(self, opt: str) -> tuple[float, ...]:
        return tuple(sorted(set(self.mults) | (set(self.tune_extra) if opt in TUNED else set())))

    def runs(self) -> dict:
        """Runs per workload: the sweep (one seed) plus the other seeds at the headline setting."""
        return {w: sum(len(self.grid(o)) for o in self.optimisers) + len(self.optimisers) * (self.seeds[w] - 1)
                for w in self.workloads}

    def estimate_seconds(self) -> float:
        """Wall seconds on ``jobs`` cores from ``STEP_MS`` and ``EVAL_S``, every run to its full
        budget (runs that diverge stop early, so it is an upper bound at that load)."""
        return sum(n * (self.steps[w] * STEP_MS[w] / 1e3 + (self.evals + 1) * EVAL_S[w])
                   for w, n in self.runs().items()) / self.jobs


def _parallel(ctx, cfg: Config, jobs: list, description: str) -> list:
    """``one_run(*job)`` for every job in ``cfg.jobs`` joblib processes, in order; every finished run
    is stored and read back on a rerun (:meth:`kexue.report.Context.resumable`)."""
    from joblib import delayed

    from kexue.parallel import parallel

    par = parallel(cfg.jobs)  # fresh loky workers, no joblib memmapping folder (kexue.parallel)
    keys = [["lrfree", *job[:-1]] for job in jobs]  # not the data folder: where MNIST lies changes nothing
    return ctx.resumable(par, [delayed(one_run)(*job) for job in jobs], keys, description)


def _job(cfg: Config, w: str, o: str, mult: float, seed: int, data_dir) -> tuple:
    return (w, o, mult, seed, cfg.steps[w], cfg.evals, cfg.full_data, cfg.held_out_rows, data_dir)


def _loss(r: dict) -> float:
    return math.inf if r["diverged"] or not math.isfinite(r["final"]) else r["final"]


def collect(ctx, cfg: Config) -> tuple[dict, dict]:
    """(sweep, seeds): sweep[(w, o, mult)] is the seed-``ctx.seed`` run; seeds[(w, o)] the runs at
    the headline setting (default knob; AdamW/SGD at their best grid value), one per seed."""
    s0 = ctx.seed
    jobs = [_job(cfg, w, o, m, s0, ctx.data_dir) for w in cfg.workloads for o in cfg.optimisers for m in cfg.grid(o)]
    sweep = {(j[0], j[1], j[2]): r for j, r in zip(jobs, _parallel(ctx, cfg, jobs, "lrfree: sweep and tuning"))}
    head = {(w, o): headline_mult(sweep, w, o, cfg) for w in cfg.workloads for o in cfg.optimisers}
    jobs = [_job(cfg, w, o, head[(w, o)], s0 + k, ctx.data_dir) for w in cfg.workloads for o in cfg.optimisers
            for k in range(1, cfg.seeds[w])]
    more = _parallel(ctx, cfg, jobs, "lrfree: seeds") if jobs else []
    seeds = {(w, o): [sweep[(w, o, head[(w, o)])]] for w in cfg.workloads for o in cfg.optimisers}
    for j, r in zip(jobs, more):
        seeds[(j[0], j[1])].append(r)
    return sweep, seeds


def headline_mult(sweep: dict, w: str, o: str, cfg: Config) -> float:
    """1 (the default) for the self-tuning methods; the grid value with the lowest final held-out
    loss for the tuned references."""
    if o not in TUNED:
        return 1.0
    return min(cfg.grid(o), key=lambda m: (_loss(sweep[(w, o, m)]), m))


def measures(cfg: Config, sweep: dict, seeds: dict) -> dict:
    """Every number the report states, from the runs (pure: the tests call it on synthetic runs)."""
    W, O = cfg.workloads, cfg.optimisers
    out: dict[str, dict] = {"target": {}, "steps": {}, "reached": {}, "final": {}, "ratio": {}, "div_sweep": {},
                            "div_all": {}}
    for w in W:
        ref = [_loss(r) for r in seeds[(w, "AdamW")]]
        out["target"][w] = target = float(np.mean(ref)) * 1.05 if all(map(math.isfinite, ref)) else math.inf
        best_tuned = min(_loss(sweep[(w, o, m)]) for o in TUNED if o in O for m in cfg.grid(o))
        for o in O:
            st = [steps_to_target(r["curve"], target) if not r["diverged"] else math.inf for r in seeds[(w, o)]]
            out["steps"][(w, o)] = float(np.mean(st)) if all(map(math.isfinite, st)) else math.inf
            out["reached"][(w, o)] = sum(map(math.isfinite, st))
            fin = [_loss(r) for r in seeds[(w, o)]]
            out["final"][(w, o)] = float(np.mean(fin))
            worst = max(_loss(sweep[(w, o, m)]) for m in cfg.mults)
            out["ratio"][(w, o)] = worst / best_tuned if best_tuned > 0 else math.inf
            out["div_sweep"][(w, o)] = sum(sweep[(w, o, m)]["diverged"] for m in cfg.grid(o))
            out["div_all"][(w, o)] = out["div_sweep"][(w, o)] + sum(r["diverged"] for r in seeds[(w, o)][1:])
    out["geomean"] = {o: float(np.exp(np.mean([math.log(max(out["steps"][(w, o)], 1.0)) for w in W])))
                      for o in O}  # inf when a workload is not reached
    return out


def run(ctx, cfg: Config | None = None):
    """The study with ``cfg`` (default: ``Config.quick()`` / ``Config.full()`` by ``ctx.quick``)."""
    from kexue.train import num_threads

    from kexue.utils import require

    cfg = cfg or (Config.quick() if ctx.quick else Config.full())
    for o in cfg.optimisers:  # a missing anchor fails here, in one line, before any run starts
        if o in ANCHORS:
            require("experiments", ANCHORS[o], "the lrfree study")
    t0 = time.perf_counter()
    versions = anchor_versions()
    for pkg, v in versions.items():
        ctx.metric(f"lrfree/versions/{pkg}", v)
    ctx.metric("lrfree/corpus", corpus_info())
    ctx.metric("lrfree/workloads", len(cfg.workloads))
    ctx.metric("lrfree/seeds", min(cfg.seeds[w] for w in cfg.workloads))
    ctx.metric("lrfree/estimated_seconds", cfg.estimate_seconds())
    with num_threads(1):
        sweep, seeds = collect(ctx, cfg)
    m = measures(cfg, sweep, seeds)
    _record(ctx, cfg, sweep, seeds, m)
    from kexue.experiments._lrfree_report import figures, text

    figures(ctx, cfg, sweep, seeds, m)
    text(ctx, cfg, sweep, seeds, m, versions)
    ctx.metric("seconds", time.perf_counter() - t0)


def _record(ctx, cfg: Config, sweep: dict, seeds: dict, m: dict) -> None:
    W, O = cfg.workloads, cfg.optimisers
    for w in W:
        ctx.metric(f"lrfree/target/{w}", m["target"][w])
        for o in TUNED:
            if o in O:
                ctx.metric(f"lrfree/tuned_mult/{w}/{o}", headline_mult(sweep, w, o, cfg))
        for o in O:
            ctx.metric(f"lrfree/steps_to_target/{w}/{o}", m["steps"][(w, o)])
            ctx.metric(f"lrfree/final_loss/{w}/{o}", m["final"][(w, o)])
            ctx.metric(f"lrfree/worst_over_best_tuned/{w}/{o}", m["ratio"][(w, o)])
        secs = [r["seconds"] / max(r["steps"], 1) for (ww, _, _), r in sweep.items() if ww == w and not r["diverged"]]
        ctx.metric(f"lrfree/seconds_per_step/{w}", float(np.mean(secs)) if secs else float("nan"))
    for o in O:
        ctx.metric(f"lrfree/divergences/{o}", sum(m["div_all"][(w, o)] for w in W))
        ctx.metric(f"lrfree/sweep_divergences/{o}", sum(m["div_sweep"][(w, o)] for w in W))
        ctx.metric(f"lrfree/geomean_steps/{o}", m["geomean"][o])
    runs = {o: sum(len(cfg.grid(o)) for _ in W) for o in TUNED if o in O}
    ctx.metric("lrfree/tuning_runs", runs)
    cols = list(W)
    ctx.table("steps_to_target", ["optimiser"] + cols + ["geometric mean"],
              [[o] + [m["steps"][(w, o)] for w in W] + [m["geomean"][o]] for o in O],
              caption="Steps to reach 1.05 × the tuned AdamW's final held-out loss (mean over the seeds; inf = "
                      "some seed never reached it within the budget or diverged); each method at its default, "
                      "AdamW and SGD at their best grid value.", fmt="{:.0f}")
    ctx.table("final_loss", ["optimiser"] + [f"{w} ({cfg.steps[w]} steps)" for w in W],
              [[o] + [m["final"][(w, o)] for w in W] for o in O],
              caption="Final held-out loss (mean over the seeds; inf = a seed diverged).")
    ctx.table("robustness", ["optimiser", "knob"] + [f"{w}: worst/best tuned" for w in W] + ["divergences in sweep"],
              [[o, KNOBS[o][0]] + [m["ratio"][(w, o)] for w in W] + [sum(m["div_sweep"][(w, o)] for w in W)]
               for o in O],
              caption=f"Robustness sweep (seed {ctx.seed}): each method's knob × "
                      + ", ".join(f"{x:g}" for x in cfg.mults) + "; worst final held-out loss over the sweep "
                      f"divided by the best tuned AdamW/SGD run; a divergence (NaN/inf or loss > "
                      f"{DIVERGE_FACTOR:g} × the first step's) counts as an infinite loss.")

