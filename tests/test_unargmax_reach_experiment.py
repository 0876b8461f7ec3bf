"""Sections 3b and 5b of the unargmax experiment (issue 32 item 4): R from a model's own final
hidden states (a GGUF run offline through transformers), the check that its logits are h·Wᵀ + b of
the layer the audit reads, and Gemma's section, which never downloads in quick mode."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.experiments import _unargmax_reach as reach
from kexue.report import Context
from kexue.unargmax import OutputLayer, planted_layer, reachable

COLUMNS = ["R", "classes", "cannot reach 0.5", "cannot reach 0.9", "widest interval", "seconds", "load before"]
SUFFIXES = ("radius", "seconds", "classes", "max_width", "below_0.5", "below_0.9", "unresolved", "below_0.9_tokens")


def _tiny_gguf(path, d=16, ff=32, heads=2, seed=0):
    """A one-block llama GGUF (F32, random weights, tied head, a byte-level vocabulary of the
    printable ASCII characters and the space) that transformers and kexue's loader both read."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    toks = [chr(c) for c in range(33, 127)] + ["\u0120", "<|endoftext|>"]  # Ġ: the byte-level space
    V = len(toks)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(d // heads)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(toks)
    w.add_token_types([1] * (V - 1) + [3])
    w.add_token_scores([0.0] * V)
    w.add_token_merges([])
    w.add_bos_token_id(V - 1)
    w.add_eos_token_id(V - 1)

    def f(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    w.add_tensor("token_embd.weight", f(V, d))
    for name, shape in [("attn_q", (d, d)), ("attn_k", (d, d)), ("attn_v", (d, d)), ("attn_output", (d, d)),
                        ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)), ("ffn_down", (d, ff))]:
        w.add_tensor(f"blk.0.{name}.weight", f(*shape))
    for name in ("blk.0.attn_norm", "blk.0.ffn_norm", "output_norm"):
        w.add_tensor(f"{name}.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from kexue.unargmax import load_output_layer

    path = _tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return path, load_output_layer(path)


@pytest.mark.slow  # importing transformers and torch: 11 s at nice 19, load ~9
def test_hidden_norms_of_a_tiny_gguf_are_the_inputs_of_its_head(tiny, capfd):
    path, layer = tiny
    sents = ["hello world", "a cat"]  # 11 + 5 tokens in this vocabulary (one per character, no <bos>)
    hn = reach.hidden_norms(path, sents, layer.W, layer.b)
    assert hn.norms.shape == (16,) and np.all(hn.norms > 0)
    assert np.array_equal(hn.first, hn.norms[[0, 11]])
    assert np.array_equal(hn.rest, np.delete(hn.norms, [0, 11]))
    assert hn.softcap is None and hn.linear() and hn.logit_diff <= 1e-5 * hn.logit_scale
    assert capfd.readouterr().err == ""  # the GGUF reader's progress bar stays off the console
    # a head that is not the model's: the check fails (a 1% change of W moves the logits by ~1%)
    off = reach.hidden_norms(path, sents[:1], layer.W * 1.01, layer.b)
    assert not off.linear() and off.logit_diff > 100 * hn.logit_diff
    assert "not h·Wᵀ" in reach._linearity(off, False) and "equal h·Wᵀ" in reach._linearity(hn, False)
    assert reach.hidden_norms(path, sents).logit_diff is None  # no head: nothing checked


def test_hidden_norms_is_none_for_an_unreadable_file(tmp_path):
    pytest.importorskip("transformers")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    assert reach.hidden_norms(bad, ["hello"]) is None


@pytest.mark.slow  # the tiny model through transformers (imports shared with the test above)
def test_smollm2_section_runs_on_a_tiny_model(tiny, tmp_path, monkeypatch):
    """Section 3b, end to end through transformers, with the tiny GGUF standing in for SmolLM2."""
    path, layer = tiny
    monkeypatch.setattr("kexue.data.smollm2_path", lambda: path)
    monkeypatch.setattr(reach, "_sentences", lambda data_dir, n: ["hello world", "a cat"])
    ctx = Context(name="unargmax", quick=False, root=tmp_path)
    reach.run(ctx, layer, 1)
    norms = ctx.metrics["reach_smollm2_hidden_norms"]
    assert norms["tokens"] == 16 and norms["logit_max_abs_diff"] <= 1e-5 * norms["logit_max_abs"]
    assert ctx.metrics["reach_smollm2_radius"] == norms["max"] and ctx.metrics["reach_smollm2_rmin_radius"] == norms["min"]
    assert ctx.metrics["reach_smollm2_classes"] == layer.W.shape[0]
    assert ctx.tables["reachable"]["columns"] == COLUMNS
    assert "equal h·Wᵀ" in ctx.markdown()


def test_gemma_section_skips_in_one_line_when_not_cached(tmp_path, monkeypatch):
    from kexue.unargmax import zoo

    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "empty-cache"))

    def no_download(*a, **k):
        raise AssertionError("quick mode downloaded Gemma")

    monkeypatch.setattr(zoo, "_download", no_download)
    ctx = Context(name="unargmax", quick=True, root=tmp_path)
    reach.run_gemma(ctx, 1)
    assert ctx.parts[0].startswith("### 5b.")
    assert ctx.parts[1].startswith("Skipped") and ctx.parts[1].count("\n") == 1
    assert "ZooUnavailable" in ctx.metrics["reach_gemma3_skipped"]
    assert not any(k.startswith("reach_gemma3_") and k != "reach_gemma3_skipped" for k in ctx.metrics)


def _stand_in(monkeypatch, hn):
    """Gemma's layer replaced by a planted one (400 classes: the quick sample of 256 is a real
    subset) and its model run by ``hn``."""
    from kexue.unargmax import zoo

    W, b, _ = planted_layer(400, 8, 40, seed=2)
    layer = OutputLayer(W=W, b=b, source="stand-in", vocab=[f"t{i}" for i in range(400)])
    monkeypatch.setattr(zoo, "fetch", lambda key, download=True: "stand-in.gguf")
    monkeypatch.setattr(zoo, "load", lambda key, download=True: layer)
    monkeypatch.setattr(reach, "hidden_norms", lambda path, sents, W=None, b=None: hn)
    monkeypatch.setattr(reach, "_sentences", lambda data_dir, n: ["s"] * 3)
    return layer


def test_gemma_section_publishes_its_metrics_at_the_models_norms(tmp_path, monkeypatch):
    hn = reach.HiddenNorms(np.array([1.5, 60.0, 20.0, 30.0]), np.array([1.5, 30.0]), np.array([60.0, 20.0]), 2e-6, 20.0, None)
    layer = _stand_in(monkeypatch, hn)
    ctx = Context(name="unargmax", quick=True, root=tmp_path, seed=7)
    reach.run_gemma(ctx, 1)
    m = ctx.metrics
    for tag in ("reach_gemma3", "reach_gemma3_rmin"):
        for s in SUFFIXES:
            assert f"{tag}_{s}" in m, f"{tag}_{s}"
    assert m["reach_gemma3_hidden_norms"]["min"] == 1.5 and m["reach_gemma3_hidden_norms"]["max"] == 60.0
    assert m["reach_gemma3_hidden_norms"]["later_positions_min"] == 20.0
    assert (m["reach_gemma3_radius"], m["reach_gemma3_rmin_radius"]) == (60.0, 1.5)
    assert m["reach_gemma3_classes"] == m["reach_gemma3_rmin_classes"] == reach.GEMMA_CLASSES[True]
    assert ctx.tables["reachable_gemma3"]["columns"] == COLUMNS and len(ctx.tables["reachable_gemma3"]["rows"]) == 2
    # the counts are those of the seeded sample, recomputed here
    classes = np.sort(np.random.default_rng(7).choice(400, reach.GEMMA_CLASSES[True], replace=False))
    for tag, R in (("reach_gemma3", 60.0), ("reach_gemma3_rmin", 1.5)):
        rr = reachable(layer.W, layer.b, R, classes=classes, reach_tol=1e-4)
        assert m[f"{tag}_below_0.5"] == rr.below(0.5).size and m[f"{tag}_below_0.9"] == rr.below(0.9).size
        assert m[f"{tag}_below_0.9_tokens"] == [f"t{k}" for k in rr.below(0.9)[:60]]
    assert m["reach_gemma3_rmin_below_0.9"] > m["reach_gemma3_below_0.9"]  # a smaller ball reaches less
    assert "equal h·Wᵀ" in ctx.markdown()


def test_gemma_section_says_when_the_logits_are_not_the_layers_and_falls_back_without_the_model(tmp_path, monkeypatch):
    off = reach.HiddenNorms(np.array([2.0, 3.0]), np.array([2.0]), np.array([3.0]), 0.5, 20.0, 30.0)
    _stand_in(monkeypatch, off)
    ctx = Context(name="unargmax", quick=True, root=tmp_path)
    reach.run_gemma(ctx, 1)
    assert "not h·Wᵀ" in ctx.markdown() and "soft-cap of 30" in ctx.markdown()

    _stand_in(monkeypatch, None)  # transformers missing or the model unreadable: the stated range
    ctx = Context(name="unargmax", quick=True, root=tmp_path)
    reach.run_gemma(ctx, 1)
    assert (ctx.metrics["reach_gemma3_rmin_radius"], ctx.metrics["reach_gemma3_radius"]) == reach.GEMMA_FALLBACK_R
    assert "reach_gemma3_hidden_norms" not in ctx.metrics and "was not run" in ctx.markdown()


def test_quiet_gguf_load_silences_the_gguf_readers_bar_and_restores_everything(capfd):
    pytest.importorskip("transformers")
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from kexue.encoders import quiet_gguf_load

    before, was = gguf_utils.tqdm, hf_logging.is_progress_bar_enabled()
    try:
        for enabled in (True, False):  # whatever the caller's setting, it is the same afterwards
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            with quiet_gguf_load():
                list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
                assert not hf_logging.is_progress_bar_enabled()
            assert gguf_utils.tqdm is before and hf_logging.is_progress_bar_enabled() is enabled
            assert capfd.readouterr().err == ""
        list(gguf_utils.tqdm(range(3), desc="a bar"))  # outside, the reader's own bar is back
        assert "a bar" in capfd.readouterr().err
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
