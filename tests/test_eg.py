"""Tests for kexue.eg: SPEC 2 optimisers checked against NumPy hand computations of the formulas."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.optimize
torch = pytest.importorskip("torch", reason="needs torch: the 'torch' extra")

from kexue.eg import EG, EGAdapt, EGPlusMinus, EGStep, AdamHD, SGDHD
from kexue.utils import KexueError

A = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4], [0.3, 0.1, 0.8], [-0.5, 0.7, 0.2]])
B = np.array([0.7, -0.2, 1.1, 0.4])
THETA0 = np.array([0.5, 0.2, 0.9])  # positive, so EG applies


def grad_np(theta):
    """∇ of L(θ) = ½‖Aθ - b‖²."""
    return A.T @ (A @ theta - B)


def run_torch(make_opt, steps=3, theta0=THETA0):
    p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    opt = make_opt([p])
    At, Bt = torch.tensor(A), torch.tensor(B)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((At @ p - Bt) ** 2).sum()
        loss.backward()
        opt.step()
    return p.detach().numpy(), opt


# ---------------- hand computations (NumPy, float64) of SPEC 2 formulas


def eg_np(lr, simplex=False, steps=3):
    th = THETA0 / THETA0.sum() if simplex else THETA0.copy()
    for _ in range(steps):
        th = th * np.exp(-lr * grad_np(th))  # SPEC 2.1
        if simplex:
            th = th / th.sum()
    return th


def egpm_np(lr, c, steps=3):
    u, v = np.maximum(THETA0, 0) + c, np.maximum(-THETA0, 0) + c
    th = THETA0.copy()
    for _ in range(steps):
        g = grad_np(th)
        u, v = u * np.exp(-lr * g), v * np.exp(lr * g)  # SPEC 2.1, EG±
        th = u - v
    return th


def egstep_np(lr, gamma, nu0, steps=3):
    th, nu, gp = THETA0.copy(), np.full(3, nu0), np.zeros(3)
    for _ in range(steps):
        g = grad_np(th)
        nu = nu * np.exp(gamma * gp * g)  # SPEC 2.2 (clamps not binding here)
        th = th - lr * nu * g
        gp = g
    return th, nu


def egadapt_np(base, lr, scale_lr, gain_lr, beta=0.9, steps=3, mom=0.9, b1=0.9, b2=0.999, eps=1e-8):
    th = THETA0.copy()
    m, v, gain, s = np.zeros(3), np.zeros(3), np.ones(3), 1.0
    buf, am, av = None, np.zeros(3), np.zeros(3)
    for t in range(1, steps + 1):
        g = grad_np(th)
        if t > 1:  # SPEC 2.3 as documented in EGAdapt
            a = g @ m / (np.linalg.norm(g) * np.linalg.norm(m))
            s = s * np.exp(scale_lr * a)
            gain = gain * np.exp(gain_lr * g * m / v)
            gain = gain / gain.mean()
        m = beta * m + (1 - beta) * g
        v = beta * v + (1 - beta) * g * g
        if base == "sgd":
            buf = g.copy() if buf is None else mom * buf + g
            delta = -lr * buf
        else:
            am = b1 * am + (1 - b1) * g
            av = b2 * av + (1 - b2) * g * g
            delta = -lr * (am / (1 - b1**t)) / (np.sqrt(av / (1 - b2**t)) + eps)
        th = th + s * gain * delta
    return th, s


def sgdhd_np(lr, hyper, steps=3, mom=0.0):
    th, u, a = THETA0.copy(), None, lr
    for _ in range(steps):
        g = grad_np(th)
        if u is not None:
            a = a + hyper * g @ u  # SPEC 2.4
        u = g.copy() if u is None or mom == 0 else mom * u + g
        th = th - a * u
    return th, a


def adamhd_np(lr, hyper, steps=3, b1=0.9, b2=0.999, eps=1e-8):
    th, m, v, u, a = THETA0.copy(), np.zeros(3), np.zeros(3), None, lr
    for t in range(1, steps + 1):
        g = grad_np(th)
        if u is not None:
            a = a + hyper * g @ u  # SPEC 2.4
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        th = th - a * u
    return th, a


def test_eg_three_steps_match_hand_computation():
    got, _ = run_torch(lambda ps: EG(ps, lr=0.3))
    np.testing.assert_allclose(got, eg_np(0.3), rtol=1e-12)


def test_eg_simplex_three_steps_match_hand_computation():
    got, _ = run_torch(lambda ps: EG(ps, lr=0.3, simplex=True), theta0=THETA0 / THETA0.sum())
    np.testing.assert_allclose(got, eg_np(0.3, simplex=True), rtol=1e-12)


def test_egpm_three_steps_match_hand_computation():
    theta0 = np.array([0.5, -0.2, 0.0])
    global THETA0
    saved, THETA0 = THETA0, theta0
    try:
        want = egpm_np(0.2, 0.1)
        got, _ = run_torch(lambda ps: EGPlusMinus(ps, lr=0.2, init_scale=0.1), theta0=theta0)
    finally:
        THETA0 = saved
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_egstep_three_steps_match_hand_computation():
    got, opt = run_torch(lambda ps: EGStep(ps, lr=0.05, gamma=2.0, nu0=1.5, max_exp=10.0))
    want, nu = egstep_np(0.05, 2.0, 1.5)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    p = opt.param_groups[0]["params"][0]
    np.testing.assert_allclose(opt.state[p]["nu"].numpy(), nu, rtol=1e-12)
    assert not np.allclose(nu, 1.5)  # the step sizes did adapt


@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_egadapt_three_steps_match_hand_computation(base):
    def make(ps):
        b = torch.optim.SGD(ps, lr=0.05, momentum=0.9) if base == "sgd" else torch.optim.Adam(ps, lr=0.05)
        return EGAdapt(b, scale_lr=0.3, gain_lr=0.2)

    got, opt = run_torch(make)
    want, s = egadapt_np(base, 0.05, 0.3, 0.2)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert opt.param_groups[0]["scale"] == pytest.approx(s, rel=1e-10)
    assert s != pytest.approx(1.0)


@pytest.mark.parametrize("mom", [0.0, 0.8])
def test_sgdhd_three_steps_match_hand_computation(mom):
    got, opt = run_torch(lambda ps: SGDHD(ps, lr=0.05, hyper_lr=0.01, momentum=mom))
    want, a = sgdhd_np(0.05, 0.01, mom=mom)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(a, rel=1e-12)
    assert a != pytest.approx(0.05)


def test_adamhd_three_steps_match_hand_computation():
    got, opt = run_torch(lambda ps: AdamHD(ps, lr=0.05, hyper_lr=0.01))
    want, a = adamhd_np(0.05, 0.01)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(a, rel=1e-12)


# ---------------- invariants


def test_eg_keeps_nonnegative_and_simplex_under_random_gradients():
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.rand(50, generator=g))
    q = torch.nn.Parameter(torch.softmax(torch.randn(7, 5, generator=g).flatten(), 0).view(7, 5))
    opt = EG([{"params": [p]}, {"params": [q], "simplex": True}], lr=2.0)
    for _ in range(200):
        p.grad = torch.randn(50, generator=g) * 10
        q.grad = torch.randn(7, 5, generator=g) * 10
        opt.step()
        assert (p >= 0).all() and (q >= 0).all()
        assert torch.isfinite(p).all() and torch.isfinite(q).all()
        assert float(q.detach().sum()) == pytest.approx(1.0, abs=1e-5)


def test_eg_rejects_negative_start():
    with pytest.raises(KexueError, match="non-negative"):
        EG([torch.nn.Parameter(torch.tensor([0.5, -0.1]))])


def make_all(ps):
    return {
        "EG": lambda: EG(ps, lr=0.1),
        "EGsimplex": lambda: EG(ps, lr=0.1, simplex=True),
        "EGPlusMinus": lambda: EGPlusMinus(ps, lr=0.1),
        "EGStep": lambda: EGStep(ps, lr=0.1, gamma=1.0),
        "EGAdapt(SGD)": lambda: EGAdapt(torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
        "EGAdapt(Adam)": lambda: EGAdapt(torch.optim.Adam(ps, lr=0.1)),
        "SGDHD": lambda: SGDHD(ps, lr=0.1, momentum=0.5),
        "AdamHD": lambda: AdamHD(ps, lr=0.1, hyper_lr=1e-3),
    }


NAMES = list(make_all([torch.zeros(1)]).keys())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_resume_is_identical(name):
    At, Bt = torch.tensor(A, dtype=torch.float32), torch.tensor(B, dtype=torch.float32)

    def run(p, opt, n):
        for _ in range(n):
            def closure():
                opt.zero_grad()
                loss = 0.5 * ((At @ p - Bt) ** 2).sum()
                loss.backward()
                return loss
            opt.step(closure)

    start = torch.tensor(THETA0 / THETA0.sum(), dtype=torch.float32)
    p1 = torch.nn.Parameter(start.clone())
    o1 = make_all([p1])[name]()
    run(p1, o1, 6)

    p2 = torch.nn.Parameter(start.clone())
    o2 = make_all([p2])[name]()
    run(p2, o2, 3)
    buf = io.BytesIO()
    torch.save({"p": p2.detach().clone(), "opt": o2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    p3 = torch.nn.Parameter(saved["p"])
    o3 = make_all([p3])[name]()
    o3.load_state_dict(saved["opt"])
    run(p3, o3, 3)
    assert torch.equal(p1.detach(), p3.detach())
    assert not torch.equal(p1.detach(), start)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1e30, -1e30, 0.0])
def test_huge_and_zero_gradients_stay_finite(name, scale):
    p = torch.nn.Parameter(torch.full((4,), 0.25))
    opt = make_all([p])[name]()
    for k in range(5):
        p.grad = torch.tensor([1.0, -1.0, 0.5, 0.0]) * scale * (1 if k % 2 else 1)
        opt.step()
        assert torch.isfinite(p).all(), (name, scale, p)
    for st in opt.state.values():
        for key in ("nu", "gain", "u", "v") if name not in ("AdamHD",) else ("u",):
            if key in st:
                assert not torch.isnan(st[key]).any()
    assert all(np.isfinite(g.get("lr", 0.0)) and np.isfinite(g.get("scale", 1.0)) for g in opt.param_groups)
    if scale == 0.0 and name not in ("EGsimplex",):
        assert torch.equal(p.detach(), torch.full((4,), 0.25)), "a zero gradient must not move the weights"
    if name.startswith("EG") and "Adapt" not in name and "Step" not in name and "Minus" not in name:
        assert (p >= 0).all()


def test_eg_reaches_nnls_optimum():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(30, 8))
    x_true = np.maximum(rng.normal(size=8), 0)  # some coordinates exactly 0: active constraints
    y = M @ x_true + 0.3 * rng.normal(size=30)
    x_star, _ = scipy.optimize.nnls(M, y)
    assert (x_star == 0).any() and (x_star > 0).any()  # the problem has both kinds of coordinate
    Mt, yt = torch.tensor(M), torch.tensor(y)
    p = torch.nn.Parameter(torch.ones(8, dtype=torch.float64))
    lr = 1.0 / np.linalg.eigvalsh(M.T @ M).max()
    opt = EG([p], lr=lr)
    for _ in range(20000):
        p.grad = Mt.T @ (Mt @ p.detach() - yt)  # ∇ ½‖Mx - y‖², without autograd's overhead
        opt.step()
    f = lambda x: 0.5 * np.sum((M @ x - y) ** 2)  # noqa: E731
    assert f(p.detach().numpy()) == pytest.approx(f(x_star), rel=1e-6)
    np.testing.assert_allclose(p.detach().numpy(), x_star, atol=1e-3)


def test_egadapt_scale_grows_when_aligned_and_shrinks_when_oscillating():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = EGAdapt(torch.optim.SGD([p], lr=1e-3))
    for _ in range(30):
        p.grad = torch.ones(10)
        opt.step()
    grown = opt.param_groups[0]["scale"]
    assert grown > 2.0
    for k in range(60):
        p.grad = torch.ones(10) * (-1) ** k
        opt.step()
    assert opt.param_groups[0]["scale"] < grown / 2
    assert opt.effective_lrs()[0] == pytest.approx(1e-3 * opt.param_groups[0]["scale"])


def test_sgdhd_keep_positive():
    # alternating gradients make ⟨g_t, g_{t-1}⟩ < 0, so α falls; Baydin's rule crosses zero
    def final_lr(keep):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = SGDHD([p], lr=0.01, hyper_lr=0.01, keep_positive=keep)
        for k in range(10):
            p.grad = torch.ones(3) * (-1) ** k
            opt.step()
        return opt.param_groups[0]["lr"]

    assert final_lr(False) < 0
    assert final_lr(True) == 0.0


def test_bad_hyperparameters_raise():
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(KexueError):
        EGStep(p, lr=-1.0)
    with pytest.raises(KexueError):
        EGStep(p, nu0=10.0, nu_max=1.0)
    with pytest.raises(KexueError):
        EGAdapt("sgd")
    with pytest.raises(KexueError):
        AdamHD(p, betas=(0.9, 1.0))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_nan_gradient_entries_reach_the_weights_as_in_sgd(name, foreach):
    """Issue 31: a NaN gradient must show in the parameter (torch.optim.SGD's behaviour), not be
    read as 0 so that a diverging model goes unnoticed; the finite entries still move finitely."""
    p = torch.nn.Parameter(torch.full((4,), 0.25))
    opt = make_all([p])[name]()
    for g in opt.param_groups:
        g["foreach"], g["eg_foreach"] = foreach, foreach
    for _ in range(2):  # the second step also exercises the state a NaN left behind
        p.grad = torch.tensor([float("nan"), 1.0, -1.0, 0.5])
        opt.step()
    assert torch.isnan(p.detach()[0]), (name, p)
    if name != "EGsimplex":  # the simplex renormalisation spreads the NaN over the tensor
        assert torch.isfinite(p.detach()[1:]).all(), (name, p)


def test_sgd_reference_propagates_nan_too():
    p = torch.nn.Parameter(torch.full((2,), 0.25))
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.tensor([float("nan"), 1.0])
    opt.step()
    assert torch.isnan(p.detach()[0]) and torch.isfinite(p.detach()[1])


@pytest.mark.parametrize("simplex", [False, True])
def test_eg_refuses_all_zero_parameters(simplex):
    """Issue 31: an all-zero tensor can never move under θ·exp(-ηg): one line naming the fix."""
    with pytest.raises(KexueError, match="all zeros") as e:
        EG([torch.nn.Parameter(torch.zeros(3))], lr=0.1, simplex=simplex)
    assert "\n" not in str(e.value) and "EGPlusMinus" in str(e.value)
    opt = EG([torch.nn.Parameter(torch.tensor([0.0, 1.0]))], lr=0.1)  # some zeros: fine (sparse weights)
    with pytest.raises(KexueError, match="all zeros"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, 2))]})
