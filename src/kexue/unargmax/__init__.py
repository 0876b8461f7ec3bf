"""Unargmaxable classes (SPEC 3): certified audits of softmax output layers.

``audit(W, b)`` certifies every class (witness z or convex-combination certificate λ);
``load_output_layer(path)`` reads .npy/.npz/.safetensors/HF folders/GGUF; see docs/unargmax.md.
"""

from kexue.unargmax.core import (ARGMAXABLE, STAGES, UNARGMAXABLE, UNDECIDED, VERDICT_NAMES, AuditResult, audit,
                                 min_norm_fw, verify_certificate, verify_witness)
from kexue.unargmax.planted import example_2d, planted_layer

__all__ = ["ARGMAXABLE", "UNARGMAXABLE", "UNDECIDED", "STAGES", "VERDICT_NAMES", "AuditResult", "audit",
           "verify_witness", "verify_certificate", "min_norm_fw", "example_2d", "planted_layer",
           "load_output_layer", "OutputLayer"]


def __getattr__(name):  # loaders pull in safetensors/gguf lazily
    if name in ("load_output_layer", "OutputLayer"):
        from kexue.unargmax import loaders

        return getattr(loaders, name)
    raise AttributeError(name)
