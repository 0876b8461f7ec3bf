"""The saved state of ``bench_hubness_scale.py``, so that a run stopped part-way (SIGTERM, a killed
session, ``--stop-after``) continues where it stopped when started again with the same arguments.

The full 1,000,000 × 384 run takes hours on 2 cores, longer than one working session. Every
completed measure is written to ``state.json`` in the run's work directory (atomically: a
temporary file renamed over the old one) with its result, the date and time it started and
finished, the load average at its start and the checkout's commit. A later run with the same
result-affecting arguments (``RESULT_ARGS``) reuses what is saved and runs only what is missing;
with other arguments it stops with a one-line error naming them (``--fresh`` discards the state).
Since saved rows may come from different sessions under different loads, ``provenance`` prints
every row's date, load and commit, and says plainly when they span more than one session.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

VERSION = 1
STATE = "state.json"
STOPPED = 3  # exit code of a run ended by --stop-after (not finished, nothing wrong)
# the arguments that change a measure's result: a saved measure is reused only when they all match
# (--cluster, --threads and the Gaussian row's size are parts of their measures' keys instead, so that a
# resumed run can add them)
RESULT_ARGS = ("rows", "dim", "seed", "k", "recall", "recall_sample", "block_rows", "mp_candidates", "pq_factory",
               "pq_refine_factory", "pq_m", "k_factor", "kiez_index", "kiez_param", "estimate_fraction",
               "whiten_rows", "whiten_block")


class Mismatch(Exception):
    """The saved state was made with other result-affecting arguments (the one-line message says which)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _flag(name: str) -> str:
    return "--k" if name == "k" else "--" + name.replace("_", "-")


class State:
    """The measures of one work directory: ``run`` returns a saved result or computes and saves it."""

    def __init__(self, workdir: Path, args: dict, commit: str, dirty: bool | None, fresh: bool = False,
                 stop_after: int | None = None, revision: Callable[[], tuple[str, bool | None]] | None = None):
        self.path = Path(workdir) / STATE
        self.args = json.loads(json.dumps({k: args[k] for k in RESULT_ARGS}))
        self.commit, self.dirty, self.stop_after = commit, dirty, stop_after
        # the checkout's (commit, dirty) when each measure starts: a long run's tree may be checked out
        # anew between measures, and a record must name the code that measured it, not the start's
        self.revision = revision or (lambda: (self.commit, self.dirty))
        # this invocation: records carry it, so the report can tell sessions apart; the pid and the
        # clock's microseconds keep two starts within one second apart (the tests make such pairs)
        self.session = f"{_now()} pid {os.getpid()} #{time.time_ns() // 1000 % 1_000_000:06d}"
        self.used: list[str] = []  # keys this run returned, in order
        self.computed = 0
        self.measures: dict[str, dict] = {}
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if fresh:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            doc = json.loads(self.path.read_text())
            saved = doc.get("args", {})
            diff = [f"{_flag(k)} {saved.get(k)!r} (now {v!r})" for k, v in self.args.items() if saved.get(k) != v]
            if doc.get("version") != VERSION:
                diff.insert(0, f"state version {doc.get('version')} (now {VERSION})")
            if diff:
                raise Mismatch(f"the saved state {self.path} was made with other arguments: {', '.join(diff)}; "
                               f"add --fresh to discard it, or give another --workdir")
            self.measures = doc["measures"]
        self.save()

    @staticmethod
    def key(kind: str, name: str, rep: int = 0) -> str:
        return f"{kind}/{name}/{rep}"

    def save(self) -> None:
        from kexue.utils import atomic_write

        with atomic_write(self.path, "w") as f:
            json.dump({"version": VERSION, "args": self.args, "measures": self.measures}, f, indent=1, default=str)

    def run(self, kind: str, name: str, fn: Callable[[], dict], rep: int = 0, need: Iterable = ()) -> dict:
        """The saved result of (kind, name, rep) if there is one and the files in ``need`` exist,
        else ``fn()`` (its JSON form, as a reused one would be), saved before it is returned."""
        key = self.key(kind, name, rep)
        rec = self.measures.get(key)
        if rec is not None and all(Path(p).exists() for p in need):
            print(f"{key}: from the saved state ({rec['finished']}, load {_fmt(rec['load_1min_at_start'])})", flush=True)
            self.used.append(key)
            return rec["result"]
        started, load = _now(), _load1()
        commit, dirty = self.revision()
        t = time.perf_counter()
        result = json.loads(json.dumps(fn(), default=str))
        self.measures[key] = {"result": result, "started": started, "finished": _now(), "load_1min_at_start": load,
                              "seconds": time.perf_counter() - t, "commit": commit, "dirty": dirty,
                              "session": self.session}
        self.save()
        self.used.append(key)
        self.computed += 1
        if self.stop_after is not None and self.computed >= self.stop_after:
            print(f"stopped after {self.computed} measure(s) (--stop-after); the same command continues from "
                  f"{self.path}", flush=True)
            sys.exit(STOPPED)
        return result

    def rounds(self, kind: str, name: str, fn: Callable[[], dict], sink: list) -> Callable[[], None]:
        """For ``_bench.interleaved``: call i appends round i's result of ``name`` to ``sink``, saved or
        measured, so a round all saved costs nothing and the rounds that run keep the A B C order."""
        rep = iter(range(sys.maxsize))
        return lambda: sink.append(self.run(kind, name, fn, rep=next(rep)))

    def provenance(self) -> dict:
        """When, under which load and at which commit each measure this run used was taken."""
        rows = {k: {f: self.measures[k][f] for f in ("started", "finished", "load_1min_at_start", "seconds", "commit",
                                                     "dirty", "session")} for k in dict.fromkeys(self.used)}
        return {"this_session": self.session, "sessions": sorted({r["session"] for r in rows.values()}),
                "commits": sorted({r["commit"] for r in rows.values()}), "measures": rows}


def _fmt(x) -> str:
    return "?" if x is None else f"{x:.2f}"


def print_provenance(p: dict) -> None:
    """Every row's date and load; said plainly when the timings span sessions (or commits)."""
    n = len(p["sessions"])
    if n > 1:
        print(f"\nThese rows come from {n} sessions (runs started {', '.join(p['sessions'])}): their timings were "
              "taken at different times under the loads below, not side by side in one run.")
    else:
        print("\nAll rows come from this one session.")
    if len(p["commits"]) > 1:
        print(f"They were measured at {len(p['commits'])} commits: {', '.join(c[:12] for c in p['commits'])}.")
    print("(load: the 1-minute load average at the measure's start; commit +: with uncommitted changes)")
    w = max([len(k) for k in p["measures"]] + [32]) + 2
    print(f"{'measure':<{w}}{'finished (UTC)':<27}{'load':>6}{'seconds':>10}  commit        session")
    for key, r in p["measures"].items():
        here = "this one" if r["session"] == p["this_session"] else r["session"]
        print(f"{key:<{w}}{r['finished']:<27}{_fmt(r['load_1min_at_start']):>6}{r['seconds']:10.1f}  "
              f"{r['commit'][:12]}{'+' if r['dirty'] else ' '} {here}")
