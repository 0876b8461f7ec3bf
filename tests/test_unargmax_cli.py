"""The unargmax command's output (issue 31 item 6) and its --reach option (issue 32 item 4)."""

import numpy as np

from kexue.unargmax import planted_layer


def test_counts_header_is_whole_at_80_columns(tmp_path, cli, monkeypatch):
    from kexue.cli import out_console

    monkeypatch.setattr(out_console, "_width", 80)
    W, _, _ = planted_layer(200, 6, 5, seed=0)
    np.save(tmp_path / "w.npy", W)
    r = cli("unargmax", tmp_path / "w.npy", "--show", "0")
    assert r.code == 0, r.err
    assert max(len(line) for line in r.out.splitlines()) <= 80
    head = r.out.split("per stage")[0]
    assert "…" not in head
    for word in ("classes", "argmaxable", "(witness)", "near-", "unargmaxable", "(certificate)", "undecided", "wall s"):
        assert word in head, word
