"""Arrays at the hubness entry points: torch tensors of any dtype as NumPy arrays, and the exact
power-of-two rescale that keeps coordinates near the ends of the float range searchable (issue 31);
rows derived block by block from a memory map (:class:`BlockRows`); the reductions' input check
and fitted check, shared by their modules."""

from __future__ import annotations

import numpy as np
from sklearn.exceptions import NotFittedError

from kexue import validate
from kexue.utils import KexueError, KexueTypeError


def host_array(X):
    """A torch tensor as a NumPy array (bfloat16 and other dtypes NumPy lacks become float32), without
    importing torch; anything else unchanged. The hubness entry points call it before validation."""
    if type(X).__module__.split(".")[0] == "torch" and hasattr(X, "detach"):
        X = X.detach().cpu()
        if str(X.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            X = X.float()
        return X.numpy()
    return X


_SAFE_EXP = 40  # |coordinates| within 2^±40: float32 squared norms (≤ 2^80 · dim) neither overflow nor vanish


def pow2_exponent(max_abs: float) -> int:
    """The power of two to divide data by so that its largest |coordinate| lies in [0.5, 1), or 0 when
    it is already safe (2^-40 ≤ max ≤ 2^40; then nothing is rescaled and results are bit-identical).
    Scaling by a power of two is exact, and every distance scales by the same power."""
    if not np.isfinite(max_abs) or max_abs == 0 or 2.0**-_SAFE_EXP <= max_abs <= 2.0**_SAFE_EXP:
        return 0
    return int(np.frexp(max_abs)[1])


def max_abs(A) -> float:
    return max(float(A.max()), -float(A.min())) if A.size else 0.0  # no |A| copy of a large matrix


class BlockRows:
    """Rows derived from a matrix (a memory map stays on disk) block by block, never whole:
    ``rows[a:b]``, ``rows[ids]`` (any int array shape), ``rows[r]``, ``rows[a:b, None, :]`` are
    ``f`` of those rows of ``src``. ``f`` works row by row, so a block's rows are bit for bit the
    rows the whole matrix would give. The last slice is kept: the screening asks for one query
    block against every index block."""

    def __init__(self, src, f, width: int):
        self.src, self.f, self.shape = src, f, (len(src), width)
        self._last = (None, None)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None),) + key[1:]]
        if isinstance(key, slice):
            a, b, _ = key.indices(len(self))
            if self._last[0] != (a, b):
                self._last = ((a, b), self.f(np.asarray(self.src[a:b])))
            return self._last[1]
        if isinstance(key, (int, np.integer)):
            return self[int(key):int(key) + 1][0]
        key = np.asarray(key)
        return self.f(np.asarray(self.src[key.ravel()])).reshape(*key.shape, self.shape[1])


class NotFitted(KexueError, NotFittedError):
    """A reduction used before ``fit`` (a KexueError and scikit-learn's NotFittedError)."""


def _vectors(X, what: str = "X") -> np.ndarray:
    """A float64 matrix; scikit-learn's array checks first (their wording is what its estimator
    checks expect), each failure re-raised as one KexueError line, then kexue's own checks."""
    from sklearn.utils import check_array

    X = host_array(X)
    try:
        X = check_array(X, dtype=np.float64, input_name=what)
    except TypeError as e:
        raise KexueTypeError(f"{what}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise KexueError(f"{what}: {' '.join(str(e).split())}") from None
    return validate.matrix(X, what)


def check_is_fitted(est) -> None:
    if not hasattr(est, "stats_"):
        raise NotFitted(f"{type(est).__name__} is not fitted; call fit(X) first")
