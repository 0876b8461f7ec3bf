"""The bases whose update EGAdapt's compiled path computes itself (SPEC 2.3): plain
``torch.optim.SGD``, ``Adam`` and ``AdamW``. Their update rule runs inside one kernel with
EGAdapt's gain renormalisation and θ ← θ + s · p ⊙ Δ folded in, so θ is written once and no
snapshot θ_old is kept. :func:`step_direct`, EGAdapt's step for these bases, decides when this
applies (:func:`direct_kind`) and runs it."""

from __future__ import annotations

from typing import Any

import torch

from kexue.eg._common import by_device, grads, run_fused, scalar, want_compiled
from kexue.eg.adapt_kernels import _adapt_kernel
from kexue.utils import KexueError

KNOWN = ((torch.optim.SGD, "sgd"), (torch.optim.Adam, "adam"), (torch.optim.AdamW, "adam"))
"""Bases whose update EGAdapt's compiled path computes itself (:func:`step_direct`); exact
types only, as a subclass may change ``step``. (Pairs, not a dict keyed by class: inside an enclosing
torch.compile dynamo answered the dict look-up with its default.)"""
BASE_STATE = {  # the base's per-parameter state the direct kernels read, in their argument order
    "sgd": lambda group: ("momentum_buffer",) if group["momentum"] != 0 else (),
    "adam": lambda group: ("exp_avg", "exp_avg_sq", "step") + (("max_exp_avg_sq",) if group["amsgrad"] else ()),
}


def known_base(base) -> str | None:
    """"sgd" or "adam" for a base of exactly one of :data:`KNOWN`'s types, else None."""
    return next((name for cls, name in KNOWN if type(base) is cls), None)


def direct_kind(base, work) -> str | None:
    """"sgd" or "adam" when every group runs the compiled path and ``base`` is a plain
    torch.optim.SGD / Adam / AdamW with options this module covers (numbers, not tensors, for the
    hyperparameters; no differentiable or capturable mode, step hooks, sparse or complex
    gradients); else None: the base runs its own step. ``work``: :func:`step_direct`'s groups."""
    kind = known_base(base)
    if kind is None or base._optimizer_step_pre_hooks or base._optimizer_step_post_hooks:
        return None
    for _, group, pg, _, _ in work:
        numbers = (group["lr"], group["weight_decay"],
                   *((group["momentum"], group["dampening"]) if kind == "sgd" else (*group["betas"], group["eps"])))
        if (group.get("eg_foreach") is False or not want_compiled(group, pg, "eg_compile")
                or group.get("differentiable") or group.get("capturable")
                or any(torch.is_tensor(x) for x in numbers)
                or any(g.is_sparse or p.is_complex() for p, g in pg)):
            return None
    return kind


def step_direct(opt) -> bool:
    """The compiled path of the EGAdapt ``opt`` for a base whose update we know (:func:`direct_kind`):
    the base's own update rule runs inside our kernel after :func:`~kexue.eg.adapt_kernels._adapt_kernel`,
    θ moved once by s · p ⊙ Δ, so there is neither a snapshot θ_old nor a base step over θ to undo
    (SPEC 2.3 as in :meth:`kexue.eg.EGAdapt.step`, with Δ the base's step computed directly instead
    of θ_base - θ_old). The first step (no m_{t-1}, gains 1, s 1) is the base's own step and our
    moments. Returns False where this does not apply, having at most created our state (as
    :meth:`~kexue.eg.EGAdapt.step` would). Called through :meth:`kexue.eg.EGAdapt._step_direct`;
    ``opt`` is not annotated because kexue.eg.adapt imports this module."""
    if known_base(opt.base) is None:  # before any per-group work: step() then does it once
        return False
    work = []
    for k, group in enumerate(opt.param_groups):
        pg = grads(group)
        if pg:
            states = [opt.state[p] for p, _ in pg]
            work.append((k, group, pg, states, "m" in states[0]))
    kind = direct_kind(opt.base, work) if work else None
    if kind is None:
        return False
    for _, _, pg, states, _ in work:
        for (p, _), st in zip(pg, states):
            if "m" not in st:
                st["m"], st["v"], st["gain"] = torch.zeros_like(p), torch.zeros_like(p), torch.ones_like(p)
    if not any(started for *_, started in work) and all(group["scale"] == 1.0 for _, group, *_ in work):
        for _, group, pg, states, _ in work:
            opt._moments_foreach(group, pg, states, snapshot=False)
        opt.base.step()
        return True
    base_keys = BASE_STATE[kind]
    if not all(started and all(k in opt.base.state[p] and opt.base.state[p][k] is not None
                               for p, _ in pg for k in base_keys(group))
               for _, group, pg, _, started in work):
        return False
    planned: list[Any] = []
    for k, group, pg, states, _ in work:
        lists = by_device([p for p, _ in pg], [g for _, g in pg], *[[st[n] for st in states] for n in ("m", "v", "gain")],
                          *[[opt.base.state[p][n] for p, _ in pg] for n in base_keys(group)])
        sums: list[Any] = []
        means: list[Any] = []
        for ps, gs, ms, vs, gains, *_ in lists:
            ok, out = run_fused(_adapt_kernel, ps, gs, ms, vs, gains, None, group["gain_lr"], group["beta"],
                                group["max_exp"], *group["gain_bounds"])
            if not ok:
                if planned or sums:  # cannot happen: one kernel either compiles for every run or for none
                    raise KexueError("EGAdapt: torch.compile failed part-way through a step")
                return False
            sums.append(out[0])
            means.append(out[1])
        planned.append((group, lists, opt._new_scale(k, group, sums, pg[0][0]), means))
    for group, lists, scale, means in planned:
        for run, mean in zip(lists, means):
            kernel, args = kernel_args(kind, group, run, mean, scale)
            ok, _ = run_fused(kernel, *args)
            if not ok:  # only if compiling this kernel failed after _adapt_kernel's worked: run it eagerly
                kernel(*args)
    return True


def kernel_args(kind: str, group: dict, run, means, scale):
    """(kernel, arguments) of the known base ``kind`` for one device/dtype run."""
    return (sgd_args if kind == "sgd" else adam_args)(group, run, means, scale)


@torch.compiler.disable
def sgd_args(group, run, means, scale):
    """:func:`sgd_kernel`'s arguments for one device/dtype run; every number a 0-d tensor
    (see :func:`kexue.eg._common.run_fused`), the options that change the loop's shape as Python values."""
    ps, gs, _, _, gains, *bufs = run
    like = ps[0]
    wd = scalar(group["weight_decay"], like) if group["weight_decay"] != 0 else None
    return sgd_kernel, (ps, gs, bufs[0] if bufs else None, gains, means, scale, scalar(group["lr"], like),
                        scalar(group["momentum"], like), scalar(group["dampening"], like), wd,
                        bool(group["nesterov"]), bool(group["maximize"]), *group["gain_bounds"])


@torch.compiler.disable
def adam_args(group, run, means, scale):
    """:func:`adam_kernel`'s arguments for one run: the base's step counts advanced here (as
    torch.optim.Adam does before its update), its bias corrections per tensor from them."""
    ps, gs, _, _, gains, exp_avgs, exp_avg_sqs, steps, *maxs = run
    like = ps[0]
    (beta1, beta2), lr = group["betas"], group["lr"]
    per_step = {}
    step_sizes, bc2_sqrts = [], []
    for st in steps:
        st += 1
        t = float(st)
        if t not in per_step:
            per_step[t] = (scalar(lr / (1 - beta1 ** t), like), scalar((1 - beta2 ** t) ** 0.5, like))
        step_sizes.append(per_step[t][0])
        bc2_sqrts.append(per_step[t][1])
    wd = scalar(group["weight_decay"], like) if group["weight_decay"] != 0 else None
    return adam_kernel, (ps, gs, exp_avgs, exp_avg_sqs, maxs[0] if maxs else None, gains, means, scale,
                         scalar(lr, like), step_sizes, bc2_sqrts, scalar(beta1, like), scalar(beta2, like),
                         scalar(group["eps"], like), wd, bool(group.get("decoupled_weight_decay", False)),
                         bool(group["maximize"]), *group["gain_bounds"])


def sgd_kernel(ps, gs, bufs, gains, means, scale, lr, momentum, dampening, wd, nesterov: bool, maximize: bool,
               glo: float, ghi: float) -> None:
    """torch.optim.SGD's update with EGAdapt's scaling in one loop over θ, g, b, p per tensor (after
    :func:`kexue.eg.adapt_kernels._adapt_kernel`; the state exists). SGD: d = ±g + λθ, b ← μ b + (1-τ) d, d ← b (or d + μ b,
    Nesterov), Δ = -η d; ours: p ← clamp(p / mean(p), p_min, p_max), θ ← θ + s · p ⊙ Δ — the result
    of the base step and :func:`kexue.eg.adapt_kernels._combine_kernel`, without writing θ_base or reading θ_old.
    ``bufs`` None: no momentum; ``wd`` None: no weight decay."""
    for i, (p, g, gain, mean) in enumerate(zip(ps, gs, gains, means)):
        d = -g if maximize else g
        if wd is not None:
            d = d + p * wd
        if bufs is not None:
            b = bufs[i] * momentum + d * (1 - dampening)
            bufs[i].copy_(b)
            d = d + b * momentum if nesterov else b
        gn = (gain / mean).clamp(glo, ghi)
        gain.copy_(gn)
        p.copy_(p - d * gn * (lr * scale))


def adam_kernel(ps, gs, ms, vs, maxs, gains, means, scale, lr, step_sizes, bc2_sqrts, beta1, beta2, eps, wd,
                decoupled: bool, maximize: bool, glo: float, ghi: float) -> None:
    """torch.optim.Adam's (AdamW's) update with EGAdapt's scaling in one loop over θ, g, m, v (, v_max),
    p per tensor (after :func:`kexue.eg.adapt_kernels._adapt_kernel`; the step counts already advanced). Adam: g ← ±g (+ λθ),
    m ← lerp(m, g, 1-β₁), v ← β₂ v + (1-β₂) g², v_max ← max(v_max, v) (amsgrad: ``maxs``),
    Δ = -α_t m / (√v / √(1-β₂ᵗ) + ε) (- η λ θ, decoupled) with α_t = η / (1-β₁ᵗ); ours as in
    :func:`sgd_kernel`: p ← clamp(p / mean(p)), θ ← θ + s · p ⊙ Δ."""
    for i, (p, g, m, v, gain, mean) in enumerate(zip(ps, gs, ms, vs, gains, means)):
        g = -g if maximize else g
        if wd is not None and not decoupled:
            g = g + p * wd
        m_new = torch.lerp(m, g, 1 - beta1)
        v_new = v * beta2 + g * g * (1 - beta2)
        m.copy_(m_new)
        v.copy_(v_new)
        if maxs is not None:
            v_new = torch.maximum(maxs[i], v_new)
            maxs[i].copy_(v_new)
        u = m_new / (v_new.sqrt() / bc2_sqrts[i] + eps) * step_sizes[i]
        if wd is not None and decoupled:
            u = u + p * (lr * wd)
        gn = (gain / mean).clamp(glo, ghi)
        gain.copy_(gn)
        p.copy_(p - u * gn * scale)
