"""Density estimation with a VAE (SPEC 1).

- :class:`VAEConfig`, :class:`VAE` — architecture and model; ``model.save(path)`` / ``VAE.load(path)``;
  ``model.sample(n, seed=0)`` draws images.
- :func:`fit_vae`, :func:`iwae_loss` — training with the SPEC 1.3 objective (VAE for M = 1, IWAE for M > 1).
- :func:`log_likelihood`, :func:`k_curve` — the batched importance-sampled log q̂(x) of SPEC 1.4
  (data in the model's convention; :func:`prepare` with :func:`scoring_binarize` gets it there).
- :mod:`kexue.vae.baselines` — classical densities (scikit-learn estimators) on the same data convention.

Trained-model API used by other tools (e.g. hub-prior sampling): ``model = fit_vae(X_uint8, seed=0,
steps=2000)``; ``model.latent_dim``; ``model.decode_mean(z)`` → (N, 784) pixel probabilities in [0, 1].
"""

import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)

from kexue.vae.estimate import LogLikelihood, k_curve, log_likelihood
from kexue.vae.fit import fit_vae, prepare, scoring_binarize
from kexue.vae.model import DECODERS, VAE, VAEConfig, iwae_loss

__all__ = ["VAE", "VAEConfig", "DECODERS", "fit_vae", "iwae_loss", "prepare", "scoring_binarize", "log_likelihood", "k_curve",
           "LogLikelihood"]
