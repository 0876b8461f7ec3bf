"""``kexue vae train|score|sample``: VAE/IWAE densities, anomaly scores and samples (SPEC 1)."""

from __future__ import annotations

from pathlib import Path

import typer

from kexue.cli._common import check_input, check_output, int_list, positive_float, threads_option, use_threads

vae_app = typer.Typer(help="VAE/IWAE density estimation (SPEC 1): train models, score data with log q(x), "
                           "sample images.", no_args_is_help=True)

DATASETS = ("mnist5k", "mnist")


def register(app: typer.Typer) -> None:
    app.add_typer(vae_app, name="vae")


@vae_app.command("train")
def train_cmd(
    data: str = typer.Argument("mnist5k", help="mnist5k (5,000 digits), mnist (the 60,000 training digits), "
                                               "or a .npy array (N, D)."),
    out: Path = typer.Option(Path("vae.safetensors"), "-o", "--out", help="Model file to write (.safetensors)."),
    decoder: str = typer.Option("bernoulli", "--decoder", help="bernoulli (binary pixels), logistic (8-bit), gaussian (real vectors)."),
    latent: int = typer.Option(50, "--latent", min=1, help="Latent dimension (first stochastic layer)."),
    latent2: int | None = typer.Option(None, "--latent2", min=1, help="Add a second stochastic layer of this size."),
    hidden: str = typer.Option("200,200", "--hidden", help="Hidden layer sizes of the MLPs, comma-separated."),
    m: int = typer.Option(1, "-M", min=1, help="Importance samples in the objective (1 = VAE, >1 = IWAE)."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimisation steps (in all, when resuming)."),
    batch_size: int = typer.Option(100, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", callback=positive_float, help="Adam learning rate."),
    schedule: str = typer.Option("constant", "--schedule", help="constant, iwae (the paper's 3^i-epoch decay) or cosine."),
    binarize: str = typer.Option("dynamic", "--binarize", help="Bernoulli decoder: dynamic, stochastic, threshold or none."),
    seed: int = typer.Option(0, "--seed", min=0),
    ckpt: Path | None = typer.Option(None, "--ckpt", help="Checkpoint file (.pt, written every --ckpt-every steps)."),
    ckpt_every: int = typer.Option(500, "--ckpt-every", min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from --ckpt (same settings and data)."),
    threads: int | None = threads_option(),
):
    """Train a VAE (M=1) or IWAE (M>1) and save it as safetensors."""
    from kexue.utils import KexueError
    from kexue.validate import choice
    from kexue.vae.fit import BINARIZE, SCHEDULES
    from kexue.vae.model import DECODERS, VAEConfig

    choice(decoder, DECODERS, "--decoder")
    choice(binarize, BINARIZE, "--binarize")
    choice(schedule, SCHEDULES, "--schedule")
    config = VAEConfig(latent_dim=latent, latent2_dim=latent2, hidden=int_list(hidden, "--hidden", "200,200"), decoder=decoder)
    check_output(out, (".safetensors",), "--out")
    if ckpt is not None:
        check_output(ckpt, (".pt", ".ckpt"), "--ckpt")
    if resume and ckpt is None:
        raise KexueError("--resume needs --ckpt FILE")
    if data not in DATASETS:
        check_input(Path(data), "DATA")
    _train(data, out, config, dict(threads=use_threads(threads), M=m, steps=steps, batch_size=batch_size, lr=lr, schedule=schedule, binarize=binarize,
                                   seed=seed, ckpt=ckpt, ckpt_every=ckpt_every if ckpt else 0, resume=resume))


def _train(data: str, out: Path, config, kw: dict) -> None:
    from kexue.cli import RichTracker, interrupted, out_console
    from kexue.data import load_mnist5k, load_mnist_train
    from kexue.io import read_matrix
    from kexue.vae import fit_vae

    from kexue.cli._common import TRAIN_FLAGS, in_flags
    from kexue.utils import KexueError

    X = {"mnist5k": load_mnist5k, "mnist": load_mnist_train}[data]()[0] if data in DATASETS else read_matrix(data, what="data")
    try:
        model = fit_vae(X, config, tracker=RichTracker(), **kw)
    except KexueError as e:
        raise in_flags(e, TRAIN_FLAGS) from None
    except KeyboardInterrupt as e:
        raise interrupted(e, kw["resume"]) from None
    model.save(out)
    tail = model.losses_[-50:]
    out_console.print(f"saved {out} (final training loss {sum(tail) / max(1, len(tail)):.2f} nats)")


@vae_app.command("score")
def score_cmd(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="A model written by `kexue vae train`."),
    data: Path = typer.Argument(..., metavar="DATA", help="Array (N, D) to score (.npy, .npz or .safetensors)."),
    k: int = typer.Option(1000, "-K", min=1, help="Importance samples per row (SPEC 1.4; 5000 is the literature's standard)."),
    out: Path = typer.Option(Path("scores.npy"), "-o", "--out", help="Where to write −log q(x) per row (nats, .npy)."),
    binarize: str | None = typer.Option(None, "--binarize", help="Bernoulli models: none (data already 0/1), stochastic or "
                                           "threshold (default: as the model was trained: stochastic after dynamic or "
                                           "stochastic training, threshold after threshold; none for older files)."),
    batch: int | None = typer.Option(None, "--batch", min=1, help="Images per chunk (default: sized to the cache)."),
    seed: int = typer.Option(0, "--seed", min=0),
    threads: int | None = threads_option(),
):
    """Write anomaly scores −log q̂(x) (nats) for every row of DATA; print the mean NLL and bits/dim."""
    import numpy as np

    from kexue.cli import RichTracker, out_console
    from kexue.io import read_matrix
    from kexue.utils import KexueError, atomic_path, plural
    from kexue.validate import choice
    from kexue.vae import VAE, log_likelihood, prepare, scoring_binarize

    if binarize is not None:
        choice(binarize, ("none", "stochastic", "threshold"), "--binarize")
    check_input(model_path, "MODEL")
    check_input(data, "DATA")
    check_output(out, (".npy",), "--out")
    n_threads = use_threads(threads)
    model = VAE.load(model_path)
    X = read_matrix(data, what="data")
    if X.shape[1] != model.in_dim:
        raise KexueError(f"{data} has shape {X.shape}; this model needs (N, {model.in_dim})")
    binarize = binarize or scoring_binarize(model)
    if model.data_kind == "binary" and binarize == "none" and not np.isin(X, (0, 1)).all():
        raise KexueError(f"{data} is not 0/1 data" + ("" if model.binarize_ else
                         f" and {model_path} does not record how its training data was binarised")
                         + "; pass --binarize stochastic or --binarize threshold")
    x = prepare(X, model.data_kind, binarize=binarize, seed=seed)
    r = log_likelihood(model, x, K=k, batch=batch, seed=seed, tracker=RichTracker(), threads=n_threads)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, r.scores)
    out_console.print(f"{plural(len(r.log_q), 'row')} · mean −log q(x) = {r.nll:.3f} nats "
                      f"({r.bits_per_dim:.4f} bits/dim) · mean s.e. {r.stderr.mean():.3f} · scores → {out}")


@vae_app.command("sample")
def sample_cmd(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="A model written by `kexue vae train`."),
    n: int = typer.Option(64, "-n", "--n", min=1, max=10000, help="Number of samples."),
    out: Path = typer.Option(Path("samples.png"), "-o", "--out", help="A .png image grid, or .npy for the (n, D) pixel means."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same samples."),
    threads: int | None = threads_option(),
):
    """Draw n images from the model (z ~ N(0, I), pixel means E[x|z]) as a PNG grid or a .npy array."""
    import numpy as np

    from kexue.cli import out_console
    from kexue.report import image_grid
    from kexue.utils import atomic_path, plural
    from kexue.vae import VAE

    check_input(model_path, "MODEL")
    check_output(out, (".png", ".npy"), "--out")
    use_threads(threads)
    model = VAE.load(model_path)
    x = model.sample(n, seed=seed).numpy()
    if out.suffix.lower() == ".npy":
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, x)
    else:
        image_grid(x, out)
    out_console.print(f"{plural(n, 'sample')} → {out}")
