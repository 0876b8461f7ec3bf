"""The single runs of the learning-rate-free study and the measures computed from them: the ten
optimisers, one training run through ``kexue.train.train`` (in a joblib worker), divergence,
steps to target and the performance profile (``kexue.experiments.lrfree`` schedules and reports).

Divergence: a run diverges when its training loss turns NaN or ±inf, or exceeds ``DIVERGE_FACTOR``
(10) × its first step's loss; it stops there and its final loss counts as infinite.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from kexue.experiments._eg_runs import EGSTEP_GAMMA, MOMENTUM

KEXUE = ("EGAdapt(SGD)", "EGAdapt(Adam)", "EGStep", "SGD-HD", "Adam-HD")  # the study's kexue optimisers
DIVERGE_FACTOR = 10.0

# name -> (the knob the robustness sweep multiplies, its value at the optimiser's default)
KNOBS = {
    "EGAdapt(SGD)": ("initial lr", 1e-2),   # SGD(momentum 0.9) base; EGAdapt at its library defaults
    "EGAdapt(Adam)": ("initial lr", 1e-3),  # Adam base at torch's default lr
    "EGStep": ("initial lr", 1e-2),         # library default lr; γ as in the EG experiment
    "SGD-HD": ("initial lr", 1e-2),         # library defaults (β = 1e-3), momentum 0.9
    "Adam-HD": ("initial lr", 1e-3),        # library defaults (β = 1e-7)
    "Prodigy": ("d0", 1e-6),                # prodigyopt defaults (lr = 1)
    "SF-AdamW": ("lr", 2.5e-3),             # schedulefree.AdamWScheduleFree defaults (no warm-up)
    "DAdapt-Adam": ("d0", 1e-6),            # dadaptation.DAdaptAdam defaults (lr = 1)
    "AdamW": ("lr", 1e-3),                  # torch defaults (weight decay 0.01); tuned on a grid
    "SGD": ("lr", 1e-2),                    # momentum 0.9; tuned on a grid
}
OPTIMISERS = tuple(KNOBS)
TUNED = ("AdamW", "SGD")  # the tuned references
ANCHORS = {"Prodigy": "prodigyopt", "SF-AdamW": "schedulefree", "DAdapt-Adam": "dadaptation"}


def make_optimizer(name: str, params, mult: float = 1.0):
    """Optimiser ``name`` with its sweep knob at ``mult`` × its default (see ``KNOBS``)."""
    import torch

    from kexue.eg import AdamHD, EGAdapt, EGStep, SGDHD
    from kexue.utils import require

    params = list(params)
    v = KNOBS[name][1] * mult
    if name == "EGAdapt(SGD)":
        return EGAdapt(torch.optim.SGD(params, lr=v, momentum=MOMENTUM))
    if name == "EGAdapt(Adam)":
        return EGAdapt(torch.optim.Adam(params, lr=v))
    if name == "EGStep":
        return EGStep(params, lr=v, gamma=EGSTEP_GAMMA)
    if name == "SGD-HD":
        return SGDHD(params, lr=v, momentum=MOMENTUM)
    if name == "Adam-HD":
        return AdamHD(params, lr=v)
    if name == "Prodigy":
        return require("experiments", "prodigyopt", "the lrfree study").Prodigy(params, d0=v)
    if name == "SF-AdamW":
        return require("experiments", "schedulefree", "the lrfree study").AdamWScheduleFree(params, lr=v)
    if name == "DAdapt-Adam":
        return require("experiments", "dadaptation", "the lrfree study").DAdaptAdam(params, d0=v)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=v)
    if name == "SGD":
        return torch.optim.SGD(params, lr=v, momentum=MOMENTUM)
    raise ValueError(f"unknown optimiser {name!r}")


def anchor_versions() -> dict:
    """Installed versions of the three anchor packages (recorded with the results)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ANCHORS.values():
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class _Diverged(Exception):
    pass


class DivergenceGuard:
    """``on_step`` hook for ``kexue.train.train``: raises when the loss exceeds ``factor`` × the
    first step's loss (non-finite losses are caught by train's ``on_nonfinite="stop"``)."""

    def __init__(self, factor: float = DIVERGE_FACTOR):
        self.factor, self.steps = factor, 0
        self.first: float | None = None
        self.why: str | None = None

    def __call__(self, step: int, loss: float) -> None:
        self.steps = step + 1
        if self.first is None:
            self.first = loss
        if loss > self.factor * self.first:
            self.why = f"loss {loss:.4g} > {self.factor:g} × the first step's {self.first:.4g} at step {step}"
            raise _Diverged(self.why)


def diverged(losses, factor: float = DIVERGE_FACTOR) -> bool:
    """The study's divergence rule on a finished training-loss curve (NaN/inf, or > factor × the first)."""
    a = np.asarray(losses, dtype=float)
    return bool(len(a)) and bool((~np.isfinite(a)).any() or (a > factor * a[0]).any())


def train_mode_hooks(opt):
    """(before training, evaluation wrapper) for optimisers whose weights differ between training
    and evaluation: Schedule-Free keeps the point it evaluates gradients at apart from the averaged
    weights it returns, and its ``optimizer.train()`` / ``.eval()`` switch between them. Any other
    optimiser gets no-ops."""
    if not (hasattr(opt, "train") and hasattr(opt, "eval") and callable(opt.eval)):
        return (lambda: None), (lambda fn: fn)

    def wrap(fn):
        def evaluate(model, step):
            opt.eval()  # the averaged weights x, which Schedule-Free returns as its answer
            try:
                return fn(model, step)
            finally:
                opt.train()  # back to the gradient point y for the next step
        return evaluate

    return opt.train, wrap


def one_run(workload: str, name: str, mult: float, seed: int, steps: int, evals: int, full: bool,
            held_out_rows, data_dir=None) -> dict:
    """Train ``workload`` with optimiser ``name`` (knob × ``mult``) for ``steps`` steps from
    ``seed``; the held-out loss before training and ``evals`` times during it. In a worker."""
    import torch

    from kexue.experiments._lrfree_workloads import build
    from kexue.train import train

    torch.set_num_threads(1)
    w = build(workload, seed, full=full, data_dir=data_dir, held_out_rows=held_out_rows)
    opt = make_optimizer(name, w.model.parameters(), mult)
    start, wrap = train_mode_hooks(opt)
    w.model.eval()
    with torch.no_grad():
        curve = [(0, w.held_out(w.model))]
    start()
    guard, every = DivergenceGuard(), max(steps // evals, 1)
    t0 = time.perf_counter()
    # the sweep drives optimisers to their limits on purpose: their warnings (e.g. EGAdapt's
    # ScaleBoundWarning) are part of the run's record, not lines on the user's console
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = train(w.model, w.loss, w.data, steps=steps, batch_size=w.batch_size, optimizer=opt, seed=seed,
                        on_step=guard, on_nonfinite="stop", eval_every=every,
                        evaluate_fn=wrap(lambda m, step: {"loss": w.held_out(m)}))
            why, evs = res.stopped, res.evals
        except _Diverged:
            why, evs = guard.why, []
    seconds = time.perf_counter() - t0
    curve += [(e["step"], e["loss"]) for e in evs]
    final = curve[-1][1] if why is None else float("nan")
    return {"curve": curve, "final": final if math.isfinite(final) else float("nan"), "diverged": why is not None,
            "why": why, "seconds": seconds, "first_loss": guard.first, "steps": guard.steps,
            "warnings": sorted({f"{type(c.message).__name__}: {c.message}" for c in caught})}


def steps_to_target(curve, target: float) -> float:
    """The first evaluated step at which the held-out loss is ≤ ``target`` (inf if never)."""
    for step, loss in curve:
        if math.isfinite(loss) and loss <= target:
            return float(step)
    return math.inf


def profile(steps: dict, taus) -> dict:
    """Performance profile (Dolan & Moré 2002): ``steps`` maps (problem, solver) to a cost (inf =
    not solved); returns {solver: fraction of problems solved within τ × the best solver's cost}
    for every τ in ``taus``. A problem no solver solves counts as unsolved by all."""
    problems = sorted({p for p, _ in steps})
    solvers = sorted({s for _, s in steps}, key=str)
    best = {p: min(steps[(p, s)] for s in solvers if (p, s) in steps) for p in problems}
    out = {}
    for s in solvers:
        r = [steps.get((p, s), math.inf) / best[p] if math.isfinite(best[p]) and best[p] > 0 else
             (1.0 if best[p] == 0 and steps.get((p, s)) == 0 else math.inf) for p in problems]
        out[s] = [float(np.mean([x <= t for x in r])) for t in taus]
    return out
