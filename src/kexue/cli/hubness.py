"""``kexue hubness EMB.npy``: k-occurrence and hubness measures of an embedding matrix (SPEC 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("hubness")
    def hubness_cmd(
        emb: Path = typer.Argument(..., help="Embeddings: a .npy file holding a 2-D float array (one row per item)."),
        k: int = typer.Option(10, "-k", "--k", help="Number of nearest neighbours."),
        metric: str = typer.Option("euclidean", "--metric", help="euclidean or cosine."),
        backend: str = typer.Option("exact", "--backend", help="exact (blocked brute force), faiss or hnsw (approximate)."),
        reduce: Optional[str] = typer.Option(None, "--reduce", help="Also measure after a hubness reduction: mp, mp-empirical, ls, nicdm, csls, centering."),
        candidates: int = typer.Option(100, "--candidates", help="Primary candidates re-ranked by --reduce."),
        histogram: Path = typer.Option(Path("nk_hist.png"), "--histogram", help="Where to write the N_k histogram (PNG)."),
        seed: int = typer.Option(0, "--seed", help="Seed for approximate backends and MP's reference sample."),
    ):
        """Print skewness, robin-hood, Gini, Atkinson, hub and antihub occurrence of N_k; write a histogram."""
        import numpy as np

        from kexue import hubness as H
        from kexue.cli import RichTracker, out_console
        from kexue.utils import KexueError, atomic_path
        from kexue.io import load_npy

        X = load_npy(emb, "embedding")
        if X.ndim != 2:
            raise KexueError(f"{emb} holds an array of shape {X.shape}; expected 2-D (n_items, dim)")
        if reduce is not None and reduce not in H.REDUCTIONS:
            raise KexueError(f"unknown --reduce {reduce!r}; choose from: {', '.join(H.REDUCTIONS)}")
        log = RichTracker()
        log.log(f"{emb}: {X.shape[0]} × {X.shape[1]}, k = {k}, {metric}, backend {backend}")
        rows = {"primary": H.k_occurrence(X, k, metric=metric, backend=backend, seed=seed)}
        if reduce is not None:
            kw = dict(metric=metric, n_candidates=max(candidates, k), backend=backend)
            if reduce.startswith("mp"):
                kw["random_state"] = seed
            r = H.make_reduction(reduce, **kw).fit(X)
            rows[reduce] = r.k_occurrence(n_neighbors=k)
        from rich.table import Table

        names = ["skewness", "robin_hood", "gini", "atkinson", "hub_occurrence", "antihub_occurrence", "max_nk"]
        # one row per measure, one column per graph: stays narrow in any terminal
        ms = {label: H.hubness_measures(nk, k) for label, nk in rows.items()}
        table = Table("measure", *ms)
        for n in names:
            table.add_row(n, *(f"{m[n]:.3f}" for m in ms.values()))
        out_console.print(table)

        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        top = max(int(nk.max()) for nk in rows.values())
        bins = np.arange(top + 2) - 0.5 if top < 80 else 60
        for label, nk in rows.items():
            ax.hist(nk, bins=bins, alpha=0.6, label=label, log=True)
        ax.set_xlabel(f"N_{k}")
        ax.set_ylabel("points")
        ax.legend()
        ax.set_title(f"{emb.name}: k-occurrence ({metric}, {backend})")
        with atomic_path(histogram) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        out_console.print(f"histogram: {histogram}")
