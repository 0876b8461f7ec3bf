"""Images in and out of the network's scale, and training through kexue.train (accelerate, EMA,
atomic checkpoints that remember their run's config and data, exact resume)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from kexue import validate
from kexue.ddpm.param import PREDICTIONS, diffusion_loss
from kexue.ddpm.schedule import NoiseSchedule
from kexue.utils import KexueError

DATASETS = ("mnist5k", "mnist", "mnist-test", "digits")


def images_to_model(X01, channels: int = 1) -> torch.Tensor:
    """Images in [0, 1] — flat square (N, H·W), (N, H, W) or (N, C, H, W); uint8 is scaled — as
    float32 (N, C, H, W) in [-1, 1], the scale the networks are trained at."""
    X = validate.images(X01, "images", channels=channels)
    if X.min() < 0 or X.max() > 1:
        raise KexueError(f"image values must lie in [0, 1] (or be uint8 0..255); got {X.min():g}..{X.max():g}")
    return torch.from_numpy(X * 2 - 1)


def model_to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] → flat float32 images in [0, 1] (clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) / 2).reshape(len(x), -1).numpy()


def load_images(data: str | os.PathLike, data_dir=None) -> np.ndarray:
    """Flat square images in [0, 1] from a data set name — ``mnist5k``, ``mnist`` (the 60,000
    training images), ``mnist-test`` (the 10,000 test images), ``digits`` (8×8) — or a .npy of (N, side²) / (N, side, side) images with
    values in [0, 1] or 0..255."""
    from kexue.io import load_npy

    if str(data) in DATASETS:
        from kexue import data as datasets

        if data == "digits":
            return datasets.load_digits()[0] / 16.0
        load = {"mnist5k": lambda: datasets.load_mnist5k(), "mnist": lambda: datasets.load_mnist_train(data_dir),
                "mnist-test": lambda: datasets.load_mnist_test(data_dir)}[str(data)]
        return load()[0] / 255.0
    p = Path(data)
    if not p.is_file():
        raise KexueError(f"data {str(data)!r} not found; pass {', '.join(DATASETS)} or a .npy array (N, side²) of images")
    X = validate.images(load_npy(p, "image"), str(p))
    X = X.reshape(len(X), -1).astype(np.float64)
    if X.max() > 1.0:  # 8-bit images stored as numbers
        X = X / 255.0
    if X.min() < 0 or X.max() > 1:
        raise KexueError(f"{p}: pixel values must lie in [0, 1] or 0..255")
    return X


def fit_ddpm(model: torch.nn.Module, X: torch.Tensor, schedule: NoiseSchedule, *, steps: int, batch_size: int = 64,
             lr: float = 1e-3, seed: int = 0, ema_decay: float | None = 0.999, prediction: str = "eps", weighting=None,
             ckpt: str | os.PathLike | None = None, ckpt_every: int = 0, resume: bool = False, tracker=None,
             grad_clip: float | None = 1.0, config: dict | None = None, threads: int | None = None):
    """Train ``model`` on images ``X`` (N, C, H, W) in [-1, 1] with the loss of SPEC 7.2.

    Returns kexue.train.TrainResult (``.ema`` is the EMA network to sample from). The timestep
    and noise of each batch come from torch's global RNG, which kexue.train re-seeds from
    (seed, step) — so ``resume=True`` reproduces the uninterrupted loss curve exactly. The
    checkpoint stores ``config`` (plus the schedule, prediction and optimiser settings) and a
    fingerprint of ``X``; resuming with other settings or data is refused with one line.
    ``threads``: torch's thread count for this call (None: its current setting). Ctrl-C raises
    ``kexue.train.TrainingInterrupted`` after checkpointing (see :func:`kexue.train.train`).
    """
    from kexue.train import train

    validate.choice(prediction, PREDICTIONS, "prediction")
    validate.positive(lr, "lr")
    validate.integer(steps, "steps", 1)
    validate.integer(batch_size, "batch_size", 1)
    if ema_decay is not None:
        validate.real(ema_decay, "ema_decay", 0.0, 1.0, hi_open=True)
    run = {**(config or {}), "T": schedule.T, "schedule": schedule.name, "betas": schedule.fingerprint(),
           "prediction": prediction,
           "weighting": weighting if weighting is None or isinstance(weighting, str) else "callable",
           "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay, "seed": seed, "grad_clip": grad_clip}

    def loss_fn(m, batch):
        return diffusion_loss(m, batch[0], schedule, prediction=prediction, weighting=weighting)

    return train(model, loss_fn, [X], steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema_decay=ema_decay,
                 ckpt=ckpt, ckpt_every=ckpt_every, resume=resume, tracker=tracker, description="DDPM training",
                 grad_clip=grad_clip, config=run, threads=threads)


__all__ = ["fit_ddpm", "images_to_model", "model_to_images", "load_images"]
