"""Model parameterisations (ε, x_0, v), conversions, and the denoising loss (SPEC 7.2).

With x_t = ᾱ_t x_0 + β̄_t ε (SPEC 7):
    x̂_0 = (x_t - β̄_t ε̂)/ᾱ_t                 (SPEC 7.2)
    ε̂   = (x_t - ᾱ_t x̂_0)/β̄_t
    v    = ᾱ_t ε - β̄_t x_0   (so x_0 = ᾱ_t x_t - β̄_t v and ε = β̄_t x_t + ᾱ_t v, since ᾱ_t² + β̄_t² = 1)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kexue.ddpm.schedule import NoiseSchedule
from kexue.utils import KexueError

PREDICTIONS = ("eps", "x0", "v")


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise KexueError(f"unknown prediction type {prediction!r}; choose from {', '.join(PREDICTIONS)}")


def to_eps_x0(sched: NoiseSchedule, out: torch.Tensor, x_t: torch.Tensor, t, prediction: str = "eps"):
    """(ε̂, x̂_0) from a network output of type ``prediction`` at x_t, time t."""
    _check(prediction)
    a, b = sched.coef("alpha_bars", t, x_t), sched.coef("beta_bars", t, x_t)
    if prediction == "eps":
        return out, (x_t - b * out) / a
    if prediction == "x0":
        return (x_t - a * out) / b, out
    return b * x_t + a * out, a * x_t - b * out


def target(sched: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t, prediction: str = "eps") -> torch.Tensor:
    """What a network of type ``prediction`` should output for x_t = ᾱ_t x_0 + β̄_t ε."""
    _check(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return sched.coef("alpha_bars", t, x0) * eps - sched.coef("beta_bars", t, x0) * x0


def loss_weight(sched: NoiseSchedule, t: torch.Tensor, weighting, prediction: str = "eps") -> torch.Tensor | None:
    """Per-sample weights expressed relative to the plain ε-loss ‖ε - ε̂‖² (SPEC 7.2).

    ``None``/"eps": the simplified loss (the weight β̄_t²/ᾱ_t² dropped; for x_0/v prediction the
    plain MSE of that target); "x0": keep β̄_t²/ᾱ_t², i.e. ‖x_0 - x̂_0‖²; "min_snr": min(SNR, 5)/SNR
    (Hang et al. 2023); a callable maps integer t to weights.
    """
    if weighting is None or weighting == "eps":
        return None
    snr = sched.snr(t).float()
    if weighting == "x0":
        w = 1.0 / snr
    elif weighting == "min_snr":
        w = torch.clamp(snr, max=5.0) / snr
    elif callable(weighting):
        return torch.as_tensor(weighting(t), dtype=torch.float32)
    else:
        raise KexueError(f"unknown loss weighting {weighting!r}; use None, 'eps', 'x0', 'min_snr' or a callable")
    # the weight is defined on the ε-scale; convert to the scale of the chosen target
    if prediction == "x0":
        w = w * snr           # ‖ε-ε̂‖² = SNR · ‖x_0-x̂_0‖²
    elif prediction == "v":
        w = w * snr / (1 + snr)   # ‖ε-ε̂‖² = ᾱ²‖v-v̂‖² = SNR/(1+SNR) ‖v-v̂‖²
    return w


def call_model(model: Callable, x: torch.Tensor, t) -> torch.Tensor:
    """Run a network at our time t (1..T): it receives diffusers' index t-1; outputs with a
    ``.sample`` field (diffusers' UNet2DModel) are unwrapped."""
    t = torch.as_tensor(t, dtype=torch.long, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    out = model(x, t - 1)
    return out.sample if hasattr(out, "sample") else out


def diffusion_loss(model: Callable, x0: torch.Tensor, sched: NoiseSchedule, prediction: str = "eps",
                   weighting=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo estimate of the denoising loss (SPEC 7.2): t ~ U{1..T}, ε ~ N(0, I),
    mean over the batch of w(t)·‖target - model(ᾱ_t x_0 + β̄_t ε, t)‖² / D."""
    _check(prediction)
    n = x0.shape[0]
    t = torch.randint(1, sched.T + 1, (n,), generator=generator, device="cpu")
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
    x_t = sched.q_sample(x0, t, eps)
    out = call_model(model, x_t, t.to(x0.device))
    per = ((out - target(sched, x0, eps, t, prediction)) ** 2).flatten(1).mean(1)
    w = loss_weight(sched, t, weighting, prediction)
    return (per * w.to(per.device)).mean() if w is not None else per.mean()
