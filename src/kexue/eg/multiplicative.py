"""SPEC 2.1: exponentiated gradient (EG) for non-negative parameters, and EG± for signed ones."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kexue.eg._common import (GroupwiseOptimizer, by_device, check_compile, check_foreach, check_pos,
                              exp_clipped_, foreach_exp_clipped_, fused_runs, kernel_exp_clipped, scalar, use_foreach)
from kexue.utils import KexueError


class EG(GroupwiseOptimizer):
    """Exponentiated gradient for non-negative parameters (SPEC 2.1).

    θ ← θ ⊙ exp(-η ∇L(θ)): gradient descent on φ = log θ with the e^φ factor dropped, so θ
    stays ≥ 0 (and exactly 0 stays 0). With ``simplex=True`` each parameter tensor is also
    renormalised to sum to one after every step — the normalised EG of Kivinen & Warmuth for
    mixture weights and probability vectors — computed as a softmax of log θ - η g, so nothing
    overflows or underflows to an all-zero vector.

    Args: ``lr`` η > 0; ``simplex`` renormalise each tensor to sum 1; ``max_exp`` clip of the
    exponent η g (default 30: a factor ≤ 1e13 per step); ``foreach`` None/True: multi-tensor
    path, False: the per-tensor reference path.

    Non-finite gradients: as in ``torch.optim.SGD``, a NaN gradient entry makes that weight NaN
    (with ``simplex=True`` the whole tensor, through the renormalisation), so a diverging model
    shows in its parameters; an infinite entry is a factor e^(∓max_exp) (the clip).
    A parameter tensor that is all zeros can never move (0 · e^x = 0) and is refused at
    construction, as are negative or non-finite starting values.
    """

    def __init__(self, params: Iterable, lr: float = 0.1, simplex: bool = False, max_exp: float = 30.0,
                 foreach: bool | None = None):
        check_pos("lr", lr)
        check_pos("max_exp", max_exp)
        super().__init__(params, dict(lr=lr, simplex=simplex, max_exp=max_exp, foreach=check_foreach(foreach)))

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group`` (also what the constructor calls), then the start checks."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if bool((p.detach() < 0).any()) or not bool(torch.isfinite(p.detach()).all()):
                raise KexueError("EG needs finite, non-negative initial parameters; use EGPlusMinus for signed ones")
            if p.numel() and not bool(p.detach().any()):
                raise KexueError(f"EG cannot move a parameter that is all zeros (shape {tuple(p.shape)}: θ·exp(-ηg) "
                                 "stays 0); start it at positive values, e.g. torch.full_like(p, 1 / p.numel()), "
                                 "or use EGPlusMinus")
            if group["simplex"] and not float(p.detach().sum()) > 0:
                raise KexueError("EG with simplex=True needs each parameter tensor to have a positive sum")

    def _group_step(self, group, pg):
        if group["simplex"] or not use_foreach(group):
            self._step_reference(group, pg)
        else:
            self._step_foreach(group, pg)

    @staticmethod
    def _step_reference(group, pg):
        lr, m = group["lr"], group["max_exp"]
        for p, g in pg:
            e = torch.mul(g, -lr).clamp_(-m, m)  # NaN stays NaN: a NaN gradient shows in θ
            if group["simplex"]:
                # θ_i e^{e_i} / Σ_j θ_j e^{e_j} = softmax(log θ + e); log 0 = -inf stays at weight 0
                p.copy_(torch.softmax((p.log() + e).flatten(), 0).view_as(p))
            else:
                # repeated ×e^max_exp could overflow; cap at the dtype's largest value
                p.mul_(e.exp_()).clamp_(max=torch.finfo(p.dtype).max)

    @staticmethod
    def _step_foreach(group, pg):
        for ps, gs in by_device([p for p, _ in pg], [g for _, g in pg]):
            e = torch._foreach_mul(gs, -group["lr"])
            foreach_exp_clipped_(e, group["max_exp"])
            torch._foreach_mul_(ps, e)
            torch._foreach_clamp_max_(ps, torch.finfo(ps[0].dtype).max)


class EGPlusMinus(GroupwiseOptimizer):
    """EG± (Kivinen & Warmuth) for signed parameters (SPEC 2.1).

    Each parameter is written θ = u - v with u, v ≥ 0 and both halves follow EG on their own
    gradients ∂L/∂u = g, ∂L/∂v = -g:  u ← u ⊙ exp(-η g),  v ← v ⊙ exp(+η g),  θ ← u - v.
    The halves start at u₀ = relu(θ₀) + c, v₀ = relu(-θ₀) + c with ``init_scale`` c > 0 (EG
    cannot move a weight that is exactly zero, so c sets how fast small weights can grow).

    A NaN gradient entry makes that weight NaN (u and v too), as in ``torch.optim.SGD``.

    Args: ``lr`` η; ``init_scale`` c; ``max_exp`` exponent clip; ``foreach`` as in :class:`EG`;
    ``compile`` True: the update as one compiled kernel per tensor (:func:`_egpm_kernel`, about
    one pass over θ, g, u, v instead of eleven), None (default): compiled for groups of at least
    ``kexue.eg._common.COMPILE_MIN_NUMEL`` elements, False: never. Without a working
    torch.compile it falls back to the multi-tensor path (a ``CompileFallbackWarning``).
    """

    def __init__(self, params: Iterable, lr: float = 0.1, init_scale: float = 0.1, max_exp: float = 30.0,
                 foreach: bool | None = None, compile: bool | None = None):
        check_pos("lr", lr)
        check_pos("init_scale", init_scale)
        check_pos("max_exp", max_exp)
        super().__init__(params, dict(lr=lr, init_scale=init_scale, max_exp=max_exp, foreach=check_foreach(foreach),
                                      compile=check_compile(compile)))

    def _group_step(self, group, pg):
        c = group["init_scale"]
        for p, _ in pg:
            st = self.state[p]
            if not st:
                st["u"] = p.detach().clamp(min=0) + c
                st["v"] = (-p.detach()).clamp(min=0) + c
        self._update(group, pg)

    def _step_reference(self, group, pg):
        lr, m = group["lr"], group["max_exp"]
        for p, g in pg:
            st = self.state[p]
            f = exp_clipped_(torch.mul(g, -lr), m)
            big = torch.finfo(p.dtype).max / 2  # so that u - v cannot overflow
            st["u"].mul_(f).clamp_(max=big)
            st["v"].div_(f).clamp_(max=big)  # exp(+η g) = 1 / exp(-η g), same clipping
            torch.sub(st["u"], st["v"], out=p)

    def _step_foreach(self, group, pg):
        states = [self.state[p] for p, _ in pg]
        lists = by_device([p for p, _ in pg], [g for _, g in pg], [s["u"] for s in states], [s["v"] for s in states])
        for ps, gs, us, vs in lists:
            f = torch._foreach_mul(gs, -group["lr"])
            foreach_exp_clipped_(f, group["max_exp"])
            big = torch.finfo(ps[0].dtype).max / 2
            torch._foreach_mul_(us, f)
            torch._foreach_clamp_max_(us, big)
            torch._foreach_div_(vs, f)
            torch._foreach_clamp_max_(vs, big)
            for p, u, v in zip(ps, us, vs):  # θ = u - v written into θ's own storage: no temporary
                torch.sub(u, v, out=p)

    def _step_fused(self, group, pg):
        states = [self.state[p] for p, _ in pg]
        lists = by_device([p for p, _ in pg], [g for _, g in pg], [s["u"] for s in states],
                          [s["v"] for s in states])
        args = lambda p: (scalar(group["lr"], p), group["max_exp"], torch.finfo(p.dtype).max / 2)  # noqa: E731
        fused_runs(_egpm_kernel, lists, args, lambda pairs: self._step_foreach(group, pairs))

def _egpm_kernel(ps, gs, us, vs, lr, max_exp: float, big: float) -> None:
    """EG± (SPEC 2.1) for one device/dtype run, written for torch.compile: the same arithmetic as
    :meth:`EGPlusMinus._step_reference`, fused by inductor into one loop per tensor. ``lr`` is a
    0-d tensor so that a scheduler moving it does not recompile the kernel."""
    for p, g, u, v in zip(ps, gs, us, vs):
        f = kernel_exp_clipped(g * -lr, max_exp)
        u.copy_((u * f).clamp(max=big))
        v.copy_((v / f).clamp(max=big))
        p.copy_(u - v)
