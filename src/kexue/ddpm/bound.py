"""The variational bound on -log p(x_0) of a diffusion model, in nats and bits/dim (SPEC 7.6,
Ho et al. 2020, eq. 5):

    L = KL(q(x_T|x_0) ‖ N(0, I))                                   prior term
      + Σ_{t=2..T} KL(q(x_{t-1}|x_t, x_0) ‖ p_θ(x_{t-1}|x_t))     diffusion terms, x_t ~ q(x_t|x_0)
      - log p_θ(x_0|x_1)                                            decoder term, x_1 ~ q(x_1|x_0)

q(x_{t-1}|x_t, x_0) is the Bayes posterior of SPEC 7.1 and p_θ(x_{t-1}|x_t) = N(μ_θ, σ_t² I) the
reverse step of SPEC 7.3 (μ_θ = the posterior mean at x̂_0, σ_t² "posterior" or "beta", SPEC 7.4).
The decoder p_θ(x_0|x_1) = N(μ_θ(x_1, 1), σ_1²) is discretised over 256 levels per pixel (or, for
continuous data, a density). With σ_t² = β_t² its variance is β_1²; the posterior variance of
t = 1 is 0 (β̄_0 = 0), so with that choice we use the value of t = 2 there, as Ho et al.'s code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import torch

from kexue.ddpm.param import call_model, to_eps_x0
from kexue.ddpm.schedule import NoiseSchedule
from kexue.utils import KexueError, tracked
from kexue.validate import choice, integer


@dataclass
class VariationalBound:
    """Per-image terms of L in nats (float64 arrays of length N) and their sum.

    ``bits_per_dim`` = mean(L)/(D ln 2); ``stderr_bits_per_dim`` its standard error over the
    images (which includes the Monte Carlo noise of the x_t draws and of the sampled t)."""

    prior: np.ndarray
    diffusion: np.ndarray
    decoder: np.ndarray
    dim: int
    seconds: float = 0.0  # wall time of the computation, over all legs if it was resumed (``ckpt``)
    legs: int = 1

    @property
    def nats(self) -> np.ndarray:
        return self.prior + self.diffusion + self.decoder

    @property
    def bits_per_dim(self) -> float:
        return float(self.nats.mean() / (self.dim * math.log(2)))

    @property
    def stderr_bits_per_dim(self) -> float:
        n = len(self.nats)
        return float(self.nats.std(ddof=1) / math.sqrt(n) / (self.dim * math.log(2))) if n > 1 else float("nan")

    def to_dict(self) -> dict:
        return {"bits_per_dim": self.bits_per_dim, "stderr_bits_per_dim": self.stderr_bits_per_dim,
                "nats": float(self.nats.mean()), "prior_nats": float(self.prior.mean()),
                "diffusion_nats": float(self.diffusion.mean()), "decoder_nats": float(self.decoder.mean()),
                "images": len(self.nats), "dim": self.dim}


def gaussian_kl(mu_q: torch.Tensor, var_q, mu_p: torch.Tensor, var_p) -> torch.Tensor:
    """KL(N(μ_q, σ_q² I) ‖ N(μ_p, σ_p² I)) per row, summed over all but the first dim (SPEC 7.6):
    (D/2)[σ_q²/σ_p² - 1 - log(σ_q²/σ_p²)] + ‖μ_q - μ_p‖²/(2σ_p²); variances scalar or per row."""
    d = mu_q[0].numel()
    var_q = torch.as_tensor(var_q, dtype=mu_q.dtype).reshape(-1)
    var_p = torch.as_tensor(var_p, dtype=mu_q.dtype).reshape(-1)
    r = var_q / var_p
    sq = ((mu_q - mu_p) ** 2).flatten(1).sum(1)
    return 0.5 * d * (r - 1 - torch.log(r)) + sq / (2 * var_p)


def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) - Φ(a)) for a < b, accurate in both tails (mirror to the left tail when a > 0)."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    lh = torch.special.log_ndtr(hi)
    return lh + torch.log(-torch.expm1(torch.special.log_ndtr(lo) - lh))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, var: float, bins: int = 256) -> torch.Tensor:
    """-log P(x) per row, P the Gaussian N(mean, var) integrated over the bin of each pixel:
    ``bins`` levels on [-1, 1], bin edges ±1/(bins-1) around each level, open at -1 and 1."""
    half, sd = 1.0 / (bins - 1), math.sqrt(var)
    a, b = (x - half - mean) / sd, (x + half - mean) / sd
    logp = torch.where(x < -1 + half, torch.special.log_ndtr(b),
                       torch.where(x > 1 - half, torch.special.log_ndtr(-a), _log_ndtr_diff(a, b)))
    return -logp.flatten(1).sum(1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, var: float) -> torch.Tensor:
    """-log N(x; mean, var I) per row (the decoder for continuous data)."""
    d = x[0].numel()
    return 0.5 * (((x - mean) ** 2).flatten(1).sum(1) / var + d * math.log(2 * math.pi * var))


def reverse_variances(schedule: NoiseSchedule, variance: str = "posterior") -> torch.Tensor:
    """σ_t² of p_θ(x_{t-1}|x_t) for t = 0..T (SPEC 7.4; entry 0 unused): the posterior variance
    or β_t²; "posterior" takes the t = 2 value at t = 1 (see the module note)."""
    choice(variance, ("posterior", "beta"), "variance")
    t = torch.arange(1, schedule.T + 1)
    v = schedule.posterior_variance(t) if variance == "posterior" else schedule.beta_sq[1:].clone()
    if variance == "posterior":
        v[0] = schedule.posterior_variance(2)
    return torch.cat([torch.full((1,), float("nan"), dtype=torch.float64), v])


def _strata(T: int, timesteps: int | None, n: int, g: torch.Generator) -> tuple[list[torch.Tensor], list[float]]:
    """t ∈ 2..T per image: all of them, or ``timesteps`` strata of equal size with one uniform
    draw per stratum and image, weighted by the stratum's size (an unbiased estimate of the sum)."""
    if timesteps is None or timesteps >= T - 1:
        return [torch.full((n,), t) for t in range(T, 1, -1)], [1.0] * (T - 1)
    edges = np.linspace(2, T + 1, timesteps + 1).round().astype(int)
    ts, ws = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        ts.append(torch.randint(int(lo), int(hi), (n,), generator=g))
        ws.append(float(hi - lo))
    return ts, ws


@torch.inference_mode()
def variational_bound(model: Callable, x0: torch.Tensor, schedule: NoiseSchedule, *, prediction: str = "eps",
                      variance: str = "posterior", decoder: str = "discrete", timesteps: int | None = None,
                      batch_size: int = 256, seed: int = 0, ckpt=None, ckpt_every: int = 10,
                      tracker=None) -> VariationalBound:
    """The bound L of SPEC 7.6 for each image of ``x0`` (N, C, H, W) in [-1, 1].

    Every diffusion term uses its own draw x_t ~ q(x_t|x_0) (as Ho et al. do); ``timesteps`` =
    None sums all T - 1 of them (T network calls per image), an integer K ≤ T - 1 estimates the
    sum from K stratified t per image (K = T - 1 is the full sum; more is refused). ``decoder`` "discrete" (256 levels; the data should lie on them)
    or "gaussian" (a density, for continuous data). Deterministic given ``seed``.

    ``ckpt``: a file holding the diffusion terms summed so far and the RNG state, every
    ``ckpt_every`` t-strata and at the end; a call with the same network, images and settings
    continues from it with the same numbers as one uninterrupted call, or, finished, returns
    it. ``seconds`` and ``legs`` of the result count every resume (:class:`kexue.checkpoint.Clock`).
    """
    from kexue.checkpoint import Clock, fingerprint, model_fingerprint, partial, save_partial

    choice(variance, ("posterior", "beta"), "variance")
    choice(decoder, ("discrete", "gaussian"), "decoder")
    if timesteps is not None:
        integer(timesteps, "timesteps", 1)
    integer(batch_size, "batch_size", 1)
    integer(ckpt_every, "ckpt_every", 1)
    if schedule.T < 2:
        raise KexueError("the bound needs a schedule with T ≥ 2")
    if timesteps is not None and timesteps > schedule.T - 1:  # more strata than terms would be ignored
        raise KexueError(f"timesteps={timesteps} is more than the T - 1 = {schedule.T - 1} diffusion terms; "
                         f"give at most {schedule.T - 1}, or None to sum all of them")
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    n, T = len(x0), schedule.T
    g = torch.Generator().manual_seed(seed)
    ab_T = float(schedule.alpha_bars[T])
    prior = gaussian_kl(ab_T * x0, float(schedule.beta_bars[T]) ** 2, torch.zeros_like(x0), 1.0)
    ts, ws = _strata(T, timesteps, n, g)
    diffusion = torch.zeros(n, dtype=torch.float64)
    key: dict = {} if ckpt is None else {
        "what": "variational_bound", "schedule": schedule.fingerprint(), "prediction": prediction, "variance": variance,
        "decoder": decoder, "timesteps": timesteps, "batch_size": batch_size, "seed": seed,
        "model": model_fingerprint(model),
        "data": fingerprint([x0])}
    st, first = partial(ckpt, key), 0
    clock = Clock(st)
    if st is not None:  # continue after the strata the last process finished, with its RNG state
        first, diffusion = int(st["done"]), st["diffusion"]
        g.set_state(st["rng"])
    kw = {"prediction": prediction, "variance": variance}
    with tracked(tracker, range(first, len(ts)), "variational bound", total=len(ts) - first) as strata:
        for i in strata:
            diffusion += ws[i] * _chunked(lambda xb, tb: kl_term(model, xb, _draw(xb, tb, schedule, g), tb, schedule,
                                                                 **kw), x0, ts[i], batch_size)
            clock.worked = True
            if ckpt is not None and (i + 1) % ckpt_every == 0:
                save_partial(ckpt, key, clock, {"done": i + 1, "diffusion": diffusion, "rng": g.get_state()})
    if st is not None and "decoder" in st:  # finished before
        dec = st["decoder"]
    else:
        ones = torch.ones(n, dtype=torch.long)
        dec = _chunked(lambda xb, tb: decoder_nll(model, xb, _draw(xb, tb, schedule, g), schedule, decoder=decoder,
                                                  **kw), x0, ones, batch_size)
        clock.worked = True
        if ckpt is not None:
            save_partial(ckpt, key, clock.stop(), {"done": len(ts), "diffusion": diffusion, "decoder": dec,
                                                   "rng": g.get_state()})
    return VariationalBound(prior.numpy(), diffusion.numpy(), dec.numpy(), int(x0[0].numel()), **clock.stop().state())


def _chunked(fn, x0: torch.Tensor, t: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x0[i:i + batch_size], t[i:i + batch_size]) for i in range(0, len(x0), batch_size)])


def _model_mean(model, x_t, t, schedule, prediction):
    """μ_θ(x_t, t): the posterior mean (SPEC 7.1) at the network's x̂_0; the network runs in its
    own dtype, the rest in float64."""
    dtype = next(model.parameters()).dtype if isinstance(model, torch.nn.Module) else torch.float64
    out = call_model(model, x_t.to(dtype), t).to(torch.float64)
    _, x0_hat = to_eps_x0(schedule, out, x_t, t, prediction)
    return schedule.posterior(x_t, x0_hat, t)[0]


def _draw(x0, t, schedule, g):
    """x_t ~ q(x_t|x_0) (SPEC 7) in float64."""
    return schedule.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))


@torch.inference_mode()
def kl_term(model: Callable, x0: torch.Tensor, x_t: torch.Tensor, t, schedule: NoiseSchedule, *,
            prediction: str = "eps", variance: str = "posterior") -> torch.Tensor:
    """KL(q(x_{t-1}|x_t, x_0) ‖ p_θ(x_{t-1}|x_t)) per image, t ≥ 2 (one diffusion term of SPEC 7.6)."""
    x0, x_t = torch.as_tensor(x0, dtype=torch.float64), torch.as_tensor(x_t, dtype=torch.float64)
    t = torch.as_tensor(t, dtype=torch.long).expand(len(x0))
    mu_q, var_q = schedule.posterior(x_t, x0, t)
    mu_p = _model_mean(model, x_t, t, schedule, prediction)
    return gaussian_kl(mu_q, torch.as_tensor(var_q).reshape(-1), mu_p, reverse_variances(schedule, variance)[t])


@torch.inference_mode()
def decoder_nll(model: Callable, x0: torch.Tensor, x_1: torch.Tensor, schedule: NoiseSchedule, *,
                prediction: str = "eps", variance: str = "posterior", decoder: str = "discrete") -> torch.Tensor:
    """-log p_θ(x_0|x_1) per image (the decoder term of SPEC 7.6)."""
    x0, x_1 = torch.as_tensor(x0, dtype=torch.float64), torch.as_tensor(x_1, dtype=torch.float64)
    mu = _model_mean(model, x_1, torch.ones(len(x0), dtype=torch.long), schedule, prediction)
    var = float(reverse_variances(schedule, variance)[1])
    return discretized_gaussian_nll(x0, mu, var) if decoder == "discrete" else gaussian_nll(x0, mu, var)
