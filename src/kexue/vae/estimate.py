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

from kexue import validate
from kexue.utils import KexueError, tracked


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
    seconds: float = 0.0  # wall time of the estimate, over all legs if it was resumed (``ckpt``)
    legs: int = 1

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


def _cache_bytes(level: int, default: int) -> int:
    try:
        text = open(f"/sys/devices/system/cpu/cpu0/cache/index{level}/size").read().strip()
        return int(text[:-1]) * {"K": 1024, "M": 1024 ** 2}[text[-1]] if text[-1] in "KM" else int(text)
    except (OSError, ValueError, KeyError, IndexError):
        return default


def chunk_rows(model) -> int:
    """Decoder rows evaluated at once, sized to the cache: one chunk's activations (output logits
    plus two hidden layers, float32) take an eighth of the last-level cache (L3, read from
    /sys; 32 MiB → ~900 rows for the MNIST model), so the passes that follow the matrix product
    read cached data, while the product itself is large enough to run at full speed (measured:
    docs/vae.md). Between 128 and 4096 rows."""
    width = max(model.config.hidden or (model.latent_dim,))
    llc = _cache_bytes(3, 0) or 4 * _cache_bytes(2, 512 * 1024)
    return int(min(4096, max(128, llc // 8 // (4 * (model.in_dim + 2 * width)))))


def _fast_ok(model) -> bool:
    return model.config.decoder == "bernoulli" and not model.two_layer


def _bernoulli_weights(model, xb: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Same values as ``model.log_weights(xb, k, gen)`` for a one-layer Bernoulli VAE, with one
    decoder pass and no (k·B, D)-sized temporaries besides the logits a:

        log q(x|z) = Σ_d x_d a_d − softplus(a_d),   Σ_d x_d a_d = h·(Wᵀx) + b·x

    (a = W h + b the last layer), and log q(z) − log p(z|x) = ½ Σ (lv + ε² − z²) (the 2π cancel).
    """
    mu, lv = model.enc1(xb)
    eps = torch.randn((k, *mu.shape), generator=gen, dtype=mu.dtype)
    z = torch.addcmul(mu, torch.exp(0.5 * lv), eps)
    lw = 0.5 * (lv.sum(-1) + (eps * eps).sum(-1) - (z * z).sum(-1))
    layers = list(model.dec.net)
    h = z
    for layer in layers[:-1]:
        h = layer(h)
    last = layers[-1]
    a = torch.addmm(last.bias, h.reshape(-1, h.shape[-1]), last.weight.t())
    lw += (h * (xb @ last.weight)).sum(-1) + xb @ last.bias
    return lw.sub_(softplus_sum(a).view(k, -1))


def softplus_sum(a: torch.Tensor, group: int = 16) -> torch.Tensor:
    """Σ_d softplus(a_d) over the last dim of a 2-D tensor, overwriting ``a``.

    softplus(a) = relu(a) + log(1 + e^(−|a|)) and Σ relu(a) = ½ Σ (a + |a|); the log terms are
    summed as logs of products over groups of ``group`` dims — each factor is in (1, 2], so a
    product of 16 cannot overflow — which takes one log per group instead of one per element
    (a log costs more than the exp here). About twice as fast as ``F.softplus(a).sum(-1)``.
    """
    s = a.sum(-1)
    a.abs_()
    s += a.sum(-1)
    a.neg_().exp_().add_(1)
    r, d = a.shape
    cut = d - d % group
    logs = a[:, :cut].reshape(r, -1, group).prod(-1).log_().sum(-1)
    if cut < d:
        logs += a[:, cut:].log().sum(-1)
    return s.mul_(0.5).add_(logs)


def log_likelihood(model, x, K: int = 5000, batch: int | None = None, *, rows: int | None = None,
                   seed: int = 0, keep_weights: bool = False, fast: bool = True, ckpt=None, ckpt_every: int = 500,
                   tracker=None, threads: int | None = None) -> LogLikelihood:
    """Estimate log q(x) for every row of ``x`` with K importance samples (SPEC 1.4).

    ``x``: (N, D) tensor or array already in the model's convention (see :func:`kexue.vae.prepare`):
    {0, 1} for a Bernoulli model, k/255 for the logistic one; anything else is refused with one
    line (``kexue.vae.prepare(X, model.data_kind, binarize=kexue.vae.scoring_binarize(model))``
    converts raw pixels the way the model was trained).
    Work is done in chunks of ``batch`` images × ``k`` samples, ``batch · k ≤ rows`` decoder rows
    (default :func:`chunk_rows`, sized to the cache): one decoder pass per chunk, running
    logsumexps over the samples, so memory does not grow with N or K. ``seed`` fixes the
    importance samples (same seed → same numbers, whatever ``fast``). ``fast=False`` computes
    each chunk with ``model.log_weights`` (the reference; ``fast`` only changes the arithmetic of
    one-layer Bernoulli models). ``keep_weights`` also returns the (N, K) log weights (K-curves).

    ``ckpt``: a file where the finished rows and the sampler's RNG state are stored (atomically)
    every ``ckpt_every`` rows and at the end; a call with the same model, data and settings
    continues from it — with the same numbers as one uninterrupted call — or, finished, returns
    it. A file written for anything else is overwritten. ``seconds`` and ``legs`` of the result
    are the wall time and the number of processes over all resumes (:class:`kexue.checkpoint.Clock`).
    ``threads``: torch's thread count for this call (None: torch's current setting; see
    :func:`kexue.train.num_threads`).
    """
    from kexue.train import num_threads

    with num_threads(threads):
        return _log_likelihood(model, x, K, batch, rows, seed, keep_weights, fast, ckpt, ckpt_every, tracker)


def _log_likelihood(model, x, K, batch, rows, seed, keep_weights, fast, ckpt, ckpt_every, tracker) -> LogLikelihood:
    from kexue.checkpoint import Clock, fingerprint, model_fingerprint, partial, save_partial

    K, ckpt_every = validate.integer(K, "K", 1), validate.integer(ckpt_every, "ckpt_every", 1)
    x = torch.as_tensor(validate.matrix(x, "data", dtype=np.float32))
    if x.shape[1] != model.in_dim:
        raise KexueError(f"data must have shape (N, {model.in_dim}) for this model, got {tuple(x.shape)}")
    model.check_data(x)  # raw 0..255 pixels under a Bernoulli decoder gave "log q > 0"
    n = len(x)
    rows = validate.integer(rows, "rows", 1) if rows is not None else chunk_rows(model)
    batch = validate.integer(batch, "batch", 1) if batch is not None else max(1, min(n, rows // K))
    k_chunk = max(1, min(K, rows // batch))
    k_chunk = -(-K // -(-K // k_chunk))  # equal chunks (K=1000 at 885 rows: 500 + 500, not 885 + 115)
    gen = torch.Generator().manual_seed(int(seed))
    weights = _bernoulli_weights if fast and _fast_ok(model) else (lambda m, xb, k, g: m.log_weights(xb, k, generator=g))
    out = np.empty((4, n))
    lw_all = np.empty((n, K), dtype=np.float32) if keep_weights else None
    key: dict = {} if ckpt is None else {
        "what": "log_likelihood", "K": K, "batch": batch, "k_chunk": k_chunk, "seed": int(seed),
        "fast": weights is _bernoulli_weights, "keep": keep_weights, "model": model_fingerprint(model),
        "data": fingerprint([x])}
    st, first = partial(ckpt, key), 0
    clock = Clock(st)
    if st is not None:  # continue where the last process stopped: its rows and the RNG state after them
        first, out = int(st["done"]), st["out"].numpy()
        gen.set_state(st["gen"])
        if lw_all is not None:
            lw_all = st["lw"].numpy()
    was_training = model.training
    model.eval()
    try:  # the caller's model is put back in its mode also when a chunk raises (or Ctrl-C)
        # tracked: the progress bar is closed also when a chunk raises (or Ctrl-C), not left live
        with tracked(tracker, range(first, n, batch), f"log q(x), K={K}", total=-(-(n - first) // batch)) as starts, \
                torch.no_grad():
            for s in starts:
                xb = x[s:s + batch]
                m1 = m2 = torch.full((len(xb),), -math.inf, dtype=torch.float64)  # lse of log w and of 2 log w
                tot = torch.zeros(len(xb), dtype=torch.float64)
                for done in range(0, K, k_chunk):
                    lw = weights(model, xb, min(k_chunk, K - done), gen).double()  # (k, b)
                    m1, m2 = torch.logaddexp(m1, torch.logsumexp(lw, 0)), torch.logaddexp(m2, torch.logsumexp(2 * lw, 0))
                    tot += lw.sum(0)
                    if lw_all is not None:
                        lw_all[s:s + len(xb), done:done + len(lw)] = lw.T.float().numpy()
                ess = torch.exp(2 * m1 - m2)
                out[:, s:s + len(xb)] = torch.stack([m1 - math.log(K), torch.sqrt(torch.clamp(1 / ess - 1 / K, min=0)),
                                                     tot / K, ess]).numpy()
                clock.worked = True
                end = s + len(xb)
                if ckpt is not None and (end == n or end // ckpt_every > s // ckpt_every):
                    lw = {} if lw_all is None else {"lw": torch.from_numpy(lw_all)}
                    save_partial(ckpt, key, clock.stop() if end == n else clock,
                                 {"done": end, "out": torch.from_numpy(out), "gen": gen.get_state(), **lw})
    finally:
        model.train(was_training)
    return LogLikelihood(out[0], out[1], out[2], out[3], int(K), int(model.in_dim), lw_all, **clock.state())


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
    def sem(v) -> float:
        return float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    out = []
    for K in Ks:
        r = per_row(K)
        out.append({"K": int(K), "mean": float(r.mean()), "se": sem(r),
                    "gap": float((r - ref).mean()), "gap_se": sem(r - ref)})
    return out
