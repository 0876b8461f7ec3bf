"""Tests for kexue.exact (SPEC 6): the orthant probability, its analytic gradient, the losses,
and the SPEC 6.1 toy numbers."""

import math

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch: the 'torch' extra")

from kexue.exact import (EXACTLoss, MulticlassHingeLoss, SmoothAccuracyLoss, conditional_orthant_grad, genz_orthant,
                         genz_orthant_grad, logit_deltas, orthant_probability, orthant_probability_quadrature,
                         ToyThreshold, compare_runs, mean_sd, sigma_schedule, toy_loss, toy_optimum)
from kexue.utils import KexueError, KexueTypeError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small tensors: threads only add contention on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mc_orthant(m: np.ndarray, draws: int, rng) -> tuple[float, float]:
    """Plain Monte Carlo of P(z > 0), z ~ N(m, I + 11^T) via z = m + eps + t 1; (estimate, s.e.)."""
    hits = 0
    chunk = 100_000
    for _ in range(draws // chunk):
        z = m + rng.standard_normal((chunk, len(m))) + rng.standard_normal((chunk, 1))
        hits += int((z > 0).all(axis=1).sum())
    p = hits / draws
    return p, math.sqrt(max(p * (1 - p), 1e-300) / draws)


@pytest.mark.parametrize("d,sigma", [
    ([0.5, -0.3], 1.0),
    ([1.0, 0.2, 0.8, 1.5], 0.7),
    ([2.0, 1.0, 0.0, 1.5, 2.5, 3.0, 0.5, 1.2, 2.2], 1.0),
    ([0.3] * 15, 0.5),
])
def test_orthant_matches_monte_carlo_1e6(d, sigma):
    rng = np.random.default_rng(123)
    m = np.asarray(d) / sigma
    p_mc, se = _mc_orthant(m, 1_000_000, rng)
    torch.manual_seed(0)
    p = float(orthant_probability(torch.tensor([d], dtype=torch.float64), sigma, n_samples=4096)[0])
    assert p_mc > 0.01  # the cases are chosen so the test has power
    assert abs(p - p_mc) < 3 * se, (p, p_mc, se)


def test_orthant_matches_quadrature_and_mc_sampler():
    torch.manual_seed(1)
    d = torch.randn(6, 7, dtype=torch.float64) + 1.0
    ref = orthant_probability_quadrature(d, 0.8)
    sob = orthant_probability(d, 0.8, n_samples=8192)
    mc = orthant_probability(d, 0.8, n_samples=8192, method="mc")
    assert torch.allclose(sob, ref, rtol=2e-3, atol=1e-5)
    assert torch.allclose(mc, ref, rtol=3e-2, atol=1e-3)
    # quasi-random points are more accurate than pseudo-random ones at the same budget
    assert (sob - ref).abs().sum() < (mc - ref).abs().sum()


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_two_classes_closed_form(sigma):
    d = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    p = orthant_probability(d, sigma, n_samples=16)
    assert torch.allclose(p, torch.special.ndtr(d[:, 0] / (sigma * math.sqrt(2))), atol=1e-14)


def test_gradcheck_three_classes_float64():
    # with the random points fixed (seeded), the estimator is a deterministic smooth function;
    # n = 2 needs one sampled dimension, so 2^14 Sobol points make it accurate to ~1e-9
    def f(d):
        torch.manual_seed(0)
        return orthant_probability(d, 0.9, n_samples=1 << 14)

    d = torch.tensor([[0.3, -0.4], [1.2, 0.5], [-0.7, 2.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (d,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_analytic_gradient_matches_finite_differences():
    torch.manual_seed(2)
    d = (torch.randn(4, 6, dtype=torch.float64) * 0.7 + 0.8).requires_grad_(True)
    sigma = 0.8
    g, = torch.autograd.grad(orthant_probability(d, sigma, n_samples=8192).sum(), d)
    # central differences of the (deterministic, near-exact) 1-D quadrature
    h = 1e-5
    fd = torch.zeros_like(d)
    for i in range(d.shape[1]):
        e = torch.zeros_like(d)
        e[:, i] = h
        fd[:, i] = (orthant_probability_quadrature(d.detach() + e, sigma) - orthant_probability_quadrature(d.detach() - e, sigma)) / (2 * h)
    assert torch.allclose(g, fd, rtol=5e-3, atol=1e-5), (g - fd).abs().max()
    # and the sigma gradient goes through the chain rule
    s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    gs, = torch.autograd.grad(orthant_probability(d.detach(), s, n_samples=8192).sum(), s)
    fds = (orthant_probability_quadrature(d.detach(), sigma + h).sum() - orthant_probability_quadrature(d.detach(), sigma - h).sum()) / (2 * h)
    assert abs(float(gs) - float(fds)) < 5e-3 * abs(float(fds)) + 1e-5


def test_genz_general_rho_against_monte_carlo():
    # the conditional problems of the gradient use covariance I + rho 11^T with rho = 1/2
    rng = np.random.default_rng(5)
    m = np.array([0.2, 0.9, -0.1, 0.6])
    z = m + rng.standard_normal((400_000, 4)) + math.sqrt(0.5) * rng.standard_normal((400_000, 1))
    p_mc = (z > 0).all(1).mean()
    se = math.sqrt(p_mc * (1 - p_mc) / len(z))
    torch.manual_seed(0)
    p = float(genz_orthant(torch.tensor(m[None]), rho=0.5, n_samples=4096)[0])
    assert abs(p - p_mc) < 3 * se


def test_quadrature_method_agrees_with_genz_including_gradient_and_truncation():
    torch.manual_seed(3)
    d = (torch.randn(5, 8, dtype=torch.float64) + 0.5).requires_grad_(True)
    for k in (None, 4):
        pg = orthant_probability(d, 0.7, n_samples=8192, truncate=k)
        gg, = torch.autograd.grad(pg.sum(), d)
        pq = orthant_probability(d, 0.7, n_samples=96, method="quadrature", truncate=k)
        gq, = torch.autograd.grad(pq.sum(), d)
        assert torch.allclose(pg, pq, rtol=3e-3, atol=1e-5)
        assert torch.allclose(gg, gq, rtol=1e-2, atol=1e-5)
    assert (gq.abs() > 0).sum(1).eq(4).all()  # truncation: only the 4 hardest classes get gradient


def test_same_seed_same_value_and_batch_shape():
    d = torch.randn(2, 3, 5)
    torch.manual_seed(7)
    a = orthant_probability(d, 1.0, 16)
    torch.manual_seed(7)
    b = orthant_probability(d, 1.0, 16)
    assert a.shape == (2, 3) and torch.equal(a, b)
    assert ((a >= 0) & (a <= 1)).all()


def test_truncation_keeps_hardest_classes():
    torch.manual_seed(0)
    d = torch.tensor([[0.2, 0.5, 9.0, 12.0, 0.1, 15.0]], dtype=torch.float64, requires_grad=True)
    full = orthant_probability(d, 1.0, 4096)
    g_full, = torch.autograd.grad(full.sum(), d)
    trunc = orthant_probability(d, 1.0, 4096, truncate=3)
    g_tr, = torch.autograd.grad(trunc.sum(), d)
    # the far classes (delta 9, 12, 15) hardly matter: dropping them changes p by < 0.2 %
    assert abs(full.item() - trunc.item()) < 2e-3 * full.item()
    assert (g_tr[0, [2, 3, 5]] == 0).all() and (g_tr[0, [0, 1, 4]] != 0).all()
    assert torch.allclose(g_tr[0, [0, 1, 4]], g_full[0, [0, 1, 4]], rtol=1e-2)


def test_exact_loss_matches_quadrature_and_is_argmax_invariant():
    torch.manual_seed(0)
    logits = torch.randn(64, 5, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (64,))
    loss = EXACTLoss(sigma=0.5, standardize=True, grad_norm=False, n_samples=4096)
    z = (logits - logits.mean()) / logits.std()
    ref = 1 - orthant_probability_quadrature(logit_deltas(z, y), 0.5).mean()
    assert abs(float(loss(logits, y)) - float(ref)) < 2e-3
    # standardisation is a shift and a positive scale: the loss is unchanged by them
    torch.manual_seed(1)
    a = loss(logits, y)
    torch.manual_seed(1)
    b = loss(3.0 * logits + 7.0, y)
    assert torch.allclose(a, b, atol=1e-10)


def test_exact_margin_and_gradient_normalisation():
    torch.manual_seed(0)
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1])
    loss = EXACTLoss(sigma=1.0, margin=1.0, standardize=False, grad_norm=False, n_samples=256)
    loss(logits, y).backward()
    # the first sample wins by 5 > margin: it no longer pulls
    assert torch.all(logits.grad[0] == 0) and logits.grad[1].abs().sum() > 0
    # gradient normalisation: the first step's logit gradient has unit norm
    logits.grad = None
    normed = EXACTLoss(sigma=1.0, standardize=False, grad_norm=True, n_samples=256)
    normed(logits, y).backward()
    assert abs(float(logits.grad.norm()) - 1.0) < 1e-9


def test_exact_loss_sigma_schedule_advances_only_in_training():
    sched = sigma_schedule(1.0, 0.1, 10, "exp")
    assert sched(0) == 1.0 and abs(sched(10) - 0.1) < 1e-12 and abs(sched(5) - math.sqrt(0.1)) < 1e-12
    assert sched(50) == sched(10)
    lin, cos = sigma_schedule(1.0, 0.5, 4, "linear"), sigma_schedule(1.0, 0.5, 4, "cosine")
    assert lin(2) == 0.75 and abs(cos(2) - 0.75) < 1e-12 and cos(4) == 0.5
    loss = EXACTLoss(sigma=sched)
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss(x, y)
    loss(x, y)
    assert loss.current_sigma() == sched(2)
    loss.eval()
    loss(x, y)
    assert loss.current_sigma() == sched(2)


def test_smooth_accuracy_and_hinge():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    p = torch.softmax(logits, 1)[[0, 1], [0, 1]]
    assert torch.allclose(SmoothAccuracyLoss()(logits, y), -p.mean())
    assert torch.allclose(SmoothAccuracyLoss(log=True)(logits, y), -p.mean().log())
    # Crammer–Singer: max(0, 1 - 2) = 0 and max(0, 1 - (1 - 3)) = 3
    assert torch.allclose(MulticlassHingeLoss()(logits, y), torch.tensor(1.5))


@pytest.mark.parametrize("bad", [
    lambda: EXACTLoss()(torch.randn(4, 3), torch.tensor([0, 1, 2, 3])),  # label out of range
    lambda: EXACTLoss()(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0])),
    lambda: EXACTLoss()(torch.randn(4, 3), torch.tensor([0, 1])),
    lambda: EXACTLoss(sigma=-1.0),
    lambda: EXACTLoss(method="halton"),
    lambda: orthant_probability(torch.randn(3, 2), 0.0),
    lambda: sigma_schedule(1.0, 0.0, 10),
])
def test_bad_input_raises_kexue_error(bad):
    with pytest.raises(KexueError):
        bad()


def test_toy_numbers_of_spec_6_1():
    assert abs(toy_optimum("ce", 1) - 0.7) < 5e-3
    assert toy_optimum("hinge", 1) == (0.75, 1.0)
    assert abs(toy_optimum("ce", 10) - 0.131) < 5e-4
    assert abs(toy_optimum("ce", 100) - 0.125) < 5e-4
    # CE and hinge at k = 1 misclassify the positive point; with the scale CE gets all three
    assert toy_loss(toy_optimum("ce", 1), "error") == pytest.approx(1 / 3)
    assert toy_loss(toy_optimum("ce", 10), "error", 10) == 0
    # EXACT with a small sigma lands in the perfect-accuracy interval (0, 0.25)
    assert 0 < toy_optimum("exact", 1, 0.1) < 0.25


def test_exact_trains_a_linear_model_on_digits():
    from kexue.data import load_tabular
    from kexue.train import train

    X, y = load_tabular("digits")
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    loss = EXACTLoss(sigma=sigma_schedule(1.0, 0.1, 150))
    res = train(model, lambda m, b: loss(m(b[0]), b[1]), [X[:1400], y[:1400]], steps=150, batch_size=64, lr=0.05, seed=0)
    acc = float((res.model(X[1400:]).argmax(1) == y[1400:]).float().mean())
    assert acc > 0.85, acc


# ------------------------------------------------------------------ the fast path (issue 14)


@pytest.mark.parametrize("method", ["sobol", "mc"])
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_fast_path_value_is_the_reference_value(method, n):
    m = torch.randn(7, n, dtype=torch.float64) + 0.5
    torch.manual_seed(3)
    ref = genz_orthant(m, 1.0, 16, method)
    torch.manual_seed(3)
    p, g = genz_orthant_grad(m, 1.0, 16, method)
    assert torch.equal(p, ref)
    assert g.shape == m.shape and torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_fast_gradient_matches_the_conditional_reference(dtype, rho):
    torch.manual_seed(4)
    m = (torch.randn(6, 9, dtype=torch.float64) * 0.8 + 0.6)
    _, g = genz_orthant_grad(m.to(dtype), rho, 8192)
    ref = conditional_orthant_grad(m, rho, 8192)
    assert g.dtype == dtype
    assert torch.allclose(g.double(), ref, rtol=1e-2, atol=2e-5), (g.double() - ref).abs().max()


def test_float32_path_matches_quadrature_and_stays_finite_for_many_classes():
    torch.manual_seed(5)
    d = torch.randn(32, 9) + 1.0
    p = orthant_probability(d, 0.8, n_samples=4096)
    assert p.dtype == torch.float32
    assert torch.allclose(p.double(), orthant_probability_quadrature(d.double(), 0.8), atol=2e-3)
    # 300 classes: the float32 products and the erfinv clamp must not overflow or give NaN,
    # including rows whose true class is far behind (p ~ 0) and far ahead (p ~ 1)
    logits = torch.randn(8, 300, requires_grad=True)
    y = torch.randint(0, 300, (8,))
    big = logits.detach().clone()
    big[0, y[0]] += 30.0
    big[1, y[1]] -= 30.0
    big.requires_grad_(True)
    loss = EXACTLoss(sigma=0.5, grad_norm=False, standardize=False)
    loss(big, y).backward()
    assert torch.isfinite(big.grad).all() and (loss.expected_accuracy(big.detach(), y)[:2] - torch.tensor([1.0, 0.0])).abs().max() < 1e-3


# ------------------------------------------------------------------ torch.nn loss conventions (issues 15, 17.4)

LOSSES = [
    lambda **kw: EXACTLoss(sigma=0.7, n_samples=64, **kw),
    lambda **kw: EXACTLoss(sigma=0.7, truncate=3, margin=2.0, standardize=False, **kw),
    lambda **kw: MulticlassHingeLoss(**kw),
    lambda **kw: SmoothAccuracyLoss(**kw),
]


def _seeded(loss, logits, y):
    torch.manual_seed(11)
    return loss(logits, y)


@pytest.mark.parametrize("make", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_spatial_inputs_equal_their_flattening(make, reduction):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4, 2, dtype=torch.float64, requires_grad=True)  # (N, C, d1, d2)
    y = torch.randint(0, 5, (3, 4, 2))
    flat = logits.detach().permute(0, 2, 3, 1).reshape(-1, 5).requires_grad_(True)
    a = _seeded(make(reduction=reduction), logits, y)
    b = _seeded(make(reduction=reduction), flat, y.reshape(-1))
    assert a.shape == ((3, 4, 2) if reduction == "none" else ())
    assert torch.allclose(a.reshape(-1), b.reshape(-1), rtol=1e-12, atol=1e-14)
    a.sum().backward()
    b.sum().backward()
    assert torch.allclose(logits.grad.permute(0, 2, 3, 1).reshape(-1, 5), flat.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", LOSSES)
def test_reductions_are_mean_and_sum_of_the_per_sample_losses(make):
    torch.manual_seed(1)
    logits = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (10,))
    per = _seeded(make(reduction="none"), logits, y)
    assert per.shape == (10,)
    assert torch.allclose(_seeded(make(reduction="mean"), logits, y), per.mean(), rtol=1e-12)
    assert torch.allclose(_seeded(make(reduction="sum"), logits, y), per.sum(), rtol=1e-12)


def test_per_sample_losses_by_brute_force():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    p = torch.softmax(logits, 1)[[0, 1], [0, 1]]
    assert torch.allclose(SmoothAccuracyLoss(reduction="none")(logits, y), -p)
    assert torch.allclose(MulticlassHingeLoss(reduction="none")(logits, y), torch.tensor([0.0, 3.0], dtype=torch.float64))
    # EXACT per sample = 1 - the orthant probability of that sample's deltas (quadrature reference)
    ex = EXACTLoss(sigma=0.6, standardize=False, grad_norm=False, n_samples=8192, reduction="none")
    ref = 1 - orthant_probability_quadrature(logit_deltas(logits, y), 0.6)
    assert torch.allclose(ex(logits, y), ref, atol=1e-4)


@pytest.mark.parametrize("make", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignore_index_equals_dropping_those_rows(make, reduction):
    torch.manual_seed(2)
    logits = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (9,))
    y[[1, 4, 5]] = -100
    keep = y != -100
    a = _seeded(make(reduction=reduction), logits, y)
    kept = logits.detach()[keep].requires_grad_(True)
    b = _seeded(make(reduction=reduction), kept, y[keep])
    if reduction == "none":
        assert (a[~keep] == 0).all() and torch.allclose(a[keep], b, rtol=1e-12)
    else:
        assert torch.allclose(a, b, rtol=1e-12)
    a.sum().backward()
    b.sum().backward()
    assert (logits.grad[~keep] == 0).all() and torch.allclose(logits.grad[keep], kept.grad, rtol=1e-12, atol=1e-14)


def test_custom_ignore_index_and_unbatched_input():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert MulticlassHingeLoss(ignore_index=1, reduction="sum")(logits, torch.tensor([1, 1])) == 0
    one = MulticlassHingeLoss(reduction="none")(torch.tensor([0.5, 0.0]), torch.tensor(0))
    assert one.shape == () and torch.isclose(one, torch.tensor(0.5))


def test_float_labels_give_a_one_line_type_error():
    for loss in (EXACTLoss(), MulticlassHingeLoss(), SmoothAccuracyLoss()):
        with pytest.raises(KexueTypeError, match="integer class indices") as e:
            loss(torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]))
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [
    lambda: EXACTLoss(reduction="avg"),
    lambda: EXACTLoss(n_samples=0),
    lambda: EXACTLoss(truncate=0),
    lambda: EXACTLoss(margin=-1.0),
    lambda: MulticlassHingeLoss(reduction="max"),
    lambda: SmoothAccuracyLoss(log=True, reduction="none"),
    lambda: EXACTLoss()(torch.randn(4, 3, 2), torch.randint(0, 3, (4, 3))),  # labels (N, d) must match
    lambda: EXACTLoss()(torch.randn(4, 1), torch.zeros(4, dtype=torch.long)),  # one class
])
def test_bad_settings_and_shapes_raise_one_line_kexue_error(bad):
    with pytest.raises(KexueError) as e:
        bad()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ helpers used by the experiment


def test_compare_runs_welch_outcomes_and_mean_sd():
    from scipy.stats import ttest_ind

    a, b = [0.991, 0.992, 0.990, 0.993], [0.981, 0.983, 0.980, 0.982]
    c = compare_runs(a, b)
    assert c.outcome == "a better" and c.pvalue == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert compare_runs(b, a).outcome == "b better" and compare_runs(b, a).diff == pytest.approx(-c.diff)
    assert compare_runs([0.5, 0.6], [0.55, 0.52]).outcome == "no significant difference"
    same = compare_runs([0.9, 0.9], [0.9, 0.9])  # no spread: untestable, not "significant"
    assert math.isnan(same.pvalue) and same.outcome == "no significant difference"
    assert mean_sd([0.99, 0.98]) == "98.50 ± 0.71" and mean_sd([0.5]) == "50.00"
    with pytest.raises(KexueError):
        compare_runs([0.9, float("nan")], [0.8, 0.7])


def test_exact_loss_trains_the_toy_threshold_into_the_perfect_interval():
    from kexue.train import train

    x = torch.tensor([[-0.25], [0.0], [0.25]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    loss = EXACTLoss(sigma=sigma_schedule(1.0, 0.01, 500), standardize=False)
    model = ToyThreshold(0.7)
    assert model(x).shape == (3, 2)
    res = train(model, lambda m, b: loss(m(b[0]), b[1]), [x, y], steps=500, batch_size=3,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.01), seed=0)
    assert 0 < res.model.b.item() < 0.25  # CE from the same start stays at 0.7 (SPEC 6.1)
