"""Pieces shared by the kexue.eg optimisers: argument checks, closures, the clipped EG factor,
and the grouping of tensors for the multi-tensor (``torch._foreach_*``) paths."""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim import Optimizer

from kexue import validate
from kexue.utils import KexueError


def check_pos(name: str, value, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0 with ``allow_zero``), else a one-line KexueError."""
    return validate.real(value, name, 0.0, lo_open=not allow_zero)


def check_unit(name: str, value) -> float:
    """A float in [0, 1): EMA rates, momenta, Adam's betas."""
    return validate.real(value, name, 0.0, 1.0, hi_open=True)


def check_foreach(foreach) -> bool | None:
    if foreach not in (None, True, False):
        raise KexueError(f"foreach must be True, False or None (None: the multi-tensor path); got {foreach!r}")
    return foreach


def closure_loss(closure: Callable | None):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def grads(group: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(param, grad) pairs of a group, skipping parameters without a gradient."""
    return [(p, p.grad) for p in group["params"] if p.grad is not None]


def use_foreach(group: dict) -> bool:
    """The multi-tensor path unless the group asks for the per-tensor reference (foreach=False)."""
    return group.get("foreach") is not False


def by_device(*lists: list[torch.Tensor]) -> list[list[list[torch.Tensor]]]:
    """Split parallel tensor lists into runs of one device and dtype, as torch.optim does
    before calling ``torch._foreach_*`` (which needs uniform lists for its fast kernels)."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(list(lists))
    return [list(tl) for tl, _ in grouped.values()]


def mexp_(x: torch.Tensor, max_exp: float) -> torch.Tensor:
    """In place: exp of the clipped exponent x; NaN exponents (0·inf) count as 0, i.e. no change."""
    return x.nan_to_num_(nan=0.0).clamp_(-max_exp, max_exp).exp_()


def foreach_mexp_(xs: list[torch.Tensor], max_exp: float) -> None:
    """:func:`mexp_` over a list: NaN→0 and the clip in one pass per tensor (torch has no
    ``_foreach_nan_to_num``), the exp as one multi-tensor call."""
    for x in xs:
        x.nan_to_num_(nan=0.0).clamp_(-max_exp, max_exp)
    torch._foreach_exp_(xs)


class GroupwiseOptimizer(Optimizer):
    """``step()`` = the closure, then ``_group_step(group, [(param, grad), ...])`` for every group
    with gradients; the subclasses differ only in ``_group_step``."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            pg = grads(group)
            if pg:
                self._group_step(group, pg)
        return loss

    def _group_step(self, group: dict, pg: list) -> None:
        raise NotImplementedError
