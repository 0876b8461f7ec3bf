"""Hub-prior latent sampling (SPEC 8.3)."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from kexue.hubness.search import k_occurrence
from kexue import validate
from kexue.utils import KexueError, Tracker, tracker_or_null


@dataclass
class HubSample:
    """Accepted latents and how they were obtained."""

    z: np.ndarray  # (n, dim) accepted latents
    nk: np.ndarray  # their N_k within their pool
    acceptance_rate: float  # accepted / drawn over all pools used
    n_drawn: int
    n_pools: int


def hub_sample(n: int, dim: int, k: int = 5, t: int = 50, pool: int = 10000, space: Callable | None = None,
               seed: int = 0, max_pools: int = 100, metric: str = "euclidean", backend: str = "exact",
               tracker: Tracker | None = None) -> HubSample:
    """Hubness-prior latent sampling (SPEC 8.3, Liang et al. 2022).

    Repeatedly draw ``pool`` latents ``z ~ N(0, I_dim)``, compute N_k (``k`` nearest neighbours,
    self excluded) among them — in ``space(z)`` if a mapping is given (e.g. a generator's
    intermediate space), else in the latent space — and keep the latents with ``N_k >= t``,
    until ``n`` are accepted. Pools are independent, so the accepted set is a sample of the
    hub-prior distribution. ``acceptance_rate`` = accepted / drawn. ``tracker`` reports the pools.
    """
    for name, v in (("n", n), ("dim", dim), ("k", k), ("pool", pool), ("max_pools", max_pools)):
        validate.integer(v, name, 1)
    if k >= pool:
        raise KexueError(f"k={k} must be smaller than pool={pool}")
    rng = np.random.default_rng(seed)
    got, nks, drawn = [], [], 0
    for p in tracker_or_null(tracker).track(range(max_pools), "hub-prior pools"):  # noqa: B007 (p + 1 pools, below)
        z = rng.standard_normal((pool, dim))
        feats = z if space is None else np.asarray(space(z))
        if feats.ndim != 2 or len(feats) != pool:
            raise KexueError(f"space(z) must return a 2-D array with one row per latent, got shape {feats.shape}")
        nk = k_occurrence(feats, k, metric=metric, backend=backend)
        keep = nk >= t
        got.append(z[keep])
        nks.append(nk[keep])
        drawn += pool
        if sum(len(g) for g in got) >= n:
            break
    total = sum(len(g) for g in got)
    if total < n:
        raise KexueError(f"hub_sample accepted only {total} of {n} latents in {max_pools} pools of {pool} "
                         f"(N_k >= {t} is too rare in dim {dim}); lower t or raise max_pools")
    return HubSample(np.concatenate(got)[:n], np.concatenate(nks)[:n], total / drawn, drawn, p + 1)
