"""DDPM = Bayes + denoising (SPEC 7): schedules, the Bayes posterior, ε/x_0/v parameterisations,
the training loss, DDPM and DDIM samplers, a compact U-Net, training and model files.

Notation is the post's: x_t = α_t x_{t-1} + β_t ε, q(x_t|x_0) = N(ᾱ_t x_0, β̄_t² I); the DDPM
paper's β_t^D is our β_t² and its ᾱ_t^D our ᾱ_t² (see :mod:`kexue.ddpm.schedule`).
"""

from kexue.ddpm.fit import fit_ddpm, images_to_model, load_model, model_to_images, save_model
from kexue.ddpm.param import call_model, diffusion_loss, loss_weight, target, to_eps_x0
from kexue.ddpm.sampler import DDIMSampler, DDPMSampler, Sampler, make_sampler
from kexue.ddpm.schedule import NoiseSchedule, cosine_schedule, linear_schedule, make_schedule
from kexue.ddpm.unet import UNet

__all__ = ["NoiseSchedule", "linear_schedule", "cosine_schedule", "make_schedule", "to_eps_x0", "target",
           "loss_weight", "diffusion_loss", "call_model", "Sampler", "DDPMSampler", "DDIMSampler", "make_sampler",
           "UNet", "fit_ddpm", "save_model", "load_model", "images_to_model", "model_to_images"]
