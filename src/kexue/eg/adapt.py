"""SPEC 2.3: a global step-size scale and per-coordinate gains, learned by EG, around any base
optimiser (Amid, Anil, Fifty & Warmuth 2022)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.optim import Optimizer

from kexue import validate
from kexue.eg._common import (by_device, check_compile, check_foreach, check_pos, check_unit, closure_loss, foreach_mexp_,
                              grads, run_fused, scalar, want_compiled)
from kexue.eg.adapt_kernels import _adapt_kernel, _combine_kernel, _rescale
from kexue.eg.known_bases import step_direct
from kexue.utils import KexueError, KexueTypeError

_SCRATCH = ("tmp", "old")  # per-tensor buffers reused every step; not part of state_dict


class ScaleBoundWarning(RuntimeWarning):
    """EGAdapt's step-size scale reached one of its bounds (see ``EGAdapt(scale_bounds=…)``)."""


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
    is bounded and the clip rarely binds.

    Defaults: γ_s = 0.2 (s can change ×e^{0.2} per step, i.e. ×10 in ≈ 12 consistently
    aligned steps; 0.05 reacted too slowly to a too-large initial learning rate in a pilot on
    an MNIST MLP), γ_p = 0.01, β = 0.9, s ∈ [1e-4, 1e4], p ∈ [0.1, 10], max_exp = 1.

    Spike guard (``spike`` ρ): when ‖g_t‖ exceeds ρ × the running RMS of past gradient norms,
    s is also multiplied by ρ / (‖g_t‖ / RMS) (:func:`_rescale`). ``"auto"`` (default): ρ = 3 for
    a ``torch.optim.SGD`` base, whose step grows with the gradient, and off (None) for other bases
    (Adam divides by √v; the VAE's heavy-tailed gradient norms shrank s to its floor there). Why:
    the EG factor moves s by at most e^{γ_s} a step, too slowly to undo a step size that has grown
    past the stable limit (the lrfree study's VAE diverged at every initial learning rate).

    Param groups are the base's own (``opt.param_groups is base.param_groups``), holding s as
    ``"scale"`` next to the base's ``"lr"``: an ``lr_scheduler`` on EGAdapt sets the base's
    learning rate, OneCycleLR/CyclicLR cycle the base's momentum or betas, and the effective
    learning rate of group k is ``lr * scale`` (:meth:`effective_lrs`). When s reaches a bound a
    :class:`ScaleBoundWarning` is issued (once per group and bound until s leaves it).
    ``foreach`` None/True: multi-tensor path; False: the per-tensor reference path.
    ``compile`` True: EGAdapt's own work as two compiled kernels per step (:func:`_adapt_kernel`
    before the base step, :func:`_combine_kernel` after it; the base optimiser runs as it is),
    None (default): compiled for groups of at least ``kexue.eg._common.COMPILE_MIN_NUMEL``
    elements, False: never; where torch.compile does not work it falls back to the multi-tensor
    path (a ``CompileFallbackWarning``). When the base is a plain ``torch.optim.SGD``, ``Adam`` or
    ``AdamW`` (not a subclass; hyperparameters numbers, no step hooks, differentiable or
    capturable mode), the second kernel is the base's own update with the scaling folded in
    (:mod:`kexue.eg.known_bases`): the base's state is updated as its step would,
    θ is moved once by s · p ⊙ Δ, and neither a snapshot θ_old nor the base's passes over θ are
    needed (:meth:`_step_direct`); any other base keeps the two kernels around its own step.
    The kernels take s as a 0-d tensor, so they compile once; the same holds for
    ``torch.compile(opt.step)`` (after its first step, which creates the state).
    """

    def __init__(self, base: Optimizer, scale_lr: float = 0.2, gain_lr: float = 0.01, beta: float = 0.9,
                 scale_bounds: tuple[float, float] = (1e-4, 1e4), gain_bounds: tuple[float, float] = (0.1, 10.0),
                 max_exp: float = 1.0, spike: float | str | None = "auto", eps: float = 1e-30, foreach: bool | None = None,
                 compile: bool | None = None):
        if not isinstance(base, Optimizer):
            raise KexueTypeError(f"EGAdapt wraps a torch.optim.Optimizer, got {type(base).__name__}")
        if isinstance(base, EGAdapt):
            raise KexueError("EGAdapt cannot wrap another EGAdapt; wrap its base optimiser once")
        check_pos("scale_lr", scale_lr, allow_zero=True)
        check_pos("gain_lr", gain_lr, allow_zero=True)
        check_pos("max_exp", max_exp)
        check_pos("eps", eps)
        if isinstance(spike, str) and spike == "auto":
            # the guard is for bases whose step grows with the gradient (SGD); Adam-like bases
            # divide by √v, so a heavy-tailed gradient norm does not mean a large step there
            spike = 3.0 if isinstance(base, torch.optim.SGD) else None
        if spike is not None:
            validate.real(spike, "spike", lo=1.0, lo_open=True)
        check_unit("beta", beta)
        for name, bounds in (("scale_bounds", scale_bounds), ("gain_bounds", gain_bounds)):
            lo, hi = (validate.real(b, name) for b in bounds) if len(tuple(bounds)) == 2 else (0.0, 0.0)
            if not 0 < lo <= 1 <= hi:
                raise KexueError(f"{name} must be (low, high) with 0 < low <= 1 <= high, got {tuple(bounds)}")
        ours = dict(scale_lr=scale_lr, gain_lr=gain_lr, beta=beta, scale_bounds=tuple(scale_bounds),
                    gain_bounds=tuple(gain_bounds), max_exp=max_exp, spike=None if spike is None else float(spike), align_eps=eps, scale=1.0, grad_sq=0.0,
                    eg_foreach=check_foreach(foreach), eg_compile=check_compile(compile))
        super().__init__([{"params": list(g["params"])} for g in base.param_groups], ours)
        self.base, self._ours = base, ours
        for g in base.param_groups:
            self._merge(g)
        self.defaults = {**base.defaults, **ours}  # OneCycleLR looks for "momentum"/"betas" here
        self._at_bound: dict[int, str | None] = {}

    # one set of param groups, the base's (see the class docstring)
    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups if "base" in self.__dict__ else self.__dict__["_init_groups"]

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        if "base" in self.__dict__:
            raise KexueError("EGAdapt's param groups are its base optimiser's; change those instead")
        self.__dict__["_init_groups"] = groups

    def _merge(self, group: dict) -> None:
        for k, v in self._ours.items():
            group.setdefault(k, v)

    def add_param_group(self, param_group: dict) -> None:
        if "base" not in self.__dict__:  # during Optimizer.__init__
            return super().add_param_group(param_group)
        self.base.add_param_group(param_group)
        self._merge(self.base.param_groups[-1])

    def effective_lrs(self) -> list[float]:
        return [g["lr"] * g["scale"] for g in self.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure_loss(closure)
        # Under a user's torch.compile(opt.step) the whole step is their graph to fuse, so the
        # direct path (which reads s and the base's state as Python values) is left to eager calls;
        # the loop below stays inline in step, where dynamo traces it without guarding on s.
        if not torch.compiler.is_compiling() and self._step_direct():
            return loss
        touched = []
        for k, group in enumerate(self.param_groups):
            pg = grads(group)
            if not pg:
                continue
            states = [self.state[p] for p, _ in pg]
            started = "m" in states[0]  # no m_{t-1} yet on the first step: nothing to adapt from
            for (p, _), st in zip(pg, states):
                if "m" not in st:
                    st["m"], st["v"], st["gain"] = torch.zeros_like(p), torch.zeros_like(p), torch.ones_like(p)
                if "tmp" not in st:
                    st["tmp"], st["old"] = torch.empty_like(p), torch.empty_like(p)
            fast = group.get("eg_foreach") is not False
            path = "fused" if fast and want_compiled(group, pg, "eg_compile") else "foreach" if fast else "reference"
            if path == "fused":
                path, done = self._adapt_fused(k, group, pg, states, started)
            else:
                done = None
            if path != "fused":
                if started:
                    (self._adapt_foreach if fast else self._adapt_reference)(group, pg, states)
                    self._check_bounds(k, group)
                (self._moments_foreach if fast else self._moments_reference)(group, pg, states)
            touched.append((group, pg, states, path, done))
        self.base.step()
        for group, pg, states, path, done in touched:
            if path == "fused":
                self._combine_fused(group, pg, states, *done)
            else:
                (self._combine_foreach if path == "foreach" else self._combine_reference)(group, pg, states)
        return loss

    # ---------------------------------------------------------------- per-tensor reference path
    @staticmethod
    def _adapt_reference(group, pg, states):
        dot = sum(torch.dot(g.flatten(), st["m"].flatten()) for (_, g), st in zip(pg, states))
        gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, g in pg]))
        mn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(st["m"]) for st in states]))
        a = float(torch.nan_to_num(dot / (gn * mn + group["align_eps"]), nan=0.0).clamp(-1, 1))
        _rescale(group, a, float(gn) ** 2)
        glo, ghi = group["gain_bounds"]
        for (_, g), st in zip(pg, states):
            # b = g m / v (0/0 -> 0), then the clipped EG factor exp(γ_p b)
            f = torch.mul(g, st["m"], out=st["tmp"]).div_(st["v"]).mul_(group["gain_lr"])
            f.nan_to_num_(nan=0.0).clamp_(-group["max_exp"], group["max_exp"]).exp_()
            gain = st["gain"].mul_(f).clamp_(glo, ghi)
            gain.div_(gain.mean()).clamp_(glo, ghi)

    @staticmethod
    def _moments_reference(group, pg, states):
        beta = group["beta"]
        for (p, g), st in zip(pg, states):
            st["m"].mul_(beta).add_(g, alpha=1 - beta)
            st["v"].mul_(beta).addcmul_(g, g, value=1 - beta)
            st["old"].copy_(p)

    @staticmethod
    def _combine_reference(group, pg, states):
        # θ ← θ_old + s · p ⊙ (θ_base - θ_old)
        for (p, _), st in zip(pg, states):
            delta = p.sub_(st["old"])
            p.copy_(st["old"].addcmul_(delta, st["gain"], value=group["scale"]))

    # ---------------------------------------------------------------- multi-tensor path
    @staticmethod
    def _lists(pg, states, *keys):
        return by_device([p for p, _ in pg], [g for _, g in pg], *[[st[k] for st in states] for k in keys])

    def _adapt_foreach(self, group, pg, states):
        lists = self._lists(pg, states, "m", "v", "gain", "tmp")
        dot = gn2 = mn2 = 0.0
        for _, gs, ms, _, _, _ in lists:
            # torch has no _foreach_dot; one reduction per tensor, summed on the device
            dot = dot + torch.stack([torch.dot(g.flatten(), m.flatten()) for g, m in zip(gs, ms)]).sum().cpu()
            gn2 = gn2 + torch.stack(torch._foreach_norm(gs)).square().sum().cpu()
            mn2 = mn2 + torch.stack(torch._foreach_norm(ms)).square().sum().cpu()
        a = float(torch.nan_to_num(dot / (gn2.sqrt() * mn2.sqrt() + group["align_eps"]), nan=0.0).clamp(-1, 1))
        _rescale(group, a, float(gn2))
        glo, ghi = group["gain_bounds"]
        for _, gs, ms, vs, gains, tmps in lists:
            zero = torch.zeros((), dtype=gs[0].dtype, device=gs[0].device)
            for m, v, t in zip(ms, vs, tmps):
                torch.addcdiv(zero, m, v, value=group["gain_lr"], out=t)  # γ_p m / v in one pass
            torch._foreach_mul_(tmps, gs)
            foreach_mexp_(tmps, group["max_exp"])
            torch._foreach_mul_(gains, tmps)
            for gain in gains:
                gain.clamp_(glo, ghi)
                gain.div_(gain.mean()).clamp_(glo, ghi)

    def _moments_foreach(self, group, pg, states, snapshot: bool = True):
        beta = group["beta"]
        for ps, gs, ms, vs, *olds in self._lists(pg, states, "m", "v", *("old",) * snapshot):
            torch._foreach_lerp_(ms, gs, 1 - beta)  # β m + (1-β) g in one pass
            torch._foreach_mul_(vs, beta)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - beta)
            if snapshot:
                torch._foreach_copy_(olds[0], ps)

    def _combine_foreach(self, group, pg, states):
        for ps, _, olds, gains, tmps in self._lists(pg, states, "old", "gain", "tmp"):
            one = torch.ones((), dtype=ps[0].dtype, device=ps[0].device)
            for gain, t in zip(gains, tmps):
                torch.add(one, gain, alpha=-group["scale"], out=t)
            # θ_base + (1 - s p)(θ_old - θ_base) = θ_old + s p (θ_base - θ_old), in θ's storage
            torch._foreach_lerp_(ps, olds, tmps)

    # ---------------------------------------------------------------- compiled path
    def _adapt_fused(self, k, group, pg, states, started):
        """Before the base step: gains, moments and the snapshot by :func:`_adapt_kernel` (or only
        the moments and snapshot on the first step), then s from the summed alignment terms.
        Returns ``(path, (scale tensor, per-tensor gain means))``; ``path`` is "foreach" (nothing
        done) when torch.compile is not usable here."""
        lists = self._lists(pg, states, "m", "v", "gain", "old")
        if not started:
            self._moments_foreach(group, pg, states)
            return "fused", (self._scale_tensor(k, group, pg[0][0]), [None] * len(lists))
        sums, means = [], []
        for ps, gs, ms, vs, gains, olds in lists:
            ok, out = run_fused(_adapt_kernel, ps, gs, ms, vs, gains, olds, group["gain_lr"], group["beta"],
                                group["max_exp"], *group["gain_bounds"])
            if not ok:
                if sums:  # cannot happen: one kernel either compiles for every run or for none
                    raise KexueError("EGAdapt: torch.compile failed part-way through a step")
                return "foreach", None
            sums.append(out[0])
            means.append(out[1])
        return "fused", (self._new_scale(k, group, sums, pg[0][0]), means)

    def _combine_fused(self, group, pg, states, scale, means):
        glo, ghi = group["gain_bounds"]
        for (ps, _, olds, gains), mean in zip(self._lists(pg, states, "old", "gain"), means):
            if mean is None:  # first step: gains are 1, s unchanged
                mean = [torch.ones((), dtype=ps[0].dtype, device=ps[0].device)] * len(ps)
            ok, _ = run_fused(_combine_kernel, ps, olds, gains, mean, scale, glo, ghi)
            if not ok:  # only if compiling this kernel failed after _adapt_kernel's worked
                for p, old, gain, m in zip(ps, olds, gains, mean):
                    gain.div_(m).clamp_(glo, ghi)
                    p.copy_(old.addcmul_(p.sub_(old), gain, value=float(scale)))

    # ---------------------------------------------------------------- compiled path, known base
    @torch.compiler.disable
    def _step_direct(self) -> bool:
        """The compiled path with a known base's update inside our kernel
        (:func:`kexue.eg.known_bases.step_direct`); False where it does not apply, and :meth:`step`
        then runs the base's own step. Kept out of an enclosing torch.compile: it reads s and the
        base's state as Python values."""
        return step_direct(self)

    @torch.compiler.disable
    def _scale_tensor(self, k: int, group: dict, like: torch.Tensor) -> torch.Tensor:
        """s as the 0-d tensor the compiled kernels take, read outside any enclosing
        torch.compile so that dynamo never guards on the Python float (which moves every step)."""
        return scalar(group["scale"], like)

    @torch.compiler.disable
    def _new_scale(self, k: int, group: dict, sums: list, like: torch.Tensor) -> torch.Tensor:
        """s ← clamp(s · exp(γ_s a), s_min, s_max) from the runs' (⟨g, m⟩, ‖g‖², ‖m‖²): the one host
        read per group and step; kept out of an enclosing torch.compile (see :meth:`_scale_tensor`)."""
        dot, gn2, mn2 = (float(x) for x in torch.stack([t.double().cpu() for t in sums]).sum(0))
        a = dot / (math.sqrt(gn2) * math.sqrt(mn2) + group["align_eps"])
        a = 0.0 if math.isnan(a) else min(max(a, -1.0), 1.0)
        _rescale(group, a, gn2)
        self._check_bounds(k, group)
        return scalar(group["scale"], like)

    def _check_bounds(self, k: int, group: dict) -> None:
        lo, hi = group["scale_bounds"]
        where = "upper" if group["scale"] >= hi else "lower" if group["scale"] <= lo else None
        if where is not None and self._at_bound.get(k) != where:
            warnings.warn(
                f"EGAdapt: the step-size scale of param group {k} reached its {where} bound {group['scale']:g} "
                f"(effective lr {group['lr'] * group['scale']:g}); "
                + ("the gradients kept aligning, so the loss may be flat or the lr far too small: start from a "
                   "larger lr or lower scale_bounds[1]" if where == "upper" else
                   "the gradients kept reversing: start from a smaller lr or lower scale_bounds[0]"),
                ScaleBoundWarning, stacklevel=3)
        self._at_bound[k] = where

    # ---------------------------------------------------------------- state_dict
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[id(p)]: {n: t for n, t in st.items() if n not in _SCRATCH} for p, st in self.state.items()}
        return {"state": state, "base": self.base.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "base" not in state_dict:
            raise KexueError("this state_dict was not written by EGAdapt (no 'base' entry)")
        base_sd = dict(state_dict["base"])
        if "param_groups" in state_dict:  # written before the groups were shared: settings kept apart
            renames = {"eps": "align_eps"}
            base_sd["param_groups"] = [
                {**bg, **{renames.get(k, k): v for k, v in g.items() if k != "params"}}
                for bg, g in zip(base_sd["param_groups"], state_dict["param_groups"])]
        self.base.load_state_dict(base_sd)
        for g in self.param_groups:
            self._merge(g)
            g["scale_bounds"], g["gain_bounds"] = tuple(g["scale_bounds"]), tuple(g["gain_bounds"])
        params = self._params()
        self.state = defaultdict(dict)
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {n: t.to(device=p.device, dtype=p.dtype) if torch.is_tensor(t) else t for n, t in st.items()}
        self._at_bound = {}
