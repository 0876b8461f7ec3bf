"""The audit's result: verdicts, certificates, margins, timings, and its JSON document."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kexue.unargmax.certificates import ARGMAXABLE, NEAR, STAGES, UNARGMAXABLE, UNDECIDED, VERDICT_NAMES


@dataclass
class AuditResult:
    """Verdicts and certificates for every class of one output layer.

    ``verdict[k]`` is 1 (argmaxable), 2 (near-unargmaxable: argmaxable, but only by a relative
    margin below ``min_margin``), 0 (unargmaxable) or -1 (undecided); ``stage[k]`` indexes
    :data:`STAGES` (where it was decided); ``margin[k]`` the certified float64 margin of the
    witness and ``rel_margin[k]`` the same relative to the logits' scale (max‖w_i‖·‖z‖ + max|b_i|);
    ``witnesses`` (C, d) the witnesses z (if kept); ``certificates[k] = (idx, λ)``;
    ``residual[k]`` the certificate's relative residual; ``stage_seconds`` compute time per
    stage *summed over workers* (so with n workers their total can exceed the wall time
    ``seconds``)."""

    n_classes: int
    dim: int
    bias: bool
    box: float | None
    method: str
    verdict: np.ndarray
    stage: np.ndarray
    margin: np.ndarray
    residual: np.ndarray
    witnesses: np.ndarray | None
    certificates: dict
    notes: dict = field(default_factory=dict)
    post_verdict: np.ndarray | None = None  # method="fw": the post's criterion (SPEC 3.3) alone
    stage_seconds: dict = field(default_factory=dict)
    seconds: float = 0.0
    lp_rounds: dict = field(default_factory=dict)
    audited: np.ndarray | None = None  # classes audited (all unless ``classes=`` was given)
    rel_margin: np.ndarray | None = None
    min_margin: float = 0.0
    wall_seconds: dict = field(default_factory=dict)  # wall time per phase (setup, prechecks, lp)

    def ids(self, verdict: int) -> np.ndarray:
        return np.flatnonzero((self.verdict == verdict) & self.audited)

    @property
    def unargmaxable(self) -> np.ndarray:
        return self.ids(UNARGMAXABLE)

    @property
    def near(self) -> np.ndarray:
        return self.ids(NEAR)

    @property
    def undecided(self) -> np.ndarray:
        return self.ids(UNDECIDED)

    def counts(self) -> dict:
        return {VERDICT_NAMES[v]: int(self.ids(v).size) for v in (ARGMAXABLE, NEAR, UNARGMAXABLE, UNDECIDED)}

    def stage_counts(self) -> dict:
        s = self.stage[self.audited]
        return {name: int((s == i).sum()) for i, name in enumerate(STAGES) if (s == i).any()}

    def summary(self) -> dict:
        return {"classes": self.n_classes, "dim": self.dim, "bias": self.bias, "box": self.box, "method": self.method,
                "min_margin": self.min_margin, **self.counts(), "decided_by_stage": self.stage_counts(),
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
                "wall_seconds": {k: round(v, 3) for k, v in self.wall_seconds.items()},
                "seconds": round(self.seconds, 3)}

    def to_dict(self, vocab=None, **meta) -> dict:
        """The certificate document (what ``kexue unargmax --json`` writes): ``meta`` (source,
        tensor names, …), the summary, a per-class verdict array (``classes``: verdict code, stage,
        relative margin of the witness; null where there is none), every unargmaxable class with
        its certificate, every near-unargmaxable class with its margin, every undecided class with
        the solver's note. ``vocab`` (a list of token strings) names the classes."""
        def tok(k):
            return None if vocab is None or not 0 <= k < len(vocab) else vocab[k]

        aud = np.arange(self.n_classes) if self.audited is None else np.flatnonzero(self.audited)
        rel = self.rel_margin if self.rel_margin is not None else np.full(self.verdict.shape, np.nan)
        classes = {"id": aud.tolist(), "verdict": self.verdict[aud].astype(int).tolist(),
                   "stage": [STAGES[s] if s >= 0 else None for s in self.stage[aud].tolist()],
                   "relative_margin": [None if not np.isfinite(r) else float(f"{r:.4g}") for r in rel[aud].tolist()]}
        return {**meta, **self.summary(), "verdict_names": {str(k): v for k, v in VERDICT_NAMES.items()},
                "classes": classes,
                "unargmaxable_classes": [{"id": int(k), "token": tok(int(k)), "stage": STAGES[self.stage[k]],
                                          "certificate": {"rows": self.certificates[int(k)][0].tolist(),
                                                          "lambda": self.certificates[int(k)][1].tolist()},
                                          "residual": float(self.residual[k])} for k in self.unargmaxable],
                "near_unargmaxable_classes": [{"id": int(k), "token": tok(int(k)), "stage": STAGES[self.stage[k]],
                                               "relative_margin": float(rel[k]), "margin": float(self.margin[k])}
                                              for k in self.near],
                "undecided_classes": [{"id": int(k), "token": tok(int(k)), "note": self.notes.get(int(k), "")}
                                      for k in self.undecided]}
