"""Pieces every command shares: option checks named by their flags, output-path checks made
before the work starts, the thread policy, JSON to a file or ``-`` (stdout).

A command module uses these and otherwise only parses, calls the library and prints.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any
from collections.abc import Iterable

import typer

from kexue.utils import KexueError, atomic_write, require

# ------------------------------------------------------------------ option callbacks
# typer's min=/max= handle ints; floats also need NaN/inf refused, which click's ranges let through.


def _flag(param) -> str:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")] or list(getattr(param, "opts", []))
    return opts[0] if opts else str(getattr(param, "name", "value"))


def positive_float(ctx: typer.Context, param, value: float | None) -> float | None:
    """Callback: a finite number > 0 (learning rates, scales)."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value}", param_hint=_flag(param))
    return value


def nonneg_float(ctx: typer.Context, param, value: float | None) -> float | None:
    """Callback: a finite number >= 0."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}", param_hint=_flag(param))
    return value


def finite_float(ctx: typer.Context, param, value: float | None) -> float | None:
    """Callback: any finite number."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}", param_hint=_flag(param))
    return value


def unit_float(ctx: typer.Context, param, value: float | None) -> float | None:
    """Callback: a number in [0, 1]."""
    if value is not None and not (0.0 <= value <= 1.0):
        raise typer.BadParameter(f"must be in [0, 1], got {value}", param_hint=_flag(param))
    return value


def int_list(text: str, flag: str, example: str = "1,2,2") -> tuple[int, ...]:
    """Comma-separated positive integers (layer sizes, channel multipliers), named by ``flag``."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise KexueError(f"{flag} must be comma-separated positive integers such as {example}, got {text!r}")
    return values


def in_flags(error: KexueError, words: dict[str, str]) -> KexueError:
    """The library's one-line error with its parameter names (``steps=``, ``resume=False``) put
    in the command's flags (``--steps``, ``no --resume``): library messages name the library's
    parameters; a command shows its own."""
    text = str(error)
    for lib, flag in words.items():
        text = text.replace(lib, flag)
    return KexueError(text)


# the training loop's parameter names (kexue.train) → the train commands' flags
TRAIN_FLAGS = {"resume=False": "drop --resume", "past steps=": "past --steps ", "another ckpt": "another --ckpt",
               "right ckpt path": "right --ckpt path"}


# ------------------------------------------------------------------ outputs


def check_output(path: Path | None, suffixes: Iterable[str], flag: str, *, stdout: bool = False) -> Path | None:
    """Check an output path before any work: not a directory, its folder exists, its extension
    is one the command writes (``stdout=True`` also allows ``-``). Returns the path unchanged."""
    if path is None:
        return None
    suffixes = tuple(suffixes)
    if stdout and str(path) == "-":
        return path
    if path.is_dir():
        raise KexueError(f"{flag} {path} is a directory; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise KexueError(f"{flag} {path.name}: this command writes {' or '.join(suffixes)}; change the file name")
    if not path.parent.is_dir():
        raise KexueError(f"{flag}: folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise KexueError(f"{flag}: folder {path.parent} is not writable; choose another place")
    if path.suffix.lower() == ".png":  # figures and image grids: matplotlib is the 'plot' extra
        require("plot", "matplotlib", f"{flag} {path.name}")
    return path


def check_input(path: Path, flag: str, shards: bool = False) -> Path:
    """An input file that must exist and not be a directory — with ``shards``, a directory of
    ``.npy`` shards may be given (checked before any work)."""
    if not path.exists():
        raise KexueError(f"{flag} {path} not found; check the path")
    if path.is_dir() and not shards:
        raise KexueError(f"{flag} {path} is a directory; give a file")
    return path


def write_json(obj: Any, path: Path) -> None:
    """``obj`` as JSON to ``path`` (atomically) or, for ``-``, to stdout."""
    text = json.dumps(obj, indent=1, default=_jsonable)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    with atomic_write(path, "w") as f:
        f.write(text + "\n")


def _jsonable(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


# ------------------------------------------------------------------ threads
# One policy for every command: --threads N, default $KEXUE_THREADS or 1. The models here are
# small; on a 2-core machine a second intra-op thread mostly spin-waits (ddpm sample was ~10×
# slower with torch's default than with one thread), so one is the safe default.


def default_threads() -> int:
    """``$KEXUE_THREADS`` (a positive integer) or 1; anything else is a one-line error, not ignored."""
    text = os.environ.get("KEXUE_THREADS", "").strip()
    if not text:
        return 1
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise KexueError(f"KEXUE_THREADS={os.environ['KEXUE_THREADS']!r} is not a positive integer; "
                         "set it to a thread count such as 1 or unset it")
    return n


def threads_option() -> Any:
    return typer.Option(None, "--threads", min=1, help="CPU threads for torch/BLAS (default: $KEXUE_THREADS or 1).")


def use_threads(threads: int | None, import_torch: bool = True) -> int:
    """Apply the thread policy for the rest of the command; returns the count used. ``import_torch=False``:
    a command that never uses torch does not import it (its import alone is ~0.12 GB of private memory)."""
    n = threads or default_threads()
    try:  # torch is an extra: the NumPy commands (hubness, unargmax, whiten) run without it
        if not import_torch:
            raise ImportError
        import torch as T
    except ImportError:
        pass
    else:
        T.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it BLAS keeps its own count
        pass
    return n
