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

Every optimiser supports param groups, ``state_dict``/``load_state_dict``, an optional closure
and every ``torch.optim.lr_scheduler`` (each keeps its learning rate in ``group["lr"]``).
Each has two implementations of the same update, chosen by ``foreach=``: the multi-tensor path
(``None``/``True``, the default: ``torch._foreach_*`` calls over a group's tensors, as torch.optim
does, with the element-wise chain shortened) and the per-tensor reference path (``False``). The
tests pin one to the other. Neither reads a value back to the host per parameter: the adaptive
rules read one number per param group and step (the alignment or hypergradient).
``EGPlusMinus``, ``EGStep`` and ``EGAdapt`` also run their update as ``torch.compile``d kernels
(``compile=True``; by default for groups of at least 2^20 elements), falling back to the
multi-tensor path with a ``CompileFallbackWarning`` where torch.compile does not work.

Overflow safeguard shared by all EG-type updates: the exponent of every multiplicative update
is clipped to ``[-max_exp, max_exp]`` before ``exp``; so a gradient of 1e30 moves a weight by
at most a factor e^max_exp per step and an exactly zero gradient leaves it unchanged. A NaN
gradient entry is not hidden: it makes that weight NaN, as in ``torch.optim.SGD``.
"""

import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)

from kexue.eg._common import CompileFallbackWarning
from kexue.eg.adapt import EGAdapt, ScaleBoundWarning
from kexue.eg.hypergradient import AdamHD, SGDHD
from kexue.eg.multiplicative import EG, EGPlusMinus
from kexue.eg.stepsize import EGStep

__all__ = ["EG", "EGPlusMinus", "EGStep", "EGAdapt", "SGDHD", "AdamHD", "ScaleBoundWarning",
           "CompileFallbackWarning"]
