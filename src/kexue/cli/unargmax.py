"""``kexue unargmax PATH``: certify which classes of an output layer can never be predicted (SPEC 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("unargmax")
    def unargmax_cmd(
        path: Path = typer.Argument(..., help="Output layer: .npy, .npz, .safetensors, .gguf or a Hugging Face model folder."),
        bias: str = typer.Option("auto", "--bias", help="auto: use the layer's bias if it has one; none: ignore it."),
        box: Optional[float] = typer.Option(None, "--box", help="Bound inputs to [-R, R]^d (the paper uses 100); default: unbounded (convex-hull question)."),
        method: str = typer.Option("lp", "--method", help="lp: exact LP (HiGHS) for classes the pre-checks leave open; fw: the post's Frank–Wolfe criterion."),
        jobs: int = typer.Option(1, "--jobs", "-j", help="Parallel worker processes (joblib)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary, every unargmaxable class with its certificate, and the undecided ones."),
        tensor: Optional[str] = typer.Option(None, "--tensor", help="Weight tensor / .npz key (default: the LM head, else the tied embeddings)."),
        bias_tensor: Optional[str] = typer.Option(None, "--bias-tensor", help="Bias tensor / .npz key."),
        normalize: bool = typer.Option(False, "--normalize", help="Equalise row norms first (SPEC 3.5: then every distinct row is argmaxable)."),
        show: int = typer.Option(50, "--show", help="How many unargmaxable tokens to print."),
    ):
        """Audit every class: argmaxable (verified witness z), unargmaxable (certificate λ) or undecided."""
        import json

        import numpy as np
        from rich.table import Table

        from kexue.cli import RichTracker, out_console
        from kexue.unargmax import STAGES, VERDICT_NAMES, audit, load_output_layer
        from kexue.utils import KexueError, atomic_write

        if method not in ("lp", "fw"):
            raise KexueError(f"--method must be 'lp' or 'fw'; got {method!r}")
        if jobs < 1:
            raise KexueError("--jobs must be at least 1")
        if box is not None and not box > 0:
            raise KexueError("--box must be a positive number")
        layer = load_output_layer(path, tensor=tensor, bias_tensor=bias_tensor, bias=bias)
        W = layer.W
        if normalize:
            W = np.asarray(W, np.float64)
            W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-300)
        C, d = W.shape
        tr = RichTracker()
        tr.log(f"{layer.source}: {layer.weight_name} {C} × {d}" + (" (tied embeddings)" if layer.tied else "")
               + (f", bias {layer.bias_name}" if layer.b is not None else ", no bias")
               + (f", box ±{box:g}" if box else ", unbounded inputs"))
        res = audit(W, layer.b, box=box, method=method, n_jobs=jobs, keep_witnesses=False, tracker=tr)
        cnt = res.counts()
        t = Table("classes", "argmaxable (witness)", "unargmaxable (certificate)", "undecided", "seconds", title="kexue unargmax")
        t.add_row(str(C), str(cnt["argmaxable"]), str(cnt["unargmaxable"]), str(cnt["undecided"]), f"{res.seconds:.1f}")
        out_console.print(t)
        st = Table("stage", "decided", "compute s", title="per stage")
        decided = res.stage_counts()
        for s in ["duplicate", "setup", *STAGES[1:], "working_sets"]:
            if s in decided or s in res.stage_seconds:
                st.add_row(s, str(decided.get(s, "")), f"{res.stage_seconds.get(s, 0.0):.2f}")
        out_console.print(st)
        ua = res.unargmaxable
        if ua.size:
            ut = Table("id", "token", "decided by", "certificate rows", title=f"unargmaxable classes ({ua.size})")
            for k in ua[:show]:
                idx, lam = res.certificates[int(k)]
                top = np.argsort(-lam)[:3]
                ut.add_row(str(k), repr(layer.token(int(k))), STAGES[res.stage[k]],
                           ", ".join(f"{lam[j]:.2f}·{idx[j]}" for j in top) + (" …" if len(idx) > 3 else ""))
            out_console.print(ut)
            if ua.size > show:
                out_console.print(f"… and {ua.size - show} more (--show N or --json OUT for all)")
        for k in res.undecided[:show]:
            out_console.print(f"undecided {k} {layer.token(int(k))!r}: {res.notes.get(int(k), '')}")
        if json_out is not None:
            doc = {"source": layer.source, "weight_tensor": layer.weight_name, "bias_tensor": layer.bias_name, "tied": layer.tied,
                   "normalized": normalize, "info": layer.info, **res.summary(),
                   "unargmaxable_classes": [{"id": int(k), "token": layer.token(int(k)), "stage": STAGES[res.stage[k]],
                                     "certificate": {"rows": res.certificates[int(k)][0].tolist(),
                                                     "lambda": res.certificates[int(k)][1].tolist()},
                                     "residual": float(res.residual[k])} for k in ua],
                   "undecided_classes": [{"id": int(k), "token": layer.token(int(k)), "note": res.notes.get(int(k), "")}
                                 for k in res.undecided],
                   "verdict_names": VERDICT_NAMES}
            with atomic_write(json_out, "w") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)
            out_console.print(f"wrote {json_out}")
