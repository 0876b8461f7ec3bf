"""Small shared pieces: the error types, atomic file writes, the progress protocol, seeding,
threads, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable
from collections.abc import Iterable, Iterator

import numpy as np


class KexueError(ValueError):
    """A problem with the user's input or environment (a ``ValueError``).

    The message is one line that names the problem and what to do about it; the CLI prints
    it without a traceback and exits with code 2. Importable as ``kexue.KexueError``.
    """


class KexueTypeError(KexueError, TypeError):
    """An input of the wrong type (also a ``TypeError``), e.g. complex where reals are needed."""


def plural(n: int, word: str) -> str:
    """``"1 row"``, ``"2 rows"``: a count with its noun in messages (regular plurals only)."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def require(extra: str, module: str, feature: str | None = None):
    """Import and return the optional dependency ``module``, or raise a one-line
    :class:`KexueError` naming the ``kexue`` extra that installs it.

    ``feature`` says what needed it (``"--backend ivf"``, ``"reading .onnx files"``); the
    message is the same from Python and the CLI (which prints it and exits with code 2).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        # a missing *other* module inside an installed package is a broken install, not a missing extra
        name = getattr(e, "name", None) or top
        if name != top and not name.startswith(top + "."):
            raise
        what = f"{feature} needs" if feature else "this needs"
        raise KexueError(f"{what} {top}, which is not installed; install the '{extra}' extra: "
                         f"pip install 'kexue[{extra}]'") from None


def _umask() -> int:
    # os.umask can only be read by setting it; do it once, at import, single-threaded
    m = os.umask(0)
    os.umask(m)
    return m


_UMASK = _umask()


def _publish(tmp: str | os.PathLike, path: Path) -> None:
    """Give ``tmp`` the permissions a plain ``open(path, "w")`` would have, then rename it over
    ``path`` (mkstemp creates files with mode 600)."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def _parent(path: Path, parents: bool) -> Path:
    """The folder ``path`` goes in. A user's output folder must exist (no silent ``mkdir -p``);
    caches and report folders that kexue owns pass ``parents=True``."""
    parent = path.parent
    if parents:
        parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise KexueError(f"output {path} is a directory; give a file name")
    if not parent.is_dir():
        raise KexueError(f"folder {parent} for output {path.name} does not exist; create it first")
    return parent


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", parents: bool = False) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or an exception leaves either the old file or none, never half a file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=_parent(path, parents), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for writers that want a file name
    (``np.save``, ``fig.savefig``, ``safetensors.save_file``); renamed over ``path`` on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=_parent(path, parents), prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@runtime_checkable
class Tracker(Protocol):
    """How long-running library code reports progress; the library never prints.

    Every function or method that loops for long takes ``tracker: Tracker | None = None``
    (``None`` means :data:`NULL_TRACKER`); the CLI passes a rich-backed one.
    """

    def track(self, iterable: Iterable, description: str = "", total: int | None = None) -> Iterator: ...

    def log(self, message: str) -> None: ...


class NullTracker:
    """The silent default :class:`Tracker`."""

    def track(self, iterable: Iterable, description: str = "", total: int | None = None) -> Iterator:
        yield from iterable

    def log(self, message: str) -> None:
        pass


NULL_TRACKER = NullTracker()


def tracker_or_null(tracker: Tracker | None) -> Tracker:
    return NULL_TRACKER if tracker is None else tracker


@contextlib.contextmanager
def tracked(tracker: Tracker | None, iterable: Iterable, description: str, total: int | None = None) -> Iterator:
    """``tracker.track(iterable, ...)`` (silent for None) that is closed when the block ends, also
    by an exception: a progress display drawn by a generator would otherwise stay live until the
    generator is collected and swallow the error line printed after it (Ctrl-C's among them)."""
    it = tracker_or_null(tracker).track(iterable, description, total=total)
    try:
        yield it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (if imported) and return a NumPy Generator for ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is the 'torch' extra: without it there is nothing of torch's to seed
        pass
    return np.random.default_rng(seed)


def machine_info() -> dict:
    """Facts about this machine and the library versions, for reports."""
    import importlib.metadata as md

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for pkg in ("kexue", "numpy", "scipy", "torch", "scikit-learn", "transformers", "faiss-cpu", "highspy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info
