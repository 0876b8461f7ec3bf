"""kexue.eg inside torch training: every lr_scheduler, the multi-tensor paths pinned to the
per-tensor reference, EGAdapt's bound warning, argument checks, accelerate and torch.compile."""

from __future__ import annotations

import copy
import warnings

import pytest
torch = pytest.importorskip("torch", reason="needs torch: the 'torch' extra")
from torch.optim import lr_scheduler as sched

from kexue.eg import EG, EGAdapt, EGPlusMinus, EGStep, AdamHD, SGDHD, ScaleBoundWarning
from kexue.utils import KexueError, KexueTypeError

OPTS = {
    "EG": lambda ps, **kw: EG(ps, lr=0.05, **kw),
    "EGPlusMinus": lambda ps, **kw: EGPlusMinus(ps, lr=0.05, **kw),
    "EGStep": lambda ps, **kw: EGStep(ps, lr=0.05, gamma=5.0, max_exp=1.0, **kw),
    "SGDHD": lambda ps, **kw: SGDHD(ps, lr=0.05, hyper_lr=1e-3, momentum=0.9, **kw),
    "AdamHD": lambda ps, **kw: AdamHD(ps, lr=0.01, hyper_lr=1e-4, **kw),
    "EGAdapt(SGD)": lambda ps, **kw: EGAdapt(torch.optim.SGD(ps, lr=0.05, momentum=0.9), scale_lr=0.3,
                                            gain_lr=0.1, **kw),
    "EGAdapt(Adam)": lambda ps, **kw: EGAdapt(torch.optim.Adam(ps, lr=0.01), scale_lr=0.3, gain_lr=0.1, **kw),
}
HD = ("SGDHD", "AdamHD")  # their rule moves group["lr"] itself after the scheduler set it
MOMENTUM = ("SGDHD", "AdamHD", "EGAdapt(SGD)", "EGAdapt(Adam)")


def problem(seed=0, dtype=torch.float64):
    """A small positive-weight MLP regression: several tensors of different shapes."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) * 0.3)  # EG needs θ ≥ 0
    X = torch.randn(64, 6, generator=g, dtype=dtype)
    Y = torch.randn(64, 3, generator=g, dtype=dtype)
    return net, X, Y


def train_steps(net, opt, X, Y, n, scheduler=None, on_step=None):
    for k in range(n):
        opt.zero_grad()
        loss = ((net(X[k % 4 * 16:(k % 4 + 1) * 16]) - Y[k % 4 * 16:(k % 4 + 1) * 16]) ** 2).mean()
        loss.backward()
        if on_step is not None:
            on_step(k)
        opt.step()
        if scheduler is not None:
            scheduler.step()


SCHEDULERS = {
    "StepLR": lambda o: sched.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, gamma=0.9),
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, lambda e: 0.95),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=10),
    "LinearLR": lambda o: sched.LinearLR(o, start_factor=0.2, total_iters=5),
    "ConstantLR": lambda o: sched.ConstantLR(o, factor=0.5, total_iters=4),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=10, power=2.0),
    "CyclicLR": lambda o: sched.CyclicLR(o, base_lr=0.001, max_lr=0.05, step_size_up=3, cycle_momentum=False),
    "OneCycleLR(no momentum)": lambda o: sched.OneCycleLR(o, max_lr=0.05, total_steps=12, cycle_momentum=False),
    "SequentialLR": lambda o: sched.SequentialLR(o, [sched.LinearLR(o, 0.1, total_iters=3),
                                                     sched.ExponentialLR(o, 0.9)], milestones=[3]),
}


@pytest.mark.parametrize("sname", list(SCHEDULERS))
@pytest.mark.parametrize("oname", list(OPTS))
def test_every_scheduler_sets_the_lr_every_optimiser_uses(oname, sname):
    net, X, Y = problem()
    opt = OPTS[oname](list(net.parameters()))
    s = SCHEDULERS[sname](opt)
    seen = []

    def check(k):  # before each step, the group's lr is the scheduler's last value
        seen.append(opt.param_groups[0]["lr"])
        if oname not in HD:
            assert opt.param_groups[0]["lr"] == pytest.approx(s.get_last_lr()[0], rel=1e-12)
        if oname.startswith("EGAdapt"):
            assert opt.base.param_groups[0]["lr"] == opt.param_groups[0]["lr"]

    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleBoundWarning)
        train_steps(net, opt, X, Y, 12, scheduler=s, on_step=check)
    assert len(set(seen)) > 1, "the schedule never changed the learning rate"
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_steplr_on_egadapt_scales_the_base_lr_and_keeps_the_learned_scale():
    net, X, Y = problem()
    opt = OPTS["EGAdapt(SGD)"](list(net.parameters()))
    s = sched.StepLR(opt, step_size=1, gamma=0.5)
    train_steps(net, opt, X, Y, 4, scheduler=s)
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**4)
    scale = opt.param_groups[0]["scale"]
    assert scale != 1.0
    assert opt.effective_lrs()[0] == pytest.approx(0.05 * 0.5**4 * scale)


@pytest.mark.parametrize("oname", list(OPTS))
def test_onecycle_cycles_momentum_or_says_how_to_turn_it_off(oname):
    net, X, Y = problem()
    opt = OPTS[oname](list(net.parameters()))
    if oname not in MOMENTUM:  # EG-type updates have no momentum for OneCycleLR to cycle
        with pytest.raises(ValueError, match="cycle_momentum"):
            sched.OneCycleLR(opt, max_lr=0.05, total_steps=12)
        return
    s = sched.OneCycleLR(opt, max_lr=0.05, total_steps=12)
    groups = opt.base.param_groups if oname.startswith("EGAdapt") else opt.param_groups
    key = "momentum" if "momentum" in groups[0] and "SGD" in oname else "betas"
    first = groups[0][key]
    train_steps(net, opt, X, Y, 6, scheduler=s)
    assert groups[0][key] != first
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_reduce_on_plateau_works_on_egadapt():
    net, X, Y = problem()
    opt = OPTS["EGAdapt(Adam)"](list(net.parameters()))
    s = sched.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    for _ in range(3):
        s.step(1.0)  # no improvement: halve
    assert opt.base.param_groups[0]["lr"] < 0.01


# ---------------------------------------------------------------- foreach vs the reference path

@pytest.mark.parametrize("oname", list(OPTS))
def test_foreach_path_matches_per_tensor_reference(oname):
    nets, opts = [], []
    for fe in (True, False):
        net, X, Y = problem(seed=1)
        opt = OPTS[oname](list(net.parameters()), foreach=fe)
        train_steps(net, opt, X, Y, 40)
        nets.append(net)
        opts.append(opt)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    start = problem(seed=1)[0]
    assert all(not torch.equal(a, s) for a, s in zip(nets[0].parameters(), start.parameters()))
    sa, sb = opts[0].state_dict(), opts[1].state_dict()
    for k in ("lr", "scale"):
        if k in opts[0].param_groups[0]:
            assert opts[0].param_groups[0][k] == pytest.approx(opts[1].param_groups[0][k], rel=1e-9)
    for i, st in sa["state"].items():
        for n, t in st.items():
            if torch.is_tensor(t) and t.numel() > 1:
                torch.testing.assert_close(t, sb["state"][i][n], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("oname", ["EG", "EGPlusMinus", "EGStep", "SGDHD", "AdamHD"])
def test_foreach_path_is_bitwise_the_reference_where_it_keeps_the_operation_order(oname):
    """Same element-wise operations in the same order: identical float32 weights. (EGAdapt's
    multi-tensor path fuses and sums in another order; it is pinned by the tolerance test above.)"""
    res = []
    for fe in (True, False):
        net, X, Y = problem(seed=1, dtype=torch.float32)
        train_steps(net, OPTS[oname](list(net.parameters()), foreach=fe), X, Y, 40)
        res.append(list(net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(*res))


@pytest.mark.parametrize("oname", list(OPTS))
def test_foreach_state_dict_resumes_on_the_reference_path(oname):
    net, X, Y = problem(seed=2)
    opt = OPTS[oname](list(net.parameters()), foreach=True)
    train_steps(net, opt, X, Y, 5)
    net2, _, _ = problem(seed=2)
    net2.load_state_dict(net.state_dict())
    opt2 = OPTS[oname](list(net2.parameters()), foreach=False)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # a state_dict aliases the live buffers
    for g in opt2.param_groups:  # like torch.optim, the saved groups' settings (foreach too) come back
        g["eg_foreach" if oname.startswith("EGAdapt") else "foreach"] = False
    train_steps(net, opt, X, Y, 5)
    train_steps(net2, opt2, X, Y, 5)
    for a, b in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_foreach_handles_mixed_dtypes_and_params_without_grad():
    a = torch.nn.Parameter(torch.rand(5, dtype=torch.float64))
    b = torch.nn.Parameter(torch.rand(3, dtype=torch.float32))
    c = torch.nn.Parameter(torch.rand(2))  # never gets a gradient
    for make in OPTS.values():
        opt = make([a, b, c])
        for _ in range(3):
            a.grad, b.grad = torch.randn(5, dtype=torch.float64), torch.randn(3)
            opt.step()
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        assert c.grad is None


# ---------------------------------------------------------------- warnings and argument checks

def test_egadapt_warns_once_when_the_scale_reaches_its_cap(capsys):
    p = torch.nn.Parameter(torch.zeros(10))
    opt = EGAdapt(torch.optim.SGD([p], lr=1e-3), scale_bounds=(1e-4, 10.0))
    with pytest.warns(ScaleBoundWarning, match="upper bound 10.*effective lr 0.01") as rec:
        for _ in range(40):
            p.grad = torch.ones(10)
            opt.step()
    assert opt.param_groups[0]["scale"] == 10.0
    assert sum(issubclass(w.category, ScaleBoundWarning) for w in rec) == 1
    assert capsys.readouterr() == ("", "")  # the library warns, never prints


def test_egadapt_is_silent_inside_its_bounds():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = EGAdapt(torch.optim.SGD([p], lr=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleBoundWarning)
        for k in range(30):
            p.grad = torch.ones(10) * (-1) ** k
            opt.step()


@pytest.mark.parametrize("make, err", [
    (lambda p: EG(p, lr=float("nan")), KexueError),
    (lambda p: EG(p, lr="0.1"), KexueTypeError),
    (lambda p: EGPlusMinus(p, init_scale=0.0), KexueError),
    (lambda p: EGStep(p, nu_min=-1.0), KexueError),
    (lambda p: EGStep(p, foreach="yes"), KexueError),
    (lambda p: EGPlusMinus(p, compile="auto"), KexueError),
    (lambda p: EGAdapt(torch.optim.SGD(p, lr=0.1), compile=1), KexueError),
    (lambda p: SGDHD(p, momentum=1.0), KexueError),
    (lambda p: AdamHD(p, eps=0.0), KexueError),
    (lambda p: EGAdapt(torch.optim.SGD(p, lr=0.1), beta=1.0), KexueError),
    (lambda p: EGAdapt(torch.optim.SGD(p, lr=0.1), scale_bounds=(2.0, 10.0)), KexueError),
    (lambda p: EGAdapt(torch.optim.SGD(p, lr=0.1), gain_bounds=(0.1,)), KexueError),
    (lambda p: EGAdapt(torch.optim.SGD(p, lr=0.1), scale_lr=float("inf")), KexueError),
    (lambda p: EGAdapt(EGAdapt(torch.optim.SGD(p, lr=0.1))), KexueError),
    (lambda p: EGAdapt(p), KexueTypeError),
])
def test_bad_arguments_raise_one_line_kexue_errors(make, err):
    with pytest.raises(err) as e:
        make([torch.nn.Parameter(torch.ones(2))])
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError if err is KexueError else TypeError)


def test_egadapt_param_groups_are_the_bases():
    ps = [torch.nn.Parameter(torch.ones(2))]
    base = torch.optim.Adam(ps, lr=0.01)
    opt = EGAdapt(base)
    assert opt.param_groups is base.param_groups
    assert opt.param_groups[0]["scale"] == 1.0 and opt.param_groups[0]["eps"] == 1e-8  # Adam's eps untouched
    q = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [q], "lr": 0.1})
    assert len(base.param_groups) == 2 and base.param_groups[1]["scale"] == 1.0
    with pytest.raises(KexueError, match="base optimiser"):
        opt.param_groups = []


# ---------------------------------------------------------------- accelerate (2 CPU processes) and torch.compile

ACC_OPTS = ["EG", "EGStep", "SGDHD", "AdamHD", "EGAdapt(SGD)", "EGAdapt(Adam)"]


def _acc_train(world: int, batch: int, accelerator=None) -> dict[str, list[torch.Tensor]]:
    """Each optimiser trains the float64 problem for 8 steps with kexue.train.train; final weights."""
    from kexue.train import train

    out = {}
    for name in ACC_OPTS:
        net, X, Y = problem(seed=3)
        opt = OPTS[name](list(net.parameters()))
        res = train(net, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [X, Y], steps=8, batch_size=batch,
                    optimizer=opt, seed=5, accelerator=accelerator)
        out[name] = [p.detach().clone() for p in res.model.parameters()]
    return out


def _acc_worker(rank: int, world: int, port: int, path: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    assert acc.num_processes == world, acc.state
    out = _acc_train(world, 8 // world, acc)
    if rank == 0:
        torch.save(out, path)
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes × 4 rows per step (DDP averages the gradients) = 1 process × 8 rows."""
    import torch.multiprocessing as mp

    path = str(tmp_path / "two.pt")
    mp.spawn(_acc_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    two = torch.load(path, weights_only=True)
    one = _acc_train(1, 8)
    for name in ACC_OPTS:
        start = list(problem(seed=3)[0].parameters())
        for a, b, s in zip(one[name], two[name], start):
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9, msg=name)
            assert not torch.equal(a, s.detach()), name


def _compile_works() -> str | None:
    """Why torch.compile cannot run here, or None when it can (inductor needs a C++ compiler on CPU)."""
    import shutil

    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile's inductor backend needs a C++ compiler on CPU and none is installed"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_compile_works() is not None, reason=str(_compile_works()))
def test_compiled_model_and_compiled_step_match_eager():
    """torch.compile(model) trained by each optimiser, and one optimiser's step compiled too."""
    X = torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Y = X[:, :3].sin()

    def run(name, compile_model, compile_step):
        net, _, _ = problem(seed=4)
        opt = OPTS[name](list(net.parameters()))
        model = torch.compile(net, dynamic=False) if compile_model else net
        step = torch.compile(opt.step) if compile_step else opt.step
        for _ in range(4):
            opt.zero_grad()
            ((model(X) - Y) ** 2).mean().backward()
            step()
        return [p.detach() for p in net.parameters()]

    for a, b in zip(run("EGAdapt(Adam)", False, False), run("EGAdapt(Adam)", True, False)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    for a, b in zip(run("EGStep", False, False), run("EGStep", False, True)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- the compiled kernels (compile=True)

FUSED = ["EGPlusMinus", "EGStep", "EGAdapt(SGD)", "EGAdapt(Adam)"]


@pytest.mark.slow
@pytest.mark.skipif(_compile_works() is not None, reason=str(_compile_works()))
@pytest.mark.parametrize("oname", FUSED)
def test_compiled_kernels_match_the_reference_and_compile_once(oname):
    """compile=True against the per-tensor reference, float64, under a scheduler that moves the
    lr every step: same weights, state and scale; after the first two steps (state creation,
    first adaptation) no recompilation although lr and s change every step."""
    res, opts = [], []
    for kw in (dict(foreach=False), dict(compile=True)):
        net, X, Y = problem(seed=1)
        opt = OPTS[oname](list(net.parameters()), **kw)
        sch = sched.ExponentialLR(opt, gamma=0.95)
        train_steps(net, opt, X, Y, 2, scheduler=sch)
        with torch._dynamo.config.patch(error_on_recompile=True):
            train_steps(net, opt, X, Y, 10, scheduler=sch)
        res.append(list(net.parameters()))
        opts.append(opt)
    for a, b in zip(*res):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    if oname.startswith("EGAdapt"):
        assert opts[1].param_groups[0]["scale"] == pytest.approx(opts[0].param_groups[0]["scale"], rel=1e-9)
        assert opts[0].param_groups[0]["scale"] != 1.0
    sa, sb = opts[0].state_dict(), opts[1].state_dict()
    for i, st in sa["state"].items():
        for n, t in st.items():
            if torch.is_tensor(t) and t.numel() > 1:
                torch.testing.assert_close(sb["state"][i][n], t, rtol=1e-8, atol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(_compile_works() is not None, reason=str(_compile_works()))
@pytest.mark.parametrize("own_compile", [False, True])
def test_torch_compile_of_egadapt_step_compiles_once_and_matches_eager(own_compile):
    """torch.compile(opt.step) traces the fused kernels with s as a tensor: after the first two
    steps nothing recompiles (s used to be baked into the graph, one recompilation per step).
    With EGAdapt's own compiled path on (a base it knows, so eager steps take the direct path),
    the user's compiled step matches the eager one all the same."""
    res = []
    for compiled in (False, True):
        net, X, Y = problem(seed=2)
        opt = OPTS["EGAdapt(SGD)"](list(net.parameters()), compile=own_compile)
        step = torch.compile(opt.step) if compiled else opt.step

        def run(n, opt=opt, net=net, X=X, Y=Y, step=step):  # this iteration's objects
            for k in range(n):
                opt.zero_grad()
                ((net(X[k % 4 * 16:(k % 4 + 1) * 16]) - Y[k % 4 * 16:(k % 4 + 1) * 16]) ** 2).mean().backward()
                step()
        run(2)
        with torch._dynamo.config.patch(error_on_recompile=True):
            run(8)
        res.append((list(net.parameters()), opt.param_groups[0]["scale"]))
    for a, b in zip(res[0][0], res[1][0]):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert res[1][1] == pytest.approx(res[0][1], rel=1e-9) and res[0][1] != 1.0


EGADAPT_BASES = {  # what EGAdapt's compiled path computes itself (SGD, Adam, AdamW) and a base it does not know
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "SGD momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "SGD dampening, weight decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3,
                                                              weight_decay=0.1),
    "SGD Nesterov, weight decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                             weight_decay=0.01),
    "SGD maximize": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, maximize=True),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "Adam amsgrad, weight decay": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True, weight_decay=0.1),
    "Adam maximize, betas": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), maximize=True),
    "Adam decoupled weight decay": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1,
                                                               decoupled_weight_decay=True),
    "AdamW amsgrad": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
    "Adam fused": lambda ps: torch.optim.Adam(ps, lr=0.01, fused=True),
    "RMSprop (not special-cased)": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5),
}


@pytest.mark.skipif(_compile_works() is not None, reason=str(_compile_works()))
@pytest.mark.parametrize("bname", list(EGADAPT_BASES))
def test_egadapt_compiled_path_computes_known_bases_like_the_reference(bname, monkeypatch):
    """compile=True on a base EGAdapt knows runs the base's update inside its own kernel (no base
    step, no snapshot θ_old); against the per-tensor reference (base step, then θ_old + s p ⊙ Δ):
    same weights, scale, gains and base state after 12 steps under OneCycleLR, which moves lr and
    momentum / β₁ every step, with no recompilation after the first two steps.
    An unknown base keeps its own step on the compiled path."""
    direct = []
    step_direct = EGAdapt._step_direct
    monkeypatch.setattr(EGAdapt, "_step_direct", lambda self: direct.append(step_direct(self)) or direct[-1])
    res = []
    for kw in (dict(foreach=False), dict(compile=True)):
        direct.clear()
        net, X, Y = problem(seed=5)
        opt = EGAdapt(EGADAPT_BASES[bname](list(net.parameters())), scale_lr=0.3, gain_lr=0.1, **kw)
        sch = sched.OneCycleLR(opt, max_lr=0.05, total_steps=20, cycle_momentum=bname != "SGD")
        train_steps(net, opt, X, Y, 2, scheduler=sch)
        with torch._dynamo.config.patch(error_on_recompile=True):
            train_steps(net, opt, X, Y, 10, scheduler=sch)
        res.append((list(net.parameters()), opt))
        if kw.get("compile"):
            assert direct == [("RMSprop" not in bname)] * 12
    (ref, ref_opt), (got, opt) = res
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert opt.param_groups[0]["scale"] == pytest.approx(ref_opt.param_groups[0]["scale"], rel=1e-9)
    assert ref_opt.param_groups[0]["scale"] != 1.0
    for sa, sb in ((ref_opt.state_dict()["state"], opt.state_dict()["state"]),
                   (ref_opt.base.state_dict()["state"], opt.base.state_dict()["state"])):
        assert sa.keys() == sb.keys()
        for i, st in sa.items():
            assert st.keys() == sb[i].keys()
            for n, t in st.items():
                torch.testing.assert_close(sb[i][n], t, rtol=1e-8, atol=1e-12)


@pytest.mark.skipif(_compile_works() is not None, reason=str(_compile_works()))
def test_egadapt_compiled_known_base_in_float32_and_resumed_on_the_reference_path():
    """float32 (the model's dtype in practice) stays within float32 rounding of the reference, and a
    state_dict written on the compiled path resumes on the reference path (the base's state is the
    base's own: step counts, moments)."""
    res = []
    for kw in (dict(foreach=False), dict(compile=True)):
        net, X, Y = problem(seed=6, dtype=torch.float32)
        opt = EGAdapt(torch.optim.Adam(list(net.parameters()), lr=0.01, amsgrad=True), scale_lr=0.3, gain_lr=0.1, **kw)
        train_steps(net, opt, X, Y, 6)
        res.append((net, opt))
    for a, b in zip(res[0][0].parameters(), res[1][0].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    net, opt = res[1]
    net2 = problem(seed=6, dtype=torch.float32)[0]
    net2.load_state_dict(net.state_dict())
    opt2 = EGAdapt(torch.optim.Adam(list(net2.parameters()), lr=0.01, amsgrad=True), foreach=False)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for g in opt2.param_groups:
        g["eg_foreach"] = False
    train_steps(net, opt, X, Y, 4)
    train_steps(net2, opt2, X, Y, 4)
    for a, b in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert float(opt.base.state[next(net.parameters())]["step"]) == 10


@pytest.mark.parametrize("oname", FUSED)
def test_compile_falls_back_to_the_eager_path_when_torch_compile_fails(oname, monkeypatch):
    import kexue.eg._common as common

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(common, "_compiled", {})
    monkeypatch.setattr(common, "_broken", set())
    res = []
    for kw in (dict(compile=False), dict(compile=True)):
        net, X, Y = problem(seed=1, dtype=torch.float32)
        opt = OPTS[oname](list(net.parameters()), **kw)
        if kw["compile"]:
            with pytest.warns(common.CompileFallbackWarning, match="no C.. compiler"):
                train_steps(net, opt, X, Y, 6)
        else:
            train_steps(net, opt, X, Y, 6)
        res.append(list(net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(*res))  # exactly the multi-tensor path


def test_compile_default_is_off_for_small_groups(monkeypatch):
    import kexue.eg._common as common

    def never(*a, **k):
        raise AssertionError("compiled a small group")
    monkeypatch.setattr(torch, "compile", never)
    monkeypatch.setattr(common, "_compiled", {})
    for oname in FUSED:
        net, X, Y = problem()
        train_steps(net, OPTS[oname](list(net.parameters())), X, Y, 3)
    big = torch.nn.Parameter(torch.zeros(common.COMPILE_MIN_NUMEL))
    assert common.want_compiled({"compile": None}, [(big, big)])
    assert not common.want_compiled({"compile": False}, [(big, big)])
