"""Samplers: small objects into which any ε- (or x_0-, v-) network plugs, including diffusers'
``UNet2DModel``. A network is called as ``model(x_t, t - 1)`` (diffusers' 0-based timestep).

- :class:`DDPMSampler` — ancestral sampling (SPEC 7.3) with σ_t² = β̄_{t-1}²β_t²/β̄_t² ("posterior",
  exact for a single data point) or σ_t² = β_t² ("beta", exact for standard normal data), SPEC 7.4.
- :class:`DDIMSampler` — SPEC 7.5 on any decreasing sub-sequence of timesteps, η ∈ [0, 1]
  scaling σ between deterministic DDIM (η = 0) and DDPM's posterior variance (η = 1).

Both accept a given initial noise ``x_T``: with DDIM η = 0 the sampler is then a deterministic
map from latents x_T to images (usable e.g. for hub-prior latent sampling, SPEC 8.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from kexue import validate
from kexue.ddpm.param import _check, call_model, to_eps_x0
from kexue.ddpm.schedule import NoiseSchedule
from kexue.checkpoint import Clock, fingerprint, model_fingerprint, partial, save_partial
from kexue.utils import KexueError, tracked


class Sampler:
    """Shared driver: draw x_T (unless given), then ``step`` along ``timesteps()`` down to t = 0."""

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: float | None = None,
                 fused: bool = True):
        if not isinstance(schedule, NoiseSchedule):
            raise KexueError("a sampler needs a kexue.ddpm.NoiseSchedule")
        _check(prediction)
        if clip_x0 is not None and not clip_x0 > 0:
            raise KexueError("clip_x0 must be a positive number (x̂_0 is clipped to [-clip_x0, clip_x0]) or None")
        self.schedule, self.prediction, self.clip_x0, self.fused = schedule, prediction, clip_x0, fused
        self._combine: dict = {}

    def timesteps(self) -> list[int]:
        raise NotImplementedError

    def eps_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: int):
        """(ε̂, x̂_0) from a network output; x̂_0 clipped if asked (ε̂ then left as the network gave it)."""
        eps, x0 = to_eps_x0(self.schedule, out, x_t, t, self.prediction)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return eps, x0

    def __call__(self, model: Callable, shape: Sequence[int] | None = None, x_T: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, tracker=None, ckpt=None, ckpt_every: int = 50) -> torch.Tensor:
        """Samples x_0 of ``shape`` (or of ``x_T.shape`` when the initial noise is given).

        Noise (x_T if not given, then one draw per stochastic step) comes from ``generator``
        on the CPU in the order of the steps, so a seed fixes the result. The loop runs in
        inference mode with the fused step (``fused=False``: the reference :meth:`step`).
        ``ckpt``: a file holding x_t and the noise generator's state every ``ckpt_every`` steps
        and at the end (``model`` must then be a torch module); a call with the same network,
        sampler, x_T and generator continues from it with the same result as one uninterrupted
        call, or, finished, returns it. A file written for anything else is overwritten.
        ``self.last_run`` then holds the call's ``seconds`` and ``legs`` over all resumes.
        """
        if x_T is None:
            if shape is None:
                raise KexueError("give the sample shape or the initial noise x_T")
            x = torch.randn(tuple(shape), generator=generator)
        else:
            x = torch.as_tensor(x_T)
            if not torch.isfinite(x).all():
                raise KexueError("the initial noise x_T contains NaN or inf")
        ts = self.timesteps()
        pairs = list(zip(ts, ts[1:] + [0]))
        run = _SampleRun(self, model, x, generator, ckpt, ckpt_every)
        x, first = run.start(x)
        rest = range(first, len(pairs))
        step = self.fused_step if self.fused else self.step
        # tracked: the progress bar is closed also when a step raises (or Ctrl-C), not left live
        with tracked(tracker, rest, type(self).__name__, total=len(rest)) as todo, torch.inference_mode():
            for i in todo:
                t, s = pairs[i]
                out = call_model(model, x, t)
                noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype) if self.needs_noise(t, s) else None
                x = step(out, t, s, x, noise)
                run.done(x, i + 1, len(pairs))
        self.last_run = run.clock.stop().state()
        return x.clone()  # an ordinary tensor again (inference tensors refuse later autograd use)

    def settings(self) -> dict:
        """What determines the samples besides the network, x_T and the noise: the checkpoint key."""
        plain = {k: v for k, v in vars(self).items() if isinstance(v, (bool, int, float, str, type(None)))}
        return {"kind": type(self).__name__, **plain, "timesteps": self.timesteps(),
                "schedule": self.schedule.fingerprint()}

    def x0_hat(self, out: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """x̂_0 (SPEC 7.2) as a fresh tensor, clipped in place if asked: the fused step's one allocation."""
        a, b = float(self.schedule.alpha_bars[t]), float(self.schedule.beta_bars[t])
        if self.prediction == "eps":
            x0 = torch.sub(x_t, out, alpha=b).div_(a)
        elif self.prediction == "x0":
            x0 = out.to(torch.promote_types(out.dtype, x_t.dtype), copy=True)
        else:  # v: x_0 = ᾱ_t x_t - β̄_t v
            x0 = torch.mul(x_t, a).sub_(out, alpha=b)
        return x0.clamp_(-self.clip_x0, self.clip_x0) if self.clip_x0 is not None else x0

    def fused_step(self, out: torch.Tensor, t: int, s: int, x_t: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """:meth:`step` as c_x x_t + c_0 x̂_0 + σ z with the coefficients of the pair (t, s) computed
        once, in place on x̂_0 (tests pin it to :meth:`step`)."""
        if (t, s) not in self._combine:
            self._combine[t, s] = self.combine(t, s)
        cx, c0, sigma = self._combine[t, s]
        x = self.x0_hat(out, x_t, t).mul_(c0).add_(x_t, alpha=cx)
        return x.add_(noise, alpha=sigma) if noise is not None and sigma else x

    def combine(self, t: int, s: int) -> tuple[float, float, float]:
        raise NotImplementedError

    def needs_noise(self, t: int, s: int) -> bool:
        raise NotImplementedError

    def step(self, out, t, s, x_t, noise):
        raise NotImplementedError


class _SampleRun:
    """The checkpoints of one sampling loop (see ``Sampler.__call__``): x_t after step i and the
    state of the generator the noise comes from (the global one if none was given)."""

    def __init__(self, sampler: Sampler, model, x_T: torch.Tensor, generator, ckpt, every: int):
        self.ckpt, self.every, self.gen = ckpt, validate.integer(every, "ckpt_every", 1), generator
        self.key: dict = {}
        self.clock = Clock()
        if ckpt is not None:
            self.key = {"what": "sample", **sampler.settings(), "model": model_fingerprint(model),
                        "x_T": fingerprint([x_T]), "noise": fingerprint([self._rng()])}

    def _rng(self) -> torch.Tensor:
        return self.gen.get_state() if self.gen is not None else torch.get_rng_state()

    def start(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(x_t, steps done) from the checkpoint if it fits, else (x_T, 0)."""
        st = partial(self.ckpt, self.key)
        if st is None:
            return x, 0
        self.clock = Clock(st)
        (self.gen.set_state if self.gen is not None else torch.set_rng_state)(st["rng"])
        return st["x"].to(x.device, x.dtype), int(st["done"])

    def done(self, x: torch.Tensor, i: int, n: int) -> None:
        """Step ``i`` of ``n`` is done: checkpoint every ``every`` steps and at the end."""
        self.clock.worked = True
        if self.ckpt is not None and (i % self.every == 0 or i == n):
            save_partial(self.ckpt, self.key, self.clock.stop() if i == n else self.clock,
                         {"x": x.detach().cpu().clone(), "done": i, "rng": self._rng()})


class DDPMSampler(Sampler):
    """Ancestral sampling over all T steps (SPEC 7.3): x_{t-1} = posterior mean (SPEC 7.1) at x̂_0
    (= (1/α_t)(x_t - β_t²/β̄_t ε̂) without clipping) + σ_t z, with ``variance`` "posterior"
    (σ_t² = β̄_{t-1}²β_t²/β̄_t²) or "beta" (σ_t² = β_t²), SPEC 7.4. The last step (t = 1) returns
    the mean unless ``final_noise``."""

    def __init__(self, schedule: NoiseSchedule, variance: str = "posterior", prediction: str = "eps",
                 clip_x0: float | None = None, final_noise: bool = False, fused: bool = True):
        super().__init__(schedule, prediction, clip_x0, fused)
        if variance not in ("posterior", "beta"):
            raise KexueError(f"unknown variance {variance!r}; choose posterior or beta")
        self.variance, self.final_noise = variance, final_noise

    def timesteps(self) -> list[int]:
        return list(range(self.schedule.T, 0, -1))

    def sigma2(self, t: int) -> float:
        sc = self.schedule
        return float(sc.posterior_variance(t) if self.variance == "posterior" else sc.beta_sq[t])

    def needs_noise(self, t: int, s: int) -> bool:
        return t > 1 or self.final_noise

    def combine(self, t: int, s: int) -> tuple[float, float, float]:
        """(α_t β̄_{t-1}²/β̄_t², ᾱ_{t-1}β_t²/β̄_t², σ_t): the posterior mean's weights (SPEC 7.1) and σ."""
        sc = self.schedule
        bb2 = float(sc.beta_bars[t]) ** 2
        return (float(sc.alphas[t]) * float(sc.beta_bars[t - 1]) ** 2 / bb2,
                float(sc.alpha_bars[t - 1]) * float(sc.beta_sq[t]) / bb2, math.sqrt(self.sigma2(t)))

    def step(self, out: torch.Tensor, t: int, s: int, x_t: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        _, x0 = self.eps_x0(out, x_t, t)
        mean, _ = self.schedule.posterior(x_t, x0, t)
        if noise is None:
            return mean
        return mean + math.sqrt(self.sigma2(t)) * noise


class DDIMSampler(Sampler):
    """DDIM (SPEC 7.5): from t to the next s < t of the sub-sequence,
    x_s = κ x_t + λ x̂_0 + σ z,  κ = sqrt(β̄_s² - σ²)/β̄_t,  λ = ᾱ_s - ᾱ_t κ,
    σ = η (β̄_s/β̄_t) sqrt(1 - ᾱ_t²/ᾱ_s²)  (= η β̄_{t-1}β_t/β̄_t for s = t - 1, i.e. DDPM at η = 1).

    ``timesteps`` (our t, strictly decreasing in 1..T) or ``steps`` with ``spacing``:
    "leading" (diffusers' default: t = 1 + k·⌊T/steps⌋, k < steps, so it may start below T:
    at t = 1 for one step), "trailing" (starts at t = T) or "linspace"
    (from T to 1; one step is [T]). The final step always goes to s = 0 (clean data). For every
    spacing and every steps in 1..T the sequence has exactly ``steps`` strictly decreasing
    entries, and each step goes from one entry to the next (not to t − T/steps, the
    previous-timestep rule that diffusers gets wrong for linspace spacing); tests check it
    exhaustively for T = 50 and at T = 1000.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0, timesteps: Sequence[int] | None = None,
                 spacing: str = "leading", prediction: str = "eps", clip_x0: float | None = None,
                 fused: bool = True):
        super().__init__(schedule, prediction, clip_x0, fused)
        if not (0.0 <= eta <= 1.0):
            raise KexueError(f"eta must lie in [0, 1], got {eta}")
        T = schedule.T
        if timesteps is not None:
            ts = [int(v) for v in timesteps]
            if not ts or any(not 1 <= v <= T for v in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
                raise KexueError(f"timesteps must be strictly decreasing integers in 1..{T}")
        else:
            if not 1 <= steps <= T:
                raise KexueError(f"steps must lie in 1..{T}, got {steps}")
            if spacing == "leading":
                r = T // steps
                ts = [1 + k * r for k in range(steps)][::-1]
            elif spacing == "trailing":
                ts = sorted({int(round(T - i * T / steps)) for i in range(steps)}, reverse=True)
            elif spacing == "linspace":  # both ends, 1 and T; one step is the jump from T (where x_T is drawn)
                ts = sorted({1 + int(round(i * (T - 1) / (steps - 1))) for i in range(steps)}, reverse=True) \
                    if steps > 1 else [T]
            else:
                raise KexueError(f"unknown spacing {spacing!r}; choose leading, trailing or linspace")
        self.eta, self._ts = float(eta), ts
        self._coef: dict = {}

    def timesteps(self) -> list[int]:
        return list(self._ts)

    def coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """(κ, λ, σ) of SPEC 7.5 in float64 (cached per step pair)."""
        if (t, s) in self._coef:
            return self._coef[t, s]
        sc = self.schedule
        ab_t, ab_s, bb_t, bb_s = (float(v) for v in (sc.alpha_bars[t], sc.alpha_bars[s], sc.beta_bars[t], sc.beta_bars[s]))
        sigma = self.eta * bb_s / bb_t * math.sqrt(max(1.0 - (ab_t / ab_s) ** 2, 0.0))
        kappa = math.sqrt(max(bb_s ** 2 - sigma ** 2, 0.0)) / bb_t
        self._coef[t, s] = (kappa, ab_s - ab_t * kappa, sigma)
        return self._coef[t, s]

    def needs_noise(self, t: int, s: int) -> bool:
        return self.coefficients(t, s)[2] > 0

    def combine(self, t: int, s: int) -> tuple[float, float, float]:
        return self.coefficients(t, s)

    def step(self, out: torch.Tensor, t: int, s: int, x_t: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        _, x0 = self.eps_x0(out, x_t, t)
        kappa, lam, sigma = self.coefficients(t, s)
        x = kappa * x_t + lam * x0
        return x if noise is None or sigma == 0 else x + sigma * noise


def make_sampler(schedule: NoiseSchedule, name: str, steps: int | None = None, eta: float | None = None,
                 variance: str | None = None, prediction: str = "eps", clip_x0: float | None = None) -> Sampler:
    """``ddpm`` (all T steps, ``variance``, default "posterior") or ``ddim`` (``steps``, default 50,
    and ``eta``, default 0) by name. A setting that only the other sampler has is refused rather
    than ignored: DDPM always runs all T steps, and DDIM's noise is set by η, not ``variance``."""
    if name == "ddpm":
        if steps is not None or eta is not None:
            raise KexueError(f"{'steps' if steps is not None else 'eta'} applies to sampler='ddim' only; the DDPM "
                             f"sampler runs all T = {schedule.T} steps (drop it, or use sampler='ddim')")
        return DDPMSampler(schedule, variance=variance or "posterior", prediction=prediction, clip_x0=clip_x0)
    if name == "ddim":
        if variance is not None:
            raise KexueError("variance applies to sampler='ddpm' only; DDIM's noise is set by eta "
                             "(eta=1 is DDPM's posterior variance)")
        return DDIMSampler(schedule, steps=50 if steps is None else steps, eta=0.0 if eta is None else eta,
                           prediction=prediction, clip_x0=clip_x0)
    raise KexueError(f"unknown sampler {name!r}; choose ddpm or ddim")
