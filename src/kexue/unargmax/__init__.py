"""Unargmaxable classes (SPEC 3): certified audits of softmax output layers.

``audit(W, b)`` certifies every class (witness z or convex-combination certificate λ);
``load_output_layer(path)`` reads .npy/.npz/.safetensors/HF folders/GGUF; see docs/unargmax.md.
Modules: :mod:`.certificates` (verdicts and their checks), :mod:`.config` (``AuditConfig``),
:mod:`.stages` (candidates, braid walk), :mod:`.lp` (exact LP, Frank–Wolfe), :mod:`.audit`
(the pipeline), :mod:`.result` (``AuditResult`` and its JSON document), :mod:`.loaders`.
"""

from kexue.unargmax.audit import audit, reachable
from kexue.unargmax.certificates import (ARGMAXABLE, NEAR, STAGES, UNARGMAXABLE, UNDECIDED, VERDICT_NAMES,
                                         default_min_margin, relative_margin, verify_certificate, verify_witness)
from kexue.unargmax.config import AuditConfig
from kexue.unargmax.lp import min_norm_fw
from kexue.unargmax.planted import example_2d, planted_layer
from kexue.unargmax.result import AuditResult

from kexue.unargmax.reach import ReachResult

__all__ = ["ReachResult", "reachable", "ARGMAXABLE", "NEAR", "UNARGMAXABLE", "UNDECIDED", "STAGES", "VERDICT_NAMES", "AuditConfig", "AuditResult",
           "audit", "default_min_margin", "relative_margin", "verify_witness", "verify_certificate", "min_norm_fw",
           "example_2d", "planted_layer", "load_output_layer", "OutputLayer"]


def __getattr__(name):  # loaders pull in safetensors/gguf lazily
    if name in ("load_output_layer", "OutputLayer"):
        from kexue.unargmax import loaders

        return getattr(loaders, name)
    raise AttributeError(name)
