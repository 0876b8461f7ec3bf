"""The EXACT loss (SPEC 6.2) and the losses it is compared with (SPEC 6.3), as ``torch.nn`` losses.

All three follow ``torch.nn.CrossEntropyLoss``'s conventions: logits ``(N, C)`` with labels
``(N,)``, or ``(N, C, d1, …)`` with ``(N, d1, …)`` (per pixel / per token), or ``(C,)`` with a
scalar label; ``reduction`` = ``"mean"`` | ``"sum"`` | ``"none"``; labels equal to
``ignore_index`` are dropped (``"none"`` gives 0 there). A batch of shape ``(N, C, d)`` gives the
same loss as its flattening to ``(N·d, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kexue import validate
from kexue.exact.orthant import METHODS, check_tensor_finite, orthant_unchecked
from kexue.utils import KexueError, KexueTypeError

REDUCTIONS = ("mean", "sum", "none")


def logit_deltas(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d_i = mu_y - mu_i for i != y: (B, C) logits, (B,) labels -> (B, C - 1)."""
    C = logits.shape[1]
    others = torch.arange(C - 1, device=logits.device)
    others = others + (others >= target[:, None])  # the C - 1 columns that are not y, in order
    return logits.gather(1, target[:, None]) - logits.gather(1, others)


class _Flat:
    """Logits and labels flattened to (M, C) and (M,), the rows with an ignored label dropped."""

    def __init__(self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, min_classes: int):
        _check_types(logits, target)
        if logits.ndim == 1 and target.ndim == 0:
            logits, target = logits[None], target[None]
            self.shape: tuple = ()
        elif logits.ndim >= 2 and target.shape == logits.shape[:1] + logits.shape[2:]:
            self.shape = tuple(target.shape)
            logits = logits.movedim(1, -1).reshape(-1, logits.shape[1])
            target = target.reshape(-1)
        else:
            raise KexueError(f"expected logits (N, C, d1, …) and labels (N, d1, …); got {tuple(logits.shape)} "
                             f"and {tuple(target.shape)}")
        C = logits.shape[1]
        if C < min_classes:
            raise KexueError(f"need at least {min_classes} classes; got logits with {C} along dim 1")
        keep = target != ignore_index
        self.keep = None if bool(keep.all()) else keep
        if self.keep is not None:
            logits, target = logits[keep], target[keep]
        if len(target) and (int(target.min()) < 0 or int(target.max()) >= C):
            raise KexueError(f"labels must lie in 0..{C - 1} (or equal ignore_index={ignore_index}); "
                             f"got values from {int(target.min())} to {int(target.max())}")
        check_tensor_finite(logits, "logits")
        self.logits, self.target, self.rows = logits, target, len(keep)

    def reduce(self, per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
        if reduction == "mean":
            return per_sample.mean()  # NaN when every label is ignored, as in torch
        if reduction == "sum":
            return per_sample.sum()
        return self.unflatten(per_sample, 0.0)

    def unflatten(self, per_sample: torch.Tensor, fill: float) -> torch.Tensor:
        if self.keep is not None:
            full = per_sample.new_full((self.rows,), fill)
            per_sample = full.masked_scatter(self.keep, per_sample)
        return per_sample.reshape(self.shape)


def _check_types(logits, target) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise KexueTypeError(f"logits and labels must be torch tensors; got {type(logits).__name__} and "
                             f"{type(target).__name__}")
    if not torch.is_floating_point(logits):
        raise KexueTypeError(f"logits must be floating point; got {logits.dtype} (use .float())")
    if torch.is_floating_point(target) or target.is_complex() or target.dtype == torch.bool:
        raise KexueTypeError(f"labels must be integer class indices; got {target.dtype} (use .long(); "
                             "soft or probability targets are not supported)")


def _reduction(reduction: str) -> str:
    return validate.choice(reduction, REDUCTIONS, "reduction")


class _NormalizeGrad(torch.autograd.Function):
    """Identity forward; backward divides the gradient by a running mean of its norm.

    The paper's gradient normalisation (divide by a moving average, momentum 0.9, of the
    gradient norm, floored at ``clip``) keeps the step size from vanishing when sigma is
    small and the expected accuracy saturates. Applied here to the gradient w.r.t. the
    logits, so the loss stays a self-contained nn.Module.
    """

    @staticmethod
    def forward(ctx, x, state, momentum, clip):
        ctx.state, ctx.momentum, ctx.clip = state, momentum, clip
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        state = ctx.state
        norm = g.detach().norm()
        first = bool(state["first"])
        mom = 0.0 if first else ctx.momentum
        state["moving_norm"].mul_(mom).add_((1 - mom) * norm.to(state["moving_norm"].dtype))
        state["first"].fill_(False)
        return g / state["moving_norm"].clamp(min=ctx.clip).to(g.dtype), None, None, None


class EXACTLoss(nn.Module):
    """EXACT loss 1 - P(s_y > s_i for all i != y), s ~ N(mu, sigma^2 I), per sample (SPEC 6.2).

    Parameters
    ----------
    sigma : float or callable(step) -> float
        Noise scale; a callable is a schedule evaluated at the number of training-mode calls
        so far (see :func:`sigma_schedule`).
    margin : float or None
        Clip each delta at ``r`` before dividing by sigma: samples already won by ``r`` stop
        pulling.
    standardize : bool
        Batch standardisation of the logits, (mu - mean) / std over the whole batch — a
        shift and a positive scale, so the argmax is unchanged while sigma keeps a meaning.
    truncate : int or None
        Keep only the ``k`` hardest competing classes (the smallest deltas).
    grad_norm : bool
        Gradient normalisation (see :class:`_NormalizeGrad`).
    n_samples : int, method : 'sobol' | 'mc' | 'quadrature'
        Points of the Genz estimator (nodes for 'quadrature').
    reduction : 'mean' | 'sum' | 'none', ignore_index : int
        As in ``torch.nn.CrossEntropyLoss`` (see the module docstring).
    """

    step: torch.Tensor  # buffers (register_buffer), declared for type checkers
    moving_norm: torch.Tensor
    first: torch.Tensor

    def __init__(self, sigma: float | Callable[[int], float] = 1.0, margin: float | None = None,
                 standardize: bool = True, truncate: int | None = None, grad_norm: bool = True,
                 n_samples: int = 16, method: str = "sobol", momentum: float = 0.9, clip: float = 0.01,
                 reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.sigma = sigma if callable(sigma) else validate.positive(sigma, "sigma")
        self.margin = None if margin is None else validate.positive(margin, "margin")
        self.truncate = None if truncate is None else validate.integer(truncate, "truncate", lo=1)
        self.n_samples = validate.integer(n_samples, "n_samples", lo=1)
        self.method = validate.choice(method, METHODS, "method")
        self.momentum = validate.real(momentum, "momentum", 0.0, 1.0, hi_open=True)
        self.clip = validate.positive(clip, "clip")
        self.reduction = _reduction(reduction)
        self.ignore_index = validate.integer(ignore_index, "ignore_index")
        self.standardize, self.grad_norm = bool(standardize), bool(grad_norm)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("moving_norm", torch.zeros((), dtype=torch.float64))
        self.register_buffer("first", torch.ones((), dtype=torch.bool))

    def current_sigma(self) -> float:
        return float(self.sigma(int(self.step))) if callable(self.sigma) else float(self.sigma)

    def _p(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.standardize and logits.numel() > 1:
            logits = (logits - logits.mean()) / logits.std().clamp(min=1e-12)
        d = logit_deltas(logits, target)
        if self.margin is not None:
            d = d.clamp(max=self.margin)
        sigma = validate.positive(self.current_sigma(), "sigma")  # a schedule could return anything
        return orthant_unchecked(d, sigma, self.n_samples, self.method, self.truncate)

    def expected_accuracy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """p(y|x) per element under the loss's settings, shape of ``target`` (NaN where ignored)."""
        flat = _Flat(logits, target, self.ignore_index, 2)
        return flat.unflatten(self._p(flat.logits, flat.target), math.nan)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = _Flat(logits, target, self.ignore_index, 2)
        z = flat.logits
        if self.grad_norm and torch.is_grad_enabled() and z.requires_grad:
            z = _NormalizeGrad.apply(z, {"moving_norm": self.moving_norm, "first": self.first}, self.momentum, self.clip)
        p = self._p(z, flat.target)
        if self.training:
            self.step += 1
        return flat.reduce(1.0 - p, self.reduction)


class SmoothAccuracyLoss(nn.Module):
    """The classic smoothed accuracy of SPEC 6.3 with the softmax p = softmax(mu)_y.

    ``log=False``: -p per sample (bounded, flat on confident errors), reduced by ``reduction``;
    ``log=True``: -log E[p] over the batch (not the cross-entropy -E[log p]); the log of a batch
    mean has no per-sample form, so it takes only ``reduction="mean"``.
    """

    def __init__(self, log: bool = False, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.log, self.reduction = bool(log), _reduction(reduction)
        self.ignore_index = validate.integer(ignore_index, "ignore_index")
        if self.log and self.reduction != "mean":
            raise KexueError(f"-log E[p] is a batch quantity: reduction={reduction!r} is undefined; use "
                             "reduction='mean' or log=False")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = _Flat(logits, target, self.ignore_index, 2)
        p = torch.softmax(flat.logits, dim=1).gather(1, flat.target[:, None]).squeeze(1)
        return -torch.log(p.mean()) if self.log else flat.reduce(-p, self.reduction)


class MulticlassHingeLoss(nn.Module):
    """Crammer–Singer hinge max(0, margin - (mu_y - max_{i != y} mu_i)) per sample."""

    def __init__(self, margin: float = 1.0, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.margin = validate.positive(margin, "margin")
        self.reduction = _reduction(reduction)
        self.ignore_index = validate.integer(ignore_index, "ignore_index")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = _Flat(logits, target, self.ignore_index, 2)
        per = torch.relu(self.margin - logit_deltas(flat.logits, flat.target).min(dim=1).values)
        return flat.reduce(per, self.reduction)


def sigma_schedule(start: float = 1.0, end: float = 0.1, steps: int = 1000, kind: str = "exp") -> Callable[[int], float]:
    """sigma(step) decaying from ``start`` to ``end`` over ``steps`` (then constant) (SPEC 6.2).

    ``kind``: 'exp' (geometric, as the paper's sigma *= const per step), 'linear' or 'cosine'.
    """
    start, end = validate.positive(start, "sigma schedule start"), validate.positive(end, "sigma schedule end")
    steps = validate.integer(steps, "sigma schedule steps", lo=1)
    validate.choice(kind, ("exp", "linear", "cosine"), "sigma schedule")

    def sigma(step: int) -> float:
        t = min(max(step, 0), steps) / steps
        if kind == "exp":
            return start * (end / start) ** t
        if kind == "linear":
            return start + (end - start) * t
        return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))

    return sigma
