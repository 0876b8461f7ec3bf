"""One training loop for every technique: accelerate, deterministic batches, EMA, learning-rate
schedules, hooks (``on_step``, evaluation every N steps, non-finite losses), atomic checkpoints
that remember their run's config and data (:mod:`kexue.checkpoint`), and exact resume.

Determinism by construction: the batch and the random state at step ``s`` depend only on
``(seed, s)`` — the epoch's permutation is drawn from ``seed`` and the epoch number, and the
global torch RNG is re-seeded from ``(seed, s)`` before the loss is computed. A run resumed from
a checkpoint at step ``s`` therefore follows the same loss curve as an uninterrupted one.

A long job may run over several processes ("legs"), each resuming from the last checkpoint:
:class:`kexue.checkpoint.Clock` keeps the wall time and the number of legs in the checkpoint, so what a finished
run reports is its time over all legs, not the last one's.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)
import torch
from torch import nn

# checkpoints, fingerprints and the Clock live in kexue.checkpoint (the evaluations resume with them
# too); tracked in kexue.utils with the progress protocol. Both stay importable from here.
from kexue.checkpoint import (Clock, check_resume, fingerprint, load_checkpoint, model_fingerprint,  # noqa: F401
                              partial, restore, save_checkpoint, save_partial)
from kexue.utils import KexueError, require, tracked  # noqa: F401

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module | None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    evals: list[dict] = field(default_factory=list)  # what ``evaluate_fn`` returned, with "step"
    stopped: str | None = None  # why training stopped early (on_nonfinite="stop"), else None
    seconds: float = 0.0  # wall time of training over all legs (see Clock)
    legs: int = 0  # processes that trained it: 1 uninterrupted, more after resumes


@contextmanager
def num_threads(threads: int | None):
    """torch's intra-op thread count set to ``threads`` inside the block, restored after it.

    The library's thread policy: the heavy entry points (:func:`train`, ``fit_vae``,
    ``log_likelihood``, ``DDPM.fit``/``sample``/``nll``) take ``threads=None``, meaning torch's
    current setting (``torch.set_num_threads``), or a count for that call only. The CLI passes
    its ``--threads`` (default ``$KEXUE_THREADS`` or 1; on a small shared machine one thread is
    much faster than torch's default, docs/ddpm.md)."""
    if threads is None:
        yield
        return
    from kexue import validate

    n, before = validate.integer(threads, "threads", 1), torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: still a ``KeyboardInterrupt``, raised after a checkpoint was
    written where that is safe. ``step`` is the step the checkpoint ``ckpt`` holds (None without a
    checkpoint), so a rerun with ``resume=True`` continues from there."""

    def __init__(self, step: int | None, ckpt):
        super().__init__(f"interrupted; checkpoint {ckpt} at step {step}" if ckpt is not None else "interrupted")
        self.step, self.ckpt = step, ckpt


@lru_cache(maxsize=1)
def default_accelerator():
    """One Accelerator per process: building one probes the installed packages (~0.5 s)."""
    Accelerator = require("torch", "accelerate", "the training loop").Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919) % (2**63 - 1)


def _seed_step(seed: int, device: torch.device) -> None:
    """Seed the RNGs a training step draws from: the CPU generator, and the training device's.

    Not ``torch.manual_seed``: it also queues a seed for every accelerator type torch was built
    for, and for one not initialised (XPU on a CPU machine) it records ``traceback.format_stack()``
    each call — at the depth of a CLI run that was half of a 13 ms VAE step. The CPU generator
    gets the same seed either way, so the numbers are the same."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device, the one this process trains on
    elif device.type != "cpu" and hasattr(getattr(torch, device.type, None), "manual_seed"):
        getattr(torch, device.type).manual_seed(seed)


@lru_cache(maxsize=4)
def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_step_seed(seed, -1 - epoch))
    return torch.randperm(n, generator=g)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of the batch at ``step``: epochs of a seeded permutation, sliced per process."""
    per_epoch = max(n // (batch_size * world), 1)
    epoch, pos = divmod(step, per_epoch)
    perm = _epoch_perm(n, seed, epoch)  # cached: one permutation per epoch, not one per step
    start = (pos * world + rank) * batch_size
    return perm[start:start + batch_size] if start + batch_size <= n else perm[:batch_size]


# ---------------------------------------------------------------- learning-rate schedules
# A schedule maps the step to a multiplier of the optimiser's base learning rate. Being a pure
# function of the step, it resumes exactly with no state of its own.
Schedule = Callable[[int], float]


def constant() -> Schedule:
    return lambda step: 1.0


def warmup_cosine(steps: int, warmup: int = 0, final: float = 0.0) -> Schedule:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``final`` × the base rate."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def iwae_schedule(steps_per_epoch: int, stages: int = 8) -> Schedule:
    """The IWAE paper's schedule (Burda et al. 2016, sec. 5): stage i = 0..stages-1 lasts 3^i
    epochs at 10^(-i/7) × the base rate (0.001 in the paper); the last stage continues after."""
    def f(step: int) -> float:
        epoch, i, end = step // steps_per_epoch, 0, 1
        while epoch >= end and i < stages - 1:
            i += 1
            end += 3 ** i
        return 10 ** (-i / 7)
    return f


def iwae_epochs(stages: int = 8) -> int:
    """Epochs in the IWAE paper's schedule: sum of 3^i (3,280 for 8 stages)."""
    return sum(3 ** i for i in range(stages))


# ---------------------------------------------------------------- the loop
class _Run:
    """One training run's moving parts: the prepared model and optimiser, the EMA, the loss and
    evaluation history, and the checkpoint writer. ``train`` drives it step by step."""

    def __init__(self, model, optimizer, ema, acc, ckpt, config, data_fp, evaluate_fn):
        self.model, self.optimizer, self.ema, self.acc = model, optimizer, ema, acc
        self.ckpt, self.config, self.data_fp, self.evaluate_fn = ckpt, config, data_fp, evaluate_fn
        self.losses: list[float] = []
        self.evals: list[dict] = []
        self.clock = Clock()
        self.saved: int | None = None  # the step the checkpoint file holds

    def resume(self, steps: int) -> int:
        """Load ``ckpt`` (checked against this run's config, data and steps); the step to start at."""
        st = load_checkpoint(self.ckpt)
        check_resume(st, self.config, self.data_fp, steps, self.ckpt)
        restore(st, self.ckpt, self.model, self.optimizer, self.ema)
        self.losses, self.evals = list(st["losses"]), list(st.get("evals", []))
        self.clock = Clock(st)
        self.saved = int(st["step"])
        return self.saved

    def checkpoint(self, step: int) -> None:
        if self.ckpt is None or not self.acc.is_main_process or not self.clock.worked:
            return  # nothing new to keep (a resumed run that was already finished)
        st = {"model": self.acc.unwrap_model(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
              "step": step, "losses": self.losses, "evals": self.evals, "config": self.config, "data": self.data_fp,
              **self.clock.state()}
        if self.ema is not None:
            st["ema"] = self.ema.state_dict()
        save_checkpoint(self.ckpt, st)
        self.saved = step

    def evaluate(self, step: int) -> None:
        """``evaluate_fn`` on the EMA weights if kept, else the model, in eval mode, once per step."""
        if self.evaluate_fn is None or (self.evals and self.evals[-1].get("step") == step):
            return
        m = self.acc.unwrap_model(self.model)
        was = m.training
        m.eval()
        with torch.no_grad():
            out = dict(self.evaluate_fn(self.ema.module if self.ema is not None else m, step))
        m.train(was)
        self.evals.append({"step": step, **out})
        self.clock.worked = True

    def step(self, loss: torch.Tensor, grad_clip: float | None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        if grad_clip is not None:
            self.acc.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.acc.unwrap_model(self.model))
        self.clock.worked = True


def _set_lr(optimizer, base_lrs: list[float], schedule: Schedule | None, step: int) -> None:
    if schedule is not None:
        mult = schedule(step)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * mult


def _check_train_args(data: Sequence[torch.Tensor], on_nonfinite: str) -> None:
    if not data or any(len(t) != len(data[0]) for t in data) or len(data[0]) == 0:
        raise KexueError("training data must be one or more non-empty tensors with the same number of rows")
    if on_nonfinite not in ("raise", "stop"):
        raise KexueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")


def train(model: nn.Module, loss_fn: LossFn, data: Sequence[torch.Tensor], *, steps: int, batch_size: int,
          optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3, seed: int = 0,
          ema_decay: float | None = None, ckpt: str | os.PathLike | None = None, ckpt_every: int = 0,
          resume: bool = False, tracker=None, description: str = "train",
          accelerator=None, grad_clip: float | None = None, schedule: Schedule | None = None,
          config: dict | None = None, on_step: Callable[[int, float], Any] | None = None,
          eval_every: int = 0, evaluate_fn: Callable[[nn.Module, int], dict] | None = None,
          on_nonfinite: str = "raise", threads: int | None = None) -> TrainResult:
    """Minimise ``loss_fn(model, batch)`` for ``steps`` steps over tensors ``data`` (same first dim).

    - ``schedule(step)`` multiplies each parameter group's base learning rate (see
      :func:`warmup_cosine`, :func:`iwae_schedule`); ``None`` keeps it constant.
    - ``on_step(step, loss)`` is called after every step; ``evaluate_fn(model, step)`` every
      ``eval_every`` steps and at the end, its dicts collected in ``result.evals`` (and resumed).
    - ``on_nonfinite``: ``"raise"`` (a KexueError) or ``"stop"`` (return what was trained so far,
      with ``result.stopped`` saying why) when the loss is NaN or inf.
    - ``ckpt`` with ``ckpt_every > 0`` writes a checkpoint every that many steps and at the end;
      ``resume=True`` continues from ``ckpt`` if it exists, after checking that it was written for
      the same ``config`` (a dict of plain values) and the same data. ``result.seconds`` and
      ``result.legs`` are the training time and the number of processes over all resumes.
    - ``ema_decay`` keeps an exponential moving average of the weights (``result.ema``).
    - Ctrl-C (``KeyboardInterrupt``) raises :class:`TrainingInterrupted` (a KeyboardInterrupt)
      after writing a checkpoint of the last finished step, unless the interrupt came inside an
      optimiser update (the weights may then be half-updated: the last checkpoint stands).
    - ``threads``: torch's thread count for this call (None: its current setting; see
      :func:`num_threads`).
    """
    with num_threads(threads):
        return _train(model, loss_fn, data, steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr, seed=seed,
                      ema_decay=ema_decay, ckpt=ckpt, ckpt_every=ckpt_every, resume=resume, tracker=tracker,
                      description=description, accelerator=accelerator, grad_clip=grad_clip, schedule=schedule,
                      config=config, on_step=on_step, eval_every=eval_every, evaluate_fn=evaluate_fn,
                      on_nonfinite=on_nonfinite)


def _train(model, loss_fn, data, *, steps, batch_size, optimizer, lr, seed, ema_decay, ckpt, ckpt_every, resume,
           tracker, description, accelerator, grad_clip, schedule, config, on_step, eval_every, evaluate_fn,
           on_nonfinite) -> TrainResult:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    _check_train_args(data, on_nonfinite)
    n, acc = len(data[0]), accelerator or default_accelerator()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
    run = _Run(model, optimizer, ema, acc, ckpt, dict(config or {}), fingerprint(data) if ckpt is not None else "",
               evaluate_fn)
    start = run.resume(steps) if resume and ckpt is not None and Path(ckpt).exists() else 0
    run.model, run.optimizer = acc.prepare(model, optimizer)
    if ema is not None:
        ema.to(acc.device)
    data = [t.to(acc.device) for t in data]
    stopped, done, updating = None, start, False
    run.model.train()
    try:
        with tracked(tracker, range(start, steps), description, total=steps - start) as todo:
            for step in todo:
                _set_lr(run.optimizer, base_lrs, schedule, step)
                idx = batch_indices(n, batch_size, step, seed, acc.process_index, acc.num_processes).to(acc.device)
                _seed_step(_step_seed(seed, step) + acc.process_index, acc.device)
                loss = loss_fn(run.model, [t[idx] for t in data])
                value = float(loss.detach())
                if not math.isfinite(value):
                    if on_nonfinite == "raise":
                        raise KexueError(f"loss became {value} at step {step}; lower the learning rate")
                    stopped, steps = f"loss became {value} at step {step}", step
                    break
                updating = True  # until the step's bookkeeping is over the state is not one of a whole step
                run.step(loss, grad_clip)
                run.losses.append(value)
                if on_step is not None:
                    on_step(step, value)
                if eval_every and (step + 1) % eval_every == 0:
                    run.evaluate(step + 1)
                if ckpt_every and (step + 1) % ckpt_every == 0:
                    run.checkpoint(step + 1)
                done, updating = step + 1, False
    except KeyboardInterrupt:
        if ckpt is not None and not updating and run.saved != done:
            run.checkpoint(done)  # the weights, optimiser and losses of the last whole step: resumes exactly
        raise TrainingInterrupted(run.saved, ckpt) from None
    if stopped is None:
        run.evaluate(steps)
        run.clock.stop()
        run.checkpoint(steps)
    model = acc.unwrap_model(run.model)
    model.eval()
    return TrainResult(model, ema.module.eval() if ema is not None else None, run.losses, steps, run.evals, stopped,
                       **run.clock.state())


@torch.no_grad()
def evaluate(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``fn`` applied to row chunks of ``tensors`` (same first dim) and concatenated, without
    gradients: e.g. ``evaluate(model, X).argmax(1)`` over 10,000 images without 1 GB of
    activations. ``fn`` returns a tensor with one leading row per input row (or a scalar per chunk)."""
    n = len(tensors[0])
    outs = [fn(*(t[i:i + batch_size] for t in tensors)) for i in range(0, n, batch_size)]
    outs = [o.reshape(1) if o.ndim == 0 else o for o in outs]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``model`` on ``(X, y)``, in chunks (see :func:`evaluate`)."""
    was = model.training
    model.eval()
    hits = evaluate(lambda xb, yb: (model(xb).argmax(1) == yb).sum(), X, y, batch_size=batch_size)
    model.train(was)
    return float(hits.sum()) / max(1, len(y))
