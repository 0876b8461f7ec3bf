"""``kexue vae train`` and ``kexue vae score``: VAE/IWAE densities and anomaly scores (SPEC 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _hidden(s: str) -> list[int]:
    from kexue.utils import KexueError

    try:
        h = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise KexueError(f"--hidden must be comma-separated integers such as 200,200, got {s!r}") from None
    if any(v < 1 for v in h):
        raise KexueError("--hidden sizes must be positive")
    return h


def register(app: typer.Typer) -> None:
    vae_app = typer.Typer(help="VAE/IWAE density estimation (SPEC 1): train models, score data with log q(x).",
                          no_args_is_help=True)
    app.add_typer(vae_app, name="vae")

    @vae_app.command("train")
    def train_cmd(
        data: str = typer.Argument("mnist5k", help="A .npy array (N, D), or 'mnist5k' for the bundled MNIST subset."),
        out: Path = typer.Option(Path("vae.safetensors"), "-o", "--out", help="Model file to write (safetensors)."),
        decoder: str = typer.Option("bernoulli", "--decoder", help="bernoulli (binary pixels), logistic (8-bit), gaussian (real vectors)."),
        latent: int = typer.Option(50, "--latent", help="Latent dimension (first stochastic layer)."),
        latent2: Optional[int] = typer.Option(None, "--latent2", help="Add a second stochastic layer of this size."),
        hidden: str = typer.Option("200,200", "--hidden", help="Hidden layer sizes of the MLPs, comma-separated."),
        m: int = typer.Option(1, "-M", help="Importance samples in the objective (1 = VAE, >1 = IWAE)."),
        steps: int = typer.Option(3000, "--steps", help="Optimisation steps."),
        batch_size: int = typer.Option(100, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr"),
        binarize: str = typer.Option("dynamic", "--binarize", help="Bernoulli decoder: dynamic, stochastic, threshold or none."),
        seed: int = typer.Option(0, "--seed"),
        ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file (written every --ckpt-every steps)."),
        ckpt_every: int = typer.Option(500, "--ckpt-every"),
        resume: bool = typer.Option(False, "--resume", help="Continue from --ckpt if it exists."),
        threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest on a busy small machine)."),
    ):
        """Train a VAE (M=1) or IWAE (M>1) and save it as safetensors."""
        import torch

        from kexue.cli import RichTracker, out_console
        from kexue.data import load_mnist5k
        from kexue.utils import KexueError
        from kexue.io import load_npy
        from kexue.vae import fit_vae, save_vae

        if binarize not in ("dynamic", "stochastic", "threshold", "none"):
            raise KexueError(f"--binarize must be dynamic, stochastic, threshold or none, got {binarize!r}")
        if resume and ckpt is None:
            raise KexueError("--resume needs --ckpt FILE")
        torch.set_num_threads(max(1, threads))
        X = load_mnist5k()[0] if data == "mnist5k" else load_npy(Path(data))
        model = fit_vae(X, decoder=decoder, latent_dim=latent, latent2_dim=latent2, hidden=_hidden(hidden), M=m,
                        binarize=binarize, steps=steps, batch_size=batch_size, lr=lr, seed=seed, ckpt=ckpt,
                        ckpt_every=ckpt_every if ckpt else 0, resume=resume, tracker=RichTracker())
        save_vae(model, out)
        out_console.print(f"saved {out} (final training loss {sum(model.losses_[-50:]) / len(model.losses_[-50:]):.2f} nats)")

    @vae_app.command("score")
    def score_cmd(
        model_path: Path = typer.Argument(..., metavar="MODEL", help="A model written by `kexue vae train`."),
        data: Path = typer.Argument(..., metavar="DATA.npy", help="Array (N, D) to score."),
        k: int = typer.Option(1000, "-K", help="Importance samples per row (SPEC 1.4; 5000 is the literature's standard)."),
        out: Path = typer.Option(Path("scores.npy"), "-o", "--out", help="Where to write −log q(x) per row (nats, .npy)."),
        binarize: str = typer.Option("none", "--binarize", help="Bernoulli models: none (data already 0/1), stochastic or threshold."),
        batch: Optional[int] = typer.Option(None, "--batch", help="Rows per block (default: automatic, memory-bounded)."),
        seed: int = typer.Option(0, "--seed"),
        threads: int = typer.Option(1, "--threads"),
    ):
        """Write anomaly scores −log q̂(x) (nats) for every row of DATA; print the mean NLL and bits/dim."""
        import numpy as np
        import torch

        from kexue.cli import RichTracker, out_console
        from kexue.utils import KexueError, atomic_path
        from kexue.io import load_npy
        from kexue.vae import load_vae, log_likelihood, prepare

        if k < 1:
            raise KexueError("-K must be a positive integer")
        torch.set_num_threads(max(1, threads))
        model = load_vae(model_path)
        X = load_npy(data)
        if X.ndim != 2 or X.shape[1] != model.in_dim:
            raise KexueError(f"{data} has shape {X.shape}; this model needs (N, {model.in_dim})")
        x = prepare(X, model.data_kind, binarize=binarize, seed=seed)
        r = log_likelihood(model, x, K=k, batch=batch, seed=seed, tracker=RichTracker())
        with atomic_path(out) as tmp:
            np.save(tmp, r.scores)
        out_console.print(f"{len(r.log_q)} rows · mean −log q(x) = {r.nll:.3f} nats ({r.bits_per_dim:.4f} bits/dim) · "
                          f"mean s.e. {r.stderr.mean():.3f} · scores → {out}")
