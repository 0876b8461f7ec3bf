"""The audit's result: verdicts, certificates, margins, timings, and its JSON document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kexue.unargmax.reach import ReachResult

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
    reach: ReachResult | None = None  # audit(..., reach=R): reachable-probability intervals (SPEC 3.8)

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
        extra = {} if self.reach is None else {"reach": self.reach.to_dict()}
        return {**meta, **self.summary(), **extra, "verdict_names": {str(k): v for k, v in VERDICT_NAMES.items()},
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


NEAR_DUPLICATE_TOL = 2.0**-5  # relative distance ‖w_k − w_i‖ / ‖w_k‖: a few Q8_0 rounding steps (2⁻⁷ each)


def duplicate_split(W, res: AuditResult, rel_tol: float = NEAR_DUPLICATE_TOL, mem_mb: float = 256) -> dict:
    """The unargmaxable classes of ``res`` split three ways: ``exact`` (certified as an exact
    duplicate row), ``near`` (another row within relative distance ``rel_tol`` of it, ‖w_k − w_i‖
    ≤ rel_tol·‖w_k‖) and ``rest`` (inside the hull of other rows, none of them that close).
    ``nearest`` maps each non-exact class to [its nearest other row, that relative distance].
    One blocked pass over W per batch of classes (distances in float64, the nearest recomputed
    directly)."""
    ua = res.unargmaxable
    exact = [int(k) for k in ua if STAGES[res.stage[k]] == "duplicate"]
    others = np.array([int(k) for k in ua if STAGES[res.stage[k]] != "duplicate"], np.int64)
    C, d = W.shape
    nearest = {}
    rows = max(1, int(mem_mb * 2**20 / (8 * max(d, 256))))
    for j in range(0, others.size, 256):
        ks = others[j:j + 256]
        Wk = np.asarray(W[ks], np.float64)
        nk = (Wk * Wk).sum(1)
        best, arg = np.full(ks.size, np.inf), np.zeros(ks.size, np.int64)
        for r in range(0, C, rows):
            blk = np.asarray(W[r:r + rows], np.float64)
            D2 = (blk * blk).sum(1)[:, None] + nk[None, :] - 2.0 * blk @ Wk.T
            own = (ks >= r) & (ks < r + blk.shape[0])
            D2[ks[own] - r, np.flatnonzero(own)] = np.inf
            i = D2.argmin(0)
            better = D2[i, np.arange(ks.size)] < best
            best[better], arg[better] = D2[i, np.arange(ks.size)][better], r + i[better]
        for k, i, w in zip(ks.tolist(), arg.tolist(), Wk):
            dist = float(np.linalg.norm(w - np.asarray(W[i], np.float64)))
            nearest[k] = [int(i), dist / max(float(np.linalg.norm(w)), 1e-300)]
    near = [k for k in others.tolist() if nearest[k][1] <= rel_tol]
    rest = [k for k in others.tolist() if nearest[k][1] > rel_tol]
    return {"tolerance": rel_tol, "exact": exact, "near": near, "rest": rest,
            "nearest": {str(k): v for k, v in nearest.items()}}
