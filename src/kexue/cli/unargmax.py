"""``kexue unargmax PATH``: certify which classes of an output layer can never be predicted (SPEC 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from kexue.cli._common import check_output, positive_float, threads_option, unit_float, use_threads, write_json


def _checked_options(method, jobs, show, scheduler, cluster):
    from kexue.cluster import check_where
    from kexue.utils import KexueError, require

    if method not in ("lp", "fw"):
        raise KexueError(f"--method must be 'lp' or 'fw'; got {method!r}")
    if jobs < 1:
        raise KexueError(f"--jobs must be at least 1; got {jobs}")
    if show < 0:
        raise KexueError(f"--show must be 0 or more (how many classes to list); got {show}")
    where = check_where(scheduler, cluster)
    if where:  # before the layer is read: a missing extra is the one error line
        require("dask", "dask.distributed", "a Dask scheduler (--scheduler / --cluster)")
    return where


def _checked_reach(reach, below, tol):
    from kexue.utils import KexueError

    if reach is not None and not (reach >= 0 and reach < float("inf")):
        raise KexueError(f"--reach must be a radius R ≥ 0 (the norm of the hidden states); got {reach}")
    if not 0 < below <= 1:
        raise KexueError(f"--below must be a probability in (0, 1]; got {below}")
    if not 0 < tol < 1:
        raise KexueError(f"--reach-tol must be in (0, 1); got {tol}")


def _print_reach(rr, layer, p, show, console):
    import numpy as np
    from rich.table import Table

    ids = rr.below(p)
    t = Table("radius R", f"cannot reach\np = {p:g}", f"reach\np = {p:g}", "interval\ncontains p", "widest\ninterval",
              title="reachable probability max softmax(Wh+b)_i over ‖h‖ ≤ R")
    t.add_row(f"{rr.radius:g}", str(ids.size), str(rr.reaches(p).size), str(rr.unresolved(p).size),
              f"{float(rr.width[rr._mask()].max()):.1e}")
    console.print(t)
    if ids.size and show:
        ut = Table("id", "token", "max probability", title=f"classes that cannot reach p = {p:g} ({ids.size}; lowest first)")
        for k in ids[np.argsort(rr.upper[ids], kind="stable")][:show]:
            ut.add_row(str(k), repr(layer.token(int(k))), f"[{rr.lower[k]:.4g}, {rr.upper[k]:.4g}]")
        console.print(ut)


def _print_tables(res, layer, show, console):
    import numpy as np
    from rich.table import Table

    from kexue.unargmax import STAGES

    cnt = res.counts()
    # headers broken at word boundaries so that every one stays whole at 80 columns (issue 31)
    t = Table("classes", "argmaxable\n(witness)", "near-\nunargmaxable", "unargmaxable\n(certificate)", "undecided",
              "wall s", title="kexue unargmax")
    for c in t.columns:
        c.no_wrap = True
    t.add_row(str(res.n_classes), str(cnt["argmaxable"]), str(cnt["near-unargmaxable"]), str(cnt["unargmaxable"]),
              str(cnt["undecided"]), f"{res.seconds:.1f}")
    console.print(t)
    st = Table("stage", "decided", "compute s", title="per stage (compute s = summed over workers: can exceed wall time)")
    decided = res.stage_counts()
    for s in ["duplicate", "setup", *STAGES[1:], "working_sets"]:
        if s in decided or s in res.stage_seconds:
            st.add_row(s, str(decided.get(s, "")), f"{res.stage_seconds.get(s, 0.0):.2f}")
    console.print(st)
    ua = res.unargmaxable
    if ua.size and show:
        ut = Table("id", "token", "decided by", "certificate rows", title=f"unargmaxable classes ({ua.size})")
        for k in ua[:show]:
            idx, lam = res.certificates[int(k)]
            top = np.argsort(-lam)[:3]
            ut.add_row(str(k), repr(layer.token(int(k))), STAGES[res.stage[k]],
                       ", ".join(f"{lam[j]:.2f}·{idx[j]}" for j in top) + (" …" if len(idx) > 3 else ""))
        console.print(ut)
    for k in res.near[:show]:
        console.print(f"near-unargmaxable {k} {layer.token(int(k))!r}: relative margin {res.rel_margin[k]:.2e} "
                      f"< --min-margin {res.min_margin:.2e}")
    if ua.size > show or res.near.size > show:
        console.print("… more not shown (--show N, or --json OUT for all)")
    for k in res.undecided[:show]:
        console.print(f"undecided {k} {layer.token(int(k))!r}: {res.notes.get(int(k), '')}")


def unargmax_cmd(
    path: str = typer.Argument(..., help="Output layer: .npy, .npz, .safetensors, .gguf, a Hugging Face model folder, "
                                         "or a model id (org/name) from the local Hugging Face cache."),
    bias: str = typer.Option("auto", "--bias", help="auto: use the layer's bias if it has one; none: ignore it."),
    box: float | None = typer.Option(None, "--box", callback=positive_float,
                                        help="Bound inputs to [-R, R]^d (the paper uses 100); default: unbounded (convex-hull question)."),
    method: str = typer.Option("lp", "--method", help="lp: exact LP (HiGHS) for classes the pre-checks leave open; fw: the post's Frank–Wolfe criterion."),
    min_margin: float | None = typer.Option(None, "--min-margin", callback=unit_float,
                                               help="Witnesses whose relative margin is below this make the class 'near-unargmaxable' "
                                                    "(default: twice the unit roundoff of the weights' format; 0 = off)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Parallel worker processes (joblib)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Run the blocks and classes on a Dask cluster: tcp://HOST:PORT."),
    cluster: str | None = typer.Option(None, "--cluster", help="Start a local Dask cluster: local:N (N worker processes)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the certificate document (per-class verdicts, certificates, margins) to PATH, or - for stdout."),
    tensor: str | None = typer.Option(None, "--tensor", help="Weight tensor / .npz key (default: the LM head, else the tied embeddings)."),
    bias_tensor: str | None = typer.Option(None, "--bias-tensor", help="Bias tensor / .npz key (not for .npy: it holds W only)."),
    normalize: bool = typer.Option(False, "--normalize", help="Equalise row norms first (SPEC 3.5: then every distinct row is argmaxable)."),
    show: int = typer.Option(50, "--show", help="How many unargmaxable / near / undecided classes to print (0 = none)."),
    reach: float | None = typer.Option(None, "--reach", help="Also bound each class's highest reachable probability "
                                          "max softmax(Wh+b)_i over ‖h‖₂ ≤ R (a certified interval; SPEC 3.8)."),
    below: float = typer.Option(0.5, "--below", help="With --reach: list the classes that cannot reach this probability."),
    reach_tol: float = typer.Option(1e-4, "--reach-tol", help="With --reach: width of each probability interval."),
    threads: int | None = threads_option(),
):
    """Audit every class: argmaxable (verified witness z), near-unargmaxable (margin at the weights'
    rounding level), unargmaxable (certificate λ) or undecided."""
    from kexue.cli import RichTracker, console, out_console
    from kexue.hub import resolve_model
    from kexue.unargmax import audit, load_output_layer

    where = _checked_options(method, jobs, show, scheduler, cluster)
    _checked_reach(reach, below, reach_tol)
    check_output(json_out, (".json",), "--json", stdout=True)
    use_threads(threads)  # torch's too: bfloat16 checkpoints (e.g. SmolLM2) are cast to float32 through torch
    layer = load_output_layer(resolve_model(path), tensor=tensor, bias_tensor=bias_tensor, bias=bias)
    if normalize:
        layer = layer.normalized()
    C, d = layer.W.shape
    tr = RichTracker()
    tr.log(f"{layer.source}: {layer.weight_name} {C} × {d} ({layer.precision})" + (" (tied embeddings)" if layer.tied else "")
           + (f", bias {layer.bias_name}" if layer.b is not None else ", no bias")
           + (f", box ±{box:g}" if box else ", unbounded inputs"))
    res = audit(layer.W, layer.b, box=box, method=method, n_jobs=jobs, scheduler=where, min_margin=min_margin,
                precision=layer.precision, keep_witnesses=False, reach=reach, reach_tol=reach_tol, tracker=tr)
    shown = console if json_out is not None and str(json_out) == "-" else out_console
    _print_tables(res, layer, show, shown)
    if res.reach is not None:
        _print_reach(res.reach, layer, below, show, shown)
    if json_out is not None:
        doc = res.to_dict(vocab=layer.vocab, source=layer.source, weight_tensor=layer.weight_name,
                               bias_tensor=layer.bias_name, tied=layer.tied, precision=layer.precision,
                          normalized=normalize, info=layer.info)
        if res.reach is not None:
            doc["reach"]["below"] = {"p": below, "classes": res.reach.below(below).tolist(),
                                     "unresolved": res.reach.unresolved(below).tolist()}
        write_json(doc, json_out)
        if str(json_out) != "-":
            out_console.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("unargmax")(unargmax_cmd)
