"""Noise schedules in the post's notation, all coefficients in float64 (SPEC 7).

Forward step (SPEC 7): x_t = α_t x_{t-1} + β_t ε_t with α_t² + β_t² = 1, so
q(x_t | x_0) = N(ᾱ_t x_0, β̄_t² I) with ᾱ_t = Π_{i≤t} α_i and β̄_t = sqrt(1 - ᾱ_t²).

Mapping to the DDPM paper / diffusers (their symbols carry a ``^D``):
    β_t^D = β_t²,  α_t^D = α_t²,  ᾱ_t^D (``alphas_cumprod``) = ᾱ_t²,  sqrt(1-ᾱ_t^D) = β̄_t.
Time runs t = 0..T with ᾱ_0 = 1, β̄_0 = 0 (arrays have T+1 entries, index 0 is "clean data").
diffusers' 0-based timestep k corresponds to our t = k + 1; networks are called with k = t - 1,
so a ``UNet2DModel`` trained with diffusers plugs in unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kexue.utils import KexueError


class NoiseSchedule:
    """α_t, β_t, ᾱ_t, β̄_t for t = 0..T (float64 tensors of length T+1, entry 0 = no noise).

    Build it with :func:`linear_schedule`, :func:`cosine_schedule`, :meth:`from_betas` (a user
    array of the paper's β_t^D) or :meth:`from_alphas_cumprod` (the paper's ᾱ_t^D).
    """

    def __init__(self, betas_ddpm, name: str = "custom"):
        b = np.asarray(betas_ddpm, dtype=np.float64)
        if b.ndim != 1 or len(b) == 0:
            raise KexueError("a noise schedule needs a 1-D, non-empty array of β_t (DDPM notation)")
        if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b >= 1):
            raise KexueError("schedule β_t (DDPM notation) must lie strictly between 0 and 1")
        self.name = name
        self.T = len(b)
        bd = torch.from_numpy(np.concatenate([[0.0], b]))
        self.beta_sq = bd                                   # β_t² = β_t^D
        self.alphas = torch.sqrt(1.0 - bd)                  # α_t
        self.betas = torch.sqrt(bd)                         # β_t
        self.alpha_bars = torch.cumprod(self.alphas, 0)     # ᾱ_t (ᾱ_0 = 1)
        self.beta_bars = torch.sqrt(1.0 - self.alpha_bars ** 2)  # β̄_t (β̄_0 = 0)

    @classmethod
    def from_betas(cls, betas_ddpm, name: str = "custom") -> NoiseSchedule:
        """A user-given array of the paper's β_t^D = β_t² (t = 1..T)."""
        return cls(betas_ddpm, name)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, name: str = "custom") -> NoiseSchedule:
        """From the paper's ᾱ_t^D = ᾱ_t² (diffusers' ``alphas_cumprod``), t = 1..T."""
        a = np.asarray(alphas_cumprod, dtype=np.float64)
        if a.ndim != 1 or np.any(np.diff(a) >= 0) or a[0] >= 1 or a[-1] <= 0:
            raise KexueError("alphas_cumprod must be strictly decreasing inside (0, 1)")
        return cls(1.0 - a / np.concatenate([[1.0], a[:-1]]), name)

    # ---- SPEC 7.1 / 7.2 pieces, all broadcast over a batch of integer times t
    def coef(self, name: str, t, like: torch.Tensor):
        """Coefficient ``name`` at times ``t`` shaped to broadcast against ``like`` (its dtype);
        a Python float for an integer t (what samplers use: no per-step tensor bookkeeping)."""
        if isinstance(t, int):
            return float(getattr(self, name)[t])
        v = getattr(self, name)[torch.as_tensor(t, dtype=torch.long).cpu()]
        return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)).to(like.device, like.dtype)

    def q_sample(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """x_t = ᾱ_t x_0 + β̄_t ε, a draw from q(x_t | x_0) = N(ᾱ_t x_0, β̄_t² I)  (SPEC 7)."""
        return self.coef("alpha_bars", t, x0) * x0 + self.coef("beta_bars", t, x0) * eps

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Mean and variance of p(x_{t-1} | x_t, x_0)  (SPEC 7.1), t ≥ 1:
        mean = (α_t β̄_{t-1}²/β̄_t²) x_t + (ᾱ_{t-1} β_t²/β̄_t²) x_0,  var = β̄_{t-1}² β_t²/β̄_t²."""
        if isinstance(t, int):  # scalar path used by the samplers
            af, b2f, bb2f = float(self.alphas[t]), float(self.beta_sq[t]), float(self.beta_bars[t]) ** 2
            bbp2f, abpf = float(self.beta_bars[t - 1]) ** 2, float(self.alpha_bars[t - 1])
            return (af * bbp2f / bb2f) * x_t + (abpf * b2f / bb2f) * x0, bbp2f * b2f / bb2f
        t = torch.as_tensor(t, dtype=torch.long)
        a, b2 = self.alphas[t], self.beta_sq[t]
        bb2, bbp2, abp = self.beta_bars[t] ** 2, self.beta_bars[t - 1] ** 2, self.alpha_bars[t - 1]
        shape = lambda v: v.reshape(v.shape + (1,) * (x_t.ndim - v.ndim)).to(x_t.device, x_t.dtype)  # noqa: E731
        mean = shape(a * bbp2 / bb2) * x_t + shape(abp * b2 / bb2) * x0
        return mean, shape(bbp2 * b2 / bb2)

    def posterior_variance(self, t) -> torch.Tensor:
        """σ_t² = β̄_{t-1}² β_t²/β̄_t² (SPEC 7.4, exact when the data is a single point)."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self.beta_bars[t - 1] ** 2 * self.beta_sq[t] / self.beta_bars[t] ** 2

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t²/β̄_t²."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self.alpha_bars[t] ** 2 / self.beta_bars[t] ** 2

    def fingerprint(self) -> str:
        """A short hash of β_t², so checkpoints can tell two schedules with one name apart."""
        import hashlib

        return hashlib.sha256(self.beta_sq.numpy().tobytes()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return {"name": self.name, "T": self.T}

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name!r}, T={self.T})"


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM's linear schedule: β_t^D = β_t² evenly spaced from ``beta_start`` to ``beta_end``."""
    if T < 1:
        raise KexueError("a schedule needs T ≥ 1 steps")
    return NoiseSchedule(np.linspace(beta_start, beta_end, T, dtype=np.float64), "linear")


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal's cosine schedule: ᾱ_t² = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2),
    with β_t^D capped at ``max_beta`` (diffusers' ``squaredcos_cap_v2``)."""
    if T < 1:
        raise KexueError("a schedule needs T ≥ 1 steps")
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    b = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return NoiseSchedule(np.array(b, dtype=np.float64), "cosine")


def make_schedule(name: str, T: int = 1000) -> NoiseSchedule:
    """``linear`` or ``cosine`` by name (for the CLI and configs)."""
    if name == "linear":
        return linear_schedule(T)
    if name == "cosine":
        return cosine_schedule(T)
    raise KexueError(f"unknown schedule {name!r}; choose linear or cosine (or pass an array to NoiseSchedule)")
