"""Re-ranking a candidate graph computed elsewhere (``_Reduction.rerank``, SPEC 8.4), a block of
rows at a time, so that the graph may be an on-disk one (:mod:`kexue.hubness.stream`)."""

from __future__ import annotations

import numpy as np

from kexue import validate
from kexue.hubness import graph as G
from kexue.hubness import reference as REF
from kexue.hubness.arrays import check_is_fitted
from kexue.hubness.stream import is_disk
from kexue.io import release_pages
from kexue.utils import KexueError


def rerank(est, dist, ind, X, reference, n_neighbors):
    """``est.rerank(dist, ind, X, reference, n_neighbors)``: the graph checked, each row sorted by
    distance and re-ranked ``est.block_rows`` rows at a time into the ``(n_queries, n_neighbors)``
    result; the index side (a reference's statistics) is made once, for the whole batch."""
    check_is_fitted(est)
    if not is_disk(dist):
        dist = validate.matrix(dist, "neigh_dist")
    if not is_disk(ind):
        ind = np.asarray(ind, dtype=np.int64)
    if ind.shape != dist.shape:
        raise KexueError(f"neigh_dist and neigh_ind must have equal shapes; got {dist.shape}, {ind.shape}")
    if X is None and len(dist) != est.n_index_:
        raise KexueError("without X the graph's rows must be the fitted index points")
    Q = None if X is None else G.vectors(X)
    if est._needs_vectors and X is None:
        Q = est.X_
    c = dist.shape[1]
    est._check_width(c)
    k = c if n_neighbors is None else validate.integer(n_neighbors, "n_neighbors", 1, c)
    reference = est._reference_of(reference)
    x_stats = REF.index_stats(est, reference, Q, X is None)  # once: the reference is the whole batch
    out = np.empty((len(dist), k)), np.empty((len(dist), k), np.int64)
    step = est._rows_per_block(c)
    for s in range(0, len(dist), step):
        d, i = dist[s:s + step], np.asarray(ind[s:s + step], dtype=np.int64)
        if is_disk(dist):
            validate.matrix(d, "neigh_dist")
        if i.min() < 0 or i.max() >= est.n_index_:
            raise KexueError(f"neigh_ind refers to points outside the fitted index of {est.n_index_}")
        # a query's statistic reads the first columns of its row: sort each row by distance (stable,
        # so sorted rows are untouched) whatever order the caller's search returned
        order = np.argsort(d, axis=1, kind="stable")
        d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
        est._sorted(d, i, None if Q is None else Q[s:s + step], X is None, k, reference, x_stats, first=s,
                    out=(out[0][s:s + step], out[1][s:s + step]))
        release_pages(Q)  # a memory map's block of queries: out of the resident set once used
    return out
