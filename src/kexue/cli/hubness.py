"""``kexue hubness INDEX [--queries Q] [--reference BANK|queries]``: k-occurrence and hubness measures of an
embedding matrix, or of an index searched by queries, before and after a reduction (SPEC 8, issue 28)."""

from __future__ import annotations

from pathlib import Path

import typer

from kexue.cli._common import check_input, check_output, threads_option, use_threads, write_json

MEASURES = ["skewness", "robin_hood", "gini", "atkinson", "hub_occurrence", "antihub_occurrence", "max_nk"]


def hubness_cmd(
    ctx: typer.Context,
    emb: Path = typer.Argument(..., metavar="INDEX", help="Index embeddings: .npy, .npz or .safetensors, one 2-D float array (rows = items), or a directory of .npy shards (one width and dtype; their rows in file-name order, memory-mapped)."),
    queries: Path | None = typer.Option(None, "--queries", help="Query embeddings (same formats, or a directory of .npy shards): N_k of the index points from these queries instead of from the index itself."),
    reference: str | None = typer.Option(None, "--reference", help="With --reduce: read each index point's statistic from its nearest points of this file (a query bank), or of the queries themselves: --reference queries."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Number of nearest neighbours."),
    metric: str = typer.Option("euclidean", "--metric", help="euclidean or cosine."),
    backend: str = typer.Option("exact", "--backend", help="exact (blocked brute force), hnsw (FAISS HNSW), ivf (FAISS IVF) or faiss."),
    index: list[Path] | None = typer.Option(None, "--index", help="Search this saved FAISS index (faiss.write_index; any kind; memory-mapped) of the INDEX rows, as it is configured, instead of a --backend. Repeat it for shards holding consecutive row ranges, in order (searched as one faiss.IndexShards)."),
    recall_sample: int | None = typer.Option(None, "--recall-sample", min=0, help="Queries searched exactly to measure recall (default 1000 for --backend; none for --index unless given)."),
    block_rows: int = typer.Option(16384, "--block-rows", min=1, help="Working-memory knob: rows read from the files at a time by approximate search (memory-mapped .npy/.safetensors are never read whole), and rows whose --candidates --reduce re-ranks at a time (a few float64 arrays of rows × candidates)."),
    recall: float = typer.Option(0.95, "--recall", help="Recall target of an approximate backend, in (0, 1] (its search parameter is chosen for it)."),
    reduce: str | None = typer.Option(None, "--reduce", help="Also measure after a hubness reduction: mp, mp-empirical, ls, nicdm, csls, nnn, centering."),
    candidates: int = typer.Option(100, "--candidates", min=1, help="Primary candidates re-ranked by --reduce (>= -k; capped at the index's rows - 1, as in the API)."),
    histogram: Path | None = typer.Option(None, "--histogram", help="Write the N_k histogram to this .png (none by default)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the measures as JSON to this .json file, or - for stdout."),
    nk_out: Path | None = typer.Option(None, "--nk-out", help="Write N_k (reduced, with --reduce) to this .npy."),
    graph_out: Path | None = typer.Option(None, "--graph-out", "--graph", help="Write the (reduced) neighbour graph to this .npz: indices, distances (one row per query)."),
    key: str | None = typer.Option(None, "--key", help="Array name inside a .npz/.safetensors file with several (the same name in every file)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for approximate backends and the reductions' samples."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Search the query blocks on a Dask cluster: tcp://HOST:PORT (each worker reads --index, or the --backend index built here, once from its file; --reduce re-ranks here)."),
    cluster: str | None = typer.Option(None, "--cluster", help="Start a local Dask cluster for the search: local:N (N worker processes)."),
    workdir: Path | None = typer.Option(None, "--workdir", help="A folder for temporary files (default: the system's temporary folder): with --reduce, the candidate graph an approximate search or --index writes to disk, a block at a time, and the reduction reads back (n × --candidates × 12 bytes, removed at the end); with --scheduler and --backend, it must be mounted by every Dask worker at the same path: the index built here is written there for the workers."),
    threads: int | None = threads_option(),
):
    """Print skewness, Robin-Hood, Gini, Atkinson, hub and antihub occurrence of N_k (optionally after a reduction).

    Large data: with --reduce and an approximate --backend or --index, the n × --candidates
    candidate graph goes to an unnamed temporary file in --workdir (or the system's temporary
    folder) as it is searched, and is re-ranked --block-rows rows at a time: memory holds the index,
    the per-point statistics, one block and the final -k neighbours."""
    from kexue import hubness as H
    from kexue.cli import RichTracker, console, out_console
    from kexue.hubness import stream
    from kexue.io import open_matrix, release_pages

    index = list(index) if index else None  # --index given once or more: shards in row order
    _check_options(k, metric, backend, recall, reduce, candidates, queries, reference)
    _check_backend(backend, index, recall_sample)
    where = _check_dask(scheduler, cluster, workdir)
    for path, suffixes, flag in [(histogram, (".png",), "--histogram"), (nk_out, (".npy",), "--nk-out"),
                                 (graph_out, (".npz",), "--graph-out")]:
        check_output(path, suffixes, flag)
    check_output(json_out, (".json",), "--json", stdout=True)
    src = open_matrix(check_input(emb, "INDEX", shards=True), key)
    others = {flag: open_matrix(check_input(Path(p), flag, shards=True), key)
              for flag, p in (("--queries", queries), ("--reference", reference)) if p is not None and p != "queries"}
    for flag, o in others.items():
        if o.d != src.d:
            raise _error(f"{flag} {o.path} has {o.d} columns but INDEX {emb} has {src.d}; embed both the same way")
    _check_rows(emb, src.n, k)
    if index is not None:
        from kexue.hubness.faiss_index import check_index, read_shards

        index_obj = read_shards(index, "--index", mmap=True)  # several files: shards in row order
        check_index(index_obj, src.n, src.d, metric, f"--index {' + '.join(map(str, index))}", f"INDEX {emb}", "--metric")
    candidates = min(candidates, src.n - 1)  # as the reductions do: no point has more neighbours
    client = None if where is None else _dask_client(ctx, where)  # unreachable: the one error line, before any work
    use_threads(threads, import_torch=False)  # a NumPy/FAISS command: importing torch would cost ~0.12 GB of private memory
    for s in (src, *others.values()):  # NaN/inf named by file and row, one block at a time
        for _ in s.chunks(block_rows):
            release_pages(s.mmap)  # a memory map's pages read so far: out of our resident set (None: nothing)
    X = src.rows()  # a memory map where the file allows: never read whole
    Q = others["--queries"].rows() if queries is not None else None
    R = others["--reference"].rows() if "--reference" in others else None  # a memory map too: the reductions read it in blocks
    search_with = backend if index is None else index_obj
    tracker = RichTracker()
    tracker.log(f"{emb}: {src.n} × {src.d}, k = {k}, {metric}, "
                + (f"backend {backend}" if index is None else f"FAISS index {' + '.join(map(str, index))}")
                + (f"; {len(Q)} queries from {queries}" if Q is not None else ""))
    def search(c, out):
        if client:
            return _dask_graph(client, emb, queries, key, c, metric, tracker, index=index, backend=backend,
                               recall=recall, seed=seed, recall_sample=recall_sample, workdir=workdir)
        return H.kneighbors(X, c, metric=metric, backend=search_with, queries=Q, recall=recall, seed=seed,
                            tracker=tracker, block_rows=block_rows, recall_sample=recall_sample, out=out)

    with stream.scratch(workdir if client is None else None):
        # with --reduce an approximate search or --index writes the candidates into a graph on disk
        # (kexue.hubness.stream) that the reduction reads back in blocks; the exact backend (quadratic:
        # smaller data) and a Dask search keep theirs in memory
        on_disk = reduce is not None and not client and (index is not None or backend != "exact")
        out = stream.disk_graph(src.n if Q is None else len(Q), candidates, src.n) if on_disk else None
        try:
            nks, dist, ind, g = _graphs(H, X, Q, R, src.n, k, candidates, reduce, reference, metric, search_with,
                                        block_rows, seed, lambda c: search(c, out))
        finally:
            for a in out or ():
                a.close()  # the temporary file goes now (it would with the process anyway)
    nq = src.n if Q is None else len(Q)
    ms = {label: H.hubness_measures(nk, k, nq) for label, nk in nks.items()}
    _print_table(ms, console if json_out is not None and str(json_out) == "-" else out_console)
    if g.backend != "exact":
        got = "not measured (give --recall-sample N)" if not g.recall_sample else \
            f"{g.recall:.3f} on {g.recall_sample} sampled queries against exact search"
        console.print(f"{g.backend}: recall {got} ({', '.join(f'{a}={v}' for a, v in g.params.items()) or 'no parameter'})",
                      highlight=False)
    if json_out is not None:
        write_json({"file": str(emb), "n": src.n, "dim": src.d, "queries": None if queries is None else str(queries),
                    "n_queries": nq, "reference": reference, "n_reference": None if reference is None else
                    (nq if R is None else len(R)), "k": k, "metric": metric,
                    "backend": backend if index is None else g.backend,
                    "index": None if index is None else str(index[0]) if len(index) == 1 else list(map(str, index)),
                    "block_rows": block_rows, "recall": None if g.recall != g.recall else g.recall,  # NaN: not measured
                    "recall_sample": g.recall_sample, "params": g.params, "reduce": reduce,
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


def _graphs(H, X, Q, R, n, k, candidates, reduce, reference, metric, search_with, block_rows, seed, search):
    """``(nks, dist, ind, g)``: N_k of the primary graph (and of the reduced one), the final -k
    neighbours and the search's graph ``g`` (its recall). The candidate graph may be on disk: N_k
    and the reduction read it ``block_rows`` rows at a time."""
    from kexue.hubness.stream import first_occurrences

    g = search(k if reduce is None else candidates)
    nks = {"primary": first_occurrences(g.ind, k, n, block_rows)}
    if reduce is None:
        return nks, g.dist[:, :k], g.ind[:, :k], g
    red = H.make_reduction(reduce, metric=metric, n_candidates=candidates, backend=search_with, random_state=seed,
                           block_rows=block_rows)
    if Q is None:  # in sample: the index's own graph gives the candidates
        red.fit(X, graph=(g.dist, g.ind), reference=R)
        dist, ind = red.kneighbors(n_neighbors=k, reference=reference if reference == "queries" else None)
    else:  # the queries' graph is re-ranked: the same exact candidates as the primary row
        red.fit(X, reference="queries" if reference == "queries" else R)  # transductive: no index statistics
        dist, ind = red.rerank(g.dist, g.ind, Q, n_neighbors=k)
    nks[reduce] = H.occurrences(ind, n)
    return nks, dist, ind, g


def _error(msg: str):
    from kexue.utils import KexueError

    return KexueError(msg)


def _check_backend(backend: str, index, recall_sample) -> None:
    """A missing extra is the one error line, before the header line and any work."""
    from kexue.utils import require

    if index is not None:
        require("ann", "faiss", "--index")
        if backend != "exact":
            raise _error(f"--index searches the given FAISS index; drop --backend {backend} (or drop --index)")
    elif backend != "exact":
        require("ann", "faiss", f"backend '{backend}'")
        if recall_sample == 0:
            raise _error(f"--recall-sample 0 leaves no queries to choose --backend {backend}'s search parameter on; "
                         "give N >= 1 (or search a configured index with --index)")


def _check_dask(scheduler, cluster, workdir) -> str | None:
    """--scheduler / --cluster (kexue.cluster's one check) and --workdir: the search runs on Dask
    (a --reduce re-ranks its gathered candidates here)."""
    from kexue.cluster import check_where
    from kexue.utils import require

    where = check_where(scheduler, cluster)
    if where is not None:
        require("dask", "dask.distributed", "a Dask scheduler (--scheduler / --cluster)")
    if workdir is not None and not workdir.is_dir():
        raise _error(f"--workdir {workdir} is not a folder; create it" + (" on storage every Dask worker mounts"
                                                                          if where is not None else ""))
    return where


def _dask_client(ctx, where):
    """A Dask client for ``where``, closed with its local cluster when the command ends."""
    from kexue.cluster import dask_client

    return ctx.with_resource(dask_client(where))


def _dask_graph(client, emb, queries, key, k, metric, tracker, **ann):
    """The query blocks searched on the cluster; the workers open the files themselves when they see
    them, and read the FAISS index (--index, or the --backend index built here) once from its file."""
    from kexue.hubness.distributed import kneighbors_dask

    index = ann.pop("index")
    return kneighbors_dask(emb, k, client, metric=metric, queries=queries, key=key, tracker=tracker,
                           index=None if index is None else [str(p) for p in index], **ann)


def _check_options(k, metric, backend, recall, reduce, candidates, queries, reference) -> None:
    from kexue import hubness as H
    from kexue import validate

    validate.choice(metric, H.METRICS, "--metric")
    validate.choice(backend, H.BACKENDS, "--backend")
    validate.real(recall, "--recall", 0.0, 1.0, lo_open=True)  # the API's range and wording
    if reduce is not None:
        validate.choice(reduce, H.REDUCTIONS, "--reduce")
        if candidates < k:
            raise _error(f"--candidates {candidates} is smaller than -k {k}; the reduction re-ranks "
                         f"--candidates primary neighbours, so give --candidates >= {k}")
    if reference is not None:
        if reduce is None:
            raise _error("--reference sets where a reduction reads the index statistics; give --reduce too")
        if reduce in ("mp-empirical", "centering"):
            raise _error(f"--reduce {reduce} has no per-point index statistic, so --reference does not apply; "
                         "use mp, ls, nicdm, csls or nnn")
        if reference == "queries" and queries is None:
            raise _error("--reference queries uses the query batch as the reference; give --queries too")


def _check_rows(emb, n, k) -> None:
    if n < k + 1:
        raise _error(f"{emb} has {n} row{'' if n == 1 else 's'}; N_{k} needs at least {k + 1} "
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
