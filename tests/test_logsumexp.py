"""logsumexp (SPEC 4): differential tests against scipy and property tests of 4.1-4.8.

Floating-point tolerance used by the property tests, and why. Every quantity compared is a sum
of at most n terms of magnitude at most S = max(1, max|x_i|) (the bounds' Σ p_i x_i, the mean,
lse's shift m plus log n). A computed sum of n terms has absolute error at most γ_n·Σ|terms|
with γ_n = n·u/(1 - n·u) and u the unit roundoff (Higham, *Accuracy and Stability*, §4.2), and
lse itself is computed as m + log(..) with a relative error of a few u. So each inequality
``lhs <= rhs`` is checked as ``lhs <= rhs + tol`` with tol = 4·(n + 2)·u·S: anything larger is a
real violation, not rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
try:  # the torch tests below are marked needs("torch"); the rest run without it
    import torch
except ImportError:
    torch = None
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp as scipy_lse

from kexue import logsumexp as K

U = np.finfo(np.float64).eps / 2


def tol(x: np.ndarray) -> float:
    fin = np.abs(x[np.isfinite(x)])
    scale = max(1.0, float(fin.max())) if fin.size else 1.0
    return 4 * (x.shape[-1] + 2) * U * scale


def le(lhs, rhs, t) -> bool:
    """lhs <= rhs in the extended reals, with slack t for finite values."""
    lhs, rhs = float(lhs), float(rhs)
    if lhs == rhs:  # covers equal infinities
        return True
    return lhs <= rhs + t


# ---------------------------------------------------------------------------------------------
# strategies: magnitudes up to 1e300, optional ±inf entries, n up to 10^4

finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)


@st.composite
def vectors(draw, with_neg_inf=True, with_pos_inf=False, max_small=40):
    if draw(st.booleans()):
        x = draw(hnp.arrays(np.float64, st.integers(1, max_small), elements=finite))
    else:  # large n: Hypothesis chooses size, scale and seed; NumPy fills it
        n = draw(st.integers(1, 10_000))
        scale = 10.0 ** draw(st.integers(-3, 300))
        seed = draw(st.integers(0, 2**32 - 1))
        x = np.random.default_rng(seed).standard_normal(n) * scale
        x = np.clip(x, -1e300, 1e300)
    if with_neg_inf and len(x) > 1 and draw(st.booleans()):
        k = draw(st.integers(1, len(x) - 1))
        x[:k] = -np.inf
    if with_pos_inf and draw(st.booleans()):
        x[-1] = np.inf
    return x


@st.composite
def simplex_like(draw, n):
    kind = draw(st.sampled_from(["dirichlet", "onehot", "uniform", "sparse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "dirichlet":
        p = rng.dirichlet(np.full(n, draw(st.sampled_from([0.05, 1.0, 20.0]))))
    elif kind == "onehot":
        p = np.zeros(n)
        p[rng.integers(n)] = 1.0
    elif kind == "uniform":
        p = np.full(n, 1.0 / n)
    else:
        p = np.where(rng.random(n) < 0.3, rng.random(n), 0.0)
        p[0] += 1e-3
        p = p / p.sum()
    return p / p.sum()


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# 4.1 - 4.8


@SETTINGS
@given(vectors(with_pos_inf=True))
def test_4_1_max_bounds(x):
    lse = K.logsumexp(x)
    lo, hi = K.max_bounds(x)
    assert le(lo, lse, tol(x)) and le(lse, hi, tol(x))
    # strict where the reals' gap lse - x_max >= log(1 + e^{-ptp}) exceeds the rounding of x_max
    if len(x) >= 2 and np.all(np.isfinite(x)) and np.log1p(np.exp(-np.ptp(x))) > 8 * U * abs(lo):
        assert lo < lse


@SETTINGS
@given(vectors(with_pos_inf=True), st.floats(1e-6, 1e6))
def test_4_2_smooth_max_bounds(x, tau):
    sm = K.smooth_max(x, tau)
    lo, hi = K.smooth_max_bounds(x, tau)
    assert np.isfinite(sm) or not np.all(np.isfinite(x))  # never overflows on finite input
    assert le(lo, sm, tol(x)) and le(sm, hi, tol(x) + 4 * U * tau * math.log(len(x)))
    assert le(K.smooth_min(x, tau), np.min(x), tol(x))


def test_4_2_smooth_max_tends_to_max():
    x = np.array([0.3, -1.0, 2.0, 1.9])
    gaps = [K.smooth_max(x, t) - x.max() for t in (1.0, 0.1, 0.01, 0.001)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-10


@SETTINGS
@given(vectors(with_pos_inf=True))
def test_4_3_jensen(x):
    if np.isposinf(x).any() and np.isneginf(x).any():
        assert np.isnan(K.jensen_lower_bound(x))  # the mean of +inf and -inf is undefined
    else:
        assert le(K.jensen_lower_bound(x), K.logsumexp(x), tol(x))


@SETTINGS
@given(st.data())
def test_4_4_to_4_6_variational_bounds(data):
    x = data.draw(vectors(with_pos_inf=True))
    p = data.draw(simplex_like(len(x)))
    lse, t_ = K.logsumexp(x), tol(x)
    bounds = [K.collision_lower_bound(x, p), K.entropy_lower_bound(x, p)]
    bounds += [K.holder_lower_bound(x, p, t) for t in (1.0001, 1.5, 2.0, 3.0, 10.0)]
    if (p[np.isposinf(x)] > 0).any() and (p[np.isneginf(x)] > 0).any():
        assert all(np.isnan(v) for v in bounds)  # Σ p_i x_i = inf - inf is undefined
    else:
        assert all(le(v, lse, t_) for v in bounds), (bounds, lse, t_)


@SETTINGS
@given(vectors(with_neg_inf=True, max_small=200))
def test_4_6_equality_at_softmax(x):
    assume(np.isfinite(x).any())
    fin = x[np.isfinite(x)]
    assume(np.ptp(fin) < 1e6 if fin.size > 1 else True)  # keep p·x sums well conditioned
    p = np.exp(x - K.logsumexp(x))
    p = p / p.sum()
    # Σ p_i (x_i - log p_i) telescopes to lse; the tolerance is the conditioning of that sum
    err = abs(K.entropy_lower_bound(x, p) - K.logsumexp(x))
    assert err <= 1e3 * tol(x) * max(1.0, np.ptp(fin) if fin.size > 1 else 1.0)


@SETTINGS
@given(st.data())
def test_4_7_lipschitz(data):
    x = data.draw(vectors(with_neg_inf=False))
    y = x + data.draw(hnp.arrays(np.float64, len(x), elements=st.floats(-1e300, 1e300))) * data.draw(st.sampled_from([1e-300, 1e-6, 1.0]))
    y = np.clip(y, -1e300, 1e300)
    d = abs(K.logsumexp(x) - K.logsumexp(y))
    assert le(d, K.lipschitz_bound(x, y), tol(x) + tol(y))


@SETTINGS
@given(st.data())
def test_4_8_convexity(data):
    x = data.draw(vectors(with_neg_inf=False))
    y = np.clip(x[::-1] + data.draw(st.floats(-1e300, 1e300)), -1e300, 1e300)
    t = data.draw(st.floats(0, 1))
    mid = K.logsumexp(t * x + (1 - t) * y)
    assert le(mid, K.convexity_upper_bound(x, y, t), tol(x) + tol(y))


def test_bound_argument_checks():
    x = np.zeros(3)
    with pytest.raises(ValueError):
        K.holder_lower_bound(x, np.full(3, 1 / 3), 1.0)
    with pytest.raises(ValueError):
        K.entropy_lower_bound(x, np.array([0.5, 0.6, -0.1]))
    with pytest.raises(ValueError):
        K.smooth_max(x, 0.0)
    with pytest.raises(ValueError):
        K.convexity_upper_bound(x, x, 1.5)


# ---------------------------------------------------------------------------------------------
# differential tests against scipy.special.logsumexp

INF, NAN = np.inf, np.nan
BATTERY = [
    ([], {}), ([3.0], {}), ([-INF], {}), ([-INF, -INF, -INF], {}), ([INF, 1.0], {}), ([INF, -INF], {}),
    ([INF, INF], {}), ([NAN, 1.0], {}), ([NAN, INF], {}), ([NAN, -INF], {}),
    ([1e300, -1e300], {}), ([1e308, 1e308, 1e308], {}), ([0.0, -40.0], {}), ([0.0, -800.0], {}),
    ([-1e300, -1e300 + 1e285], {}), (list(np.linspace(-700, 700, 101)), {}),
    ([1.0, 2.0], {"b": [1.0, -1.0]}), ([1.0, 2.0], {"b": [0.0, 0.0]}), ([INF, 1.0], {"b": [0.0, 1.0]}),
    ([INF, 1.0], {"b": [-1.0, 1.0]}), ([INF, INF], {"b": [1.0, -1.0]}), ([1.0, 2.0, 3.0], {"b": [2.0, 0.5, 0.0]}),
    ([1.0, 2.0], {"b": [-3.0, 1.0]}), ([-INF, 5.0], {"b": [2.0, -1.0]}),
    (np.arange(12.0).reshape(3, 4), {"axis": 0}), (np.arange(12.0).reshape(3, 4), {"axis": 1}),
    (np.arange(12.0).reshape(3, 4), {"axis": -1, "keepdims": True}), (np.arange(24.0).reshape(2, 3, 4), {"axis": (0, 2)}),
    (np.zeros((0, 3)), {"axis": 0}), (np.zeros((0, 3)), {"axis": 1}), (np.zeros((2, 0)), {"axis": 1}),
    (np.array([[1.0, -INF], [-INF, -INF]]), {"axis": 1}), (np.array([[1.0, 2.0], [3.0, 4.0]]), {"axis": 1, "b": np.array([1.0, -1.0])}),
    (np.random.default_rng(0).standard_normal((5, 7)) * 300, {"axis": 1}),
]
DTYPES = [np.float16, np.float32, np.float64]
RTOL = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}


def _close(ours, ref, dtype):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(ours[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=RTOL[dtype], atol=RTOL[dtype])


def _empty(a, kw):
    ax = kw.get("axis")
    a = np.atleast_1d(a)
    axes = range(a.ndim) if ax is None else ([ax] if isinstance(ax, int) else ax)
    return any(a.shape[i] == 0 for i in axes)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", range(len(BATTERY)))
@pytest.mark.parametrize("return_sign", [False, True])
def test_matches_scipy_numpy(case, dtype, return_sign):
    a, kw = BATTERY[case]
    with np.errstate(over="ignore"):
        a = np.asarray(a, dtype=dtype)
        kw = {k: (np.asarray(v, dtype=dtype) if k == "b" else v) for k, v in kw.items()}
    ours = K.logsumexp(a, return_sign=return_sign, **kw)
    try:
        ref = scipy_lse(a, return_sign=return_sign, **kw)
    except ValueError:  # older scipy (CI's minimum-versions job) has no answer for an empty sum
        assert _empty(a, kw)
        pytest.skip("this scipy raises on an empty reduction (newer releases return -inf)")
    if return_sign:
        (o, os_), (r, rs) = ours, ref
        _close(o, r, dtype)
        if _empty(a, kw):  # documented deviation: an empty sum has sign 0, scipy says -1
            assert np.all(np.asarray(os_) == 0) and np.all(np.asarray(rs) == -1)
        else:
            np.testing.assert_array_equal(np.asarray(os_), np.asarray(rs))
        assert np.asarray(o).dtype == np.asarray(r).dtype
    else:
        _close(ours, ref, dtype)
        assert np.asarray(ours).dtype == np.asarray(ref).dtype


@pytest.mark.needs("torch")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", range(len(BATTERY)))
def test_matches_scipy_torch(case, dtype):
    a, kw = BATTERY[case]
    with np.errstate(over="ignore"):
        a = np.asarray(a, dtype=dtype)
    kw = dict(kw)
    if "b" in kw:
        kw["b"] = torch.from_numpy(np.asarray(kw["b"], dtype=dtype))
    dim = kw.pop("axis", None)
    out, sign = K.logsumexp(torch.from_numpy(a), dim=dim, return_sign=True, **kw)
    ref, rsign = scipy_lse(a, axis=dim, return_sign=True, **{k: np.asarray(v) for k, v in kw.items()})
    assert out.dtype == torch.from_numpy(a).dtype
    _close(out.numpy(), ref, dtype)
    if not _empty(a, {"axis": dim}):
        np.testing.assert_array_equal(sign.numpy(), np.asarray(rsign))


@pytest.mark.needs("torch")
def test_empty_2d_full_reduction():
    """scipy 1.17 raises IndexError for a 2-D empty array with axis=None; the answer is log 0."""
    assert K.logsumexp(np.zeros((2, 0))) == -np.inf
    assert K.logsumexp(torch.zeros(2, 0)) == -torch.inf


def test_deliberate_difference_exact_cancellation():
    """Terms that cancel exactly at a finite maximum: log 0 = -inf with sign 0 (scipy: NaN)."""
    out, sign = K.logsumexp([1000.0, 1000.0], b=[1.0, -1.0], return_sign=True)
    assert out == -np.inf and sign == 0


def test_integer_input_promotes_to_float64():
    assert K.logsumexp(np.array([1, 2])).dtype == np.float64
    assert K.logsumexp(np.array([1, 2])) == pytest.approx(scipy_lse(np.array([1, 2])), rel=1e-15)


@pytest.mark.needs("torch")
def test_torch_gradient_is_softmax_and_finite():
    torch.manual_seed(0)
    x = (torch.randn(6, 9, dtype=torch.float64) * 50).requires_grad_()
    K.logsumexp(x, dim=1).sum().backward()
    torch.testing.assert_close(x.grad, torch.softmax(x.detach(), 1), rtol=1e-12, atol=1e-15)
    # -inf entries and ties keep finite gradients (the where-branches must not leak NaN)
    y = torch.tensor([[1.0, 1.0, -torch.inf], [-torch.inf, -torch.inf, 2.0]], dtype=torch.float64, requires_grad=True)
    K.logsumexp(y, dim=1).sum().backward()
    assert torch.isfinite(y.grad).all()
    torch.testing.assert_close(y.grad, torch.softmax(y.detach(), 1))


@pytest.mark.needs("torch")
def test_torch_gradcheck_with_weights():
    torch.manual_seed(1)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, 5, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(lambda t: K.logsumexp(t, dim=1, b=b), (x,))


@pytest.mark.needs("torch")
def test_torch_matches_torch_logsumexp_large():
    x = torch.randn(100, 1000, dtype=torch.float64) * 100
    torch.testing.assert_close(K.logsumexp(x, dim=1), torch.logsumexp(x, dim=1), rtol=1e-14, atol=1e-12)


@pytest.mark.needs("torch")
def test_smooth_max_torch_matches_numpy():
    x = np.random.default_rng(3).standard_normal((4, 50)) * 1e5
    for tau in (1e-3, 1.0, 1e3):
        np.testing.assert_allclose(K.smooth_max(torch.from_numpy(x), tau).numpy(), K.smooth_max(x, tau), rtol=1e-14)


def test_bad_axis_and_dtype():
    with pytest.raises(ValueError):
        K.logsumexp(np.zeros((2, 2)), axis=2)
    with pytest.raises(TypeError):
        K.logsumexp(np.zeros(2), axis=0, dim=0)


def test_renyi_entropy_is_accurate_near_t1_and_for_tiny_p():
    p = np.random.default_rng(4).dirichlet(np.ones(50))
    shannon = K.renyi_entropy(p, 1)
    for eps in (1e-3, 1e-6, 1e-9, 1e-12):
        # H_t is smooth in t with derivative of order Var(log p), so |H_{1±ε} - H_1| = O(ε)
        assert abs(K.renyi_entropy(p, 1 + eps) - shannon) < 10 * eps + 1e-13
        assert abs(K.renyi_entropy(p, 1 - eps) - shannon) < 10 * eps + 1e-13
    q = np.array([1 - 2e-300, 1e-300, 1e-300])  # p^t underflows for t = 10
    assert K.renyi_entropy(q, 10.0) == pytest.approx(0.0, abs=1e-12)
    assert np.isclose(K.renyi_entropy(np.full(8, 1 / 8), 2.0), np.log(8), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# the fast paths, pinned to the reference (split) paths. A weight vector of ones takes the
# weighted code, which is the reference; no weights take the fast path.


@pytest.mark.needs("torch")
def test_small_terms_are_exact_on_both_paths():
    ref = math.log1p(math.exp(-40.0))  # 4.248e-18
    for dtype, rel in ((np.float64, 1e-15), (np.float32, 1e-6)):
        assert float(K.logsumexp(np.array([0.0, -40.0], dtype=dtype))) == pytest.approx(ref, rel=rel)
        t = torch.tensor([[0.0, -40.0], [5.0, 1.0]], dtype=getattr(torch, np.dtype(dtype).name))
        out = K.logsumexp(t, dim=1)
        assert float(out[0]) == pytest.approx(ref, rel=rel)
        assert float(out[1]) == pytest.approx(5 + math.log1p(math.exp(-4.0)), rel=rel)


def _arrays():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((700, 130)) * 30
    x[x < -60] = -np.inf  # scattered -inf
    x[:, 3] = -np.inf  # an all -inf column
    x[5] = -np.inf  # an all -inf row
    x[:, 7] = 2.5  # ties at the max of column 7
    x[9, :4] = 200.0  # ties at the max of row 9
    y = rng.standard_normal((40, 30, 20)).astype(np.float32) * 10
    return [x, np.asfortranarray(x), x[::3, 1::2], y, rng.standard_normal(5000) - 8.0]


@pytest.mark.parametrize("block", [1 << 15, 97])  # 97: many blocks, so the online merge runs a lot
def test_numpy_fast_path_matches_the_reference(monkeypatch, block):
    monkeypatch.setattr(K, "BLOCK", block)
    for x in _arrays():
        for axis in [None] + list(range(x.ndim)) + ([(0, 2), (1, 2)] if x.ndim == 3 else []):
            fast = K.logsumexp(x, axis=axis, return_sign=True)
            ref = K.logsumexp(x, axis=axis, b=np.ones_like(x), return_sign=True)
            u = np.finfo(x.dtype).eps
            np.testing.assert_array_equal(fast[1], ref[1])
            np.testing.assert_array_equal(np.isfinite(fast[0]), np.isfinite(ref[0]))
            np.testing.assert_allclose(fast[0], ref[0], rtol=8 * u, atol=8 * u)
            assert np.asarray(fast[0]).dtype == np.asarray(ref[0]).dtype


def test_numpy_fast_path_is_bit_identical_when_rows_fit_a_block():
    x = _arrays()[0]
    np.testing.assert_array_equal(K.logsumexp(x, axis=1), K.logsumexp(x, axis=1, b=np.ones_like(x)))


def test_numpy_fast_path_keeps_nonfinite_semantics():
    x = np.random.default_rng(1).standard_normal((6, 5))
    x[1, 2], x[2, 0], x[3, :] = np.inf, np.nan, -np.inf
    np.testing.assert_array_equal(K.logsumexp(x, axis=1), scipy_lse(x, axis=1))
    out = K.logsumexp(x, axis=0)
    assert np.isnan(out[0]) and out[2] == np.inf and np.isfinite(out[[1, 3, 4]]).all()


def test_numpy_fast_path_has_no_input_sized_temporaries():
    import tracemalloc

    x = np.random.default_rng(2).standard_normal((2000, 500))  # 8 MB
    for axis in (0, 1, None):
        K.logsumexp(x[:10], axis=axis)  # warm-up: imports and caches are not the point
        tracemalloc.start()
        K.logsumexp(x, axis=axis)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < x.nbytes / 8, (axis, peak)


@pytest.mark.needs("torch")
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_torch_fast_path_matches_the_split(dtype_name):
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    # rows chosen so that |lse| is small (recomputed) or large (torch's kernel kept)
    x = torch.randn(64, 50, dtype=dtype) * 3
    x[::2] -= torch.logsumexp(x[::2], dim=1, keepdim=True)  # lse ≈ 0: the recomputed rows
    x[1, 0], x[3, :] = 0.0, -torch.inf
    fast = K.logsumexp(x, dim=1)
    ref = K.logsumexp(x, dim=1, b=torch.ones_like(x))
    u = torch.finfo(dtype).eps
    torch.testing.assert_close(fast, ref, rtol=64 * u, atol=0.0)
    assert fast[3] == -torch.inf
    # gradients through both branches are the softmax
    xr = x[:8].clone().requires_grad_()
    K.logsumexp(xr, dim=1).sum().backward()
    torch.testing.assert_close(xr.grad[[0, 1, 2]], torch.softmax(x[[0, 1, 2]], 1), rtol=16 * u, atol=16 * u)


@pytest.mark.needs("torch")
def test_complex_input_is_a_type_error_on_both_paths():
    from kexue.utils import KexueTypeError

    with pytest.raises(KexueTypeError, match="real input"):
        K.logsumexp(torch.tensor([1 + 2j, 0j]))
    with pytest.raises(KexueTypeError, match="real input"):
        K.logsumexp(torch.ones(2), b=torch.tensor([1 + 0j, 1j]))
    with pytest.raises(KexueTypeError, match="real input"):
        K.logsumexp(np.array([1 + 2j]))


DTYPE_CASES = [
    (np.array([True, False]), None), (np.array([1, 2], np.int8), None), (np.array([3, 1], np.uint64), None),
    (np.array([True, False]), np.array([1, 2], np.int8)), (np.array([1, 2], np.int8), np.array([1.0, 2.0], np.float16)),
    (np.array([1.0, 2.0], np.float32), np.array([True, True])), (np.array([1.0, 2.0], np.float32), np.array([1, 1])),
    (np.array([True, True]), np.array([0.5, 2.0], np.float32)), (np.array([1.0, 2.0], np.float16), None),
]


def _scipy_promotes_to_float64() -> bool:
    """Whether this scipy computes bool and integer input in float64 (older ones, e.g. CI's
    minimum 1.11, refuse bool and keep int8 in float16)."""
    try:
        return scipy_lse(np.array([1, 2], np.int8)).dtype == np.float64 and scipy_lse(np.array([True])).dtype == np.float64
    except TypeError:
        return False


@pytest.mark.skipif(not _scipy_promotes_to_float64(), reason="this scipy promotes bool/int input differently")
@pytest.mark.parametrize("a, b", DTYPE_CASES, ids=lambda v: None if v is None else str(v.dtype))
def test_numpy_dtype_promotion_follows_scipy(a, b):
    """Bool and integer input compute in float64 as scipy does (bool once came back float16)."""
    ours, ref = K.logsumexp(a, b=b), scipy_lse(a, b=b)
    assert ours.dtype == ref.dtype
    assert float(ours) == pytest.approx(float(ref), rel=1e-3 if ref.dtype == np.float16 else 1e-6)
    ours, sign = K.logsumexp(a, b=b, return_sign=True)
    assert ours.dtype == sign.dtype == ref.dtype


@pytest.mark.parametrize("x", [np.array([[True, False, True]]), np.array([[1, 5, -2]], np.int8)], ids=["bool", "int8"])
def test_every_public_function_promotes_bool_and_integers_to_float64(x):
    ref = scipy_lse(x.astype(np.float64), axis=-1)
    assert K.smooth_max(x).dtype == np.float64
    np.testing.assert_allclose(K.smooth_max(x), ref, rtol=1e-15)
    assert K.smooth_min(x).dtype == np.float64
    p = np.full(x.shape, 1 / x.shape[-1])
    outs = [*K.max_bounds(x), *K.smooth_max_bounds(x, 0.5), K.jensen_lower_bound(x), K.collision_lower_bound(x, p),
            K.holder_lower_bound(x, p, 3.0), K.entropy_lower_bound(x, p), K.lipschitz_bound(x, x[:, ::-1]),
            K.convexity_upper_bound(x, x[:, ::-1], 0.3), K.renyi_entropy(x.astype(bool) / 2, 2.0)]
    assert all(np.asarray(o).dtype == np.float64 for o in outs)


@pytest.mark.needs("torch")
@pytest.mark.parametrize("values, dtype_name", [([True, False, True], "bool"), ([1, 5, -2], "int8")])
def test_torch_bool_and_integers_become_the_default_float(values, dtype_name):
    t = torch.tensor(values, dtype=getattr(torch, dtype_name))
    ref = scipy_lse(t.numpy().astype(np.float64))
    for out in (K.logsumexp(t), K.smooth_max(t)):
        assert out.dtype == torch.get_default_dtype()
        assert float(out) == pytest.approx(float(ref), rel=1e-6)
    low = K.smooth_min(t)
    assert low.dtype == torch.get_default_dtype()
    assert float(low) == pytest.approx(-scipy_lse(-t.numpy().astype(np.float64)), rel=1e-6)
    out, sign = K.logsumexp(t, b=torch.ones(3, dtype=torch.int64), return_sign=True)
    assert out.dtype == sign.dtype == torch.get_default_dtype()
