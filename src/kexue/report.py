"""Experiments and their reports.

Each technique has one experiment: a module ``kexue.experiments.<name>`` with ``TITLE``,
``SPEC`` (the SPEC.md section) and ``run(ctx: Context) -> None``. ``run`` records everything
through the :class:`Context`: numbers (``metric``), tables (``table``), figures (``figure``) and
prose (``text``). :func:`reproduce` runs the chosen experiments and writes

- ``OUT/report.md``   — the readable report with figures,
- ``OUT/results.json`` — every number, the seed, command, versions and machine,
- ``OUT/figures/<name>/*.png``,

each file written atomically. With ``publish=DIR`` the sections also go to
``DIR/results/<name>.json`` and ``DIR/figures/<name>/``, and ``DIR/RESULTS.md`` is rebuilt from
every published section (so experiments run at different times share one results page).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import math
import pkgutil
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from kexue.utils import KexueError, NullTracker, Tracker, atomic_write, machine_info, seed_everything, tracker_or_null, require

# SPEC order; experiments found in kexue.experiments but not listed here run after these
ORDER = ["vae", "eg", "lrfree", "unargmax", "logsumexp", "whitening", "exact", "ddpm", "hubness"]


def available() -> list[str]:
    """Names of the registered experiments (modules of kexue.experiments), in SPEC order."""
    import kexue.experiments as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


# what every experiment imports (torch models, matplotlib figures, FAISS, text encoders)
EXPERIMENT_MODULES = ("torch", "matplotlib", "faiss", "transformers", "sentence_transformers")


def load(name: str):
    """The experiment module ``name``; a KexueError naming the choices if it does not exist."""
    names = available()
    if name not in names and name.replace("-", "_") in names:  # `unargmax-zoo` names unargmax_zoo
        name = name.replace("-", "_")
    if name not in names:
        raise KexueError(f"unknown experiment {name!r}; choose from: {', '.join(names)}")
    # experiments are entered only here: a missing extra is one line before any work starts
    for module in EXPERIMENT_MODULES:
        require("experiments", module, f"the experiment {name}")
    return importlib.import_module(f"kexue.experiments.{name}")


@dataclass
class Context:
    """What an experiment sees: its settings, and where its results go.

    ``root`` is the report directory; ``out`` (= ``root/<name>``) the experiment's private
    scratch directory (checkpoints); ``cache`` (= ``root/cache`` unless given) is shared by all
    experiments for expensive, seed-keyed artefacts such as trained classifiers.
    """

    name: str
    seed: int = 0
    quick: bool = True
    root: Path = Path("report")
    data_dir: str | None = None
    cache: Path | None = None
    tracker: Tracker = field(default_factory=NullTracker)
    metrics: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)
    parts: list = field(default_factory=list)
    legs: Legs | None = None  # the wall-time ledger of run_one; ``track`` keeps it up to date

    def __post_init__(self):
        self.root = Path(self.root)
        self.out = self.root / self.name
        if self.cache is None:
            self.cache = self.root / "cache"
        self.rng = np.random.default_rng(self.seed)

    # ---- recording
    def text(self, markdown: str) -> None:
        self.parts.append(markdown.strip() + "\n")

    def metric(self, key: str, value: Any) -> Any:
        self.metrics[key] = _jsonable(value)
        return value

    def table(self, key: str, columns: list[str], rows: list[list], caption: str = "", fmt: str = "{:.4g}") -> None:
        """A table: kept whole in results.json, rendered as Markdown in the report."""
        self.tables[key] = {"columns": columns, "rows": _jsonable(rows), "caption": caption}

        def cell(v):
            if isinstance(v, (float, np.floating)):
                return "nan" if math.isnan(v) else fmt.format(v)
            return str(v)

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        self.parts.append((f"*{caption}*\n\n" if caption else "") + "\n".join(lines) + "\n")

    def figure(self, key: str, fig, caption: str = "") -> Path:
        """Save a matplotlib figure as ``figures/<name>/<key>.png`` (atomically) and show it."""
        plt = require("plot", "matplotlib.pyplot", "saving figures")
        rel = Path("figures") / self.name / f"{key}.png"
        path = self.root / rel
        with atomic_write(path, parents=True) as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append({"key": key, "path": str(rel), "caption": caption})
        self.parts.append(f"![{key}]({rel.as_posix()})\n" + (f"\n*{caption}*\n" if caption else ""))
        return path

    # ---- progress
    def track(self, iterable: Iterable, description: str = "", total: int | None = None) -> Iterator:
        items = self.tracker.track(iterable, description, total)
        return items if self.legs is None else self.legs.beating(items)

    def log(self, message: str) -> None:
        self.tracker.log(message)

    def markdown(self) -> str:
        return "\n".join(self.parts)

    # ---- resumable runs
    def resumable(self, par, calls: list, keys: list, description: str = "") -> list:
        """Results of the joblib ``calls`` (``delayed(f)(...)``, run on ``par``, a ``Parallel``
        with ``return_as="generator"``, best one of :func:`kexue.parallel.parallel`), in order. Each result is stored in ``out/runs/`` as it
        arrives (atomically, JSON) under a hash of its key, and read back when the experiment runs
        again into the same report directory, so an interrupted full run resumes where it
        stopped. ``keys`` name the runs (JSON-able: settings, seed, config); results come back as
        JSON values (lists, not arrays) whether fresh or resumed, so both give the same numbers.
        ``description`` labels the progress bar."""
        folder = self.out / "runs"

        def encode(v):
            return json.dumps(v, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))

        names = [hashlib.sha256(encode([self.name, self.seed, k]).encode()).hexdigest()[:24] for k in keys]
        results, todo = [None] * len(calls), []
        for i, n in enumerate(names):
            try:
                results[i] = json.loads((folder / f"{n}.json").read_text())["result"]
            except (OSError, ValueError, KeyError):  # absent (or unreadable: run it again)
                todo.append(i)
        from kexue.parallel import consume

        # consume(): a run that stops early (an error, Ctrl-C) closes joblib's generator quietly
        fresh = self.track(consume(par(calls[i] for i in todo)), description, total=len(todo)) if todo else ()
        for i, r in zip(todo, fresh):
            text = encode({"key": keys[i], "result": r})
            with atomic_write(folder / f"{names[i]}.json", "w", parents=True) as f:
                f.write(text)
            results[i] = json.loads(text)["result"]
        return results


class Legs:
    """The wall time of one experiment over every process ("leg") that worked on it into the
    same report directory, kept in ``OUT/<name>/legs.json``: the seconds of each leg, written at
    the start, every ``every`` seconds while ``Context.track`` loops run, and at the end. A
    killed leg so keeps all but its last few seconds; a finished run's ledger is closed, so the
    next run into the directory starts a new one. That run may read the earlier runs' cached
    phases (trained networks, samples) instead of redoing them, so their time is kept too:
    ``earlier``, the seconds of every finished run before it in the directory."""

    def __init__(self, path: Path, every: float = 30.0):
        self.path, self.every = Path(path), every
        try:
            old = json.loads(self.path.read_text())
            self.earlier = float(old.get("earlier", 0.0))
            self.seconds = [float(v) for v in old["seconds"]]
            if old.get("finished"):
                self.earlier, self.seconds = self.earlier + sum(self.seconds), []
        except (OSError, ValueError, KeyError, TypeError):
            self.earlier, self.seconds = 0.0, []
        self.seconds.append(0.0)
        self.t0 = self.last = time.perf_counter()
        self._write(False)

    def _write(self, finished: bool) -> None:
        self.seconds[-1] = time.perf_counter() - self.t0
        with atomic_write(self.path, "w", parents=True) as f:
            json.dump({"seconds": self.seconds, "finished": finished, "earlier": self.earlier}, f)

    def beating(self, items: Iterable) -> Iterator:
        """``items``, noting the time every ``every`` seconds."""
        for item in items:
            if time.perf_counter() - self.last >= self.every:
                self.last = time.perf_counter()
                self._write(False)
            yield item

    def finish(self) -> tuple[float, int]:
        """Close the ledger: (seconds over all legs, legs)."""
        self._write(True)
        return sum(self.seconds), len(self.seconds)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else str(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def legs_text(verb: str, seconds: float, legs: int) -> str:
    """How long a resumable phase took over all the processes ("legs") that worked on it:
    "trained in 3 legs, 9,812 s in all" or "trained in one leg, 812 s"."""
    if legs <= 1:
        return f"{verb} in one leg, {seconds:,.0f} s"
    return f"{verb} in {legs} legs, {seconds:,.0f} s in all"


def image_grid(images, path: str | Path | None = None, *, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile a batch of grey images with values in [0, 1] into one 2-D array (``pad`` white pixels
    between tiles, ``ncols`` tiles per row, default ⌈√N⌉); with ``path`` also write it as a PNG,
    one image pixel per PNG pixel, atomically. Images may be flat square (N, H·W), (N, H, W) or
    (N, 1, H, W) — the samples of ``kexue ddpm sample`` and ``kexue vae sample`` alike."""
    from kexue import validate

    X = validate.images(images, "images", channels=1)[:, 0]
    n, h, w = X.shape
    k = ncols or math.ceil(math.sqrt(n))
    rows = -(-n // k)
    grid = np.ones((rows * (h + pad) - pad, k * (w + pad) - pad), dtype=np.float32)
    for j, img in enumerate(np.clip(X, 0.0, 1.0)):
        r, c = divmod(j, k)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    if path is not None:
        imsave = require("plot", "matplotlib.image", "writing PNG image grids").imsave
        if Path(path).suffix.lower() != ".png":
            raise KexueError(f"image grids are written as PNG; name the file {Path(path).with_suffix('.png').name}")
        with atomic_write(path) as f:
            imsave(f, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return grid


@dataclass
class Section:
    name: str
    title: str
    spec: str
    seconds: float
    markdown: str
    metrics: dict
    tables: dict
    figures: list
    legs: int = 1  # processes the run took (it resumes from its checkpoints); ``seconds`` is over all
    earlier: float = 0.0  # seconds of earlier finished runs into the same folder, whose caches it may read


def run_one(name: str, *, seed: int, quick: bool, out: Path, data_dir=None, tracker=None) -> Section:
    """Run one experiment with a fresh seed and return its section. Its ``seconds`` and ``legs``
    count every earlier process that was stopped while running it into the same ``out``."""
    mod = load(name)
    name = mod.__name__.rsplit(".", 1)[-1]  # the module's name, however it was spelled
    seed_everything(seed)
    ctx = Context(name=name, seed=seed, quick=quick, root=Path(out), data_dir=data_dir,
                  tracker=tracker_or_null(tracker))
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.legs = Legs(ctx.out / "legs.json")
    mod.run(ctx)
    secs, legs = ctx.legs.finish()
    return Section(name, mod.TITLE, mod.SPEC, secs, ctx.markdown(), ctx.metrics, ctx.tables, ctx.figures, legs,
                   ctx.legs.earlier)


def _meta(seed: int, quick: bool, command: str) -> dict:
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "seed": seed,
        "mode": "quick" if quick else "full",
        "machine": machine_info(),
    }


def _machine_line(m: dict) -> str:
    return (f"{m['machine']['cpu_count']} CPU cores, {m['machine'].get('memory_gib', '?')} GiB, "
            f"{m['machine']['platform']}, Python {m['machine']['python']}, "
            + ", ".join(f"{k} {v}" for k, v in m["machine"]["versions"].items()))


def _section_md(s: dict, meta: dict, with_provenance: bool) -> str:
    head = f"## {s['title']} (`{s['name']}`, SPEC {s['spec']})\n\n"
    legs = s.get("legs", 1)  # sections published before legs were counted ran in one
    took = f"{s['seconds']:.0f} s" if legs == 1 else f"{s['seconds']:.0f} s over {legs} legs"
    if s.get("earlier"):
        took += (f"; it may have read the cached phases of earlier runs into the same folder, which took "
                 f"{s['earlier']:,.0f} s")
    if with_provenance:
        head += (f"*Produced {meta['date']} by `{meta['command']}` (seed {meta['seed']}, {meta['mode']} mode, "
                 f"{took}) on {_machine_line(meta)}.*\n\n")
    else:
        head += f"*{took}*\n\n" if legs > 1 or s.get("earlier") else f"*{s['seconds']:.1f} s*\n\n"
    return head + s["markdown"]


def write_report(sections: list[Section], out: Path, meta: dict) -> Path:
    """Write OUT/report.md and OUT/results.json atomically."""
    out = Path(out)
    secs = [s.__dict__ for s in sections]
    md = [f"# kexue report\n\n*{meta['date']} · `{meta['command']}` · seed {meta['seed']} · {meta['mode']} mode*\n\n"
          f"Machine: {_machine_line(meta)}.\n"]
    md += [_section_md(s, meta, False) for s in secs]
    with atomic_write(out / "results.json", "w", parents=True) as f:
        json.dump(_jsonable({"meta": meta, "experiments": {s["name"]: s for s in secs}}), f, indent=1)
    with atomic_write(out / "report.md", "w", parents=True) as f:
        f.write("\n".join(md))
    return out / "report.md"


def publish(sections: list[Section], out: Path, docs: Path, meta: dict) -> Path:
    """Copy sections and figures into ``docs`` and rebuild ``docs/RESULTS.md`` from all of them."""
    docs = Path(docs)
    for s in sections:
        src = Path(out) / "figures" / s.name
        dst = docs / "figures" / s.name
        if dst.exists():
            shutil.rmtree(dst)
        if src.exists():
            shutil.copytree(src, dst)
        with atomic_write(docs / "results" / f"{s.name}.json", "w", parents=True) as f:
            json.dump(_jsonable({"meta": meta, **s.__dict__}), f, indent=1)
    return rebuild_results(docs)


def rebuild_results(docs: Path) -> Path:
    docs = Path(docs)
    found = {p.stem: json.loads(p.read_text()) for p in sorted((docs / "results").glob("*.json"))}
    order = sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    md = ["# Results\n",
          "Written by `kexue reproduce NAME --publish docs` (or `make reproduce-full`); every number below "
          "comes from the run whose date, command, seed and machine head its section. Do not edit by hand.\n"]
    for n in order:
        d = found[n]
        md.append(_section_md(d, d["meta"], True))
    with atomic_write(docs / "RESULTS.md", "w", parents=True) as f:
        f.write("\n".join(md))
    return docs / "RESULTS.md"


def reproduce(names: list[str], *, seed: int = 0, quick: bool = True, out: str | Path = "report",
              data_dir=None, command: str = "kexue reproduce", tracker=None,
              publish_to: str | Path | None = None,
              on_section: Callable[[Section], None] | None = None) -> tuple[Path, list[Section]]:
    """Run experiments ``names`` (all if empty) and write the report; return its path and sections."""
    names = list(names) or available()
    for n in names:
        load(n)  # fail on an unknown name before running anything
    out = Path(out)
    meta = _meta(seed, quick, command)
    sections = []
    for n in names:
        s = run_one(n, seed=seed, quick=quick, out=out, data_dir=data_dir, tracker=tracker)
        sections.append(s)
        if on_section:
            on_section(s)
        write_report(sections, out, meta)  # keep a valid report after each experiment
    path = write_report(sections, out, meta)
    if publish_to is not None:
        publish(sections, out, Path(publish_to), meta)
    return path, sections
