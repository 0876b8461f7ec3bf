"""Installing like a library (issue 30): the core runs without torch or any extra, and a missing
extra is one line that names it.

Some tests hide a package from a child interpreter (a finder that answers "no module named ...",
as if it were not installed), so they assert in every environment; the ``*_really_absent``
tests assert only where the package is truly missing: the minimum-versions job of .ci/run, which
installs the wheel with the declared minimum of each core dependency and no extras.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kexue
from kexue.utils import KexueError

SRC = Path(kexue.__file__).parent


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:
        return True


def _child(code: str, hide=()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which the modules ``hide`` cannot be imported."""
    prelude = textwrap.dedent(f"""
        import sys

        class _Hide:  # sys.modules[name] = None would also fool libraries that look for torch there
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(hide)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, _Hide())
        """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_the_numpy_techniques_run_on_small_arrays():
    from kexue.hubness import k_occurrence
    from kexue.logsumexp import logsumexp
    from kexue.unargmax import audit, example_2d
    from kexue.whitening import Whitening

    W, _ = example_2d()
    res = audit(W)
    assert list(res.unargmaxable) == [4]  # w5 = (w1 + w3) / 2 lies inside the hull (SPEC 3.2)
    X = np.random.default_rng(0).normal(size=(60, 5))
    nk = k_occurrence(X, 5)
    assert nk.sum() == 5 * 60 and nk.dtype == np.int64
    Z = Whitening().fit(X).transform(X)
    np.testing.assert_allclose(np.cov(Z, rowvar=False, bias=True), np.eye(5), atol=1e-8)
    np.testing.assert_allclose(logsumexp(np.array([[1000.0, 1000.0]]), axis=-1), [1000 + np.log(2)])


def test_the_core_modules_and_the_cli_import_without_torch():
    r = _child("""
        import kexue, kexue.unargmax, kexue.hubness, kexue.whitening, kexue.logsumexp, kexue.io, kexue.utils
        import kexue.validate, kexue.data, kexue.cli
        from kexue.cli import main
        try:
            main(["--help"])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        import sys
        assert "torch" not in sys.modules
        """, hide=["torch"])
    assert r.returncode == 0, r.stderr
    assert "hubness" in r.stdout and "unargmax" in r.stdout and "whiten" in r.stdout


@pytest.mark.parametrize("module", ["kexue.vae", "kexue.eg", "kexue.exact", "kexue.ddpm", "kexue.train", "kexue.nets"])
def test_a_torch_technique_without_torch_names_the_extra(module):
    r = _child(f"""
        from kexue.utils import KexueError
        try:
            import {module}
        except KexueError as e:
            print(e)
        """, hide=["torch"])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip() == (f"{module} needs torch, which is not installed; install the 'torch' extra: "
                                "pip install 'kexue[torch]'")


def test_cli_without_faiss_or_torch_is_one_line_naming_the_extra(tmp_path):
    x = tmp_path / "x[1].npy"  # brackets: printed as typed, not eaten as markup
    np.save(x, np.random.default_rng(0).normal(size=(40, 4)))
    for name in ("w.onnx", "w.gguf", "w.h5"):
        (tmp_path / name).write_bytes(b"not read: the missing reader is reported first")
    cases = [(["hubness", str(x), "--backend", "ivf"], "faiss", "ann"),
             (["hubness", str(x), "--backend", "hnsw"], "faiss", "ann"),
             (["hubness", str(x), "--index", str(tmp_path / "x.faiss")], "faiss", "ann"),
             (["hubness", str(x), "--histogram", str(tmp_path / "h[1].png")], "matplotlib", "plot"),
             (["unargmax", str(tmp_path / "w.onnx")], "onnx", "zoo"),
             (["unargmax", str(tmp_path / "w.h5")], "h5py", "zoo"),
             (["unargmax", str(tmp_path / "w.gguf")], "gguf", "lm"),
             (["unargmax", str(x), "--cluster", "local:1"], "dask", "dask"),
             (["hubness", str(x), "--cluster", "local:1"], "dask", "dask"),
             (["whiten", "fit", str(x), "-o", str(tmp_path / "w.safetensors"), "--scheduler", "tcp://h:1"], "dask", "dask"),
             (["vae", "train", "-o", str(tmp_path / "m.safetensors")], "torch", "torch")]
    # one child with every optional package hidden (a child costs seconds of imports)
    r = _child(f"""
        import io, json, sys
        from kexue.cli import main
        out = []
        for args in {[c[0] for c in cases]!r}:
            sys.stderr = err = io.StringIO()  # the CLI's console looks sys.stderr up when it prints
            try:
                main(args)
                code = 0
            except SystemExit as e:
                code = e.code
            sys.stderr = sys.__stderr__
            out.append([code, err.getvalue()])
        print(json.dumps(out))
        """, hide=sorted({c[1] for c in cases}))
    assert r.returncode == 0, r.stderr
    for (args, hidden, extra), (code, err) in zip(cases, json.loads(r.stdout.splitlines()[-1])):
        assert code == 2, (args, err)
        line = _one_line(err)
        assert f"pip install 'kexue[{extra}]'" in line and f"needs {hidden}" in line, (args, line)


@pytest.mark.parametrize("module, extra, reader", [("onnx", "zoo", "read_onnx"), ("h5py", "zoo", "read_keras_h5")])
def test_weight_readers_name_their_extra(module, extra, reader, tmp_path):
    r = _child(f"""
        from kexue.unargmax import formats
        from kexue.utils import KexueError
        try:
            formats.{reader}({str(tmp_path / "w.bin")!r})
        except KexueError as e:
            print(e)
        """, hide=[module])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert f"needs {module}, which is not installed; install the '{extra}' extra" in r.stdout


def test_torch_technique_really_absent():
    if not _absent("torch"):
        pytest.skip("torch is installed; test_a_torch_technique_without_torch_names_the_extra covers this")
    with pytest.raises(KexueError, match=r"^kexue\.vae needs torch, which is not installed; install the 'torch' extra"):
        import kexue.vae  # noqa: F401


def test_cli_backend_ivf_really_absent(cli, tmp_path):
    if not _absent("faiss"):
        pytest.skip("faiss is installed; test_cli_without_faiss_or_torch_is_one_line_naming_the_extra covers this")
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(40, 4)))
    r = cli("hubness", x, "--backend", "ivf")
    assert r.one_line_error and "'ann' extra" in r.err and "pip install 'kexue[ann]'" in r.err


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    assert kexue.__version__ == version("kexue")


def _import_graph() -> dict[str, set[str]]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():  # every import statement, lazy ones included
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges[m] |= {a.name for a in node.names if a.name in mods and a.name != m}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in mods:
                        edges[m].add(full)
                    elif node.module in mods and node.module != m:
                        edges[m].add(node.module)
    return edges


def test_no_import_circles():
    edges = _import_graph()
    circles = []
    for start in edges:  # a circle through `start`: a path from one of its imports back to it
        stack, seen = [(w, [start, w]) for w in edges[start]], set()
        while stack:
            v, path = stack.pop()
            if v == start:
                circles.append(" -> ".join(path))
                break
            if v not in seen:
                seen.add(v)
                stack.extend((w, path + [w]) for w in edges[v])
    assert not circles, circles
