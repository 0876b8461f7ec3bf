"""EGAdapt's spike guard (SPEC 2.3, ``kexue.eg.adapt_kernels._rescale``): a jump of the gradient norm over
its running RMS divides the step-size scale by the jump, on every execution path."""

from __future__ import annotations

import math

import pytest
torch = pytest.importorskip("torch", reason="needs torch: the 'torch' extra")

from kexue.eg import EGAdapt
from kexue.utils import KexueError, KexueTypeError

pytestmark = pytest.mark.filterwarnings("ignore::kexue.eg.ScaleBoundWarning")  # bounds reached on purpose
PATHS = {"reference": dict(foreach=False), "foreach": dict(foreach=True, compile=False)}


def test_auto_guards_sgd_bases_and_leaves_adam_bases_alone():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert EGAdapt(torch.optim.SGD(p, lr=0.1, momentum=0.9)).param_groups[0]["spike"] == 3.0
    assert EGAdapt(torch.optim.Adam(p)).param_groups[0]["spike"] is None
    assert EGAdapt(torch.optim.Adam(p), spike=5).param_groups[0]["spike"] == 5.0
    assert EGAdapt(torch.optim.SGD(p, lr=0.1), spike=None).param_groups[0]["spike"] is None


@pytest.mark.parametrize("spike, err", [(1.0, KexueError), (0.5, KexueError), (float("nan"), KexueError),
                                        ("on", KexueTypeError)])
def test_bad_spike_is_a_one_line_error(spike, err):
    with pytest.raises(err) as e:
        EGAdapt(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1), spike=spike)
    assert "spike" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("path", list(PATHS))
def test_a_jump_divides_the_scale_by_its_size_over_rho(path):
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
    opt = EGAdapt(torch.optim.SGD([p], lr=1e-3), spike=3.0, **PATHS[path])
    g0 = torch.linspace(1, 2, 8, dtype=torch.float64)
    for _ in range(5):  # aligned steps of one norm: s grows by e^{γ_s} a step, no jump
        p.grad = g0.clone()
        opt.step()
    group = opt.param_groups[0]
    s, ref = group["scale"], group["grad_sq"]
    assert s == pytest.approx(math.exp(0.2 * 4))  # 4 adapted steps (the first has no m_{t-1})
    assert ref == pytest.approx(float(g0 @ g0))
    p.grad = 30 * g0  # same direction (a = 1), thirty times the norm
    opt.step()
    r = 30.0
    assert group["scale"] == pytest.approx(s * math.exp(0.2) * 3.0 / r)
    # the reference takes at most ρ² × itself from the spike
    assert group["grad_sq"] == pytest.approx(0.9 * ref + 0.1 * 9.0 * ref)


def test_without_a_jump_the_guard_changes_nothing():
    torch.manual_seed(0)
    runs = []
    for spike in (3.0, None):
        p = torch.nn.Parameter(torch.zeros(16, dtype=torch.float64))
        opt = EGAdapt(torch.optim.SGD([p], lr=1e-2, momentum=0.9), spike=spike, foreach=False)
        g = torch.Generator().manual_seed(1)
        for _ in range(50):  # noisy gradients whose norm stays within 2× of its RMS
            p.grad = 1.0 + 0.3 * torch.randn(16, generator=g, dtype=torch.float64)
            opt.step()
        runs.append((p.detach().clone(), opt.param_groups[0]["scale"]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def _curvature_jump(spike, path):
    """Minimise ½ λ_t ‖x‖² with SGD(momentum 0.9) under EGAdapt; λ jumps from 1 to 1000 at step 40 —
    the step size learned on the flat part is far past the stable limit of the steep one."""
    x = torch.nn.Parameter(torch.full((4,), 10.0, dtype=torch.float64))
    opt = EGAdapt(torch.optim.SGD([x], lr=1e-3, momentum=0.9), spike=spike, **PATHS[path])
    for t in range(200):
        lam = 1.0 if t < 40 else 1000.0
        x.grad = lam * x.detach()
        opt.step()
        if not torch.isfinite(x).all():
            break
    return float(x.detach().abs().max()), opt.param_groups[0]["scale"]


@pytest.mark.parametrize("path", list(PATHS))
def test_the_guard_keeps_a_curvature_jump_from_diverging(path):
    unguarded, s_before = _curvature_jump(None, path)
    guarded, _ = _curvature_jump(3.0, path)
    assert not (unguarded < 1e3)  # without the guard the learned step size blows up (or NaN)
    assert guarded < 1.0  # with it the run goes on converging from 10


def test_state_dict_round_trips_the_running_gradient_norm():
    p = torch.nn.Parameter(torch.zeros(5))
    opt = EGAdapt(torch.optim.SGD([p], lr=1e-2, momentum=0.9))
    for k in range(4):
        p.grad = torch.ones(5) * (k + 1)
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    fresh = EGAdapt(torch.optim.SGD([q], lr=1e-2, momentum=0.9))
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["grad_sq"] == opt.param_groups[0]["grad_sq"] > 0
    assert fresh.param_groups[0]["spike"] == 3.0
