"""Pieces shared by the kexue.eg optimisers: argument checks, closures, the clipped EG factor,
the grouping of tensors for the multi-tensor (``torch._foreach_*``) paths, and the compiled
(``torch.compile``) update kernels."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import cast

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


def check_compile(compile) -> bool | None:
    if compile is not None and not isinstance(compile, bool):
        raise KexueError(f"compile must be True, False or None (None: compiled for groups of >= {COMPILE_MIN_NUMEL:,} "
                         f"elements); got {compile!r}")
    return compile


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


# ---------------------------------------------------------------- compiled update kernels
COMPILE_MIN_NUMEL = 1 << 20
"""``compile=None`` compiles a group's update when the group holds at least this many elements:
below it the one-off compile time (seconds) outweighs what fusing saves per step."""


class CompileFallbackWarning(RuntimeWarning):
    """torch.compile could not build a kexue.eg update kernel here; the eager multi-tensor path runs instead."""


_compiled: dict[Callable, Callable] = {}
_broken: set[Callable] = set()


def want_compiled(group: dict, pg: list, key: str = "compile") -> bool:
    """Whether a group's step runs the fused kernel: inside an enclosing ``torch.compile`` always
    (dynamo traces the kernel with the rest), else when ``group[key]`` is True, or None and the
    group is large (:data:`COMPILE_MIN_NUMEL`)."""
    if torch.compiler.is_compiling():
        return True
    c = group.get(key)
    return c is True or (c is None and sum(p.numel() for p, _ in pg) >= COMPILE_MIN_NUMEL)


def run_fused(kernel: Callable, *args):
    """``kernel(*args)`` compiled once by ``torch.compile(fullgraph=True)`` (as torch.optim's compiled
    path fuses its element-wise chain into one loop per tensor), or traced inline when already
    inside ``torch.compile``. Returns ``(True, result)``, or ``(False, None)`` having done nothing
    when torch.compile is unavailable or fails for this kernel (then a
    :class:`CompileFallbackWarning`, once per kernel, and the caller runs its eager path).

    Kernels take every per-step value that changes (learning rate, scale) as a 0-d tensor, so the
    compiled graph does not bake it in as a constant and recompile when it moves."""
    if torch.compiler.is_compiling():
        return True, kernel(*args)
    if kernel in _broken:
        return False, None
    try:
        fn = _compiled.get(kernel)
        if fn is None:
            fn = _compiled[kernel] = torch.compile(kernel, fullgraph=True)
        return True, fn(*args)
    except Exception as e:  # no C++ compiler, unsupported Python/platform, inductor errors: fall back
        _broken.add(kernel)
        warnings.warn(f"kexue.eg: torch.compile failed for {kernel.__name__} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); using the eager multi-tensor path",
                      CompileFallbackWarning, stacklevel=3)
        return False, None


def fused_runs(kernel: Callable, lists: list, args: Callable, fallback: Callable) -> None:
    """``kernel(*run, *args(θ₀))`` through :func:`run_fused` for each device/dtype run of ``lists``
    (from :func:`by_device`, θ and g first; θ₀ the run's first tensor). Where torch.compile fails,
    ``fallback`` gets the (θ, g) pairs of that run and the later ones (the eager multi-tensor path)."""
    for i, run in enumerate(lists):
        ok, _ = run_fused(kernel, *run, *args(run[0][0]))
        if not ok:
            fallback([(p, g) for r in lists[i:] for p, g in zip(r[0], r[1])])
            return


def kernel_mexp(x: torch.Tensor, max_exp: float) -> torch.Tensor:
    """:func:`mexp_` for the compiled kernels: NaN → 0 by ``x == x`` rather than ``nan_to_num``,
    which inductor's CPU code tests one element at a time instead of in vector registers."""
    return torch.where(x == x, x.clamp(-max_exp, max_exp), 0.0).exp()


def kernel_exp_clipped(x: torch.Tensor, max_exp: float) -> torch.Tensor:
    """:func:`exp_clipped_` for the compiled kernels (NaN kept)."""
    return x.clamp(-max_exp, max_exp).exp()


def scalar(x: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d float64 tensor on ``like``'s device: a per-step value passed to a compiled kernel."""
    return torch.tensor(x, dtype=torch.float64, device=like.device)


def by_device(*lists: list[torch.Tensor]) -> list[list[list[torch.Tensor]]]:
    """Split parallel tensor lists into runs of one device and dtype, as torch.optim does
    before calling ``torch._foreach_*`` (which needs uniform lists for its fast kernels)."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(cast(list[list[torch.Tensor | None]], list(lists)))
    return [cast(list[list[torch.Tensor]], list(tl)) for tl, _ in grouped.values()]


def mexp_(x: torch.Tensor, max_exp: float) -> torch.Tensor:
    """In place: exp of the clipped exponent x; NaN exponents (0·inf) count as 0, i.e. no change.
    For step sizes and gains (EGStep's ν, EGAdapt's p), whose NaN would outlive the step."""
    return x.nan_to_num_(nan=0.0).clamp_(-max_exp, max_exp).exp_()


def exp_clipped_(x: torch.Tensor, max_exp: float) -> torch.Tensor:
    """In place: exp of the clipped exponent x, NaN kept (clamp passes NaN through): the factor
    of a weight update, so a NaN gradient entry makes a NaN weight, as in torch.optim.SGD."""
    return x.clamp_(-max_exp, max_exp).exp_()


def foreach_exp_clipped_(xs: list[torch.Tensor], max_exp: float) -> None:
    """:func:`exp_clipped_` over a list, as multi-tensor calls (NaN kept)."""
    torch._foreach_clamp_min_(xs, -max_exp)
    torch._foreach_clamp_max_(xs, max_exp)
    torch._foreach_exp_(xs)


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

    def _step_reference(self, group: dict, pg: list) -> None:  # one tensor at a time (every subclass)
        raise NotImplementedError

    def _step_foreach(self, group: dict, pg: list) -> None:  # torch._foreach_* over the group (every subclass)
        raise NotImplementedError

    def _update(self, group: dict, pg: list) -> None:
        """The group's update on the path its options ask for: ``foreach=False`` the per-tensor
        ``_step_reference``; else the compiled ``_step_fused`` where a subclass has one and
        :func:`want_compiled` says so; else the multi-tensor ``_step_foreach``."""
        if not use_foreach(group):
            self._step_reference(group, pg)
        elif hasattr(self, "_step_fused") and want_compiled(group, pg):
            self._step_fused(group, pg)
        else:
            self._step_foreach(group, pg)
