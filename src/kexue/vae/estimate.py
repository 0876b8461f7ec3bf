"""The importance-sampled log-likelihood of SPEC 1.4, batched over samples *and* importance
samples with bounded memory.

For each row x, K weights w_k = q(x|z_k) q(z_k) / p(z_k|x), z_k ~ p(z|x), give

    log q̂(x) = lse_k(log w_k) − log K                               (SPEC 1.4)

a stochastic lower bound of log q(x) in expectation (Jensen), tightening as K grows. Its
standard error comes from the delta method: Var(w̄)/w̄² = (K Σw²/(Σw)² − 1)/K, i.e.
se = sqrt(max(1/ESS − 1/K, 0)) with ESS = (Σw)²/Σw². Both sums are kept as running logsumexps,
so K can be far larger than what fits in memory at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kexue.utils import KexueError


@dataclass
class LogLikelihood:
    """Per-sample results of :func:`log_likelihood` (all in nats).

    ``log_q``: log q̂(x) (SPEC 1.4); ``stderr``: its delta-method standard error; ``elbo``: the mean
    log weight (a K-sample estimate of the ELBO, ≤ log q̂ for every row); ``ess``: effective sample
    size of the K weights; ``log_weights``: (N, K) if requested.
    """

    log_q: np.ndarray
    stderr: np.ndarray
    elbo: np.ndarray
    ess: np.ndarray
    K: int
    dim: int
    log_weights: np.ndarray | None = None

    @property
    def nll(self) -> float:
        """Mean −log q̂(x) in nats."""
        return float(-self.log_q.mean())

    @property
    def nll_se(self) -> float:
        """Standard error of the mean NLL over the evaluated samples (sampling of x, not of z)."""
        n = len(self.log_q)
        return float(self.log_q.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def bits_per_dim(self) -> float:
        """Mean −log₂ q̂(x) / D."""
        return self.nll / (self.dim * math.log(2))

    @property
    def scores(self) -> np.ndarray:
        """Anomaly scores −log q̂(x): larger means less likely under the model."""
        return -self.log_q


def log_likelihood(model, x, K: int = 5000, batch: int | None = None, *, max_rows: int = 16384,
                   seed: int = 0, keep_weights: bool = False, tracker=None) -> LogLikelihood:
    """Estimate log q(x) for every row of ``x`` with K importance samples (SPEC 1.4).

    ``x``: (N, D) tensor or array already in the model's convention (see :func:`kexue.vae.prepare`).
    Work is done in blocks of ``batch`` rows × ``k_chunk`` samples with ``batch · k_chunk ≤ max_rows``
    decoder evaluations at once (memory ≈ max_rows × (D + hidden) floats), so memory does not grow
    with K. ``seed`` fixes the importance samples (same seed → same numbers). ``keep_weights``
    also returns the (N, K) log weights (for K-curves).
    """
    if K < 1:
        raise KexueError(f"K must be a positive integer, got {K}")
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x.float()
    if x.ndim != 2 or x.shape[1] != model.in_dim:
        raise KexueError(f"data must have shape (N, {model.in_dim}) for this model, got {tuple(x.shape)}")
    if len(x) == 0:
        raise KexueError("data is empty")
    if not torch.isfinite(x).all():
        raise KexueError("data has NaN or inf entries; clean or drop those rows")
    n = len(x)
    batch = int(batch or max(1, min(n, max_rows // min(K, 64))))
    k_chunk = max(1, min(K, max_rows // batch))
    gen = torch.Generator().manual_seed(int(seed))
    log_q, se, elbo, ess = (np.empty(n) for _ in range(4))
    lw_all = np.empty((n, K), dtype=np.float32) if keep_weights else None
    starts = range(0, n, batch)
    if tracker is not None:
        starts = tracker.track(starts, f"log q(x), K={K}", total=len(starts))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in starts:
            xb = x[s:s + batch]
            b = len(xb)
            m1 = torch.full((b,), -math.inf, dtype=torch.float64)  # lse of log w
            m2 = torch.full((b,), -math.inf, dtype=torch.float64)  # lse of 2 log w
            tot = torch.zeros(b, dtype=torch.float64)
            done = 0
            while done < K:
                k = min(k_chunk, K - done)
                lw = model.log_weights(xb, k, generator=gen).double()  # (k, b)
                m1 = torch.logaddexp(m1, torch.logsumexp(lw, 0))
                m2 = torch.logaddexp(m2, torch.logsumexp(2 * lw, 0))
                tot += lw.sum(0)
                if lw_all is not None:
                    lw_all[s:s + b, done:done + k] = lw.T.float().numpy()
                done += k
            ess_b = torch.exp(2 * m1 - m2)
            log_q[s:s + b] = (m1 - math.log(K)).numpy()
            se[s:s + b] = torch.sqrt(torch.clamp(1 / ess_b - 1 / K, min=0)).numpy()
            elbo[s:s + b] = (tot / K).numpy()
            ess[s:s + b] = ess_b.numpy()
    model.train(was_training)
    return LogLikelihood(log_q, se, elbo, ess, int(K), int(model.in_dim), lw_all)


def k_curve(log_weights: np.ndarray, Ks) -> list[dict]:
    """E[log q̂_K(x)] for each K from one (N, K_max) matrix of log weights.

    Each row's K_max weights are cut into ⌊K_max/K⌋ disjoint groups of K; each group gives one
    independent estimate (SPEC 1.4), averaged per row. Returns, per K, a dict with ``mean`` (over
    rows) and ``se`` (its standard error over rows — dominated by how much log q(x) varies between
    images), and ``gap`` = mean of (row estimate at K − row estimate at K_max) with its *paired*
    standard error ``gap_se``, which isolates the Monte-Carlo error and is the right error bar for
    "does the estimate grow with K".
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    n, kmax = lw.shape

    def per_row(K):
        if not 1 <= K <= kmax:
            raise KexueError(f"K={K} is outside 1..{kmax} (the number of stored weights)")
        g = kmax // K
        grp = lw[:, :g * K].reshape(n, g, K)
        mx = grp.max(-1, keepdims=True)
        return ((mx[..., 0] + np.log(np.exp(grp - mx).sum(-1))) - math.log(K)).mean(1)

    ref = per_row(kmax)
    sem = (lambda v: float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"))
    out = []
    for K in Ks:
        r = per_row(K)
        out.append({"K": int(K), "mean": float(r.mean()), "se": sem(r),
                    "gap": float((r - ref).mean()), "gap_se": sem(r - ref)})
    return out
