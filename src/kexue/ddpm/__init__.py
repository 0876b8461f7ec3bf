"""DDPM = Bayes + denoising (SPEC 7): schedules, the Bayes posterior, ε/x_0/v parameterisations,
the training loss, DDPM and DDIM samplers, a compact U-Net, the variational bound in bits/dim,
and :class:`DDPM` bundling a trained network with its schedule (fit, sample, nll, save/load).

Notation is the post's: x_t = α_t x_{t-1} + β_t ε, q(x_t|x_0) = N(ᾱ_t x_0, β̄_t² I); the DDPM
paper's β_t^D is our β_t² and its ᾱ_t^D our ᾱ_t² (see :mod:`kexue.ddpm.schedule`).
"""

import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)

from kexue.ddpm.bound import (VariationalBound, decoder_nll, discretized_gaussian_nll, gaussian_kl, kl_term,
                              reverse_variances, variational_bound)
from kexue.ddpm.fit import fit_ddpm, images_to_model, load_images, model_to_images
from kexue.ddpm.model import DDPM
from kexue.ddpm.param import call_model, diffusion_loss, loss_weight, target, to_eps_x0
from kexue.ddpm.sampler import DDIMSampler, DDPMSampler, Sampler, make_sampler
from kexue.ddpm.schedule import NoiseSchedule, cosine_schedule, linear_schedule, make_schedule
from kexue.ddpm.unet import UNet, UNetConfig

__all__ = ["DDPM", "NoiseSchedule", "linear_schedule", "cosine_schedule", "make_schedule", "to_eps_x0", "target",
           "loss_weight", "diffusion_loss", "call_model", "Sampler", "DDPMSampler", "DDIMSampler", "make_sampler",
           "UNet", "UNetConfig", "fit_ddpm", "images_to_model", "model_to_images", "load_images",
           "VariationalBound", "variational_bound", "kl_term", "decoder_nll", "gaussian_kl",
           "discretized_gaussian_nll", "reverse_variances"]
