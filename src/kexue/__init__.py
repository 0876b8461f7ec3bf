"""kexue — eight techniques from Su Jianlin's *Scientific Spaces* as tested tools.

Modules, one per technique (formulas in SPEC.md): ``vae`` (1), ``eg`` (2), ``unargmax`` (3),
``logsumexp`` (4), ``whitening`` (5), ``exact`` (6), ``ddpm`` (7), ``hubness`` (8).
Shared pieces: ``data`` (offline data sets and models; ``datafiles``: finding, checking and
downloading their files), ``nets`` (small networks), ``train`` (the training loop),
``checkpoint`` (checkpoints and resumable work), ``validate`` (input checks), ``io`` (reading
arrays), ``report`` (experiments and reports), ``utils`` (errors, atomic writes, the progress
protocol, seeding).

Submodules load on first use (``import kexue; kexue.logsumexp.logsumexp(...)``), so importing
the package stays cheap.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from kexue.utils import KexueError, KexueTypeError

try:  # pyproject.toml holds the version; an installed (or editable) kexue carries it in its metadata
    __version__ = version("kexue")
except PackageNotFoundError:  # a bare source tree on sys.path, never installed
    __version__ = "0+unknown"

_SUBMODULES = ("vae", "eg", "unargmax", "logsumexp", "whitening", "exact", "ddpm", "hubness",
               "data", "datafiles", "nets", "train", "checkpoint", "validate", "io", "report", "utils",
               "encoders", "quality")

__all__ = ["KexueError", "KexueTypeError", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        mod = importlib.import_module(f"kexue.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'kexue' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
