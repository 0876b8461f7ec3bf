"""EGAdapt's per-step arithmetic (SPEC 2.3), kept apart from the optimiser's bookkeeping: the scale
update with its spike guard, and the two kernels written for torch.compile (:mod:`kexue.eg.adapt`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from kexue.eg._common import kernel_mexp


def _rescale(group: dict, a: float, gn2: float) -> None:
    """s ← clamp(s · exp(γ_s a), s_min, s_max) (SPEC 2.3), then the spike guard: with r = ‖g_t‖ over
    the running RMS of past gradient norms (an EMA of ‖g‖², rate β), s ← s · ρ / r when r > ρ
    (ρ = ``spike``). The EG factor changes s by at most e^{γ_s} a step, while a step size that has
    grown past the stable limit makes ‖g‖ jump by far more in one step (the VAE of the lrfree study:
    ×20 in one step after 25 aligned ones, then divergence at any initial learning rate); the jump is
    the sign, and dividing s by it brings the step back to where the gradient norm was. The EMA
    takes min(‖g‖², ρ² · EMA), so one spike does not raise the reference that the next is judged by,
    while a lasting rise in the gradient norm is followed within a few steps."""
    lo, hi = group["scale_bounds"]
    s = group["scale"] * math.exp(group["scale_lr"] * a)
    ref, rho = group["grad_sq"], group["spike"]
    if not math.isfinite(gn2):
        pass  # a non-finite gradient: the base's step is the caller's concern; keep the reference
    elif ref > 0 and rho is not None:
        r = math.sqrt(gn2 / ref)
        if r > rho:
            s *= rho / r
        group["grad_sq"] = group["beta"] * ref + (1 - group["beta"]) * min(gn2, rho * rho * ref)
    else:
        group["grad_sq"] = gn2 if ref <= 0 else group["beta"] * ref + (1 - group["beta"]) * gn2
    group["scale"] = min(max(s, lo), hi)


def _adapt_kernel(ps, gs, ms, vs, gains, olds, gain_lr: float, beta: float, max_exp: float, glo: float, ghi: float):
    """EGAdapt's work before the base step (SPEC 2.3) for one device/dtype run, written for
    torch.compile: the alignment sums (⟨g, m⟩, ‖g‖², ‖m‖²) with m = m_{t-1}, the gains
    p ← clamp(p ⊙ exp(clip(γ_p g m / v)), p_min, p_max) and their per-tensor means, the moment
    EMAs and the snapshot θ_old = θ (``olds`` None: no snapshot) — one loop over g, m, v, p, θ per
    tensor. The renormalisation p ← clamp(p / mean(p)) is left to the kernel after the base step
    (:func:`_combine_kernel`, or :func:`kexue.eg.known_bases.sgd_kernel` / ``adam_kernel``), which reads p anyway
    (nothing uses p in between), so that p is not read twice here. Same arithmetic as the
    reference path."""
    dot: Any = 0.0  # sums of 0-d tensors, started from 0
    gn2: Any = 0.0
    mn2: Any = 0.0
    means = []
    for i, (g, m, v, gain) in enumerate(zip(gs, ms, vs, gains)):
        dot = dot + (g * m).sum()
        gn2 = gn2 + (g * g).sum()
        mn2 = mn2 + (m * m).sum()
        f = kernel_mexp(g * m / v * gain_lr, max_exp)
        gain.copy_((gain * f).clamp(glo, ghi))
        means.append(gain.mean())
        m.copy_(m * beta + g * (1 - beta))
        v.copy_(v * beta + g * g * (1 - beta))
        if olds is not None:  # None: EGAdapt knows the base's update (kexue.eg.known_bases)
            olds[i].copy_(ps[i])
    return torch.stack([dot, gn2, mn2]), means


def _combine_kernel(ps, olds, gains, means, scale, glo: float, ghi: float) -> None:
    """After the base step: p ← clamp(p / mean(p), p_min, p_max) (deferred from :func:`_adapt_kernel`)
    and θ ← θ_old + s · p ⊙ (θ_base - θ_old), one loop per tensor; ``scale`` s is a 0-d tensor."""
    for p, old, gain, mean in zip(ps, olds, gains, means):
        gain.copy_((gain / mean).clamp(glo, ghi))
        p.copy_(old + (p - old) * gain * scale)
