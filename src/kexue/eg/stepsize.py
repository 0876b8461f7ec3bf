"""SPEC 2.2: SGD with per-coordinate step sizes learned by EG."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kexue.eg._common import (GroupwiseOptimizer, by_device, check_compile, check_foreach, check_pos, foreach_mexp_,
                              fused_runs, mexp_, kernel_mexp, scalar)
from kexue.utils import KexueError


class EGStep(GroupwiseOptimizer):
    """SGD with per-coordinate step sizes ν learned by EG (SPEC 2.2).

    From the chain rule ∇_{ν_t} L = -η g_{t-1} ⊙ g_t, EG on ν gives
        ν_{t+1} = clamp(ν_t ⊙ exp(clip(γ g_{t-1} ⊙ g_t)), ν_min, ν_max),
        θ_{t+1} = θ_t - η ν_{t+1} ⊙ g_t,
    with g_{-1} = 0 (the first step is plain SGD with step η ν₀). Coordinates whose
    consecutive gradients agree in sign speed up, alternating ones slow down.

    Safeguards (defaults): exponent clipped to ±``max_exp`` (0.5: at most ×1.65 per step),
    ν ∈ [``nu_min``, ``nu_max``] = [1e-4, 1e4]; a zero gradient leaves ν unchanged.
    Non-finite gradients reach θ as in ``torch.optim.SGD`` (NaN → NaN, ±inf → ∓inf), so a
    diverging model shows in its parameters; ν stays finite (a NaN exponent, e.g. 0·inf, counts as 0).
    Note γ multiplies a product of two gradients, so its useful size depends on the gradient
    scale of the problem (γ ≈ 1/E[g²] makes a one-unit exponent for aligned gradients).

    Args: ``lr`` η, ``gamma`` γ ≥ 0 (γ = 0 is SGD), ``nu0`` initial ν; ``foreach`` None/True:
    multi-tensor path, False: the per-tensor reference path; ``compile`` True: the update as one
    compiled kernel per tensor (:func:`_egstep_kernel`), None (default): compiled for groups of at
    least ``kexue.eg._common.COMPILE_MIN_NUMEL`` elements, False: never (falls back to the
    multi-tensor path with a ``CompileFallbackWarning`` where torch.compile does not work).
    """

    def __init__(self, params: Iterable, lr: float = 0.01, gamma: float = 1.0, nu0: float = 1.0,
                 nu_min: float = 1e-4, nu_max: float = 1e4, max_exp: float = 0.5, foreach: bool | None = None,
                 compile: bool | None = None):
        check_pos("lr", lr)
        check_pos("gamma", gamma, allow_zero=True)
        check_pos("nu0", nu0)
        check_pos("nu_min", nu_min)
        check_pos("nu_max", nu_max)
        check_pos("max_exp", max_exp)
        if not nu_min <= nu0 <= nu_max:
            raise KexueError(f"need 0 < nu_min <= nu0 <= nu_max, got {nu_min}, {nu0}, {nu_max}")
        super().__init__(params, dict(lr=lr, gamma=gamma, nu0=nu0, nu_min=nu_min, nu_max=nu_max, max_exp=max_exp,
                                      foreach=check_foreach(foreach), compile=check_compile(compile)))

    def _group_step(self, group, pg):
        for p, _ in pg:
            st = self.state[p]
            if not st:
                st["nu"] = torch.full_like(p, group["nu0"])
                st["prev_grad"] = torch.zeros_like(p)
        self._update(group, pg)

    def _step_reference(self, group, pg):
        for p, g in pg:
            nu, gp = self.state[p]["nu"], self.state[p]["prev_grad"]
            # gp doubles as scratch for the factor exp(clip(γ g_{t-1} g_t)): no allocation per step
            nu.mul_(mexp_(gp.mul_(g).mul_(group["gamma"]), group["max_exp"])).clamp_(group["nu_min"], group["nu_max"])
            gp.copy_(g)  # non-finite entries reach θ, as in SGD
            p.addcmul_(nu, gp, value=-group["lr"])

    def _step_foreach(self, group, pg):
        states = [self.state[p] for p, _ in pg]
        lists = by_device([p for p, _ in pg], [g for _, g in pg], [s["nu"] for s in states],
                          [s["prev_grad"] for s in states])
        for ps, gs, nus, gps in lists:
            torch._foreach_mul_(gps, gs)
            torch._foreach_mul_(gps, group["gamma"])
            foreach_mexp_(gps, group["max_exp"])
            torch._foreach_mul_(nus, gps)
            for nu, _gp, _g in zip(nus, gps, gs):
                nu.clamp_(group["nu_min"], group["nu_max"])  # one pass; foreach has only one-sided clamps
            torch._foreach_copy_(gps, gs)
            torch._foreach_addcmul_(ps, nus, gps, value=-group["lr"])

    def _step_fused(self, group, pg):
        states = [self.state[p] for p, _ in pg]
        lists = by_device([p for p, _ in pg], [g for _, g in pg], [s["nu"] for s in states],
                          [s["prev_grad"] for s in states])
        args = lambda p: (scalar(group["lr"], p), group["gamma"], group["max_exp"], group["nu_min"], group["nu_max"])  # noqa: E731
        fused_runs(_egstep_kernel, lists, args, lambda pairs: self._step_foreach(group, pairs))

def _egstep_kernel(ps, gs, nus, gps, lr, gamma: float, max_exp: float, nu_min: float, nu_max: float) -> None:
    """EGStep (SPEC 2.2) for one device/dtype run, written for torch.compile: the arithmetic of
    :meth:`EGStep._step_reference`, fused by inductor into one loop per tensor (reads θ, g, ν,
    g_{t-1}; writes θ, ν, g_{t-1}). ``lr`` is a 0-d tensor so a scheduler does not recompile it."""
    for p, g, nu, gp in zip(ps, gs, nus, gps):
        f = kernel_mexp(gp * g * gamma, max_exp)
        nu.copy_((nu * f).clamp(nu_min, nu_max))
        gp.copy_(g)
        p.add_(nu * gp * -lr)
