"""The benchmarks' shared timing: interleaved repeats (A B A B …), medians, the load average.

A ratio between two implementations only means something when both ran under the same machine
conditions, so every benchmark times its contenders in turn, not one after the other, and prints
the load average before and after. Standard library only.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def load() -> str:
    """The 1/5/15-minute load averages, for the printed header and the guides' tables."""
    try:
        a, b, c = os.getloadavg()
        return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each callable, run in turn ``repeats`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def ratio_line(name: str, ours: float, peer: float, peer_name: str) -> str:
    """One printed row: ours, the peer and ours/peer (below 1 means kexue is faster)."""
    return f"{name:<40} ours {ours * 1e3:10.2f} ms   {peer_name} {peer * 1e3:10.2f} ms   ours/{peer_name} {ours / peer:6.2f}x"
