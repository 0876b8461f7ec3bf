"""Imported first by every module that needs torch at import time (``kexue.eg``, ``exact``,
``vae``, ``ddpm``, ``nets``, ``train``, ``quality``): without torch, importing one of them is a
one-line :class:`~kexue.KexueError` naming the ``torch`` extra instead of a
``ModuleNotFoundError`` traceback. torch is an extra so that the NumPy techniques (unargmax,
hubness, whitening, logsumexp) install without it.
"""

from __future__ import annotations

import sys
from types import FrameType

from kexue.utils import require


def _importer() -> str:
    # the kexue module whose import brought us here (the nearest frame outside this module
    # and importlib): the error names what the user asked for, e.g. kexue.vae
    f: FrameType | None = sys._getframe(1)
    while f is not None:
        name = f.f_globals.get("__name__", "")
        if name.startswith("kexue.") and name != __name__:
            return name
        f = f.f_back
    return "this part of kexue"


require("torch", "torch", _importer())
