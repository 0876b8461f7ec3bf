"""``kexue ddpm train`` and ``kexue ddpm sample``: DDPM/DDIM on small images (SPEC 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _images(data: str):
    """(flat images in [0, 1], side) from 'mnist5k', 'digits' or a .npy of square images."""
    import numpy as np

    from kexue.utils import KexueError
    from kexue.io import load_npy

    if data == "mnist5k":
        from kexue.data import load_mnist5k

        return load_mnist5k()[0] / 255.0, 28
    if data == "digits":
        from kexue.data import load_digits

        return load_digits()[0] / 16.0, 8
    p = Path(data)
    if not p.is_file():
        raise KexueError(f"data {data!r} not found; pass mnist5k, digits or a .npy array (N, side²) of images")
    X = load_npy(p, "image")
    if X.ndim == 3:
        X = X.reshape(len(X), -1)
    side = int(round(X.shape[1] ** 0.5)) if X.ndim == 2 else 0
    if X.ndim != 2 or side * side != X.shape[1] or len(X) == 0:
        raise KexueError(f"{p}: expected square images as (N, side²) or (N, side, side), got shape {X.shape}")
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        raise KexueError(f"{p} contains NaN or inf")
    if X.max() > 1.0:  # 8-bit images
        X = X / 255.0
    if X.min() < 0 or X.max() > 1:
        raise KexueError(f"{p}: pixel values must lie in [0, 1] or 0..255")
    return X, side


def _save_grid(X01, side: int, out: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    from kexue.utils import atomic_write

    k = int(np.ceil(np.sqrt(len(X01))))
    grid = np.ones((k * (side + 1), k * (side + 1)))
    for j, img in enumerate(X01):
        r, c = divmod(j, k)
        grid[r * (side + 1):r * (side + 1) + side, c * (side + 1):c * (side + 1) + side] = img.reshape(side, side)
    fig = Figure(figsize=(max(2, k * side / 28 * 0.6),) * 2)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=100)


def register(app: typer.Typer) -> None:
    ddpm_app = typer.Typer(help="DDPM/DDIM diffusion models (SPEC 7): train a U-Net, sample image grids.",
                           no_args_is_help=True)
    app.add_typer(ddpm_app, name="ddpm")

    @ddpm_app.command("train")
    def train_cmd(
        data: str = typer.Argument("mnist5k", help="mnist5k, digits (8×8), or a .npy of square images in [0,1] or 0..255."),
        out: Path = typer.Option(Path("ddpm.safetensors"), "-o", "--out", help="Model file to write (safetensors, EMA weights)."),
        schedule: str = typer.Option("linear", "--schedule", help="linear or cosine."),
        T: int = typer.Option(1000, "--T", help="Number of diffusion steps."),
        base: int = typer.Option(16, "--base", help="U-Net base channels."),
        mults: str = typer.Option("1,2,2", "--mults", help="Channel multipliers per resolution level."),
        attention: bool = typer.Option(False, "--attention/--no-attention", help="Self-attention at the lowest resolution."),
        prediction: str = typer.Option("eps", "--prediction", help="eps, x0 or v."),
        weighting: str = typer.Option("eps", "--weighting", help="eps (simplified loss), x0 or min_snr."),
        steps: int = typer.Option(2000, "--steps", help="Optimisation steps."),
        batch_size: int = typer.Option(64, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr"),
        ema: float = typer.Option(0.995, "--ema", help="EMA decay of the weights (0 disables; then raw weights are saved)."),
        seed: int = typer.Option(0, "--seed"),
        ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Training checkpoint (written every --ckpt-every steps)."),
        ckpt_every: int = typer.Option(200, "--ckpt-every"),
        resume: bool = typer.Option(False, "--resume", help="Continue exactly from --ckpt if it exists."),
        threads: int = typer.Option(0, "--threads", help="torch threads (0 = torch's default)."),
    ):
        """Train an ε-network with the loss of SPEC 7.2 and save it as safetensors."""
        import torch

        from kexue.cli import RichTracker, out_console
        from kexue.ddpm import UNet, fit_ddpm, images_to_model, make_schedule, save_model
        from kexue.utils import KexueError

        if threads > 0:
            torch.set_num_threads(threads)
        try:
            mult = tuple(int(v) for v in mults.split(",") if v.strip())
        except ValueError:
            raise KexueError(f"--mults must be comma-separated integers such as 1,2,2, got {mults!r}") from None
        if steps < 1 or batch_size < 1 or base < 1 or not mult or not 0 <= ema < 1:
            raise KexueError("--steps, --batch-size and --base must be positive and --ema in [0, 1)")
        if resume and ckpt is None:
            raise KexueError("--resume needs --ckpt PATH (the checkpoint to continue from)")
        X, side = _images(data)
        if side % 2 ** (len(mult) - 1):
            raise KexueError(f"image side {side} must be divisible by 2^(levels-1) = {2 ** (len(mult) - 1)}; use fewer --mults")
        sched = make_schedule(schedule, T)
        torch.manual_seed(seed)
        net = UNet(base=base, mults=mult, attention=attention)
        res = fit_ddpm(net, images_to_model(X, side), sched, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                       ema_decay=ema or None, prediction=prediction, weighting=None if weighting == "eps" else weighting,
                       ckpt=ckpt, ckpt_every=ckpt_every if ckpt else 0, resume=resume, tracker=RichTracker())
        model = res.ema if res.ema is not None else res.model
        save_model(out, model, sched, prediction, extra={"side": side, "steps": steps, "data": data, "seed": seed})
        out_console.print(f"wrote {out} (final loss {sum(res.losses[-50:]) / len(res.losses[-50:]):.4f})")

    @ddpm_app.command("sample")
    def sample_cmd(
        model: Path = typer.Option(Path("ddpm.safetensors"), "-m", "--model", help="Model file from `kexue ddpm train`."),
        sampler: str = typer.Option("ddim", "--sampler", help="ddpm (ancestral, all T steps) or ddim."),
        steps: int = typer.Option(50, "--steps", help="DDIM: number of steps (a sub-sequence of the T)."),
        eta: float = typer.Option(0.0, "--eta", help="DDIM: η in [0, 1] (0 deterministic, 1 = DDPM's posterior variance)."),
        variance: str = typer.Option("posterior", "--variance", help="DDPM: posterior or beta (SPEC 7.4)."),
        n: int = typer.Option(64, "-n", help="Number of samples."),
        out: Path = typer.Option(Path("grid.png"), "-o", "--out", help=".png image grid, or .npy array (n, side²) in [0, 1]."),
        x_T: Optional[Path] = typer.Option(None, "--x-T", help="Initial noise as .npy (n, 1, side, side); overrides -n."),
        clip: bool = typer.Option(True, "--clip/--no-clip", help="Clip x̂_0 to [-1, 1] at every step."),
        seed: int = typer.Option(0, "--seed"),
    ):
        """Draw samples with DDPM or DDIM and write an image grid (or .npy)."""
        import numpy as np
        import torch

        from kexue.cli import RichTracker, out_console
        from kexue.ddpm import load_model, make_sampler, model_to_images
        from kexue.utils import KexueError, atomic_path

        if out.suffix.lower() not in (".png", ".npy"):
            raise KexueError(f"-o must end in .png (image grid) or .npy (array), got {out}")
        net, sched, prediction, extra = load_model(model)
        side = int(extra.get("side", 28))
        smp = make_sampler(sched, sampler, steps=steps, eta=eta, variance=variance, prediction=prediction,
                           clip_x0=1.0 if clip else None)
        x0 = None
        if x_T is not None:
            try:
                x0 = torch.from_numpy(np.load(x_T, allow_pickle=False).astype(np.float32))
            except (ValueError, OSError, EOFError) as e:
                raise KexueError(f"--x-T {x_T} is not a readable .npy array ({type(e).__name__})") from None
            if x0.ndim != 4 or tuple(x0.shape[1:]) != (1, side, side):
                raise KexueError(f"--x-T must have shape (n, 1, {side}, {side}), got {tuple(x0.shape)}")
        elif n < 1:
            raise KexueError("-n must be at least 1")
        S = model_to_images(smp(net, shape=(n, 1, side, side), x_T=x0, generator=torch.Generator().manual_seed(seed),
                                tracker=RichTracker()))
        if out.suffix.lower() == ".npy":
            with atomic_path(out) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, S)
        else:
            _save_grid(S, side, out)
        out_console.print(f"wrote {out} ({len(S)} samples, {sampler}{'' if sampler == 'ddpm' else f'-{steps}'})")
