"""Small shared pieces: the user-error type, atomic file writes, seeding, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np


class KexueError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and what to do about it; the CLI prints
    it without a traceback and exits with code 2.
    """


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or an exception leaves either the old file or none, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for writers that want a file name
    (``np.save``, ``fig.savefig``, ``safetensors.save_file``); renamed over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (if imported) and return a NumPy Generator for ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is a dependency, but keep utils importable without it
        pass
    return np.random.default_rng(seed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous count afterwards.

    The small models of the experiments gain nothing from a second thread on a 2-core machine and
    lose a lot when it is busy (spin-waiting), so several experiments run with one.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def machine_info() -> dict:
    """Facts about this machine and the library versions, for reports."""
    import importlib.metadata as md

    info = {
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


def load_npy(path: str | os.PathLike, what: str = "data", mmap: bool = False) -> np.ndarray:
    """Read a .npy array without unpickling; a missing or unreadable file is a one-line KexueError."""
    path = Path(path)
    if not path.is_file():
        raise KexueError(f"{what} file {path} not found; pass an existing .npy array")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise KexueError(f"{path} is not a readable .npy array ({type(e).__name__}); save it with numpy.save") from None


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise KexueError if ``x`` has NaN or inf entries, naming ``what`` and the first bad index."""
    x = np.asarray(x)
    if x.size and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise KexueError(f"{what} has a non-finite value (NaN or inf) at index {tuple(int(i) for i in bad)}; clean or drop those entries")
