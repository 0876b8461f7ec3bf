"""``kexue whiten fit|apply|search``: BERT-whitening with β, γ, k (SPEC 5) from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from kexue.cli._common import check_input, check_output, finite_float, nonneg_float, threads_option, use_threads


def fit_cmd(
    emb: Path = typer.Argument(..., help="Embeddings: .npy, .npz or .safetensors, one 2-D float array (rows = vectors)."),
    out: Path = typer.Option(..., "-o", "--out", help="Where to write the transform (.safetensors)."),
    beta: float = typer.Option(1.0, "--beta", callback=finite_float, help="β: how much of the mean to subtract (1 = centre, 0 = none)."),
    gamma: float = typer.Option(1.0, "--gamma", callback=nonneg_float, help="γ: rescaling power, Λ^(-γ/2) (1 = whiten, 0 = rotate only)."),
    dim: int | None = typer.Option(None, "--dim", "-k", min=1, help="k: coordinates kept (default: all d)."),
    chunk: int = typer.Option(65536, "--chunk", min=1, help="Rows read at a time (memory ~ chunk·d·8 bytes + d²·16)."),
    key: str | None = typer.Option(None, "--key", help="Array name inside a .npz/.safetensors file with several."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Fit on a Dask cluster, one task per --chunk rows: tcp://HOST:PORT (workers read EMB: a path they see)."),
    cluster: str | None = typer.Option(None, "--cluster", help="Start a local Dask cluster for the fit: local:N (N worker processes)."),
    threads: int | None = threads_option(),
):
    """Fit μ, U, Λ (SPEC 5.1) on EMB, streaming in chunks, and save the transform."""
    from kexue.cli import RichTracker, console, out_console
    from kexue.cluster import check_where, dask_client
    from kexue.io import open_matrix
    from kexue.utils import KexueError, plural, require
    from kexue.whitening import Whitening

    where = check_where(scheduler, cluster)
    if where is not None:
        require("dask", "dask.distributed", "a Dask scheduler (--scheduler / --cluster)")
    check_output(out, (".safetensors",), "-o")
    src = open_matrix(check_input(emb, "EMB"), key)
    if src.n < 2:
        raise KexueError(f"{emb} has {plural(src.n, 'row')}; whitening needs at least 2 vectors to estimate Σ")
    if dim is not None and dim > src.d:
        raise KexueError(f"--dim {dim} is larger than the embedding dimension {src.d}; choose --dim <= {src.d}")
    use_threads(threads, import_torch=False)  # NumPy/SciPy (kexue.io reads bfloat16 itself): torch would only cost memory
    w = Whitening(beta=beta, gamma=gamma, n_components=dim)
    if where is None:
        w.fit_chunks(RichTracker().track(src.chunks(chunk), "fitting", total=-(-src.n // chunk)))
    else:  # the blocks' sums are computed where they are read and added in a tree (kexue.whitening_dask)
        from kexue.whitening_dask import from_file

        with dask_client(where) as client:
            _blind(client, [emb])
            w.fit(from_file(emb, key, chunk))
    w.save(out)
    lam = w.eigenvalues_
    out_console.print(f"fitted on {src.n} × {src.d}: β={beta:g}, γ={gamma:g}, k={w.components_.shape[0]}; "
                      f"top eigenvalues {', '.join(f'{v:.4g}' for v in lam[:3])}; "
                      f"condition {w.condition_number():.3g}", highlight=False)
    warning = w.conditioning_warning(flag="-k")
    if warning is not None:
        console.print(f"kexue: warning: {warning}", highlight=False, soft_wrap=True)
    out_console.print(f"wrote {out}", highlight=False)


def apply_cmd(
    transform: Path = typer.Argument(..., help="A transform written by `kexue whiten fit` (.safetensors)."),
    emb: Path = typer.Argument(..., help="Embeddings to transform: .npy, .npz or .safetensors."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .npy (float32 unless the input is float64)."),
    chunk: int = typer.Option(65536, "--chunk", min=1, help="Rows transformed at a time."),
    key: str | None = typer.Option(None, "--key", help="Array name inside a .npz/.safetensors file with several."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Transform on a Dask cluster, one task per --chunk rows: tcp://HOST:PORT (workers read EMB and write OUT: paths they see)."),
    cluster: str | None = typer.Option(None, "--cluster", help="Start a local Dask cluster for the transform: local:N (N worker processes)."),
    threads: int | None = threads_option(),
):
    """Transform EMB chunk by chunk into OUT (written atomically)."""
    import numpy as np

    from kexue.cli import RichTracker, out_console
    from kexue.cluster import check_where
    from kexue.io import open_matrix
    from kexue.utils import KexueError, atomic_path, require
    from kexue.whitening import Whitening

    where = check_where(scheduler, cluster)
    if where is not None:
        require("dask", "dask.distributed", "a Dask scheduler (--scheduler / --cluster)")
    check_output(out, (".npy",), "-o")
    w = Whitening.load(check_input(transform, "TRANSFORM"))
    src = open_matrix(check_input(emb, "EMB"), key)
    if src.d != w.n_features_in_:
        raise KexueError(f"{emb} has dimension {src.d} but the transform was fitted on d={w.n_features_in_}")
    use_threads(threads, import_torch=False)  # NumPy only, as fit
    k = w.components_.shape[0]
    dtype = np.float64 if src.dtype == np.float64 else np.float32
    with atomic_path(out) as tmp:
        Y = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(src.n, k))
        if where is None:
            s = 0
            for C in RichTracker().track(src.chunks(chunk), "transforming", total=-(-src.n // chunk)):
                Y[s : s + len(C)] = w.transform(np.asarray(C, dtype=dtype))
                s += len(C)
            Y.flush()
        del Y
        if where is not None:  # each block is written into the temporary file by the worker that computes it
            _apply_on_dask(where, w, emb, key, chunk, dtype, tmp)
    out_console.print(f"wrote {out}: {src.n} × {k} {np.dtype(dtype).name}", highlight=False)


def _blind(client, paths) -> None:
    from kexue.cluster import blind_workers
    from kexue.utils import KexueError

    for p in paths:
        blind = blind_workers(client, p)
        if blind:
            raise KexueError(f"Dask worker {blind[0]} cannot read {p} ({len(blind)} of them); put it on a disk every "
                             "worker sees (the workers read and write their blocks there)")


def _apply_on_dask(where, w, emb, key, chunk, dtype, tmp) -> None:
    from kexue.cluster import dask_client
    from kexue.whitening_dask import from_file, transform_to_file

    with dask_client(where) as client:
        _blind(client, [emb, tmp])
        transform_to_file(w, from_file(emb, key, chunk).astype(dtype), tmp)


def search_cmd(
    encoder: str = typer.Option("minilm", "--encoder", help="minilm (all-MiniLM-L6-v2) or smollm2 (SmolLM2-135M)."),
    pooling: str = typer.Option("default", "--pooling", help="default; for smollm2: last-mean or first-last-mean."),
    pairs: Path | None = typer.Option(None, "--pairs", help="Your own pairs instead of STS-B: a TSV file of sentence1<TAB>sentence2<TAB>score lines, split at random (--seed) into dev and test halves."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the dev/test split of --pairs (>= 0)."),
    fit_on: str = typer.Option("all", "--fit-on", help="all: fit on every sentence (the post); train: STS-B train only."),
    limit: int | None = typer.Option(None, "--limit", min=10, help="Use only the first N pairs of each STS-B split (faster)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with stsb/ (default: $KEXUE_DATA or ../shared/data)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the whole grid (dev and test) as JSON (- for stdout)."),
    threads: int | None = threads_option(),
):
    """Grid-search (β, γ, k) on dev pairs, report test Spearman ×100 (SPEC 5.3)."""
    from rich.table import Table

    from kexue import data, encoders, sts, validate
    from kexue.cli import RichTracker, console, out_console
    from kexue.cli._common import write_json
    from kexue.utils import KexueError

    encoders.resolve(encoder, pooling)
    validate.choice(fit_on, ("all", "train"), "--fit-on")
    check_output(json_out, (".json",), "--json", stdout=True)
    if pairs is not None:
        check_input(pairs, "--pairs")
        if fit_on == "train" or limit is not None or data_dir is not None:
            raise KexueError("--fit-on train, --limit and --data-dir are for STS-B; with --pairs the transform is fitted on every sentence of the file")
    else:
        data.check_data_dir(data_dir)
    use_threads(threads)  # torch's too: the sentences are encoded by a torch model (MiniLM or SmolLM2)
    if pairs is not None:
        splits = sts.pairs_embeddings(pairs, encoder, pooling, seed=seed, tracker=RichTracker())
        name = pairs.name
    else:
        splits = sts.stsb_embeddings(encoder, pooling, data_dir=data_dir, tracker=RichTracker(), limit=limit)
        name = "STS-B"
    d = splits["dev"].A.shape[1]
    ks = sts.k_grid(d)
    r = sts.search(splits, ks=ks, fit_on=fit_on)
    for note in r.warnings:
        console.print(f"kexue: warning: {note}", markup=False, highlight=False, soft_wrap=True)
    k3 = sts.nearest_k(ks, d / 3)
    t = Table("setting", "dev", "test", title=f"{name} Spearman ×100, {encoder}/{pooling}, fit on {fit_on}")
    t.add_row("raw", f"{r.raw_dev:.2f}", f"{r.raw_test:.2f}")
    for label, (b, g, k) in (("β=γ=1", (1.0, 1.0, d)), (f"β=γ=1, k={k3}", (1.0, 1.0, k3)),
                             (f"β=γ=0, k={k3}", (0.0, 0.0, k3))):
        dv, ts = r.at(b, g, k)
        t.add_row(label, f"{dv:.2f}", f"{ts:.2f}")
    bb = r.best
    t.add_row(f"tuned β={bb['beta']:g}, γ={bb['gamma']:g}, k={bb['k']}", f"{bb['dev']:.2f}", f"{bb['test']:.2f}")
    to_stdout = json_out is not None and str(json_out) == "-"
    (console if to_stdout else out_console).print(t)  # stdout carries only the JSON when --json -
    if json_out is not None:
        write_json({"encoder": encoder, "pooling": pooling, "pairs": str(pairs) if pairs else "stsb",
                    "limit": limit, **r.to_dict()}, json_out)
        if not to_stdout:
            out_console.print(f"wrote {json_out}", highlight=False)


def register(app: typer.Typer) -> None:
    whiten_app = typer.Typer(help="BERT-whitening with β, γ, k (SPEC 5): fit, apply, search on STS-B or your pairs.",
                             no_args_is_help=True)
    whiten_app.command("fit")(fit_cmd)
    whiten_app.command("apply")(apply_cmd)
    whiten_app.command("search")(search_cmd)
    app.add_typer(whiten_app, name="whiten")
