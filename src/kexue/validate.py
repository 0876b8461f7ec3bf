"""Input validation at the library's boundary: one place, one wording.

Every public function or estimator that takes user data checks it here, so a bad input gives the
same one-line :class:`~kexue.utils.KexueError` (a ``ValueError``) or
:class:`~kexue.utils.KexueTypeError` (a ``TypeError``) wherever it enters. ``name`` is what the
message calls the input: the library passes its parameter name, the CLI its flag.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np

from kexue.utils import KexueError, KexueTypeError, plural


def finite(x, name: str) -> None:
    """Raise if ``x`` has NaN or inf entries, naming ``name`` and the first bad index."""
    x = np.asarray(x)
    if x.size and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise KexueError(f"{name} has a non-finite value (NaN or inf) at index {tuple(int(i) for i in bad)}; "
                         "clean or drop those entries")


def _real_array(X, name: str, dtype) -> np.ndarray:
    if hasattr(X, "detach"):  # a torch tensor
        X = X.detach().cpu().numpy()
    try:
        A = np.asarray(X) if dtype is None else np.asarray(X, dtype=dtype) if not np.iscomplexobj(X) else np.asarray(X)
    except (TypeError, ValueError):
        raise KexueTypeError(f"{name} must be a numeric array; got {type(X).__name__}") from None
    if np.iscomplexobj(A):
        raise KexueTypeError(f"{name} is complex; pass real numbers (e.g. x.real or abs(x))")
    if A.dtype == object or not (np.issubdtype(A.dtype, np.number) or A.dtype == bool):
        raise KexueTypeError(f"{name} must be a numeric array; got dtype {A.dtype}")
    return A


def matrix(X, name: str = "X", *, dtype=np.float64, min_rows: int = 1, min_cols: int = 1,
           allow_nonfinite: bool = False) -> np.ndarray:
    """``X`` as a 2-D real array (rows = samples), checked: 2-D, at least ``min_rows`` rows and
    ``min_cols`` columns, real, finite. ``dtype=None`` keeps the input's dtype."""
    A = _real_array(X, name, dtype)
    if A.ndim != 2:
        raise KexueError(f"{name} must be a 2-D array (rows = samples); got shape {A.shape}")
    if A.shape[0] < min_rows:
        raise KexueError(f"{name} has {plural(A.shape[0], 'row')}; at least {min_rows} needed")
    if A.shape[1] < min_cols:
        raise KexueError(f"{name} has {plural(A.shape[1], 'column')}; at least {min_cols} needed")
    if not allow_nonfinite:
        finite(A, name)
    return A


def vector(x, name: str = "x", *, dtype=np.float64, min_len: int = 1) -> np.ndarray:
    """``x`` as a 1-D real finite array with at least ``min_len`` entries."""
    a = _real_array(x, name, dtype)
    if a.ndim != 1:
        raise KexueError(f"{name} must be 1-D; got shape {a.shape}")
    if a.shape[0] < min_len:
        raise KexueError(f"{name} has {a.shape[0]} {'entry' if a.shape[0] == 1 else 'entries'}; at least {min_len} needed")
    finite(a, name)
    return a


def images(x, name: str = "images", *, channels: int | None = None) -> np.ndarray:
    """A batch of images as float (N, C, H, W). Accepts (N, H, W), (N, C, H, W) and flat square
    (N, H·W); uint8 data is scaled to [0, 1]."""
    a = _real_array(x, name, None)
    if a.ndim == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise KexueError(f"{name} of shape {a.shape} are not square images; pass (N, H, W) or (N, C, H, W)")
        a = a.reshape(len(a), 1, side, side)
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4:
        raise KexueError(f"{name} must be a batch of images (N, H, W) or (N, C, H, W); got shape {a.shape}")
    if len(a) == 0:
        raise KexueError(f"{name} is empty; pass at least one image")
    if channels is not None and a.shape[1] != channels:
        raise KexueError(f"{name} have {a.shape[1]} channels; the model takes {channels}")
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32, copy=False)
    finite(a, name)
    return a


def choice(value, options: Iterable, name: str):
    """``value`` if it is one of ``options``, else a one-line error listing them."""
    options = list(options)
    if value not in options:
        raise KexueError(f"unknown {name} {value!r}; choose from: {', '.join(map(str, options))}")
    return value


def integer(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (either bound may be None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise KexueTypeError(f"{name} must be an integer; got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise KexueError(f"{name} must be {_range(lo, hi)}; got {value}")
    return value


def real(value, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False) -> float:
    """``value`` as a finite float in the given range (open ends with ``lo_open``/``hi_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise KexueTypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise KexueError(f"{name} must be a finite number; got {value}")
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or \
          (hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        raise KexueError(f"{name} must be {_range(lo, hi, lo_open, hi_open)}; got {value:g}")
    return value


def positive(value, name: str) -> float:
    """A finite float > 0 (learning rates, scales, temperatures)."""
    return real(value, name, 0.0, lo_open=True)


def _range(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "valid"
