"""Index statistics from a reference set (issue 28; SPEC 8.4): each index point's statistic read
from its nearest *reference* points — a bank of queries, or the query batch itself — instead of its
nearest other index points.

When queries and index come from different distributions (cross-lingual or cross-modal retrieval,
questions vs passages, new data against an old index), the index points that are hubs *for the
queries* are not those that are central among the index points. CSLS as Conneau et al. (2018)
define it (``r_T(x)`` = mean similarity of target x to its k nearest *source* points), kiez's
``fit(source=queries, target=index)`` and NNN (Nearest Neighbor Normalization, EMNLP 2024; its
``reference_embeds``) all read the index side from the queries. This module finds those rows:
each index point's ``w`` nearest reference points with their distances, sorted, by the
reduction's backend (float32 screening on the exact backend, as for the index's own rows; an
approximate index over the reference otherwise). The reference is never an index point's own
row, so nothing is excluded: an index point that is also in the reference meets itself at 0.
"""

from __future__ import annotations

import numpy as np

from kexue.hubness import graph as G
from kexue.hubness import screen as S
from kexue.utils import KexueError

QUERIES = "queries"  # the spelling of the transductive reference: the query batch itself


def check_reference(reference, n_features: int, where: str) -> np.ndarray:
    """The reference vectors (n_ref, dim), checked like queries: float64, or a memory map kept as it is
    (:func:`kexue.hubness.graph.vectors`)."""
    if isinstance(reference, str):
        raise KexueError(f"reference={reference!r} is not understood in {where}; pass an array of reference "
                         f"vectors, or reference='{QUERIES}' to use each query batch")
    R = G.vectors(reference, "reference")
    if R.shape[1] != n_features:
        raise KexueError(f"reference has {R.shape[1]} features but the index has {n_features}; embed both the same way")
    return R


def sample(R: np.ndarray, n_samples, seed: int) -> np.ndarray:
    """``n_samples`` (an int below len(R)) reference rows drawn at random without replacement, in
    their original order; ``None`` and ``"auto"`` keep the whole reference (its cost, n_index ×
    n_ref distances, is that of one pass of n_ref queries)."""
    if isinstance(n_samples, str) or n_samples is None or n_samples >= len(R):
        return R
    return R[np.sort(np.random.default_rng(seed).choice(len(R), int(n_samples), replace=False))]


def check_width(w: int, n_ref: int) -> None:
    if w > n_ref:
        raise KexueError(f"the statistic reads each index point's {w} nearest reference points but the reference "
                         f"has {n_ref} rows; give a larger reference or lower k / n_candidates")


def width(est, n_ref: int) -> int:
    """How many nearest reference points an index point's statistic reads: ``est._width(True)``;
    with ``k="auto"`` at most the whole reference (an explicit width beyond it is an error)."""
    w = est._width(True)
    if getattr(est, "k", None) == "auto":
        w = min(w, n_ref)
    check_width(w, n_ref)
    return w


def rows(X: np.ndarray, R: np.ndarray, w: int, metric: str, backend, backend_params, seed: int,
         screen=None, block_rows: int | None = None):
    """Each index point's ``w`` smallest distances to the reference rows, sorted ascending.
    ``backend``: "exact" — float32 BLAS screening against the index's own prepared rows
    (``screen``, :func:`kexue.hubness.screen.reference_rows`); a user's FAISS index, which holds the
    index, not the reference — float32 screening of the reference (:func:`kexue.hubness.screen.screened`);
    an approximate backend name — that index built over the reference and searched with the index points,
    its ``n_index × w`` rows stored on disk (:mod:`kexue.hubness.stream`) for the statistics' blocked pass."""
    check_width(w, len(R))
    if screen is not None:
        return S.reference_rows(screen, R, w, metric)
    if not isinstance(backend, str) or backend == "exact":
        return S.screened(R, X, w, metric)[0]
    return G.search(R, X, w, metric, backend, backend_params, seed, block_rows=block_rows, on_disk=True)[0]


def fit(est, reference):
    """``est.fit(X, reference=...)`` once the index is set: the index statistics from the reference
    set, or none for ``"queries"`` (transductive: every query batch is its own reference)."""
    no_statistic(est)
    if isinstance(reference, str) and reference == QUERIES:
        est.transductive_, est.n_samples_, est.stats_ = True, None, ()
        return est
    R = sample(check_reference(reference, est.n_features_in_, "fit"), est.n_samples, est.random_state)
    est.n_reference_, est.n_samples_ = len(R), None
    est.stats_ = est._reference_stats(R)
    return est


def no_statistic(est) -> None:
    """Refuse a reference for a reduction without a per-point index statistic."""
    if not est._width():
        name = type(est).__name__ + (f"(method={est.method!r})" if hasattr(est, "method") else "")
        raise KexueError(f"{name} has no per-point index statistic, so a reference set does not apply; drop "
                         "reference or use mp, ls, nicdm, csls or nnn")


def index_stats(est, reference, Q, in_sample: bool) -> tuple:
    """The index side of a fitted reduction for one call: its fitted statistics (``reference=None``),
    or those read from ``reference`` — an array, or "queries" for the query batch ``Q`` itself
    (in sample, the queries are the index points)."""
    if reference is None:
        return est.stats_
    no_statistic(est)
    if est.fit_mode_ == "graph":
        raise KexueError("a reference set needs the index vectors; fit on the embeddings, not on a kNN graph")
    if isinstance(reference, str) and reference == QUERIES:
        if Q is None and not in_sample:
            raise KexueError("reference='queries' reads the query vectors; a query graph has none: pass the "
                             "query vectors, or a reference array")
        return est._reference_stats(est.X_ if Q is None else Q)
    return est._reference_stats(check_reference(reference, est.n_features_in_, "kneighbors"))
