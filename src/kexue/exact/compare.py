"""Comparing two losses by their test accuracies over seeds: a Welch t-test with a verdict.

The experiments ask "did loss A beat loss B?" with a handful of seeds per loss; the honest answer
is a Welch t-test (unequal variances) and three outcomes: A better, B better, or no significant
difference at level ``alpha``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from kexue import validate


@dataclass(frozen=True)
class RunComparison:
    """``diff`` = mean(a) - mean(b) (in the runs' units); ``pvalue`` NaN when untestable
    (fewer than two runs each, or no spread at all); ``outcome`` one of "a better",
    "b better", "no significant difference"."""

    diff: float
    pvalue: float
    outcome: str


def compare_runs(a, b, alpha: float = 0.05) -> RunComparison:
    """Welch's t-test of the runs ``a`` against the runs ``b`` (e.g. test accuracies per seed)."""
    from scipy.stats import ttest_ind

    a, b = validate.vector(a, "a"), validate.vector(b, "b")
    alpha = validate.real(alpha, "alpha", 0.0, 1.0, lo_open=True, hi_open=True)
    diff = float(a.mean() - b.mean())
    p = math.nan
    if len(a) > 1 and len(b) > 1 and (a.std() + b.std()) > 0:
        with warnings.catch_warnings():  # near-identical accuracies make scipy warn about precision
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(ttest_ind(a, b, equal_var=False).pvalue)
    if p == p and p < alpha:
        return RunComparison(diff, p, "a better" if diff > 0 else "b better")
    return RunComparison(diff, p, "no significant difference")


def mean_sd(a, scale: float = 100.0) -> str:
    """``"mean ± sd"`` of ``a`` × ``scale`` with two decimals (sd with ddof=1; just the mean for one run)."""
    a = scale * np.asarray(a, dtype=float)
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"
