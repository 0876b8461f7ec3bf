"""The VAE as a density model (SPEC 1.1–1.3): Gaussian encoder, N(0, I) prior, decoders that are
properly normalised densities, the importance-weighted objective for any M, training through
:func:`kexue.train.train`, and safetensors persistence.

Data conventions (``model.data_kind``):

- ``"binary"``     x ∈ {0, 1}; decoder ``bernoulli``: log q(x|z) = Σ_d x_d log p_d + (1-x_d) log(1-p_d).
- ``"8bit"``       x = k/255 with k ∈ {0..255}; decoder ``logistic`` (discretised logistic, a pmf over k).
- ``"continuous"`` x ∈ R^D; decoder ``gaussian``: N(μ(z), diag σ²) with a learned per-dimension σ².

Every ``log_weights`` value is log q(x|z) + log q(z) − log p(z|x) (SPEC 1.2) in nats, so
``lse_m(...) − log M`` is the estimator of SPEC 1.3/1.4 for discrete data a log-pmf and for
continuous data a log-density.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kexue.nets import MLP
from kexue.utils import KexueError, atomic_path
from kexue.validate import finite as check_finite

DECODERS = {"bernoulli": "binary", "logistic": "8bit", "gaussian": "continuous"}
_ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
_LOG2PI = math.log(2 * math.pi)


def log_normal(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Σ_d log N(x_d; μ_d, exp(logvar_d)) over the last dimension."""
    return -0.5 * (_LOG2PI + logvar + (x - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def log_std_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension (the prior q(z) of SPEC 1.1)."""
    return -0.5 * (_LOG2PI + z ** 2).sum(-1)


def _body(sizes: list[int], act: str) -> nn.Module:
    return MLP(sizes, _ACTS[act])


class GaussianLayer(nn.Module):
    """A diagonal Gaussian whose mean and log-variance an MLP computes (encoder, or p(z1|z2)).

    With ``hidden=()`` it is linear, which is what PPCA-as-a-VAE needs.
    """

    def __init__(self, d_in: int, d_out: int, hidden: Sequence[int], act: str):
        super().__init__()
        self.net = _body([d_in, *hidden, 2 * d_out], act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        # a floor/ceiling on the variance keeps exp() finite early in training
        return mu, logvar.clamp(-14.0, 10.0)


class Decoder(nn.Module):
    """q_θ(x|z) for one of the three data kinds; ``log_prob`` is a normalised log-pmf/-density."""

    def __init__(self, kind: str, latent: int, out: int, hidden: Sequence[int], act: str):
        super().__init__()
        if kind not in DECODERS:
            raise KexueError(f"unknown decoder {kind!r}; choose from: {', '.join(DECODERS)}")
        self.kind = kind
        n_out = 2 * out if kind == "logistic" else out
        self.net = _body([latent, *hidden, n_out], act)
        if kind == "gaussian":
            # learned per-dimension variance, independent of z (homoscedastic: PPCA is the linear case)
            self.logvar = nn.Parameter(torch.zeros(out))

    def params(self, z: torch.Tensor):
        h = self.net(z)
        if self.kind == "logistic":
            loc, log_s = h.chunk(2, dim=-1)
            return loc, log_s.clamp(-7.0, 2.0)
        return h, None

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log q(x|z), summed over dimensions; ``x`` broadcasts against the batch shape of ``z``."""
        a, b = self.params(z)
        if self.kind == "bernoulli":
            # -BCE with logits is x log σ(a) + (1-x) log(1-σ(a)), computed stably
            return -F.binary_cross_entropy_with_logits(a, x.expand_as(a), reduction="none").sum(-1)
        if self.kind == "gaussian":
            return log_normal(x, a, self.logvar.clamp(-14.0, 10.0))
        return discretized_logistic_log_prob(x, a, b)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        a, _ = self.params(z)
        if self.kind == "bernoulli":
            return torch.sigmoid(a)
        if self.kind == "logistic":
            return ((a + 1) / 2).clamp(0.0, 1.0)  # location on [-1, 1] → pixel scale [0, 1]
        return a


def discretized_logistic_log_prob(x01: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(k | loc, s) of the discretised logistic over k ∈ {0..255} (x01 = k/255), summed over pixels.

    Pixel values are mapped to c = 2k/255 − 1 ∈ [−1, 1]; the bin of k is [c − 1/255, c + 1/255], with
    the two edge bins extended to ±∞ so the 256 probabilities sum to one (PixelCNN++ convention).
    """
    c, loc, log_scale = torch.broadcast_tensors(2 * x01 - 1, loc, log_scale)
    inv_s = torch.exp(-log_scale)
    plus = inv_s * (c - loc + 1 / 255)
    minus = inv_s * (c - loc - 1 / 255)
    log_cdf_plus = plus - F.softplus(plus)  # log σ(plus), for k = 0
    log_sf_minus = -F.softplus(minus)  # log(1 − σ(minus)), for k = 255
    # interior bins: σ(plus) − σ(minus), computed on the side of the location where it does not
    # cancel (left tail from the CDFs, right tail from the survival functions 1 − σ)
    log_sig_minus = minus - F.softplus(minus)
    log_sf_plus = -F.softplus(plus)
    left = (plus + minus) < 0
    hi = torch.where(left, log_cdf_plus, log_sf_minus)
    lo = torch.where(left, log_sig_minus, log_sf_plus)
    log_mid = hi + torch.log(-torch.expm1((lo - hi).clamp(max=-1e-12)))
    lp = torch.where(c < -0.999, log_cdf_plus, torch.where(c > 0.999, log_sf_minus, log_mid))
    return lp.sum(-1)


class VAE(nn.Module):
    """Latent-variable density q_θ(x) = ∫ q_θ(x|z) q(z) dz with proposal p_θ(z|x) (SPEC 1.1–1.2).

    One stochastic layer by default; ``latent2_dim`` adds a second one (x → z1 → z2, prior on z2).
    ``latent_dim`` is always the dimension of the latent with the N(0, I) prior (the top one), so
    ``decode_mean(torch.randn(n, model.latent_dim))`` samples pixel means from the model.
    """

    def __init__(self, in_dim: int = 784, latent_dim: int = 50, hidden: Sequence[int] = (200, 200),
                 decoder: str = "bernoulli", act: str = "tanh", latent2_dim: int | None = None,
                 hidden2: Sequence[int] = (100, 100)):
        super().__init__()
        if act not in _ACTS:
            raise KexueError(f"unknown activation {act!r}; choose from: {', '.join(_ACTS)}")
        if decoder not in DECODERS:
            raise KexueError(f"unknown decoder {decoder!r}; choose from: {', '.join(DECODERS)}")
        if in_dim < 1 or latent_dim < 1 or (latent2_dim is not None and latent2_dim < 1):
            raise KexueError("in_dim and latent sizes must be positive integers")
        self.config = {"in_dim": int(in_dim), "latent_dim": int(latent_dim), "hidden": [int(h) for h in hidden],
                       "decoder": decoder, "act": act,
                       "latent2_dim": None if latent2_dim is None else int(latent2_dim),
                       "hidden2": [int(h) for h in hidden2]}
        self.in_dim = int(in_dim)
        self.data_kind = DECODERS[decoder]
        z1 = int(latent_dim)  # the first stochastic layer (the only one unless latent2_dim is given)
        self.enc1 = GaussianLayer(in_dim, z1, hidden, act)
        self.dec = Decoder(decoder, z1, in_dim, list(hidden)[::-1], act)
        self.two_layer = latent2_dim is not None
        if self.two_layer:
            self.enc2 = GaussianLayer(z1, latent2_dim, hidden2, act)
            self.prior1 = GaussianLayer(latent2_dim, z1, list(hidden2)[::-1], act)
            self.latent_dim = int(latent2_dim)
        else:
            self.latent_dim = z1

    # -------------------------------------------------------------- the importance weights
    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(k, B) log importance weights log q(x|z) + log q(z) − log p(z|x), z ~ p(z|x) (SPEC 1.2).

        The encoder runs once per row; the k samples share it and the decoder runs on k·B rows.
        """
        mu, lv = self.enc1(x)
        eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
        z1 = mu + torch.exp(0.5 * lv) * eps
        log_q = -0.5 * (_LOG2PI + lv + eps ** 2).sum(-1)
        if self.two_layer:
            mu2, lv2 = self.enc2(z1)
            eps2 = torch.randn(mu2.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            z2 = mu2 + torch.exp(0.5 * lv2) * eps2
            log_q = log_q - 0.5 * (_LOG2PI + lv2 + eps2 ** 2).sum(-1)
            pm, plv = self.prior1(z2)
            log_prior = log_std_normal(z2) + log_normal(z1, pm, plv)
        else:
            log_prior = log_std_normal(z1)
        return self.dec.log_prob(x, z1) + log_prior - log_q

    # -------------------------------------------------------------- generative side
    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel means/probabilities E[x|z] for top-level latents z (N, latent_dim) → (N, in_dim).

        In [0, 1] for the binary and 8-bit decoders. With two stochastic layers z1 is taken at
        the mean of q(z1|z2).
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise KexueError(f"decode_mean needs z of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        z = z.to(next(self.parameters()).dtype)
        if self.two_layer:
            z, _ = self.prior1(z)
        return self.dec.mean(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel means of n draws from the model (z ~ N(0, I))."""
        return self.decode_mean(torch.randn(n, self.latent_dim, generator=generator))

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the first latent layer (for embeddings/plots)."""
        return self.enc1(x)[0]


def iwae_loss(model: VAE, x: torch.Tensor, m: int = 1) -> torch.Tensor:
    """SPEC 1.3: −[lse_m(log q(x|z_m) + log q(z_m) − log p(z_m|x)) − log M], averaged over the batch.

    M = 1 is the VAE's negative ELBO (single-sample, KL by Monte Carlo); M > 1 is IWAE.
    """
    lw = model.log_weights(x, m)
    return -(torch.logsumexp(lw, 0) - math.log(m)).mean()


# ------------------------------------------------------------------ data preparation


def prepare(X, kind: str, binarize: str = "none", seed: int = 0) -> torch.Tensor:
    """Validate an array for a decoder's data kind and return float32 in the model's convention.

    ``binarize`` (binary kind only): ``"none"`` requires values in {0, 1}; ``"threshold"`` maps
    x/255 > 0.5 (or x > 0.5 for [0, 1] floats) to 1; ``"stochastic"`` draws Bernoulli(x/255) with
    ``seed`` (the usual fixed binarisation of a test set).
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise KexueError(f"data must be a non-empty 2-D array (samples × features), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise KexueError(f"data must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64) if X.dtype == bool else X
    check_finite(X, "data")
    if kind == "continuous":
        return torch.as_tensor(np.asarray(X, dtype=np.float32))
    Xf = np.asarray(X, dtype=np.float64)
    is_binary = bool(np.isin(Xf, (0.0, 1.0)).all())
    if kind == "binary":
        if binarize == "none":
            if not is_binary:
                raise KexueError("the Bernoulli decoder needs data in {0, 1}; pass binarize='stochastic' or 'threshold' (CLI: --binarize)")
            return torch.as_tensor(Xf.astype(np.float32))
        p = _unit(Xf)
        if binarize == "threshold":
            return torch.as_tensor((p > 0.5).astype(np.float32))
        if binarize == "stochastic":
            rng = np.random.default_rng(seed)
            return torch.as_tensor((rng.random(p.shape) < p).astype(np.float32))
        raise KexueError(f"unknown binarize {binarize!r}; choose none, threshold or stochastic")
    if kind == "8bit":
        if Xf.min() < 0 or Xf.max() > 255 or not np.all(Xf == np.round(Xf)):
            raise KexueError("the logistic (8-bit) decoder needs integer pixel values 0..255 (e.g. uint8 images)")
        return torch.as_tensor((Xf / 255.0).astype(np.float32))
    raise KexueError(f"unknown data kind {kind!r}")


def _unit(Xf: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]: values above 1 are read as 0..255 pixels."""
    if Xf.min() < 0:
        raise KexueError("pixel data must be non-negative (0..255 or [0, 1])")
    if Xf.max() > 1:
        if Xf.max() > 255:
            raise KexueError("pixel data must be in 0..255 or [0, 1]")
        return Xf / 255.0
    return Xf


# ------------------------------------------------------------------ training


def fit_vae(X, *, decoder: str = "bernoulli", latent_dim: int = 50, hidden: Sequence[int] = (200, 200),
            latent2_dim: int | None = None, hidden2: Sequence[int] = (100, 100), act: str = "tanh",
            M: int = 1, binarize: str = "dynamic", steps: int = 2000, batch_size: int = 100, lr: float = 1e-3,
            seed: int = 0, ckpt: str | os.PathLike | None = None, ckpt_every: int = 0, resume: bool = False,
            tracker=None, description: str | None = None) -> VAE:
    """Train a VAE (M = 1) or IWAE (M > 1) on rows of ``X`` with SPEC 1.3; return the model in eval mode.

    ``X``: (N, D) array. For ``decoder="bernoulli"`` uint8 0..255 or [0, 1] values are binarised
    according to ``binarize``: ``"dynamic"`` (a fresh Bernoulli(x) draw every step, as in the IWAE
    paper), ``"stochastic"``/``"threshold"`` (once), or ``"none"`` (data already in {0, 1}).
    ``decoder="logistic"`` wants 0..255 integers, ``"gaussian"`` any real vectors.
    Training goes through :func:`kexue.train.train` (accelerate, deterministic batches,
    checkpoint/resume with ``ckpt``/``resume``). Attributes set on the result: ``losses_``.
    """
    from kexue.train import train

    if M < 1 or steps < 1 or batch_size < 1:
        raise KexueError("M, steps and batch_size must be positive integers")
    kind = DECODERS.get(decoder)
    if kind is None:
        raise KexueError(f"unknown decoder {decoder!r}; choose from: {', '.join(DECODERS)}")
    dynamic = kind == "binary" and binarize == "dynamic"
    if dynamic:
        Xa = np.asarray(X)
        if Xa.ndim != 2 or Xa.shape[0] == 0:
            raise KexueError(f"data must be a non-empty 2-D array (samples × features), got shape {Xa.shape}")
        check_finite(Xa, "data")
        data = torch.as_tensor(_unit(Xa.astype(np.float64)).astype(np.float32))
    else:
        data = prepare(X, kind, binarize=binarize, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VAE(data.shape[1], latent_dim, hidden, decoder, act, latent2_dim, hidden2)

    def loss_fn(m, batch):
        x = batch[0]
        if dynamic:
            x = torch.bernoulli(x)  # the torch RNG is seeded from (seed, step) by train(): reproducible
        return iwae_loss(m, x, M)

    res = train(model, loss_fn, [data], steps=steps, batch_size=min(batch_size, len(data)), lr=lr, seed=seed,
                ckpt=ckpt, ckpt_every=ckpt_every, resume=resume, tracker=tracker,
                description=description or (f"IWAE M={M}" if M > 1 else "VAE"))
    model = res.model.eval()
    model.losses_ = res.losses
    return model


# ------------------------------------------------------------------ persistence


def save_vae(model: VAE, path: str | os.PathLike) -> None:
    """Write the weights and the architecture (as safetensors metadata) atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"kexue": "vae", "config": json.dumps(model.config)})


def load_vae(path: str | os.PathLike) -> VAE:
    """Read a model written by :func:`save_vae`; a KexueError for missing, foreign or corrupt files."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise KexueError(f"model file {path} not found; train one with `kexue vae train -o {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise KexueError(f"{path} is not a readable safetensors file ({type(e).__name__}); pass a model written by `kexue vae train`") from None
    if meta.get("kexue") != "vae" or "config" not in meta:
        raise KexueError(f"{path} is a safetensors file but not a kexue VAE (no VAE config in its metadata)")
    try:
        model = VAE(**json.loads(meta["config"]))
        model.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError) as e:
        raise KexueError(f"{path}: weights do not match the stored architecture ({type(e).__name__}); the file is damaged") from None
    return model.eval()
