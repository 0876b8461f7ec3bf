"""One training loop for every technique: accelerate, deterministic batches, EMA, atomic
checkpoints and exact resume.

Determinism by construction: the batch and the random state at step ``s`` depend only on
``(seed, s)`` — the epoch's permutation is drawn from ``seed`` and the epoch number, and the
global torch RNG is re-seeded from ``(seed, s)`` before the loss is computed. A run resumed from
a checkpoint at step ``s`` therefore follows the same loss curve as an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from kexue.utils import KexueError, atomic_path

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module | None
    losses: list[float] = field(default_factory=list)
    steps: int = 0


@lru_cache(maxsize=1)
def default_accelerator():
    """One Accelerator per process: building one probes the installed packages (~0.5 s)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919) % (2**63 - 1)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of the batch at ``step``: epochs of a seeded permutation, sliced per process."""
    per_epoch = max(n // (batch_size * world), 1)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(_step_seed(seed, -1 - epoch))
    perm = torch.randperm(n, generator=g)
    start = (pos * world + rank) * batch_size
    return perm[start:start + batch_size] if start + batch_size <= n else perm[:batch_size]


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (tensors, numbers, lists, dicts) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KexueError(f"checkpoint {path} not found; start without --resume or give the right path") from None
    except Exception as e:  # corrupt / foreign file
        raise KexueError(f"checkpoint {path} could not be read ({type(e).__name__}); delete it or start without --resume") from None


def train(model: nn.Module, loss_fn: LossFn, data: Sequence[torch.Tensor], *, steps: int, batch_size: int,
          optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3, seed: int = 0,
          ema_decay: float | None = None, ckpt: str | os.PathLike | None = None, ckpt_every: int = 0,
          resume: bool = False, tracker=None, description: str = "train",
          accelerator=None, grad_clip: float | None = None) -> TrainResult:
    """Minimise ``loss_fn(model, batch)`` for ``steps`` steps over tensors ``data`` (same first dim).

    ``ckpt`` with ``ckpt_every > 0`` writes a checkpoint every that many steps and at the end;
    ``resume=True`` continues from ``ckpt`` if it exists. ``ema_decay`` keeps an exponential
    moving average of the weights (torch.optim.swa_utils), returned as ``result.ema``.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not data or any(len(t) != len(data[0]) for t in data):
        raise KexueError("training data must be one or more tensors with the same number of rows")
    n = len(data[0])
    if n == 0:
        raise KexueError("training data is empty")
    acc = accelerator or default_accelerator()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
    start, losses = 0, []
    if resume and ckpt is not None and Path(ckpt).exists():
        st = load_checkpoint(ckpt)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        if ema is not None and "ema" in st:
            ema.load_state_dict(st["ema"])
        start, losses = int(st["step"]), list(st["losses"])
    model, optimizer = acc.prepare(model, optimizer)
    if ema is not None:
        ema.to(acc.device)
    data = [t.to(acc.device) for t in data]

    def checkpoint(step):
        if ckpt is None or not acc.is_main_process:
            return
        st = {"model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
              "step": step, "losses": losses}
        if ema is not None:
            st["ema"] = ema.state_dict()
        save_checkpoint(ckpt, st)

    steps_iter = range(start, steps)
    if tracker is not None:
        steps_iter = tracker.track(steps_iter, description, total=steps - start)
    model.train()
    for step in steps_iter:
        idx = batch_indices(n, batch_size, step, seed, acc.process_index, acc.num_processes).to(acc.device)
        torch.manual_seed(_step_seed(seed, step) + acc.process_index)
        loss = loss_fn(model, [t[idx] for t in data])
        if not torch.isfinite(loss):
            raise KexueError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if grad_clip is not None:
            acc.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(acc.unwrap_model(model))
        losses.append(float(loss.detach()))
        if ckpt_every and (step + 1) % ckpt_every == 0:
            checkpoint(step + 1)
    if ckpt is not None:
        checkpoint(steps)
    model = acc.unwrap_model(model)
    model.eval()
    return TrainResult(model, ema.module.eval() if ema is not None else None, losses, steps)
