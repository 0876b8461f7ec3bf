"""kexue.train (issue 31): the library's thread policy and Ctrl-C during a resumable run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kexue.train import TrainingInterrupted, load_checkpoint, num_threads, train  # noqa: E402


def _problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 4, generator=g)
    return X, (X[:, 0] > 0).long()


def _fresh():
    from kexue.nets import MLP

    torch.manual_seed(3)
    return MLP([4, 8, 2])


def _ce(m, b):
    return torch.nn.functional.cross_entropy(m(b[0]), b[1])


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threads_applies_to_the_call_only_and_none_keeps_torchs_setting(two_threads):
    X, y = _problem()
    seen = []

    def loss(m, b):
        seen.append(torch.get_num_threads())
        return _ce(m, b)

    train(_fresh(), loss, [X, y], steps=3, batch_size=20, threads=1)
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    seen.clear()
    train(_fresh(), loss, [X, y], steps=2, batch_size=20)
    assert seen == [2, 2]
    with num_threads(None):
        assert torch.get_num_threads() == 2
    from kexue.utils import KexueError

    with pytest.raises(KexueError, match="threads"):
        train(_fresh(), loss, [X, y], steps=2, batch_size=20, threads=0)


class _Interrupt:
    """A loss (or on_step hook) that presses Ctrl-C when step ``at`` comes."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def loss(self, m, b):
        if self.calls == self.at:
            raise KeyboardInterrupt
        self.calls += 1
        return _ce(m, b)

    def on_step(self, step, value):
        if step == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_checkpoints_the_last_whole_step_and_resumes_exactly(tmp_path):
    X, y = _problem()
    full = train(_fresh(), _ce, [X, y], steps=12, batch_size=20)
    ck = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt) as e:  # still a KeyboardInterrupt for callers that catch that
        train(_fresh(), _Interrupt(7).loss, [X, y], steps=12, batch_size=20, ckpt=ck, ckpt_every=5)
    assert isinstance(e.value, TrainingInterrupted) and e.value.step == 7 and e.value.ckpt == ck
    assert int(load_checkpoint(ck)["step"]) == 7  # saved at the interrupt, not only at step 5
    res = train(_fresh(), _ce, [X, y], steps=12, batch_size=20, ckpt=ck, ckpt_every=5, resume=True)
    assert res.losses == full.losses and res.legs == 2


def test_ctrl_c_inside_an_update_keeps_the_last_checkpoint(tmp_path):
    X, y = _problem()
    ck = tmp_path / "run.pt"
    with pytest.raises(TrainingInterrupted) as e:  # during step 7's bookkeeping: not a whole step
        train(_fresh(), _ce, [X, y], steps=12, batch_size=20, ckpt=ck, ckpt_every=5, on_step=_Interrupt(7).on_step)
    assert e.value.step == 5 and int(load_checkpoint(ck)["step"]) == 5
    with pytest.raises(TrainingInterrupted) as e:  # without a checkpoint file there is no step to name
        train(_fresh(), _Interrupt(3).loss, [X, y], steps=12, batch_size=20)
    assert e.value.step is None
