"""SPEC 2.4: hypergradient descent on the learning rate (Baydin et al. 2018), the baselines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch

from kexue.eg._common import GroupwiseOptimizer, by_device, check_foreach, check_pos, check_unit, use_foreach


class _HDBase(GroupwiseOptimizer):
    """Shared hypergradient rule: α ← α + β ⟨g_t, u_{t-1}⟩, optionally kept ≥ ``min_lr``.

    ``step`` adapts α from the previous direction u_{t-1} (one host read per group and step),
    then computes the new direction u_t into ``state["u"]`` — per tensor (``_direction``, the
    reference) or multi-tensor (``_directions``) — and moves θ ← θ - α_t u_t.

    With an ``lr_scheduler`` both act on ``group["lr"]``: the scheduler sets α and the rule
    corrects it on the next step (closed-form schedulers such as ``LambdaLR`` overwrite the
    learned correction whenever they step; chainable ones such as ``StepLR`` scale it).
    """

    def _group_step(self, group, pg):
        states = [self.state[p] for p, _ in pg]
        self._adapt_lr(group, pg, states)
        if use_foreach(group):
            for ps, _gs, us in self._directions(group, pg, states):
                torch._foreach_add_(ps, us, alpha=-group["lr"])
        else:
            for (p, g), st in zip(pg, states):
                self._direction(group, p, g, st)
                p.add_(st["u"], alpha=-group["lr"])

    def _direction(self, group: dict, p: torch.Tensor, g: torch.Tensor, st: dict) -> None:
        raise NotImplementedError

    def _directions(self, group: dict, pg: list, states: list) -> list:
        raise NotImplementedError

    def _adapt_lr(self, group: dict, pg: list, states: list) -> None:
        if "u" not in states[0]:
            return
        dots = cast(torch.Tensor, sum(torch.dot(g.flatten(), st["u"].flatten()) for (_, g), st in zip(pg, states)))
        h = float(torch.nan_to_num(dots, nan=0.0, posinf=0.0, neginf=0.0))
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
    are not sanitised. ``foreach``: None/True multi-tensor path, False per-tensor reference.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, hyper_lr: float = 1e-3, momentum: float = 0.0,
                 keep_positive: bool = True, min_lr: float = 0.0, foreach: bool | None = None):
        check_pos("lr", lr)
        check_pos("hyper_lr", hyper_lr, allow_zero=True)
        check_pos("min_lr", min_lr, allow_zero=True)
        check_unit("momentum", momentum)
        super().__init__(params, dict(lr=lr, hyper_lr=hyper_lr, momentum=momentum, keep_positive=keep_positive,
                                      min_lr=min_lr, foreach=check_foreach(foreach)))

    def _direction(self, group, p, g, st):
        if "u" not in st:
            st["u"] = g.clone()
        elif group["momentum"] > 0:
            st["u"].mul_(group["momentum"]).add_(g)
        else:
            st["u"].copy_(g)

    def _directions(self, group, pg, states):
        first = "u" not in states[0]
        for (_, g), st in zip(pg, states):
            if "u" not in st:
                st["u"] = g.clone()
        lists = by_device([p for p, _ in pg], [g for _, g in pg], [st["u"] for st in states])
        if not first:
            for _, gs, us in lists:
                if group["momentum"] > 0:
                    torch._foreach_mul_(us, group["momentum"])
                    torch._foreach_add_(us, gs)
                else:
                    torch._foreach_copy_(us, gs)
        return [(ps, gs, us) for ps, gs, us in lists]


class AdamHD(_HDBase):
    """Adam with hypergradient descent on the learning rate (SPEC 2.4; Baydin et al. 2018).

    Like torch.optim, non-finite gradients are not sanitised.

    m_t = β1 m + (1-β1) g,  v_t = β2 v + (1-β2) g²,  u_t = m̂_t / (√v̂_t + ε) (bias-corrected),
        α_t = α_{t-1} + β ⟨g_t, u_{t-1}⟩,    θ ← θ - α_t u_t.
    β (``hyper_lr``) defaults to 1e-7 as in Baydin et al.'s Adam-HD experiments. With
    ``keep_positive=True`` (default) α is clamped at ``min_lr``. ``foreach`` as in :class:`SGDHD`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, hyper_lr: float = 1e-7,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 keep_positive: bool = True, min_lr: float = 0.0, foreach: bool | None = None):
        check_pos("lr", lr)
        check_pos("hyper_lr", hyper_lr, allow_zero=True)
        check_pos("eps", eps)
        check_pos("min_lr", min_lr, allow_zero=True)
        for b in betas:
            check_unit("betas", b)
        super().__init__(params, dict(lr=lr, hyper_lr=hyper_lr, betas=tuple(betas), eps=eps,
                                      keep_positive=keep_positive, min_lr=min_lr, foreach=check_foreach(foreach)))

    @staticmethod
    def _init(p, st):
        if "m" not in st:
            st["step"] = 0
            st["m"], st["v"], st["u"] = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
        st["step"] += 1
        return st["step"]

    def _direction(self, group, p, g, st):
        b1, b2 = group["betas"]
        t = self._init(p, st)
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (st["v"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        torch.div(st["m"], denom, out=st["u"]).div_(1 - b1 ** t)

    def _directions(self, group, pg, states):
        b1, b2 = group["betas"]
        if len({st.get("step", 0) for st in states}) > 1:  # tensors that skipped steps: per tensor
            for (p, g), st in zip(pg, states):
                self._direction(group, p, g, st)
            return by_device([p for p, _ in pg], [g for _, g in pg], [st["u"] for st in states])
        t = [self._init(p, st) for (p, _), st in zip(pg, states)][0]
        lists = by_device([p for p, _ in pg], [g for _, g in pg], [st["m"] for st in states],
                          [st["v"] for st in states], [st["u"] for st in states])
        out = []
        for ps, gs, ms, vs, us in lists:
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, gs, alpha=1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
            # u = m̂ / (√v̂ + ε), built in u's own storage (no parameter-sized temporaries)
            torch._foreach_copy_(us, vs)
            torch._foreach_div_(us, 1 - b2 ** t)
            torch._foreach_sqrt_(us)
            torch._foreach_add_(us, group["eps"])
            for m, u in zip(ms, us):
                torch.div(m, u, out=u)
            torch._foreach_div_(us, 1 - b1 ** t)
            out.append((ps, gs, us))
        return out
