"""``kexue ddpm train|sample|nll``: DDPM/DDIM on small images (SPEC 7)."""

from __future__ import annotations

from pathlib import Path

import typer

from kexue.cli._common import (TRAIN_FLAGS, check_input, check_output, in_flags, int_list, positive_float, threads_option,
                               unit_float)

ddpm_app = typer.Typer(help="DDPM/DDIM diffusion models (SPEC 7): train a U-Net, sample image grids, "
                            "bound the likelihood.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ddpm_app, name="ddpm")


def _data_arg(data: str) -> str:
    from kexue.ddpm.fit import DATASETS

    if data not in DATASETS:
        check_input(Path(data), "DATA")
    return data


@ddpm_app.command("train")
def train_cmd(
    data: str = typer.Argument("mnist5k", help="mnist5k, mnist (60k), digits (8×8), or a .npy of square images in [0,1] or 0..255."),
    out: Path = typer.Option(Path("ddpm.safetensors"), "-o", "--out", help="Model file to write (.safetensors, EMA weights)."),
    schedule: str = typer.Option("linear", "--schedule", help="linear or cosine."),
    T: int = typer.Option(1000, "--T", min=2, help="Number of diffusion steps."),
    base: int = typer.Option(16, "--base", min=1, help="U-Net base channels."),
    mults: str = typer.Option("1,2,2", "--mults", help="Channel multipliers per resolution level."),
    attention: bool = typer.Option(False, "--attention/--no-attention", help="Self-attention at the lowest resolution."),
    prediction: str = typer.Option("eps", "--prediction", help="eps, x0 or v."),
    weighting: str = typer.Option("eps", "--weighting", help="eps (simplified loss), x0 or min_snr."),
    steps: int = typer.Option(2000, "--steps", min=1, help="Optimisation steps (in all, when resuming)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", callback=positive_float, help="Adam learning rate."),
    ema: float = typer.Option(0.995, "--ema", callback=unit_float, help="EMA decay in [0, 1) (0 disables; then raw weights are saved)."),
    seed: int = typer.Option(0, "--seed", min=0),
    ckpt: Path | None = typer.Option(None, "--ckpt", help="Training checkpoint (written every --ckpt-every steps)."),
    ckpt_every: int = typer.Option(200, "--ckpt-every", min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from --ckpt if it exists (same settings and data)."),
    threads: int | None = threads_option(),
):
    """Train an ε-network with the loss of SPEC 7.2 and save it as one .safetensors file."""
    from kexue import validate
    from kexue.cli import RichTracker, interrupted, out_console
    from kexue.cli._common import use_threads
    from kexue.ddpm import DDPM, UNetConfig, load_images, make_schedule
    from kexue.utils import KexueError

    check_output(out, (".safetensors",), "-o")
    if ckpt is not None:
        check_output(ckpt, (ckpt.suffix.lower(),), "--ckpt")
    elif resume:
        raise KexueError("--resume needs --ckpt PATH (the checkpoint to continue from)")
    if ema >= 1:
        raise KexueError("--ema must be below 1 (0 disables the average)")
    validate.choice(schedule, ("linear", "cosine"), "--schedule")
    validate.choice(prediction, ("eps", "x0", "v"), "--prediction")
    validate.choice(weighting, ("eps", "x0", "min_snr"), "--weighting")
    cfg = UNetConfig(base=base, mults=int_list(mults, "--mults"), attention=attention)
    n_threads = use_threads(threads)
    X = load_images(_data_arg(data))
    model = DDPM(cfg, make_schedule(schedule, T), side=int(round(X.shape[1] ** 0.5)), prediction=prediction, seed=seed)
    try:
        model.fit(X, steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema_decay=ema or None,
                  weighting=None if weighting == "eps" else weighting, ckpt=ckpt, ckpt_every=ckpt_every if ckpt else 0,
                  resume=resume, tracker=RichTracker(), threads=n_threads)
    except KexueError as e:
        raise in_flags(e, TRAIN_FLAGS) from None
    except KeyboardInterrupt as e:
        raise interrupted(e, resume) from None
    model.info["data"] = data
    model.save(out)
    losses = model.result_.losses[-50:]
    out_console.print(f"wrote {out} (final loss {sum(losses) / max(len(losses), 1):.4f})")


@ddpm_app.command("sample")
def sample_cmd(
    model: Path | None = typer.Argument(None, metavar="MODEL", show_default=False,
                                           help="Model file from `kexue ddpm train` [default: ddpm.safetensors]."),
    model_opt: Path | None = typer.Option(None, "-m", "--model", hidden=True,
                                             help="The old spelling of MODEL (kept as an alias)."),
    sampler: str = typer.Option("ddim", "--sampler", help="ddpm (ancestral, all T steps) or ddim."),
    steps: int | None = typer.Option(None, "--steps", min=1, show_default=False,
                                        help="DDIM only: number of steps, a sub-sequence of the T [default: 50]."),
    eta: float | None = typer.Option(None, "--eta", callback=unit_float, show_default=False,
                                        help="DDIM only: η in [0, 1] (0 deterministic, 1 = DDPM's posterior variance) [default: 0]."),
    variance: str | None = typer.Option(None, "--variance", show_default=False,
                                           help="DDPM only: posterior or beta (SPEC 7.4) [default: posterior]."),
    n: int = typer.Option(64, "-n", min=1, help="Number of samples."),
    out: Path = typer.Option(Path("grid.png"), "-o", "--out", help=".png image grid, or .npy array (n, side²) in [0, 1]."),
    x_T: Path | None = typer.Option(None, "--x-T", help="Initial noise as .npy (n, 1, side, side); overrides -n."),
    clip: bool = typer.Option(True, "--clip/--no-clip", help="Clip x̂_0 to [-1, 1] at every step."),
    seed: int = typer.Option(0, "--seed", min=0),
    threads: int | None = threads_option(),
):
    """Draw samples with DDPM or DDIM and write an image grid (.png) or the array (.npy)."""
    import numpy as np

    from kexue import validate
    from kexue.cli import RichTracker, out_console
    from kexue.cli._common import use_threads
    from kexue.ddpm import DDPM
    from kexue.io import load_npy
    from kexue.report import image_grid
    from kexue.utils import KexueError, atomic_write, plural

    if model is not None and model_opt is not None:
        raise KexueError("give the model once: as MODEL (-m/--model is its old spelling)")
    model = model or model_opt or Path("ddpm.safetensors")
    check_input(model, "MODEL")
    check_output(out, (".png", ".npy"), "-o")
    validate.choice(sampler, ("ddpm", "ddim"), "--sampler")
    if variance is not None:
        validate.choice(variance, ("posterior", "beta"), "--variance")
    # a flag of the other sampler would be ignored: say so instead
    if sampler == "ddpm" and (steps is not None or eta is not None):
        raise KexueError(f"{'--steps' if steps is not None else '--eta'} applies to --sampler ddim only; "
                         "--sampler ddpm runs all T steps of the model (drop it, or use --sampler ddim)")
    if sampler == "ddim" and variance is not None:
        raise KexueError("--variance applies to --sampler ddpm only; DDIM's noise is set by --eta "
                         "(--eta 1 is DDPM's posterior variance)")
    noise = load_npy(check_input(x_T, "--x-T"), "--x-T") if x_T is not None else None
    n_threads = use_threads(threads)
    m = DDPM.load(model)
    if sampler == "ddim" and steps is not None and steps > m.schedule.T:
        raise KexueError(f"--steps {steps} is more than the model's T = {m.schedule.T} diffusion steps; give at most {m.schedule.T}")
    S = m.sample(n, sampler=sampler, steps=steps, eta=eta, variance=variance, clip=clip, x_T=noise, seed=seed,
                 tracker=RichTracker(), threads=n_threads)
    if out.suffix.lower() == ".npy":
        with atomic_write(out) as f:
            np.save(f, S)
    else:
        image_grid(S, out)
    label = sampler if sampler == "ddpm" else f"{sampler}-{steps or 50}"
    out_console.print(f"wrote {out} ({plural(len(S), 'sample')}, {label})")


@ddpm_app.command("nll")
def nll_cmd(
    model: Path = typer.Argument(..., metavar="MODEL", help="Model file from `kexue ddpm train`."),
    data: str = typer.Argument(..., help="Images: a .npy (N, side²) or (N, side, side) in [0,1] or 0..255, or mnist5k/mnist/mnist-test/digits."),
    n: int | None = typer.Option(None, "-n", min=1, help="Use the first n images (default: all)."),
    timesteps: int | None = typer.Option(None, "--timesteps", min=1, help="Estimate the sum over t from this many stratified t per image (default: all T)."),
    variance: str = typer.Option("posterior", "--variance", help="σ_t² of the reverse steps: posterior or beta (SPEC 7.4)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", min=0),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the terms as JSON (- for stdout)."),
    threads: int | None = threads_option(),
):
    """Variational bound on -log p(x) in bits/dim (SPEC 7.6, Ho et al. 2020), with its standard error."""
    from kexue import validate
    from kexue.cli import RichTracker, out_console
    from kexue.cli._common import use_threads, write_json
    from kexue.ddpm import DDPM, load_images
    from kexue.utils import KexueError, plural

    check_input(model, "MODEL")
    data = _data_arg(data)
    check_output(json_out, (".json",), "--json", stdout=True)
    validate.choice(variance, ("posterior", "beta"), "--variance")
    n_threads = use_threads(threads)
    m = DDPM.load(model)
    if timesteps is not None and timesteps > m.schedule.T - 1:
        raise KexueError(f"--timesteps {timesteps} is more than the {m.schedule.T - 1} diffusion terms of this "
                         f"T = {m.schedule.T} model; give at most {m.schedule.T - 1}, or leave it out to sum all of them")
    X = load_images(data)[:n]
    vb = m.nll(X, variance=variance, timesteps=timesteps, batch_size=batch_size, seed=seed, tracker=RichTracker(),
               threads=n_threads)
    if json_out is not None:
        write_json({"model": str(model), "data": data, **vb.to_dict()}, json_out)
    if json_out is None or str(json_out) != "-":
        out_console.print(f"{vb.bits_per_dim:.4f} ± {vb.stderr_bits_per_dim:.4f} bits/dim on "
                          f"{plural(len(vb.nats), 'image')} "
                          f"(prior {vb.prior.mean():.3g}, diffusion {vb.diffusion.mean():.1f}, "
                          f"decoder {vb.decoder.mean():.1f} nats)")

