"""Checkpoints of long computations: atomic files read without unpickling, the fingerprints that
key them to their model and data, the resume checks of the training loop, and :class:`Clock`,
the wall time of a job that ran over several processes ("legs").

:func:`kexue.train.train` writes and resumes its checkpoints through these; the evaluations
that can be stopped and resumed (``log_likelihood`` of the VAE, the DDPM sampler and
variational bound) keep their partial work with :func:`save_partial` / :func:`partial`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from collections.abc import Sequence

import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)
import torch
from torch import nn

from kexue.utils import KexueError, atomic_path


class Clock:
    """Wall time of a job that may run over several processes ("legs"), each resuming from the
    checkpoint of the one before: the ``seconds`` and ``legs`` stored there plus this process's.

    A leg counts once it has ``worked`` (done something the checkpoint keeps). The time a killed
    leg spent after its last checkpoint is not in the sum: that work is redone, and counted, by
    the next leg, so the sum is the time of the work the result is made of.
    """

    def __init__(self, st: dict | None = None):
        st = st or {}
        self.before, self.legs_before = float(st.get("seconds", 0.0)), int(st.get("legs", 0))
        self.t0 = time.perf_counter()
        self.t1: float | None = None  # set by stop()
        self.worked = False

    def stop(self) -> Clock:
        """Freeze the time (once): the last checkpoint and the result then report the same seconds."""
        if self.t1 is None:
            self.t1 = time.perf_counter()
        return self

    def state(self) -> dict:
        """``{"seconds", "legs"}`` so far, to store in a checkpoint or report."""
        if not self.worked:
            return {"seconds": self.before, "legs": self.legs_before}
        now = time.perf_counter() if self.t1 is None else self.t1
        return {"seconds": self.before + now - self.t0, "legs": self.legs_before + 1}


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (tensors, numbers, lists, dicts) atomically."""
    with atomic_path(path, parents=True) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KexueError(f"checkpoint {path} not found; give the right ckpt path or resume=False") from None
    except Exception as e:  # corrupt / foreign file
        raise KexueError(f"checkpoint {path} could not be read ({type(e).__name__}); delete it or resume=False") from None


def partial(path: str | os.PathLike | None, key: dict) -> dict | None:
    """The partial work of a long computation stored at ``path`` if it was written for ``key`` (a
    dict of plain values naming the inputs and settings), else None. Evaluations resume only
    their own work and start afresh on anything else: a stale file costs time, not correctness."""
    if path is None or not Path(path).exists():
        return None
    try:
        st = load_checkpoint(path)
    except KexueError:
        return None  # unreadable: the computation starts again and overwrites it
    return st if st.get("key") == _key_text(key) else None


def save_partial(path: str | os.PathLike, key: dict, clock: Clock, state: dict) -> None:
    """Store ``state`` (tensors, numbers) for :func:`partial`, with ``key`` and the ``clock``."""
    save_checkpoint(path, {**state, "key": _key_text(key), **clock.state()})


def _key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def model_fingerprint(model: object) -> str:
    """:func:`fingerprint` of a module's weights and buffers: partial evaluations are keyed by it."""
    if not isinstance(model, nn.Module):
        raise KexueError(f"a checkpoint of this computation needs the network as a torch.nn.Module, "
                         f"not {type(model).__name__}; drop ckpt")
    return fingerprint(list(model.state_dict().values()))


def fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """A short hash of the training data (shapes, dtypes and every byte), stored in checkpoints
    so that a resumed run can tell it is being fed other data."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        t = t.detach().cpu().contiguous().reshape(-1)  # 1-D: a 0-d tensor has no byte view
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


def check_resume(st: dict, config: dict, data_fp: str, steps: int, path) -> None:
    """Refuse to resume a checkpoint written by another run: one line naming what differs."""
    old = st.get("config")
    if old is not None:
        diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if diff:
            what = ", ".join(f"{k}={old.get(k)!r} there vs {config.get(k)!r} now" for k in diff[:4])
            raise KexueError(f"checkpoint {path} is from another run ({what}); pass another ckpt or resume=False")
    if st.get("data") not in (None, data_fp):
        raise KexueError(f"checkpoint {path} was trained on other data; use the same data, another ckpt, or resume=False")
    if int(st["step"]) > steps:
        raise KexueError(f"checkpoint {path} is at step {int(st['step'])}, past steps={steps}; ask for at least that many steps")


def restore(st: dict, path, model, optimizer, ema) -> None:
    """Load a training checkpoint ``st`` (read from ``path``) into the model, optimiser and EMA;
    one line naming the mismatch if it does not fit them."""
    try:
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        if ema is not None and "ema" in st:
            ema.load_state_dict(st["ema"])
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise KexueError(f"checkpoint {path} does not fit this model ({first}); use the same architecture or another ckpt") from None
