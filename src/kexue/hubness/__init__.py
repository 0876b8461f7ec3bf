"""Hubness (SPEC 8): k-occurrence, hubness measures, hubness reduction and hub-prior sampling.

- :mod:`kexue.hubness.knn` — the exact kNN graph (near-ties ordered by index), N_k, recall;
- :mod:`kexue.hubness.ann` — FAISS HNSW and IVF search tuned for a recall target, read in row blocks;
- :mod:`kexue.hubness.faiss_index` — a user's built FAISS index (any kind) as the kNN backend;
- :mod:`kexue.hubness.measures` — skewness, Robin-Hood, Gini, Atkinson, hub/antihub occurrence;
- :mod:`kexue.hubness.reduction` — mutual proximity, local scaling/NICDM, CSLS, NNN, centering;
- :mod:`kexue.hubness.reference` — index statistics from a reference set (a query bank or the queries);
- :mod:`kexue.hubness.stream` — candidate graphs kept on disk while a reduction reads them in blocks;
- :mod:`kexue.hubness.sampling` — hub-prior latent sampling;
- :mod:`kexue.hubness.estimate` — the measures of an index too large to scan, from sampled queries;
- :mod:`kexue.hubness.distributed` — the exact kNN graph and N_k with the query blocks on a Dask cluster.

Every public name is re-exported here: ``from kexue.hubness import kneighbors``.
"""

from __future__ import annotations

from kexue.hubness.knn import (BACKENDS, METRICS, TIE_RTOL, KNNGraph, knn_recall, occurrences, order_rows,
                               pair_distances)
from kexue.hubness.search import k_occurrence, kneighbors
from kexue.hubness.measures import (antihub_occurrence, atkinson, gini, hub_occurrence, hubness_measures,
                                    nk_histogram, robin_hood, skewness)
from kexue.hubness.reduction import (CSLS, NNN, REDUCTIONS, Centering, LocalScaling, MutualProximity,
                                     make_reduction)
from kexue.hubness.sampling import HubSample, hub_sample
from kexue.hubness.estimate import HubnessEstimate, estimate_hubness
from kexue.hubness.distributed import k_occurrence_dask, kneighbors_dask

__all__ = [
    "HubnessEstimate", "estimate_hubness", "kneighbors_dask", "k_occurrence_dask",
    "BACKENDS", "METRICS", "TIE_RTOL", "KNNGraph", "order_rows", "pair_distances", "kneighbors", "k_occurrence", "occurrences", "knn_recall",
    "skewness", "robin_hood", "gini", "atkinson", "hub_occurrence", "antihub_occurrence", "hubness_measures", "nk_histogram",
    "MutualProximity", "LocalScaling", "CSLS", "NNN", "Centering", "REDUCTIONS", "make_reduction",
    "HubSample", "hub_sample",
]
