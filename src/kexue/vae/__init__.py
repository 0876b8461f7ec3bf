"""Density estimation with a VAE (SPEC 1).

- :class:`VAE`, :func:`fit_vae`, :func:`iwae_loss` — model and SPEC 1.3 objective (VAE for M = 1, IWAE for M > 1).
- :func:`log_likelihood`, :func:`k_curve` — the batched importance-sampled log q̂(x) of SPEC 1.4.
- :func:`save_vae`, :func:`load_vae` — safetensors files with the architecture in the metadata.
- :mod:`kexue.vae.baselines` — classical densities on the same data convention.

Trained-model API used by other tools (e.g. hub-prior sampling): ``model = fit_vae(X_uint8, seed=0,
steps=2000)``; ``model.latent_dim``; ``model.decode_mean(z)`` → (N, 784) pixel probabilities in [0, 1].
"""

from kexue.vae.estimate import LogLikelihood, k_curve, log_likelihood
from kexue.vae.model import DECODERS, VAE, fit_vae, iwae_loss, load_vae, prepare, save_vae

__all__ = ["VAE", "DECODERS", "fit_vae", "iwae_loss", "prepare", "save_vae", "load_vae",
           "log_likelihood", "k_curve", "LogLikelihood"]
