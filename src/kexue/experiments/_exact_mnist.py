"""SPEC 6 at convergence (issue 18): a CNN on the full MNIST training set, five losses, seeds.

Protocol. The 60,000 training digits are split once (by the run's seed) into a training part and
a validation part. Each loss gets the same budget: every (learning rate, setting) of its grid is
trained on seed 0 and scored on the validation part; the best one is then trained with the other
seeds. EXACT's settings are its sigma schedule and margin (ours: sigma 1 -> 0.1 geometric, no
margin; the official MNIST configuration: margin 0.5 with a final variance of 1). Adam with a
warm-up + cosine learning-rate schedule, ±2-pixel random shifts, test accuracy on the official
10,000 test digits after every epoch. Runs are independent and go to joblib processes.
"""

from __future__ import annotations

import time
from typing import Any
from dataclasses import asdict, dataclass

import numpy as np

LOSSES = ["CE", "hinge", "EXACT", "-E[p]", "-log E[p]"]
PAPER = {"CE": 99.64, "EXACT": 99.67}  # Karpukhin et al. (2022), MNIST test accuracy %
CURVE_N = 2000  # test digits scored after every epoch for the curves; the final accuracy uses all 10,000
EXACT_SETTINGS = {"σ 1→0.1, no margin": (1.0, 0.1, None), "paper: σ 1, margin 0.5": (1.0, 1.0, 0.5)}


def make_loss(name: str, steps: int, sigma: tuple = (1.0, 0.1), margin: float | None = None):
    """The loss module for ``name``; EXACT's sigma decays ``sigma[0] -> sigma[1]`` geometrically
    over the run (constant when equal), with deltas clipped at ``margin``."""
    import torch

    from kexue.exact import EXACTLoss, MulticlassHingeLoss, SmoothAccuracyLoss, sigma_schedule

    if name == "CE":
        return torch.nn.CrossEntropyLoss()
    if name == "hinge":
        return MulticlassHingeLoss(1.0)
    if name == "EXACT":
        return EXACTLoss(sigma=sigma_schedule(sigma[0], sigma[1], steps, "exp"), margin=margin, standardize=True,
                         n_samples=16)
    if name == "-E[p]":
        return SmoothAccuracyLoss(log=False)
    if name == "-log E[p]":
        return SmoothAccuracyLoss(log=True)
    raise ValueError(name)


@dataclass(frozen=True)
class CNNConfig:
    """The MNIST CNN: two conv–BN–ReLU–pool blocks, a hidden layer with dropout, a linear head."""

    width: int = 32
    hidden: int = 128
    dropout: float = 0.25

    def build(self):
        from torch import nn

        w = self.width
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 49, self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden, 10))


@dataclass(frozen=True)
class MnistConfig:
    """Sizes of the full-MNIST comparison (``train`` images of the 60,000 are used, ``val`` of
    them held out for the selection)."""

    seeds: int
    train: int
    val: int
    epochs: int
    batch_size: int
    lrs: tuple
    exact_settings: tuple
    n_jobs: int
    shift: int = 2
    cnn: CNNConfig = CNNConfig()

    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch()

    def steps_per_epoch(self) -> int:
        return (self.train - self.val) // self.batch_size

    def runs(self) -> int:
        per_loss = [len(self.lrs) * (len(self.exact_settings) if n == "EXACT" else 1) for n in LOSSES]
        return sum(per_loss) + len(LOSSES) * (self.seeds - 1)


def _shift(x, pixels: int):
    """Random translations by up to ``pixels`` in each direction, one per image (exact: integer
    shifts with zero fill), drawn from torch's RNG (seeded per step by kexue.train)."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    img = F.pad(x.reshape(n, 28, 28), (pixels,) * 4)
    dx, dy = torch.randint(0, 2 * pixels + 1, (2, n))
    rows = (dy[:, None] + torch.arange(28))[:, :, None]
    cols = (dx[:, None] + torch.arange(28))[:, None, :]
    return img[torch.arange(n)[:, None, None], rows, cols].reshape(n, 784)


def _one_run(X, y, Xte, yte, tr, va, name: str, lr: float, setting: str | None, seed: int, cfg: MnistConfig) -> dict:
    """Train one CNN (in a joblib worker); return validation/test accuracy, the curve, the time."""
    import torch

    from kexue.parallel import opened
    from kexue.train import accuracy, train, warmup_cosine

    torch.set_num_threads(1)
    X, Xte = opened(X), opened(Xte)
    f = lambda A: torch.as_tensor(np.asarray(A, dtype=np.float32) / 255.0)  # noqa: E731
    Xtr, ytr, Xva, yva = f(X[tr]), torch.as_tensor(y[tr]), f(X[va]), torch.as_tensor(y[va])
    Xte_t, yte_t = f(Xte), torch.as_tensor(yte)
    steps, per_epoch = cfg.steps(), cfg.steps_per_epoch()
    torch.manual_seed(seed)
    model = cfg.cnn.build()
    sig0, sig1, margin = EXACT_SETTINGS[setting] if setting else (1.0, 0.1, None)
    loss = make_loss(name, steps, sigma=(sig0, sig1), margin=margin)
    Xc, yc = Xte_t[:CURVE_N], yte_t[:CURVE_N]
    curve = [[0, accuracy(model, Xc, yc)]]
    stamps = []
    res = train(model, lambda m, b: loss(m(_shift(b[0], cfg.shift) if cfg.shift else b[0]), b[1]), [Xtr, ytr],
                steps=steps, batch_size=cfg.batch_size, lr=lr, seed=seed, description=f"{name} lr={lr:g}",
                schedule=warmup_cosine(steps, warmup=min(200, steps // 10)), eval_every=per_epoch,
                evaluate_fn=lambda m, step: {"acc": accuracy(m, Xc, yc)},
                on_step=lambda step, value: stamps.append(time.perf_counter()))
    curve += [[e["step"] / per_epoch, e["acc"]] for e in res.evals]
    # the median gap between steps: the training step alone, without the per-epoch evaluations
    seconds = float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")
    return {"val": accuracy(res.model, Xva, yva), "test": accuracy(res.model, Xte_t, yte_t), "curve": curve,
            "seconds_per_step": seconds}


def run_mnist_cnn(ctx, cfg: MnistConfig) -> dict:
    """Selection on seed 0 over each loss's grid, then the chosen setting on the other seeds.
    Returns {loss: {"lr", "setting", "test" (per seed), "curves", "seconds_per_step"}}."""
    from joblib import delayed

    from kexue.data import load_mnist_test, load_mnist_train
    from kexue.parallel import SharedArrays, parallel

    X, y = load_mnist_train(ctx.data_dir)
    Xte, yte = load_mnist_test(ctx.data_dir)
    perm = np.random.default_rng(ctx.seed).permutation(len(X))[:cfg.train]
    va, tr = np.sort(perm[:cfg.val]), np.sort(perm[cfg.val:])
    seed_of = lambda s: 1000 * s + 29 + ctx.seed  # noqa: E731
    grid = [(n, lr, st) for n in LOSSES for lr in cfg.lrs for st in (cfg.exact_settings if n == "EXACT" else (None,))]
    # the images go to the workers as memory-mapped files of our own, each round to a fresh pool
    # (kexue.parallel: no joblib temporary folder, no mid-call worker restarts; issue 31)
    with SharedArrays() as shared:
        X, Xte = shared.share(X), shared.share(Xte)
        spec = asdict(cfg)
        # each finished run is kept in the report directory: a rerun into it resumes (full mode: hours)
        first = ctx.resumable(parallel(cfg.n_jobs), [delayed(_one_run)(X, y, Xte, yte, tr, va, n, lr, st, seed_of(0), cfg) for n, lr, st in grid],
                              [["mnist-cnn", n, lr, st, seed_of(0), spec] for n, lr, st in grid])
        chosen = {}
        for n in LOSSES:
            cands = [(r["val"], -lr, lr, st, r) for (m, lr, st), r in zip(grid, first) if m == n]
            best = max(cands, key=lambda c: c[:2])
            chosen[n] = (best[2], best[3], best[4])
        rest = [(n, s) for n in LOSSES for s in range(1, cfg.seeds)]
        later = ctx.resumable(parallel(cfg.n_jobs), [delayed(_one_run)(X, y, Xte, yte, tr, va, n, chosen[n][0], chosen[n][1], seed_of(s), cfg)
                                    for n, s in rest],
                              [["mnist-cnn", n, chosen[n][0], chosen[n][1], seed_of(s), spec] for n, s in rest])
    out: dict[str, Any] = {}
    for n in LOSSES:
        runs = [chosen[n][2]] + [r for (m, _), r in zip(rest, later) if m == n]
        out[n] = {"lr": chosen[n][0], "setting": chosen[n][1], "test": np.array([r["test"] for r in runs]),
                  "curves": [r["curve"] for r in runs]}
        ctx.log(f"mnist-60k cnn {n}: lr={chosen[n][0]:g} {chosen[n][1] or ''} test={100 * out[n]['test'].mean():.2f}")
    every = first + later
    out["_seconds_per_step"] = float(np.median([r["seconds_per_step"] for r in every]))
    out["_train_images"] = len(tr) + len(va)
    return out


def report_mnist_cnn(ctx, cfg: MnistConfig, res: dict, full_cfg: MnistConfig) -> None:
    """Tables (accuracy, Welch vs CE, the paper beside ours), curves and metrics."""
    from matplotlib.figure import Figure

    from kexue.exact import compare_runs, mean_sd

    ctx.metric("train_images", res["_train_images"])
    ctx.metric("seeds", cfg.seeds)
    rows = []
    for n in LOSSES:
        r = res[n]
        ctx.metric(f"mnist_cnn_acc/{n}", float(100 * r["test"].mean()))
        c = compare_runs(r["test"], res["CE"]["test"]) if n != "CE" else None
        rows.append([n, mean_sd(r["test"]), f"{r['lr']:g}" + (f", {r['setting']}" if r["setting"] else ""),
                     "—" if c is None else f"{100 * c.diff:+.2f}",
                     "—" if c is None or c.pvalue != c.pvalue else f"{c.pvalue:.3f}",
                     "—" if c is None else {"a better": f"{n} better", "b better": "CE better"}.get(c.outcome, c.outcome),
                     f"{PAPER[n]:.2f}" if n in PAPER else "—"])
    ctx.table("mnist_cnn", ["loss", "test accuracy %", "chosen lr, setting", "− CE (points)", "Welch p", "outcome",
                            "paper %"], rows,
              caption=f"MNIST CNN on {res['_train_images']:,} training digits ({cfg.train - cfg.val:,} train / {cfg.val:,} "
                      f"validation), {cfg.epochs} epochs, mean ± sd over {cfg.seeds} seeds; official 10,000 test digits.")
    sps = res["_seconds_per_step"]
    estimate = full_cfg.runs() * full_cfg.steps() * sps / full_cfg.n_jobs / 3600
    ctx.metric("cnn60k_seconds_per_step", sps)
    ctx.metric("cnn60k_full_estimate_hours", estimate)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    for n in LOSSES:
        cv = np.array(res[n]["curves"])  # (seeds, epochs + 1, 2)
        acc = 100 * cv[:, :, 1]
        ax.plot(cv[0, :, 0], acc.mean(0), marker="o", ms=3, label=n)
        ax.fill_between(cv[0, :, 0], acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), alpha=0.15)
    ax.set_ylim(min(97.0, float(np.floor(min(100 * np.array(res[n]["curves"])[:, 1:, 1].mean(0).min() for n in LOSSES)))), 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test accuracy % (first {CURVE_N:,} test digits)")
    ax.legend(fontsize=7)
    ctx.figure("mnist_cnn_curves", fig, caption="Full-MNIST CNN: test accuracy after every epoch (mean ± sd over seeds).")
    ce = 100 * res["CE"]["test"].mean()
    ctx.text(f"Cross-entropy reaches {ce:.2f} % ({'meets' if ce >= 99.3 else 'misses'} the 99.3 % target). "
             f"Median {1e3 * sps:.0f} ms per training step (batch {cfg.batch_size}, one thread per run); at that rate the "
             f"full mode ({full_cfg.runs()} runs × {full_cfg.steps():,} steps on {full_cfg.n_jobs} processes) takes "
             f"≈ {estimate:.1f} h. What differs from the paper: our CNN ({cfg.cnn.width}/{2 * cfg.cnn.width} channels, "
             f"BN, dropout {cfg.cnn.dropout}), {cfg.epochs} epochs of Adam with warm-up + cosine, ±{cfg.shift}-pixel "
             "shifts, a learning-rate grid of " + ", ".join(f"{lr:g}" for lr in cfg.lrs) + " and two EXACT settings "
             "chosen on a validation split; the paper tuned each method with its own search and training length.")
