"""kexue.io reads the dtypes embeddings come in, without torch (issue 31 item 3): bfloat16 and
float8 .safetensors tensors upcast exactly to float32, and the commands that read embeddings
(hubness, whiten fit/apply) accept them."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from kexue.io import open_matrix, read_matrix
from kexue.utils import KexueError


def write_safetensors(path, name: str, dtype: str, shape, raw: bytes) -> None:
    """A .safetensors file written from the format's definition (8-byte header length, JSON
    header, data), so the test does not depend on a library that knows bfloat16."""
    header = json.dumps({name: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, len(raw)]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)


def bf16_file(path, n=40, d=6, seed=0, scale=1.0):
    """(file, the float32 values it holds): bfloat16 keeps the upper 16 bits of each float32."""
    x = (np.random.default_rng(seed).standard_normal((n, d)) * scale).astype("<f4")
    bits = (x.view("<u4") >> 16).astype("<u2")
    write_safetensors(path, "emb", "BF16", x.shape, bits.tobytes())
    return path, (bits.astype(np.uint32) << 16).view(np.float32)


def test_bfloat16_safetensors_read_as_exact_float32(tmp_path):
    p, want = bf16_file(tmp_path / "e.safetensors")
    got = read_matrix(p)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    src = open_matrix(p)  # streamed in chunks too (the path whiten fit and hubness use)
    assert (src.n, src.d, src.dtype) == (40, 6, np.float32)
    np.testing.assert_array_equal(np.concatenate(list(src.chunks(7))), want)


def test_float8_safetensors_match_ml_dtypes(tmp_path):
    ml = pytest.importorskip("ml_dtypes")
    for st, dt in (("F8_E4M3", ml.float8_e4m3fn), ("F8_E5M2", ml.float8_e5m2)):
        codes = np.arange(256, dtype=np.uint8)
        codes = codes[np.isfinite(codes.view(dt).astype(np.float32))][:, None]  # every finite code, as one column
        p = tmp_path / f"{st}.safetensors"
        write_safetensors(p, "x", st, codes.shape, codes.tobytes())
        np.testing.assert_array_equal(read_matrix(p), codes.view(dt).astype(np.float32), err_msg=st)
        nan = np.array([[0x7F]], dtype=np.uint8)  # NaN in both formats: refused, naming the file
        write_safetensors(p, "x", st, nan.shape, nan.tobytes())
        with pytest.raises(KexueError, match="non-finite.*row 0, column 0"):
            read_matrix(p)


def test_float16_and_unreadable_dtypes(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float16)
    save_file({"x": x}, str(tmp_path / "h.safetensors"))
    got = read_matrix(tmp_path / "h.safetensors")
    assert got.dtype == np.float16 and np.array_equal(got, x)
    write_safetensors(tmp_path / "c.safetensors", "x", "C64", (2, 2), bytes(32))
    with pytest.raises(KexueError, match="C64"):
        read_matrix(tmp_path / "c.safetensors")


def test_raw_two_byte_npy_names_bfloat16_and_the_fix(tmp_path):
    p = tmp_path / "v.npy"
    np.save(p, np.zeros((3, 2), dtype="V2"))
    with pytest.raises(KexueError, match="bfloat16.*float32") as e:
        read_matrix(p)
    assert "\n" not in str(e.value)


def test_cli_hubness_and_whiten_read_bfloat16(cli, tmp_path):
    p, want = bf16_file(tmp_path / "e.safetensors", n=60, d=8)
    r = cli("hubness", p, "-k", 5, "--nk-out", tmp_path / "nk.npy")
    assert r.code == 0, r.err
    from kexue import hubness as H

    np.testing.assert_array_equal(np.load(tmp_path / "nk.npy"), H.k_occurrence(want.astype(np.float64), 5))
    r = cli("whiten", "fit", p, "-o", tmp_path / "w.safetensors")
    assert r.code == 0, r.err
    r = cli("whiten", "apply", tmp_path / "w.safetensors", p, "-o", tmp_path / "y.npy")
    assert r.code == 0, r.err
    from kexue.whitening import Whitening

    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), Whitening().fit(want).transform(want), rtol=1e-4, atol=1e-4)
