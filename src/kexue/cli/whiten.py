"""``kexue whiten fit|apply|search``: BERT-whitening with β, γ, k (SPEC 5) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

whiten_app = typer.Typer(help="BERT-whitening with β, γ, k (SPEC 5): fit, apply, search on STS-B.",
                         no_args_is_help=True)


def _chunks(path: Path, chunk: int, key: Optional[str]):
    """(n, d, iterator factory) over row slices of a .npy (memory-mapped) or .safetensors file,
    so files larger than memory are streamed."""
    import numpy as np

    from kexue.utils import KexueError
    from kexue.io import load_npy

    if not path.is_file():
        raise KexueError(f"embedding file {path} does not exist; pass a .npy or .safetensors file")
    if chunk < 1:
        raise KexueError(f"--chunk must be at least 1, got {chunk}")
    if path.suffix == ".npy":
        X = load_npy(path, "embedding", mmap=True)
        if X.ndim != 2:
            raise KexueError(f"{path} holds an array of shape {X.shape}; expected 2-D (n_vectors, dim)")
        return X.shape[0], X.shape[1], lambda: (np.asarray(X[s : s + chunk]) for s in range(0, X.shape[0], chunk))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            f = safe_open(str(path), framework="numpy")
            keys = list(f.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise KexueError(f"cannot read {path} as safetensors ({e})") from None
        if key is None:
            if len(keys) != 1:
                raise KexueError(f"{path} holds tensors {', '.join(keys) or 'none'}; choose one with --key")
            key = keys[0]
        if key not in keys:
            raise KexueError(f"{path} has no tensor {key!r}; it holds {', '.join(keys)}")
        sl = f.get_slice(key)
        shape = sl.get_shape()
        if len(shape) != 2:
            raise KexueError(f"tensor {key} in {path} has shape {tuple(shape)}; expected 2-D (n_vectors, dim)")
        return shape[0], shape[1], lambda: (sl[s : min(s + chunk, shape[0])] for s in range(0, shape[0], chunk))
    raise KexueError(f"unsupported embedding file {path.name}: use .npy or .safetensors")


def register(app: typer.Typer) -> None:
    app.add_typer(whiten_app, name="whiten")


@whiten_app.command("fit")
def fit_cmd(
    emb: Path = typer.Argument(..., help="Embeddings: .npy or .safetensors, one 2-D float array (rows = vectors)."),
    out: Path = typer.Option(..., "-o", "--out", help="Where to write the transform (.safetensors or .npz)."),
    beta: float = typer.Option(1.0, "--beta", help="β: how much of the mean to subtract (1 = centre, 0 = none)."),
    gamma: float = typer.Option(1.0, "--gamma", help="γ: rescaling power, Λ^(-γ/2) (1 = whiten, 0 = rotate only)."),
    dim: Optional[int] = typer.Option(None, "--dim", "-k", help="k: coordinates kept (default: all d)."),
    chunk: int = typer.Option(65536, "--chunk", help="Rows read at a time (memory ~ chunk·d·8 bytes + d²·16)."),
    key: Optional[str] = typer.Option(None, "--key", help="Tensor name inside a .safetensors file with several."),
):
    """Fit μ, U, Λ (SPEC 5.1) on EMB, streaming in chunks, and save the transform."""
    from kexue.cli import RichTracker, out_console
    from kexue.whitening import Whitening

    from kexue.utils import KexueError

    if out.suffix not in (".safetensors", ".npz"):
        raise KexueError(f"cannot save to {out.name}: use a .safetensors or .npz file name")
    n, d, chunks = _chunks(emb, chunk, key)
    w = Whitening(beta=beta, gamma=gamma, n_components=dim)
    tr = RichTracker()
    w.fit_chunks(tr.track(chunks(), "fitting", total=-(-n // chunk)))
    w.save(out)
    lam = w.eigenvalues_
    out_console.print(f"fitted on {n} × {d}: β={beta:g}, γ={gamma:g}, k={w.components_.shape[0]}; "
                      f"top eigenvalues {', '.join(f'{v:.4g}' for v in lam[:3])}; "
                      f"condition {lam[0] / max(lam[-1], 1e-300):.3g}", highlight=False)
    out_console.print(f"wrote {out}", highlight=False)


@whiten_app.command("apply")
def apply_cmd(
    transform: Path = typer.Argument(..., help="A transform written by `kexue whiten fit` (.safetensors or .npz)."),
    emb: Path = typer.Argument(..., help="Embeddings to transform: .npy or .safetensors."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .npy (float32 unless the input is float64)."),
    chunk: int = typer.Option(65536, "--chunk", help="Rows transformed at a time."),
    key: Optional[str] = typer.Option(None, "--key", help="Tensor name inside a .safetensors file with several."),
):
    """Transform EMB chunk by chunk into OUT (written atomically)."""
    import numpy as np

    from kexue.cli import RichTracker, out_console
    from kexue.utils import KexueError, atomic_path
    from kexue.whitening import Whitening

    if out.suffix != ".npy":
        raise KexueError(f"output {out.name} must be a .npy file")
    w = Whitening.load(transform)
    n, d, chunks = _chunks(emb, chunk, key)
    if d != w.n_features_in_:
        raise KexueError(f"{emb} has dimension {d} but the transform was fitted on d={w.n_features_in_}")
    k = w.components_.shape[0]
    first = next(iter(chunks()))
    dtype = np.float64 if first.dtype == np.float64 else np.float32
    with atomic_path(out) as tmp:
        Y = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, k))
        s = 0
        for C in RichTracker().track(chunks(), "transforming", total=-(-n // chunk)):
            Y[s : s + len(C)] = w.transform(np.asarray(C, dtype=dtype))
            s += len(C)
        Y.flush()
        del Y
    out_console.print(f"wrote {out}: {n} × {k} {np.dtype(dtype).name}", highlight=False)


@whiten_app.command("search")
def search_cmd(
    encoder: str = typer.Option("minilm", "--encoder", help="minilm (all-MiniLM-L6-v2) or smollm2 (SmolLM2-135M)."),
    pooling: str = typer.Option("default", "--pooling", help="default; for smollm2: last-mean or first-last-mean."),
    fit_on: str = typer.Option("all", "--fit-on", help="all: fit on every STS-B sentence (the post); train: train only."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N pairs of each split (faster)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with stsb/ (default: $KEXUE_DATA or ../shared/data)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the whole grid (dev and test) as JSON."),
):
    """Grid-search (β, γ, k) on STS-B dev, report test Spearman ×100 (SPEC 5.3)."""
    import json

    from rich.table import Table

    from kexue import data, encoders
    from kexue.cli import RichTracker, out_console
    from kexue.utils import KexueError, atomic_write
    from kexue.whitening import k_grid, search, stsb_embeddings

    encoders.resolve(encoder, pooling)
    data.check_data_dir(data_dir)
    if limit is not None and limit < 10:
        raise KexueError(f"--limit must be at least 10 pairs, got {limit}")
    splits = stsb_embeddings(encoder, pooling, data_dir=data_dir, tracker=RichTracker(), limit=limit)
    d = splits["dev"].A.shape[1]
    ks = k_grid(d)
    r = search(splits, ks=ks, fit_on=fit_on)
    k3 = min(ks, key=lambda k: (abs(k - d / 3), -k))
    t = Table("setting", "dev", "test", title=f"STS-B Spearman ×100, {encoder}/{pooling}, fit on {fit_on}")
    t.add_row("raw", f"{r.raw_dev:.2f}", f"{r.raw_test:.2f}")
    for label, (b, g, k) in (("β=γ=1", (1.0, 1.0, d)), (f"β=γ=1, k={k3}", (1.0, 1.0, k3)),
                             (f"β=γ=0, k={k3}", (0.0, 0.0, k3))):
        dv, ts = r.at(b, g, k)
        t.add_row(label, f"{dv:.2f}", f"{ts:.2f}")
    bb = r.best
    t.add_row(f"tuned β={bb['beta']:g}, γ={bb['gamma']:g}, k={bb['k']}", f"{bb['dev']:.2f}", f"{bb['test']:.2f}")
    out_console.print(t)
    if json_out is not None:
        with atomic_write(json_out, "w") as f:
            json.dump({"encoder": encoder, "pooling": pooling, "limit": limit, **r.to_dict()}, f, indent=1)
        out_console.print(f"wrote {json_out}", highlight=False)
