"""``kexue hubness EMB``: k-occurrence and hubness measures of an embedding matrix (SPEC 8)."""

from __future__ import annotations

from pathlib import Path

import typer

from kexue.cli._common import check_input, check_output, threads_option, use_threads, write_json

MEASURES = ["skewness", "robin_hood", "gini", "atkinson", "hub_occurrence", "antihub_occurrence", "max_nk"]


def hubness_cmd(
    emb: Path = typer.Argument(..., help="Embeddings: .npy, .npz or .safetensors, one 2-D float array (rows = items)."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Number of nearest neighbours."),
    metric: str = typer.Option("euclidean", "--metric", help="euclidean or cosine."),
    backend: str = typer.Option("exact", "--backend", help="exact (blocked brute force), hnsw (hnswlib), ivf (FAISS) or faiss."),
    recall: float = typer.Option(0.95, "--recall", help="Recall target of an approximate backend, in (0, 1] (its search parameter is chosen for it)."),
    reduce: str | None = typer.Option(None, "--reduce", help="Also measure after a hubness reduction: mp, mp-empirical, ls, nicdm, csls, centering."),
    candidates: int = typer.Option(100, "--candidates", min=1, help="Primary candidates re-ranked by --reduce (>= -k; capped at the number of rows - 1, as in the API)."),
    histogram: Path | None = typer.Option(None, "--histogram", help="Write the N_k histogram to this .png (none by default)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the measures as JSON to this .json file, or - for stdout."),
    nk_out: Path | None = typer.Option(None, "--nk-out", help="Write N_k (reduced, with --reduce) to this .npy."),
    graph_out: Path | None = typer.Option(None, "--graph-out", help="Write the (reduced) neighbour graph to this .npz: indices, distances."),
    key: str | None = typer.Option(None, "--key", help="Array name inside a .npz/.safetensors file with several."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for approximate backends and MP's reference sample."),
    threads: int | None = threads_option(),
):
    """Print skewness, Robin-Hood, Gini, Atkinson, hub and antihub occurrence of N_k (optionally after a reduction)."""
    from kexue import hubness as H
    from kexue.cli import RichTracker, console, out_console
    from kexue.io import open_matrix

    _check_options(k, metric, backend, recall, reduce, candidates)
    _check_backend(backend)
    for path, suffixes, flag in [(histogram, (".png",), "--histogram"), (nk_out, (".npy",), "--nk-out"),
                                 (graph_out, (".npz",), "--graph-out")]:
        check_output(path, suffixes, flag)
    check_output(json_out, (".json",), "--json", stdout=True)
    src = open_matrix(check_input(emb, "EMB"), key)
    _check_rows(emb, src.n, k)
    candidates = min(candidates, src.n - 1)  # as the reductions do: no point has more neighbours
    use_threads(threads)
    X = src.read()
    tracker = RichTracker()
    tracker.log(f"{emb}: {src.n} × {src.d}, k = {k}, {metric}, backend {backend}")
    g = H.kneighbors(X, k if reduce is None else candidates, metric=metric, backend=backend, recall=recall,
                     seed=seed, tracker=tracker)
    nks = {"primary": H.occurrences(g.ind[:, :k], src.n)}
    dist, ind = g.dist[:, :k], g.ind[:, :k]
    if reduce is not None:
        kw = dict(metric=metric, n_candidates=candidates, backend=backend)
        if reduce.startswith("mp"):
            kw["random_state"] = seed
        dist, ind = H.make_reduction(reduce, **kw).fit(X, graph=(g.dist, g.ind)).kneighbors(n_neighbors=k)
        nks[reduce] = H.occurrences(ind, src.n)
    ms = {label: H.hubness_measures(nk, k) for label, nk in nks.items()}
    _print_table(ms, console if json_out is not None and str(json_out) == "-" else out_console)
    if backend != "exact":
        console.print(f"{backend}: recall {g.recall:.3f} on {g.recall_sample} sampled queries against exact search "
                      f"({', '.join(f'{a}={v}' for a, v in g.params.items()) or 'no parameter'})", highlight=False)
    if json_out is not None:
        write_json({"file": str(emb), "n": src.n, "dim": src.d, "k": k, "metric": metric, "backend": backend,
                    "recall": g.recall, "recall_sample": g.recall_sample, "params": g.params, "reduce": reduce,
                    "candidates": candidates if reduce else None, "seed": seed, "measures": ms}, json_out)
    _write_arrays(nk_out, nks[reduce or "primary"], graph_out, ind, dist)
    if histogram is not None:
        from kexue.utils import atomic_path

        fig = H.nk_histogram(nks, k, f"{emb.name}: k-occurrence ({metric}, {backend})")
        with atomic_path(histogram) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    for path in (histogram, nk_out, graph_out, None if json_out is None or str(json_out) == "-" else json_out):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)


def _check_backend(backend: str) -> None:
    """A missing extra is the one error line, before the header line and any work."""
    from kexue.utils import require

    module = {"hnsw": "hnswlib", "ivf": "faiss", "faiss": "faiss"}.get(backend)
    if module is not None:
        require("ann", module, f"backend '{backend}'")


def _check_options(k, metric, backend, recall, reduce, candidates) -> None:
    from kexue import hubness as H
    from kexue import validate
    from kexue.utils import KexueError

    validate.choice(metric, H.METRICS, "--metric")
    validate.choice(backend, H.BACKENDS, "--backend")
    validate.real(recall, "--recall", 0.0, 1.0, lo_open=True)  # the API's range and wording
    if reduce is not None:
        validate.choice(reduce, H.REDUCTIONS, "--reduce")
        if candidates < k:
            raise KexueError(f"--candidates {candidates} is smaller than -k {k}; the reduction re-ranks "
                             f"--candidates primary neighbours, so give --candidates >= {k}")


def _check_rows(emb, n, k) -> None:
    from kexue.utils import KexueError

    if n < k + 1:
        raise KexueError(f"{emb} has {n} row{'' if n == 1 else 's'}; N_{k} needs at least {k + 1} "
                         f"(k + 1: a point is not its own neighbour) — lower -k or add rows")


def _write_arrays(nk_out, nk, graph_out, ind, dist) -> None:
    import numpy as np

    from kexue.utils import atomic_write

    if nk_out is not None:
        with atomic_write(nk_out) as f:
            np.save(f, nk, allow_pickle=False)
    if graph_out is not None:
        with atomic_write(graph_out) as f:
            np.savez(f, indices=ind, distances=dist)


def _print_table(ms: dict, where) -> None:
    from rich.table import Table

    table = Table("measure", *ms)  # one row per measure, one column per graph: narrow in any terminal
    for n in MEASURES:
        table.add_row(n, *(f"{m[n]:.3f}" for m in ms.values()))
    where.print(table)


def register(app: typer.Typer) -> None:
    app.command("hubness")(hubness_cmd)
