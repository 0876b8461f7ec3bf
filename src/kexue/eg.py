"""Exponentiated-gradient optimisers and meta-learned step sizes (SPEC 2), as ``torch.optim``.

=================  ========================================================================
``EG``             θ ← θ ⊙ exp(-η g) for θ ≥ 0, optionally renormalised onto the simplex (SPEC 2.1)
``EGPlusMinus``    EG± for signed θ = u - v with u, v ≥ 0 updated by EG (SPEC 2.1)
``EGStep``         per-coordinate step sizes ν learned by EG: ν ← ν ⊙ exp(γ g_{t-1} ⊙ g_t),
                   θ ← θ - η ν ⊙ g_t (SPEC 2.2), with ν clamped and the exponent clipped
``EGAdapt``        global scale s and per-coordinate gains p, both updated multiplicatively from
                   gradient alignment, wrapped around any base optimiser (SPEC 2.3)
``SGDHD``          hypergradient descent on SGD's learning rate (SPEC 2.4, Baydin et al. 2018)
``AdamHD``         hypergradient descent on Adam's learning rate (SPEC 2.4)
=================  ========================================================================

Every optimiser supports param groups, ``state_dict``/``load_state_dict`` and an optional
closure. Updates are whole-tensor operations (one Python iteration per parameter tensor, none
per element), so they run unchanged on CPU and GPU tensors.

Overflow safeguard shared by all EG-type updates: the exponent of every multiplicative update
is clipped to ``[-max_exp, max_exp]`` before ``exp``; so a gradient of 1e30 moves a weight by
at most a factor e^max_exp per step and an exactly zero gradient leaves it unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer

from kexue.utils import KexueError

__all__ = ["EG", "EGPlusMinus", "EGStep", "EGAdapt", "SGDHD", "AdamHD"]


def _check_pos(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
        raise KexueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _closure_loss(closure: Callable | None):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _grads(group: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(param, grad) pairs of a group, skipping parameters without a gradient."""
    return [(p, p.grad) for p in group["params"] if p.grad is not None]


def _mexp_(x: torch.Tensor, max_exp: float) -> torch.Tensor:
    """In place: exp of the clipped exponent x; NaN exponents (0·inf) count as 0, i.e. no change."""
    return x.nan_to_num_(nan=0.0).clamp_(-max_exp, max_exp).exp_()


# ---------------------------------------------------------------------------------------------
# SPEC 2.1: EG and EG±


class EG(Optimizer):
    """Exponentiated gradient for non-negative parameters (SPEC 2.1).

    θ ← θ ⊙ exp(-η ∇L(θ)): gradient descent on φ = log θ with the e^φ factor dropped, so θ
    stays ≥ 0 (and exactly 0 stays 0). With ``simplex=True`` each parameter tensor is also
    renormalised to sum to one after every step — the normalised EG of Kivinen & Warmuth for
    mixture weights and probability vectors — computed as a softmax of log θ - η g, so nothing
    overflows or underflows to an all-zero vector.

    Args: ``lr`` η > 0; ``simplex`` renormalise each tensor to sum 1; ``max_exp`` clip of the
    exponent η g (default 30: a factor ≤ 1e13 per step).
    """

    def __init__(self, params: Iterable, lr: float = 0.1, simplex: bool = False, max_exp: float = 30.0):
        _check_pos("lr", lr)
        _check_pos("max_exp", max_exp)
        super().__init__(params, dict(lr=lr, simplex=simplex, max_exp=max_exp))
        for group in self.param_groups:
            for p in group["params"]:
                if bool((p.detach() < 0).any()) or not bool(torch.isfinite(p.detach()).all()):
                    raise KexueError("EG needs finite, non-negative initial parameters; use EGPlusMinus for signed ones")
                if group["simplex"] and not float(p.detach().sum()) > 0:
                    raise KexueError("EG with simplex=True needs each parameter tensor to have a positive sum")

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, m = group["lr"], group["max_exp"]
            for p, g in _grads(group):
                e = torch.mul(g, -lr).nan_to_num_(nan=0.0).clamp_(-m, m)
                if group["simplex"]:
                    # θ_i e^{e_i} / Σ_j θ_j e^{e_j} = softmax(log θ + e); log 0 = -inf stays at weight 0
                    p.copy_(torch.softmax((p.log() + e).flatten(), 0).view_as(p))
                else:
                    # repeated ×e^max_exp could overflow; cap at the dtype's largest value
                    p.mul_(e.exp_()).clamp_(max=torch.finfo(p.dtype).max)
        return loss


class EGPlusMinus(Optimizer):
    """EG± (Kivinen & Warmuth) for signed parameters (SPEC 2.1).

    Each parameter is written θ = u - v with u, v ≥ 0 and both halves follow EG on their own
    gradients ∂L/∂u = g, ∂L/∂v = -g:  u ← u ⊙ exp(-η g),  v ← v ⊙ exp(+η g),  θ ← u - v.
    The halves start at u₀ = relu(θ₀) + c, v₀ = relu(-θ₀) + c with ``init_scale`` c > 0 (EG
    cannot move a weight that is exactly zero, so c sets how fast small weights can grow).

    Args: ``lr`` η; ``init_scale`` c; ``max_exp`` exponent clip.
    """

    def __init__(self, params: Iterable, lr: float = 0.1, init_scale: float = 0.1, max_exp: float = 30.0):
        _check_pos("lr", lr)
        _check_pos("init_scale", init_scale)
        _check_pos("max_exp", max_exp)
        super().__init__(params, dict(lr=lr, init_scale=init_scale, max_exp=max_exp))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, c, m = group["lr"], group["init_scale"], group["max_exp"]
            for p, g in _grads(group):
                st = self.state[p]
                if not st:
                    st["u"] = p.detach().clamp(min=0) + c
                    st["v"] = (-p.detach()).clamp(min=0) + c
                f = _mexp_(torch.mul(g, -lr), m)
                big = torch.finfo(p.dtype).max / 2  # so that u - v cannot overflow
                st["u"].mul_(f).clamp_(max=big)
                st["v"].div_(f).clamp_(max=big)  # exp(+η g) = 1 / exp(-η g), same clipping
                torch.sub(st["u"], st["v"], out=p)
        return loss


# ---------------------------------------------------------------------------------------------
# SPEC 2.2: per-coordinate step sizes learned by EG


class EGStep(Optimizer):
    """SGD with per-coordinate step sizes ν learned by EG (SPEC 2.2).

    From the chain rule ∇_{ν_t} L = -η g_{t-1} ⊙ g_t, EG on ν gives
        ν_{t+1} = clamp(ν_t ⊙ exp(clip(γ g_{t-1} ⊙ g_t)), ν_min, ν_max),
        θ_{t+1} = θ_t - η ν_{t+1} ⊙ g_t,
    with g_{-1} = 0 (the first step is plain SGD with step η ν₀). Coordinates whose
    consecutive gradients agree in sign speed up, alternating ones slow down.

    Safeguards (defaults): exponent clipped to ±``max_exp`` (0.5: at most ×1.65 per step),
    ν ∈ [``nu_min``, ``nu_max``] = [1e-4, 1e4]; a zero gradient leaves ν unchanged.
    Note γ multiplies a product of two gradients, so its useful size depends on the gradient
    scale of the problem (γ ≈ 1/E[g²] makes a one-unit exponent for aligned gradients).

    Args: ``lr`` η, ``gamma`` γ ≥ 0 (γ = 0 is SGD), ``nu0`` initial ν.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, gamma: float = 1.0, nu0: float = 1.0,
                 nu_min: float = 1e-4, nu_max: float = 1e4, max_exp: float = 0.5):
        _check_pos("lr", lr)
        _check_pos("gamma", gamma, allow_zero=True)
        _check_pos("nu0", nu0)
        _check_pos("max_exp", max_exp)
        if not 0 < nu_min <= nu0 <= nu_max:
            raise KexueError(f"need 0 < nu_min <= nu0 <= nu_max, got {nu_min}, {nu0}, {nu_max}")
        super().__init__(params, dict(lr=lr, gamma=gamma, nu0=nu0, nu_min=nu_min, nu_max=nu_max, max_exp=max_exp))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            for p, g in _grads(group):
                st = self.state[p]
                if not st:
                    st["nu"] = torch.full_like(p, group["nu0"])
                    st["prev_grad"] = torch.zeros_like(p)
                nu, gp = st["nu"], st["prev_grad"]
                # gp doubles as scratch for the factor exp(clip(γ g_{t-1} g_t)): no allocation per step
                nu.mul_(_mexp_(gp.mul_(g).mul_(group["gamma"]), group["max_exp"])).clamp_(group["nu_min"], group["nu_max"])
                # a non-finite gradient would poison θ; treat its entries as 0 (skip those coordinates)
                gp.copy_(g).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                p.addcmul_(nu, gp, value=-group["lr"])
        return loss


# ---------------------------------------------------------------------------------------------
# SPEC 2.3: global scale and per-coordinate gains around a base optimiser


class EGAdapt(Optimizer):
    """Step-size adaptation by EG around a base optimiser (SPEC 2.3; Amid, Anil, Fifty & Warmuth 2022).

    The base optimiser (e.g. ``torch.optim.SGD(momentum=0.9)`` or ``Adam``) proposes a step
    Δ_t; we apply θ_{t+1} = θ_t + s ⊙ p ⊙ Δ_t instead, with a global scale s > 0 per param
    group and per-coordinate gains p > 0, both learned by EG. The paper's exact rule is not
    public as code; this is the rule implemented, and why.

    Derivation. Let m_{t-1} be the running average of past gradients (EMA, rate β) — the
    direction the base optimiser has been moving against. The loss after the step depends on
    log s through θ_t, and ∂L(θ_t)/∂log s ∝ -⟨g_t, m_{t-1}⟩ (the previous step was along
    -m_{t-1}); likewise ∂L/∂log p_i ∝ -g_{t,i} m_{t-1,i}. EG on s and p (gradient descent on
    their logs, SPEC 2.1) multiplies them by exp(+rate · alignment). To make the rates free of
    the gradient scale — the reason plain hypergradient methods need a per-problem β — the
    alignments are normalised:
        global:  a_t = ⟨g_t, m_{t-1}⟩ / (‖g_t‖ ‖m_{t-1}‖)               ∈ [-1, 1]
        local:   b_{t,i} = g_{t,i} m_{t-1,i} / v_{t-1,i}  (0/0 := 0)     (v = EMA of g², same β)
        s ← clamp(s · exp(γ_s a_t), s_min, s_max)
        p ← clamp(p ⊙ exp(clip(γ_p b_t)), p_min, p_max),  then p ← p / mean(p) per tensor
    so aligned gradients (consistent descent direction) grow the step and anti-aligned ones
    (oscillation across a valley, or overshooting) shrink it; the gains are renormalised to
    mean 1 so that the global size lives in s alone. Because |m_i| ≤ √v_i, |b_i| ≤ |g_i|/√v_i
    is bounded and the clip rarely binds. The state is s (in the param group, as ``scale``),
    m, v, p per tensor, plus the base optimiser's state.

    Defaults: γ_s = 0.2 (s can change ×e^{0.2} per step, i.e. ×10 in ≈ 12 consistently
    aligned steps; 0.05 reacted too slowly to a too-large initial learning rate in a pilot on
    an MNIST MLP), γ_p = 0.01, β = 0.9, s ∈ [1e-4, 1e4], p ∈ [0.1, 10], max_exp = 1.

    The effective learning rate of group k is ``base.param_groups[k]["lr"] * scale``
    (see :meth:`effective_lrs`).
    """

    def __init__(self, base: Optimizer, scale_lr: float = 0.2, gain_lr: float = 0.01, beta: float = 0.9,
                 scale_bounds: tuple[float, float] = (1e-4, 1e4), gain_bounds: tuple[float, float] = (0.1, 10.0),
                 max_exp: float = 1.0, eps: float = 1e-30):
        if not isinstance(base, Optimizer):
            raise KexueError(f"EGAdapt wraps a torch.optim.Optimizer, got {type(base).__name__}")
        _check_pos("scale_lr", scale_lr, allow_zero=True)
        _check_pos("gain_lr", gain_lr, allow_zero=True)
        _check_pos("max_exp", max_exp)
        if not 0 <= beta < 1:
            raise KexueError(f"beta must be in [0, 1), got {beta}")
        for name, (lo, hi) in (("scale_bounds", scale_bounds), ("gain_bounds", gain_bounds)):
            if not 0 < lo <= 1 <= hi:
                raise KexueError(f"{name} must satisfy 0 < low <= 1 <= high, got {(lo, hi)}")
        self.base = base
        defaults = dict(scale_lr=scale_lr, gain_lr=gain_lr, beta=beta, scale_bounds=tuple(scale_bounds),
                        gain_bounds=tuple(gain_bounds), max_exp=max_exp, eps=eps, scale=1.0)
        # our groups mirror the base's (same tensors), so our per-group scale lines up with its lr
        super().__init__([{"params": list(g["params"])} for g in base.param_groups], defaults)

    def effective_lrs(self) -> list[float]:
        return [bg["lr"] * g["scale"] for bg, g in zip(self.base.param_groups, self.param_groups)]

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        # every temporary lives in a persistent per-tensor buffer ("tmp", "old"): allocating
        # fresh parameter-sized tensors each step cost more than the arithmetic on CPU
        touched = []
        for group in self.param_groups:
            pg = _grads(group)
            if not pg:
                continue
            beta, m_exp = group["beta"], group["max_exp"]
            states = [self.state[p] for p, _ in pg]
            for (p, _), st in zip(pg, states):
                if "tmp" not in st:  # scratch; not part of state_dict
                    st["tmp"], st["old"] = torch.empty_like(p), torch.empty_like(p)
            if "m" in states[0]:
                # --- adapt s and p from the alignment of g_t with m_{t-1} (before m is updated)
                dot = sum(torch.dot(g.flatten(), st["m"].flatten()) for (_, g), st in zip(pg, states))
                gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, g in pg]))
                mn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(st["m"]) for st in states]))
                a = float(torch.nan_to_num(dot / (gn * mn + group["eps"]), nan=0.0).clamp(-1, 1))
                lo, hi = group["scale_bounds"]
                group["scale"] = min(max(group["scale"] * math.exp(group["scale_lr"] * a), lo), hi)
                glo, ghi = group["gain_bounds"]
                for (_, g), st in zip(pg, states):
                    # b = g m / v (0/0 -> 0), then the clipped EG factor exp(γ_p b)
                    f = torch.mul(g, st["m"], out=st["tmp"]).div_(st["v"]).mul_(group["gain_lr"])
                    f.nan_to_num_(nan=0.0).clamp_(-m_exp, m_exp).exp_()
                    gain = st["gain"].mul_(f).clamp_(glo, ghi)
                    gain.div_(gain.mean()).clamp_(glo, ghi)
            for (p, g), st in zip(pg, states):
                if "m" not in st:
                    st["m"], st["v"], st["gain"] = torch.zeros_like(p), torch.zeros_like(p), torch.ones_like(p)
                st["m"].mul_(beta).add_(g, alpha=1 - beta)
                st["v"].mul_(beta).addcmul_(g, g, value=1 - beta)
                st["old"].copy_(p)
                touched.append((p, st, group))
        self.base.step()
        # θ ← θ_old + s · p ⊙ (θ_base - θ_old)
        for p, st, group in touched:
            delta = p.sub_(st["old"])
            p.copy_(st["old"].addcmul_(delta, st["gain"], value=group["scale"]))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["state"] = {k: {n: t for n, t in st.items() if n not in ("tmp", "old")} for k, st in sd["state"].items()}
        sd["base"] = self.base.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        if "base" not in state_dict:
            raise KexueError("this state_dict was not written by EGAdapt (no 'base' entry)")
        self.base.load_state_dict(state_dict.pop("base"))
        super().load_state_dict(state_dict)
        for g in self.param_groups:  # lists come back from serialisation; keep tuples
            g["scale_bounds"], g["gain_bounds"] = tuple(g["scale_bounds"]), tuple(g["gain_bounds"])


# ---------------------------------------------------------------------------------------------
# SPEC 2.4: hypergradient descent baselines


class _HDBase(Optimizer):
    """Shared hypergradient rule: α ← α + β ⟨g_t, u_{t-1}⟩, optionally kept ≥ ``min_lr``.

    ``step`` adapts α from the previous direction u_{t-1}, then lets the subclass compute the new
    direction u_t into ``state["u"]`` (``_direction``) and moves θ ← θ - α_t u_t.
    """

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            pg = _grads(group)
            if not pg:
                continue
            states = [self.state[p] for p, _ in pg]
            self._adapt_lr(group, pg, states)
            for (p, g), st in zip(pg, states):
                self._direction(group, p, g, st)
                p.add_(st["u"], alpha=-group["lr"])
        return loss

    def _direction(self, group: dict, p: torch.Tensor, g: torch.Tensor, st: dict) -> None:
        raise NotImplementedError

    def _adapt_lr(self, group: dict, pg: list, states: list) -> None:
        if "u" not in states[0]:
            return
        h = sum(torch.dot(g.flatten(), st["u"].flatten()) for (_, g), st in zip(pg, states))
        h = float(torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0))
        lr = group["lr"] + group["hyper_lr"] * h
        if group["keep_positive"]:
            lr = max(lr, group["min_lr"])
        group["lr"] = lr


class SGDHD(_HDBase):
    """SGD with hypergradient descent on the learning rate (SPEC 2.4; Baydin et al. 2018).

    u_t = g_t (or the momentum buffer b_t = μ b_{t-1} + g_t with ``momentum`` μ > 0),
        α_t = α_{t-1} + β ⟨g_t, u_{t-1}⟩,    θ ← θ - α_t u_t.
    The first step uses α_0 = ``lr``. Baydin et al.'s rule can drive α negative (the method
    then ascends the loss); with ``keep_positive=True`` (default) α is clamped at ``min_lr``.
    The live learning rate is ``param_groups[k]["lr"]``. Like torch.optim, non-finite gradients
    are not sanitised.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, hyper_lr: float = 1e-3, momentum: float = 0.0,
                 keep_positive: bool = True, min_lr: float = 0.0):
        _check_pos("lr", lr)
        _check_pos("hyper_lr", hyper_lr, allow_zero=True)
        _check_pos("min_lr", min_lr, allow_zero=True)
        if not 0 <= momentum < 1:
            raise KexueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, hyper_lr=hyper_lr, momentum=momentum, keep_positive=keep_positive,
                                      min_lr=min_lr))

    def _direction(self, group, p, g, st):
        if "u" not in st:
            st["u"] = g.clone()
        elif group["momentum"] > 0:
            st["u"].mul_(group["momentum"]).add_(g)
        else:
            st["u"].copy_(g)


class AdamHD(_HDBase):
    """Adam with hypergradient descent on the learning rate (SPEC 2.4; Baydin et al. 2018).

    Like torch.optim, non-finite gradients are not sanitised.

    m_t = β1 m + (1-β1) g,  v_t = β2 v + (1-β2) g²,  u_t = m̂_t / (√v̂_t + ε) (bias-corrected),
        α_t = α_{t-1} + β ⟨g_t, u_{t-1}⟩,    θ ← θ - α_t u_t.
    β (``hyper_lr``) defaults to 1e-7 as in Baydin et al.'s Adam-HD experiments. With
    ``keep_positive=True`` (default) α is clamped at ``min_lr``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, hyper_lr: float = 1e-7,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 keep_positive: bool = True, min_lr: float = 0.0):
        _check_pos("lr", lr)
        _check_pos("hyper_lr", hyper_lr, allow_zero=True)
        _check_pos("eps", eps)
        _check_pos("min_lr", min_lr, allow_zero=True)
        if not all(0 <= b < 1 for b in betas):
            raise KexueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, hyper_lr=hyper_lr, betas=tuple(betas), eps=eps,
                                      keep_positive=keep_positive, min_lr=min_lr))

    def _direction(self, group, p, g, st):
        b1, b2 = group["betas"]
        if "m" not in st:
            st["step"] = 0
            st["m"], st["v"], st["u"] = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
        st["step"] += 1
        t = st["step"]
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (st["v"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        torch.div(st["m"], denom, out=st["u"]).div_(1 - b1 ** t)
