"""Training (through kexue.train: accelerate, EMA, atomic checkpoints, exact resume) and
safetensors model files for the ε-network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from kexue.ddpm.param import diffusion_loss
from kexue.ddpm.schedule import NoiseSchedule, make_schedule
from kexue.ddpm.unet import UNet
from kexue.utils import KexueError, atomic_path


def images_to_model(X01: np.ndarray | torch.Tensor, side: int) -> torch.Tensor:
    """Flat images in [0, 1] (N, side²) → (N, 1, side, side) float32 in [-1, 1]."""
    X = torch.as_tensor(np.asarray(X01, dtype=np.float32))
    if X.ndim != 2 or X.shape[1] != side * side or len(X) == 0:
        raise KexueError(f"expected a non-empty image array of shape (N, {side * side}), got {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise KexueError("training images contain NaN or inf")
    return (X * 2 - 1).reshape(-1, 1, side, side)


def model_to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] → flat float32 images in [0, 1] (clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) / 2).reshape(len(x), -1).numpy()


def fit_ddpm(model: torch.nn.Module, X: torch.Tensor, schedule: NoiseSchedule, *, steps: int, batch_size: int = 64,
             lr: float = 1e-3, seed: int = 0, ema_decay: float | None = 0.999, prediction: str = "eps", weighting=None,
             ckpt: str | os.PathLike | None = None, ckpt_every: int = 0, resume: bool = False, tracker=None,
             grad_clip: float | None = 1.0):
    """Train ``model`` on images ``X`` (N, C, H, W) in [-1, 1] with the loss of SPEC 7.2.

    Returns kexue.train.TrainResult (``.ema`` is the EMA network to sample from). The timestep
    and noise of each batch come from torch's global RNG, which kexue.train re-seeds from
    (seed, step) — so ``resume=True`` reproduces the uninterrupted loss curve exactly.
    """
    from kexue.train import train

    def loss_fn(m, batch):
        return diffusion_loss(m, batch[0], schedule, prediction=prediction, weighting=weighting)

    return train(model, loss_fn, [X], steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema_decay=ema_decay,
                 ckpt=ckpt, ckpt_every=ckpt_every, resume=resume, tracker=tracker, description="DDPM training",
                 grad_clip=grad_clip)


def save_model(path: str | os.PathLike, model: UNet, schedule: NoiseSchedule, prediction: str = "eps",
               extra: dict | None = None) -> None:
    """Weights as safetensors, with the network config, schedule and prediction type in the
    metadata (atomic write)."""
    from safetensors.torch import save_file

    meta = {"unet": json.dumps(model.config), "schedule": json.dumps(schedule.to_dict()),
            "betas": json.dumps(schedule.beta_sq[1:].tolist()), "prediction": prediction,
            "extra": json.dumps(extra or {})}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)


def load_model(path: str | os.PathLike) -> tuple[UNet, NoiseSchedule, str, dict]:
    """(network in eval mode, schedule, prediction type, extra) from a file written by save_model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise KexueError(f"model file {p} not found; train one with `kexue ddpm train -o {p}`")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        cfg = json.loads(meta["unet"])
        sched_info = json.loads(meta["schedule"])
        schedule = NoiseSchedule(json.loads(meta["betas"]), sched_info.get("name", "custom"))
        model = UNet(**{**cfg, "mults": tuple(cfg["mults"])})
        model.load_state_dict(load_file(str(p)))
    except KexueError:
        raise
    except Exception as e:
        raise KexueError(f"{p} is not a kexue DDPM model file ({type(e).__name__}); retrain with `kexue ddpm train`") from None
    return model.eval(), schedule, meta.get("prediction", "eps"), json.loads(meta.get("extra", "{}"))


__all__ = ["fit_ddpm", "save_model", "load_model", "images_to_model", "model_to_images", "make_schedule"]
