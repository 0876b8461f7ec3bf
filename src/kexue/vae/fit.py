"""Getting data into the model's convention and training it (SPEC 1.3) through :func:`kexue.train.train`."""

from __future__ import annotations

import dataclasses
import os
from typing import cast

import numpy as np
import torch

from kexue import validate
from kexue.utils import KexueError
from kexue.vae.model import DECODERS, VAE, VAEConfig, iwae_loss

BINARIZE = ("dynamic", "stochastic", "threshold", "none")
SCHEDULES = ("constant", "iwae", "cosine")


def prepare(X, kind: str, binarize: str = "none", seed: int = 0) -> torch.Tensor:
    """Validate an array for a decoder's data kind and return float32 in the model's convention.

    ``binarize`` (binary kind only): ``"none"`` requires values in {0, 1}; ``"threshold"`` maps
    x/255 > 0.5 (or x > 0.5 for [0, 1] floats) to 1; ``"stochastic"`` draws Bernoulli(x/255) with
    ``seed`` (the usual fixed binarisation of a test set).
    """
    validate.choice(kind, DECODERS.values(), "data kind")
    Xf = validate.matrix(X, "data")
    if kind == "continuous":
        return torch.as_tensor(Xf.astype(np.float32))
    if kind == "8bit":
        if Xf.min() < 0 or Xf.max() > 255 or not np.all(Xf == np.round(Xf)):
            raise KexueError("the logistic (8-bit) decoder needs integer pixel values 0..255 (e.g. uint8 images)")
        return torch.as_tensor((Xf / 255.0).astype(np.float32))
    validate.choice(binarize, ("none", "threshold", "stochastic"), "binarize")
    if binarize == "none":
        if not np.isin(Xf, (0.0, 1.0)).all():
            raise KexueError("the Bernoulli decoder needs data in {0, 1}; pass binarize='stochastic' or "
                             "'threshold'")
        return torch.as_tensor(Xf.astype(np.float32))
    p = unit_pixels(Xf)
    if binarize == "threshold":
        return torch.as_tensor((p > 0.5).astype(np.float32))
    rng = np.random.default_rng(seed)
    return torch.as_tensor((rng.random(p.shape) < p).astype(np.float32))


def scoring_binarize(model: VAE) -> str:
    """The ``binarize`` of :func:`prepare` that treats new data as ``model`` was trained: one fixed
    Bernoulli draw (``"stochastic"``, the usual test protocol) after ``"dynamic"`` or
    ``"stochastic"`` training, ``"threshold"`` after ``"threshold"``, else ``"none"`` — also for
    models that do not record it (not trained by :func:`fit_vae`, or saved before it was stored)."""
    return {"dynamic": "stochastic", "stochastic": "stochastic", "threshold": "threshold"}.get(
        str(getattr(model, "binarize_", None)), "none")


def unit_pixels(Xf: np.ndarray) -> np.ndarray:
    """Scale pixels to [0, 1]: values above 1 are read as 0..255."""
    if Xf.min() < 0:
        raise KexueError("pixel data must be non-negative (0..255 or [0, 1])")
    if Xf.max() > 1:
        if Xf.max() > 255:
            raise KexueError("pixel data must be in 0..255 or [0, 1]")
        return Xf / 255.0
    return Xf


def _schedule(name: str, steps: int, steps_per_epoch: int):
    from kexue.train import iwae_schedule, warmup_cosine

    if name == "iwae":
        return iwae_schedule(steps_per_epoch)
    if name == "cosine":
        return warmup_cosine(steps, warmup=min(1000, steps // 20))
    return None


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam as :func:`fit_vae` uses it: the fused kernel, one pass over all parameters (about
    5× faster than the default per-tensor update on CPU, ~4 ms of a VAE step)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def fit_vae(X, config: VAEConfig | None = None, *, M: int = 1, binarize: str = "dynamic", steps: int = 2000,
            batch_size: int = 100, lr: float = 1e-3, schedule: str = "constant", seed: int = 0,
            ckpt: str | os.PathLike | None = None, ckpt_every: int = 0, resume: bool = False,
            eval_every: int = 0, evaluate_fn=None, tracker=None, description: str | None = None,
            threads: int | None = None) -> VAE:
    """Train a VAE (M = 1) or IWAE (M > 1) on the rows of ``X`` with SPEC 1.3; return it in eval mode.

    ``config`` is the architecture (default :class:`VAEConfig`: the IWAE paper's MNIST model);
    its ``in_dim`` is taken from the data. For the Bernoulli decoder, uint8 0..255 or [0, 1]
    values are binarised according to ``binarize``: ``"dynamic"`` (a fresh Bernoulli(x) draw
    every step, as in the IWAE paper), ``"stochastic"``/``"threshold"`` (once) or ``"none"``
    (data already in {0, 1}). ``schedule``: ``"constant"``, ``"iwae"`` (the paper's 3^i-epoch
    stages, lr × 10^(−i/7)) or ``"cosine"`` (warm-up, then cosine decay).
    Training goes through :func:`kexue.train.train`: deterministic batches, checkpoints every
    ``ckpt_every`` steps, exact ``resume`` (refused if the checkpoint's settings or data differ),
    ``evaluate_fn(model, step)`` every ``eval_every`` steps. Sets ``losses_``, ``evals_``, and
    ``seconds_`` / ``legs_``: the training time and the number of processes over all resumes.
    ``threads``: torch's thread count for this call (None: torch's current setting; see
    :func:`kexue.train.num_threads`). Ctrl-C raises ``kexue.train.TrainingInterrupted`` after
    checkpointing (with ``ckpt``), so ``resume=True`` continues from there.
    """
    from kexue.train import train

    config = config or VAEConfig()
    M, steps, batch_size = (validate.integer(v, n, 1) for v, n in ((M, "M"), (steps, "steps"), (batch_size, "batch_size")))
    lr = validate.positive(lr, "lr")
    validate.choice(binarize, BINARIZE, "binarize")
    validate.choice(schedule, SCHEDULES, "schedule")
    kind = DECODERS[config.decoder]
    dynamic = kind == "binary" and binarize == "dynamic"
    if dynamic:
        A = validate.matrix(X, "data", dtype=None)  # no float64 copy of 60,000 images
        A = A.astype(np.float32) / np.float32(255) if A.dtype == np.uint8 else unit_pixels(A.astype(np.float64))
        data = torch.as_tensor(A.astype(np.float32, copy=False))
    else:
        data = prepare(X, kind, binarize=binarize, seed=seed)
    config = dataclasses.replace(config, in_dim=data.shape[1])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VAE(config)

    def loss_fn(m, batch):
        x = batch[0]
        if dynamic:
            x = torch.bernoulli(x)  # the torch RNG is seeded from (seed, step) by train(): reproducible
        return iwae_loss(m, x, M)

    bs = min(batch_size, len(data))
    run = {"vae": config.to_dict(), "M": M, "binarize": binarize, "batch_size": bs, "lr": lr,
           "schedule": schedule, "seed": seed}
    res = train(model, loss_fn, [data], steps=steps, batch_size=bs, optimizer=make_optimizer(model, lr), seed=seed,
                schedule=_schedule(schedule, steps, max(1, len(data) // bs)), ckpt=ckpt, ckpt_every=ckpt_every,
                resume=resume, config=run, eval_every=eval_every, evaluate_fn=evaluate_fn, tracker=tracker,
                description=description or (f"IWAE M={M}" if M > 1 else "VAE"), threads=threads)
    model = cast(VAE, res.model.eval())  # train returns the module it was given
    model.binarize_ = binarize if kind == "binary" else None
    model.losses_, model.evals_ = res.losses, res.evals
    model.seconds_, model.legs_ = res.seconds, res.legs
    return model
