"""Hubness measures (SPEC 8.2): functions of the k-occurrence vector ``N_k``; see :func:`hubness_measures`."""

from __future__ import annotations

import numpy as np

from kexue import validate
from kexue.utils import KexueError, require


def _nk(Nk) -> np.ndarray:
    Nk = validate.vector(Nk, "N_k")
    if (Nk < 0).any():
        raise KexueError("N_k must be non-negative counts")
    return Nk


def skewness(Nk) -> float:
    """Skewness of N_k: ``S = mean((N_k - μ)^3) / σ^3`` with population moments (μ mean, σ std).

    0 for symmetric N_k; large positive values mean a few hubs. 0 if all N_k are equal.
    """
    Nk = _nk(Nk)
    c = Nk - Nk.mean()
    s2 = np.mean(c**2)
    return 0.0 if s2 == 0 else float(np.mean(c**3) / s2**1.5)


def robin_hood(Nk) -> float:
    """Robin-Hood (Hoover) index: ``RH = Σ_i |N_k(i) - μ| / (2 Σ_i N_k(i))``.

    The fraction of all k-occurrences that would have to move from rich to poor points for every
    point to have the mean μ; 0 = equal, → 1 = one point takes all.
    """
    Nk = _nk(Nk)
    tot = Nk.sum()
    return 0.0 if tot == 0 else float(np.abs(Nk - Nk.mean()).sum() / (2 * tot))


def gini(Nk) -> float:
    """Gini coefficient: ``G = Σ_i Σ_j |N_k(i) - N_k(j)| / (2 n Σ_i N_k(i))``.

    Computed from the sorted values, ``G = Σ_i (2i - n - 1) N_(i) / (n Σ N)`` (i = 1..n), which
    is the same number. 0 = equal, (n-1)/n = one point takes all.
    """
    Nk = np.sort(_nk(Nk))
    n, tot = len(Nk), Nk.sum()
    if tot == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * Nk) / (n * tot))


def atkinson(Nk, epsilon: float = 0.5) -> float:
    """Atkinson index with inequality aversion ε ≥ 0:
    ``A_ε = 1 - (mean(N_k^{1-ε}))^{1/(1-ε)} / μ`` for ε ≠ 1 and ``A_1 = 1 - geomean(N_k) / μ``.

    0 = equal; with ε ≥ 1 a single zero (antihub) gives A = 1.
    """
    Nk = _nk(Nk)
    epsilon = validate.real(epsilon, "epsilon", 0.0)
    mu = Nk.mean()
    if mu == 0:
        return 0.0
    if epsilon == 1:
        if (Nk == 0).any():
            return 1.0
        return float(1 - np.exp(np.mean(np.log(Nk))) / mu)
    if epsilon > 1 and (Nk == 0).any():
        return 1.0
    return float(1 - np.mean(Nk ** (1 - epsilon)) ** (1 / (1 - epsilon)) / mu)


def hub_occurrence(Nk, k: int, n_queries: int | None = None, hub_size: float = 2.0) -> float:
    """Share of all k-occurrences that fall on hubs: ``Σ_{hubs} N_k / (k × n_queries)``.

    Hubs are points with ``N_k > hub_size × μ``, where ``μ = k × n_queries / n_index`` is the mean
    N_k (= k when queries are the index itself). ``n_queries`` defaults to ``len(N_k)``.
    """
    Nk = _nk(Nk)
    nq = len(Nk) if n_queries is None else int(n_queries)
    mu = k * nq / len(Nk)
    return float(Nk[Nk > hub_size * mu].sum() / (k * nq))


def _check_total(Nk: np.ndarray, k, n_queries) -> int:
    """``n_queries`` (default ``len(N_k)``), checked against the counts: every query has exactly k
    neighbours, so ``sum(N_k) = k × n_queries``; counts made with another k would give wrong numbers."""
    k = validate.integer(k, "k", 1)
    nq = len(Nk) if n_queries is None else validate.integer(n_queries, "n_queries", 1)
    tot = float(Nk.sum())
    if tot != k * nq:
        per = tot / nq
        hint = f"N_{per:g} counts?" if per == int(per) else "counts from another graph?"
        raise KexueError(f"N_k sums to {tot:g} but k × n_queries = {k} × {nq} = {k * nq} ({hint}); pass the k "
                         "and n_queries the counts were computed with")
    return nq


def antihub_occurrence(Nk, threshold: float = 0) -> float:
    """Share of index points that are antihubs, ``|{i : N_k(i) <= threshold}| / n_index``
    (threshold 0: points that are nobody's neighbour)."""
    Nk = _nk(Nk)
    return float(np.mean(Nk <= threshold))


def hubness_measures(Nk, k: int, n_queries: int | None = None, hub_size: float = 2.0,
                     epsilon: float = 0.5) -> dict:
    """All measures of SPEC 8.2 for one N_k vector, as a dict of floats (plus max N_k). ``k`` and
    ``n_queries`` (default ``len(N_k)``) must be those the counts were made with: ``sum(N_k) = k ×
    n_queries``, else a KexueError names the mismatch."""
    Nk = _nk(Nk)
    _check_total(Nk, k, n_queries)
    return {
        "skewness": skewness(Nk),
        "robin_hood": robin_hood(Nk),
        "gini": gini(Nk),
        "atkinson": atkinson(Nk, epsilon),
        "hub_occurrence": hub_occurrence(Nk, k, n_queries, hub_size),
        "antihub_occurrence": antihub_occurrence(Nk),
        "max_nk": float(Nk.max()),
    }


def nk_histogram(nks: dict, k: int, title: str = ""):
    """A matplotlib Figure of the N_k distributions (one histogram per labelled vector, log counts)."""
    Figure = require("plot", "matplotlib.figure", "nk_histogram").Figure
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    top = max(int(np.max(nk)) for nk in nks.values())
    bins = np.arange(top + 2) - 0.5 if top < 80 else 60  # one bar per count while that stays readable
    for label, nk in nks.items():
        ax.hist(nk, bins=bins, alpha=0.6, label=label, log=True)
    ax.set_xlabel(f"N_{k}")
    ax.set_ylabel("points")
    ax.legend()
    ax.set_title(title)
    return fig
