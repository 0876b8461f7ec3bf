"""The VAE as a density model (SPEC 1.1–1.3): Gaussian encoder, N(0, I) prior, decoders that are
properly normalised densities, the importance-weighted objective for any M, and persistence
(``model.save(path)`` / ``VAE.load(path)``, one safetensors file with the architecture).

Data conventions (``model.data_kind``):

- ``"binary"``     x ∈ {0, 1}; decoder ``bernoulli``: log q(x|z) = Σ_d x_d log p_d + (1-x_d) log(1-p_d).
- ``"8bit"``       x = k/255 with k ∈ {0..255}; decoder ``logistic`` (discretised logistic, a pmf over k).
- ``"continuous"`` x ∈ R^D; decoder ``gaussian``: N(μ(z), diag σ²) with a learned per-dimension σ².

Every ``log_weights`` value is log q(x|z) + log q(z) − log p(z|x) (SPEC 1.2) in nats, so
``lse_m(...) − log M`` is the estimator of SPEC 1.3/1.4 for discrete data a log-pmf and for
continuous data a log-density.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kexue.nets import MLP
from kexue import validate
from kexue.utils import KexueError, KexueTypeError

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
        self.kind = validate.choice(kind, DECODERS, "decoder")
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


@dataclass(frozen=True)
class VAEConfig:
    """The architecture of a :class:`VAE` (stored in its file, so ``VAE.load`` rebuilds it).

    The IWAE paper's one-stochastic-layer MNIST model is the default: 784–200–200–50 encoder,
    50–200–200–784 Bernoulli decoder, tanh. ``latent2_dim`` adds a second stochastic layer
    (x → z1 → z2, prior on z2) with ``hidden2`` MLPs; ``hidden=()`` makes the maps linear.
    """

    in_dim: int = 784
    latent_dim: int = 50
    hidden: tuple[int, ...] = (200, 200)
    decoder: str = "bernoulli"
    act: str = "tanh"
    latent2_dim: int | None = None
    hidden2: tuple[int, ...] = field(default=(100, 100))

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "in_dim", validate.integer(self.in_dim, "in_dim", 1))
        set_(self, "latent_dim", validate.integer(self.latent_dim, "latent_dim", 1))
        if self.latent2_dim is not None:
            set_(self, "latent2_dim", validate.integer(self.latent2_dim, "latent2_dim", 1))
        for name in ("hidden", "hidden2"):
            set_(self, name, tuple(validate.integer(h, f"{name} sizes", 1) for h in getattr(self, name)))
        validate.choice(self.decoder, DECODERS, "decoder")
        validate.choice(self.act, _ACTS, "activation")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class VAE(nn.Module):
    """Latent-variable density q_θ(x) = ∫ q_θ(x|z) q(z) dz with proposal p_θ(z|x) (SPEC 1.1–1.2).

    ``VAE(VAEConfig(...))`` builds the networks (default: the IWAE paper's MNIST model).
    ``latent_dim`` is always the dimension of the latent with the N(0, I) prior (the top one), so
    ``model.sample(n, seed=0)`` and ``decode_mean(torch.randn(n, model.latent_dim))`` draw from it.
    """

    # what fit_vae records on the model (declared for type checkers; nn.Module keeps plain attributes)
    binarize_: str | None
    losses_: list[float]
    evals_: list[dict]
    seconds_: float
    legs_: int

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, VAEConfig):
            raise KexueTypeError(f"VAE takes a VAEConfig, got {type(config).__name__}; e.g. VAE(VAEConfig(latent_dim=20))")
        c = self.config = config or VAEConfig()
        self.in_dim = c.in_dim
        self.data_kind = DECODERS[c.decoder]
        self.enc1 = GaussianLayer(c.in_dim, c.latent_dim, c.hidden, c.act)
        self.dec = Decoder(c.decoder, c.latent_dim, c.in_dim, list(c.hidden)[::-1], c.act)
        self.two_layer = c.latent2_dim is not None
        if c.latent2_dim is not None:
            self.enc2 = GaussianLayer(c.latent_dim, c.latent2_dim, c.hidden2, c.act)
            self.prior1 = GaussianLayer(c.latent2_dim, c.latent_dim, list(c.hidden2)[::-1], c.act)
        self.latent_dim = c.latent2_dim if c.latent2_dim is not None else c.latent_dim
        # how fit_vae binarised the training data (Bernoulli decoder); saved with the model so that
        # scoring can treat new data the same way. None: not trained by fit_vae, or an old file.
        self.binarize_: str | None = None

    def check_data(self, x: torch.Tensor, *, exact: bool = True) -> None:
        """Refuse data outside the decoder's convention (module docstring) with one line naming the
        fix: a Bernoulli likelihood of raw 0..255 pixels is not a likelihood (it came out > 0).
        ``exact``: also require the support itself ({0, 1}; the 256 levels k/255), as a log-pmf
        needs; otherwise only the range [0, 1] (a training loss on grey targets is still a loss)."""
        if self.data_kind == "continuous" or x.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if self.data_kind == "binary":
            if lo < 0 or hi > 1 or (exact and not bool(((x == 0) | (x == 1)).all())):
                raise KexueError(f"a Bernoulli VAE needs data in {{0, 1}}, got values in [{lo:g}, {hi:g}]; binarise "
                                 "it first, e.g. kexue.vae.prepare(X, 'binary', binarize='stochastic')")
            return
        k = x.detach().double() * 255
        if lo < 0 or hi > 1 or (exact and bool(((k - k.round()).abs() > 1e-3).any())):
            raise KexueError(f"the logistic (8-bit) VAE needs data k/255 for pixels k in 0..255, got values in "
                             f"[{lo:g}, {hi:g}]; convert pixels with kexue.vae.prepare(X, '8bit')")

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
    def sample(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        """n draws from the model as pixel means E[x|z], z ~ N(0, I) (SPEC 1.1): an (n, in_dim)
        tensor, in [0, 1] for image decoders (what pythae's samplers return). ``seed`` fixes
        the draws (same seed, same images); ``None`` uses the global torch RNG."""
        n = validate.integer(n, "n", 1)
        g = None if seed is None else torch.Generator().manual_seed(validate.integer(seed, "seed", 0))
        return self.decode_mean(torch.randn(n, self.latent_dim, generator=g))

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the first latent layer (for embeddings/plots)."""
        return self.enc1(x)[0]

    # -------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and the architecture to one .safetensors file, atomically."""
        from kexue.io import save_fitted

        extra = {} if self.binarize_ is None else {"binarize": self.binarize_}
        save_fitted(path, "vae", self.state_dict(), {**self.config.to_dict(), **extra})

    @classmethod
    def load(cls, path: str | os.PathLike) -> VAE:
        """A model written by :meth:`save`, in eval mode; a one-line KexueError for missing,
        foreign or damaged files (nothing is unpickled). ``binarize_`` is the training
        binarisation stored with it (None for files written before it was stored)."""
        import numpy as np

        from kexue.io import load_fitted

        tensors, config = load_fitted(path, "vae")
        binarize = config.pop("binarize", None)
        try:
            model = cls(VAEConfig(**config))
            model.binarize_ = None if binarize is None else str(binarize)
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        except (TypeError, ValueError, RuntimeError) as e:
            raise KexueError(f"{path}: weights do not match the stored architecture ({type(e).__name__}); "
                             "the file is damaged, write it again") from None
        return model.eval()


def iwae_loss(model: VAE, x: torch.Tensor, m: int = 1) -> torch.Tensor:
    """SPEC 1.3: −[lse_m(log q(x|z_m) + log q(z_m) − log p(z_m|x)) − log M], averaged over the batch.

    M = 1 is the VAE's negative ELBO (single-sample, KL by Monte Carlo); M > 1 is IWAE.
    ``x`` must lie in the decoder's range ([0, 1] for the Bernoulli and logistic decoders).
    """
    model.check_data(x, exact=False)
    lw = model.log_weights(x, m)
    return -(torch.logsumexp(lw, 0) - math.log(m)).mean()
