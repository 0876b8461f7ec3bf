"""Progress opened by a library loop is closed when the loop raises (a live rich display left
behind swallows the error line printed after it), and the CLI's counts say "1 row", not "1 rows"."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kexue.ddpm import DDIMSampler, DDPM, UNetConfig, linear_schedule, variational_bound
from kexue.vae import VAE, VAEConfig, log_likelihood


class Boom(RuntimeError):
    pass


class OpenSpy:
    """A tracker whose ``track`` is open (like a rich Progress context) until its generator ends
    or is closed; ``open`` counts the displays still live, ``items`` what passed through."""

    def __init__(self):
        self.open, self.items = 0, 0

    def track(self, iterable, description="", total=None):
        self.open += 1
        try:
            for item in iterable:
                self.items += 1
                yield item
        finally:
            self.open -= 1

    def log(self, message):
        pass


def _raising_net(after: int):
    """A network (any callable of (x, t)) that returns zeros ``after`` times, then raises."""
    calls = []

    def net(x, t):
        calls.append(t)
        if len(calls) > after:
            raise Boom("the network failed mid-loop")
        return torch.zeros_like(x)

    return net


def test_the_sampler_closes_its_progress_when_a_step_raises():
    spy = OpenSpy()
    sampler = DDIMSampler(linear_schedule(20), steps=5)
    with pytest.raises(Boom) as e:  # e keeps the traceback alive, as a handler printing it does
        sampler(_raising_net(2), shape=(2, 1, 4, 4), generator=torch.Generator().manual_seed(0), tracker=spy)
    assert spy.items == 3, "the loop raised in its third step, not before it started"
    assert spy.open == 0, "the progress display is still live after the error"
    del e
    spy = OpenSpy()  # and a loop that finishes closes it too
    sampler(_raising_net(10), shape=(2, 1, 4, 4), generator=torch.Generator().manual_seed(0), tracker=spy)
    assert spy.items == 5 and spy.open == 0


def test_the_variational_bound_closes_its_progress_when_a_term_raises():
    spy = OpenSpy()
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    with pytest.raises(Boom) as e:  # e keeps the traceback alive, as a handler printing it does
        variational_bound(_raising_net(1), x0, linear_schedule(6), batch_size=8, tracker=spy)
    assert spy.items == 2 and spy.open == 0, e.value


def test_the_vae_likelihood_closes_its_progress_when_a_chunk_raises(monkeypatch):
    spy = OpenSpy()
    model = VAE(VAEConfig(in_dim=6, latent_dim=2, hidden=(4,)))
    real, calls = model.log_weights, []

    def log_weights(x, k, generator=None):
        calls.append(len(x))
        if len(calls) > 1:
            raise Boom("the decoder failed mid-loop")
        return real(x, k, generator=generator)

    monkeypatch.setattr(model, "log_weights", log_weights)
    x = (np.random.default_rng(0).random((6, 6)) < 0.5).astype(np.float32)
    with pytest.raises(Boom) as e:  # e keeps the traceback alive, as a handler printing it does
        log_likelihood(model, x, K=3, batch=2, fast=False, tracker=spy)
    assert spy.items == 2 and spy.open == 0, e.value


def test_the_ddpm_and_vae_commands_count_one_row_in_the_singular(cli, tmp_path):
    torch.manual_seed(0)
    ddpm = tmp_path / "ddpm.safetensors"
    DDPM(UNetConfig(base=4, mults=(1,)), linear_schedule(4), side=8).save(ddpm)
    r = cli("ddpm", "sample", ddpm, "-n", 1, "--steps", 2, "--threads", 1, "-o", tmp_path / "s.npy")
    assert r.code == 0, r.err
    assert "(1 sample," in r.out, r.out
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((1, 8, 8)).astype(np.float32))
    r = cli("ddpm", "nll", ddpm, tmp_path / "img.npy", "--timesteps", 1, "--threads", 1)
    assert r.code == 0, r.err
    assert "bits/dim on 1 image " in r.out, r.out

    vae = tmp_path / "vae.safetensors"
    VAE(VAEConfig(in_dim=6, latent_dim=2, hidden=(4,))).save(vae)
    np.save(tmp_path / "one.npy", np.array([[0, 1, 1, 0, 1, 0]], dtype=np.float32))
    r = cli("vae", "score", vae, tmp_path / "one.npy", "-K", 3, "--threads", 1, "-o", tmp_path / "scores.npy")
    assert r.code == 0, r.err
    assert r.out.startswith("1 row ·"), r.out
    r = cli("vae", "sample", vae, "-n", 1, "-o", tmp_path / "one_sample.npy")
    assert r.code == 0, r.err
    assert r.out.startswith("1 sample →"), r.out
    np.save(tmp_path / "two.npy", np.array([[0, 1, 1, 0, 1, 0]] * 2, dtype=np.float32))
    r = cli("vae", "score", vae, tmp_path / "two.npy", "-K", 3, "--threads", 1, "-o", tmp_path / "scores2.npy")
    assert r.code == 0 and r.out.startswith("2 rows ·"), (r.err, r.out)
