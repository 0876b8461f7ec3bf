""":class:`DDPM`: one object holding what a trained diffusion model is — the ε-network (or x_0-/v-
network), its noise schedule and its prediction type — with ``fit``, ``sample``, ``nll`` and
``save``/``load`` (one .safetensors file through :func:`kexue.io.save_fitted`)."""

from __future__ import annotations

import os

import numpy as np
import torch

from kexue import validate
from kexue.ddpm.bound import VariationalBound, variational_bound
from kexue.ddpm.fit import fit_ddpm, images_to_model, model_to_images
from kexue.ddpm.param import PREDICTIONS
from kexue.ddpm.sampler import make_sampler
from kexue.ddpm.schedule import NoiseSchedule
from kexue.ddpm.unet import UNet, UNetConfig
from kexue.utils import KexueError

KIND = "kexue.DDPM"


class DDPM:
    """A diffusion model on (C, side, side) images (SPEC 7).

    ``DDPM(UNetConfig(base=16), linear_schedule(1000), side=28)`` builds an untrained one (weights
    drawn from ``seed``); :meth:`fit` trains it (the EMA weights become the model), :meth:`sample`
    draws images in [0, 1], :meth:`nll` gives the variational bound in bits/dim (SPEC 7.6).
    ``net`` is the torch module; ``info`` a JSON-able dict saved with the model (training facts).
    """

    def __init__(self, unet: UNetConfig | UNet, schedule: NoiseSchedule, *, side: int = 28, prediction: str = "eps",
                 seed: int = 0, info: dict | None = None):
        if not isinstance(schedule, NoiseSchedule):
            raise KexueError("DDPM needs a kexue.ddpm.NoiseSchedule (linear_schedule, cosine_schedule, ...)")
        self.prediction = validate.choice(prediction, PREDICTIONS, "prediction")
        if isinstance(unet, UNet):
            self.net = unet
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.net = UNet(unet)
        self.schedule, self.side, self.info = schedule, validate.integer(side, "side", 1), dict(info or {})
        levels = 2 ** (len(self.net.config.mults) - 1)
        if side % levels:
            raise KexueError(f"image side {side} must be divisible by 2^(levels-1) = {levels}; use fewer mults")
        self.net.eval()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.net.config.channels, self.side, self.side)

    # ---- training
    def fit(self, images, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
            ema_decay: float | None = 0.999, weighting=None, ckpt: str | os.PathLike | None = None, ckpt_every: int = 0,
            resume: bool = False, grad_clip: float | None = 1.0, tracker=None, threads: int | None = None) -> DDPM:
        """Train on images in [0, 1] (see :func:`kexue.ddpm.images_to_model` for the shapes) with the
        loss of SPEC 7.2; a checkpoint resumes exactly and refuses another architecture,
        schedule, optimiser setting or data set. ``self.result_`` keeps the TrainResult.
        ``threads`` (here and in :meth:`sample`, :meth:`nll`): torch's thread count for the call,
        None for torch's current setting (:func:`kexue.train.num_threads`)."""
        X = images_to_model(images, self.net.config.channels)
        if X.shape[2:] != (self.side, self.side):
            raise KexueError(f"images are {X.shape[2]}×{X.shape[3]}; this model takes {self.side}×{self.side}")
        res = fit_ddpm(self.net, X, self.schedule, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                       ema_decay=ema_decay, prediction=self.prediction, weighting=weighting, ckpt=ckpt,
                       ckpt_every=ckpt_every, resume=resume, tracker=tracker, grad_clip=grad_clip,
                       config={**self.net.config.to_dict(), "side": self.side}, threads=threads)
        self.net = (res.ema if res.ema is not None else res.model).eval()
        self.result_ = res
        self.info.update({"steps": res.steps, "train_images": len(X), "seed": seed})
        return self

    # ---- sampling and likelihood
    def sample(self, n: int | None = None, *, sampler: str = "ddim", steps: int | None = None, eta: float | None = None,
               variance: str | None = None, clip: bool = True, x_T: torch.Tensor | np.ndarray | None = None, seed: int = 0,
               tracker=None, threads: int | None = None) -> np.ndarray:
        """``n`` images as flat float32 rows in [0, 1] (or one per given initial noise ``x_T``, shape
        (n, C, side, side)), by DDIM (``steps``, default 50, and ``eta``, default 0; SPEC 7.5) or
        DDPM (all T steps, ``variance`` "posterior" (default) or "beta"; SPEC 7.3). A setting of
        the other sampler is refused (see :func:`kexue.ddpm.make_sampler`)."""
        smp = make_sampler(self.schedule, sampler, steps=steps, eta=eta, variance=variance,
                           prediction=self.prediction, clip_x0=1.0 if clip else None)
        shape: tuple[int, ...] | None = None
        noise: torch.Tensor | None = None
        if x_T is None:
            shape = (validate.integer(n, "n", 1), *self.shape)
        else:
            noise = torch.as_tensor(np.asarray(x_T, dtype=np.float32))
            if noise.ndim != 4 or tuple(noise.shape[1:]) != self.shape:
                raise KexueError(f"x_T must have shape (n, {', '.join(map(str, self.shape))}), got {tuple(noise.shape)}")
        from kexue.train import num_threads

        with num_threads(threads):
            out = smp(self.net, shape=shape, x_T=noise,
                      generator=torch.Generator().manual_seed(seed), tracker=tracker)
        return model_to_images(out)

    def nll(self, images, *, variance: str = "posterior", timesteps: int | None = None, batch_size: int = 256,
            seed: int = 0, ckpt: str | os.PathLike | None = None, tracker=None, threads: int | None = None) -> VariationalBound:
        """The variational bound of SPEC 7.6 on images in [0, 1] with 256 levels (values are
        rounded to the nearest level, as 8-bit data already is): ``.bits_per_dim``, per-image nats.
        ``ckpt`` keeps partial sums so an interrupted call resumes (see :func:`variational_bound`)."""
        X = images_to_model(images, self.net.config.channels).double()
        if X.shape[2:] != (self.side, self.side):
            raise KexueError(f"images are {X.shape[2]}×{X.shape[3]}; this model takes {self.side}×{self.side}")
        X = torch.round((X + 1) * 127.5) / 127.5 - 1
        from kexue.train import num_threads

        with num_threads(threads):
            return variational_bound(self.net, X, self.schedule, prediction=self.prediction, variance=variance,
                                     timesteps=timesteps, batch_size=batch_size, seed=seed, ckpt=ckpt, tracker=tracker)

    # ---- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Weights, β_t² of the schedule and the config, as one .safetensors file."""
        from kexue.io import save_fitted

        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors["schedule.beta_sq"] = self.schedule.beta_sq[1:]
        save_fitted(path, KIND, tensors, {"unet": self.net.config.to_dict(), "schedule": self.schedule.name,
                                          "side": self.side, "prediction": self.prediction, "info": self.info})

    @classmethod
    def load(cls, path: str | os.PathLike) -> DDPM:
        """A model written by :meth:`save` (network in eval mode)."""
        from kexue.io import load_fitted

        tensors, cfg = load_fitted(path, KIND)
        try:
            net = UNet(UNetConfig.from_dict(cfg["unet"]))
            net.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("net.")})
            schedule = NoiseSchedule(tensors["schedule.beta_sq"], cfg.get("schedule", "custom"))
            return cls(net, schedule, side=cfg["side"], prediction=cfg["prediction"], info=cfg.get("info"))
        except (KeyError, TypeError, RuntimeError) as e:
            raise KexueError(f"{path} is a damaged DDPM file ({type(e).__name__}); save the model again") from None

    def __repr__(self) -> str:
        return f"DDPM({self.net.config}, {self.schedule!r}, side={self.side}, prediction={self.prediction!r})"
