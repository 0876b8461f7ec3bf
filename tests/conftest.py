"""Shared test fixtures: a temporary kexue cache, an in-process CLI runner, a timing helper.

Tests that need an extra say so: a file that needs torch throughout starts with
``torch = pytest.importorskip("torch", reason=...)``; a single test in a mixed file carries
``@pytest.mark.needs("torch")`` (any importable module name), and skips with that reason when the
module is absent (the minimum-versions job in .ci/run runs the suite without torch or extras).

The suite leaves nothing outside the checkout and the temp dir: ``KEXUE_CACHE`` (SmolLM2
conversions, embeddings), matplotlib's config and Hugging Face's home point into a per-run temp
folder, unless ``KEXUE_TEST_CACHE`` names a cache to reuse between runs (developers' speed-up).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="kexue-tests-"))
os.environ["KEXUE_CACHE"] = os.environ.get("KEXUE_TEST_CACHE") or str(_TMP / "cache")
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "matplotlib"))
os.environ["HF_HOME"] = str(_TMP / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(*modules): skip unless every module is importable (an extra)")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        missing = [m for m in mark.args if not _importable(m)]
        if missing:
            pytest.skip(f"needs {', '.join(missing)} (a kexue extra)")


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_TMP, ignore_errors=True)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def one_line_error(self) -> bool:
        """Exit 2 with exactly one stderr line and no traceback: the CLI's user-error promise."""
        return self.code == 2 and "Traceback" not in self.err and len(self.err.strip().splitlines()) == 1


@pytest.fixture
def cli(capsys):
    """Run ``kexue ARGS`` in-process (a subprocess per call costs seconds of imports):
    ``cli("hubness", path, "-k", 5)`` → CliResult(code, out, err)."""
    from kexue.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        c = capsys.readouterr()
        code = e.value.code
        return CliResult(0 if code is None else int(code), c.out, c.err)

    return run


@pytest.fixture
def timed():
    """``with timed() as t: ...``; then ``t.seconds``: a wall-clock helper for speed assertions
    that compare two paths in the same test (never an absolute budget)."""
    class _T:
        seconds = 0.0

        def __enter__(self):
            self._t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            self.seconds = time.perf_counter() - self._t0

    return _T


class Killed(Exception):
    """What :func:`killer`'s tracker raises: a process killed mid-loop, for resume tests."""


@pytest.fixture
def killer():
    """``killer(n)``: a tracker that lets a library loop run ``n`` items and then raises
    ``Killed`` where the next would start — a kill at that moment, for exact-resume tests."""
    class _Tracker:
        def __init__(self, n: int):
            self.n = n

        def track(self, iterable, description="", total=None):
            for i, item in enumerate(iterable):
                if i == self.n:
                    raise Killed(f"killed after {i} items of {description}")
                yield item

        def log(self, message):
            pass

    return _Tracker


@pytest.fixture
def thread_spy():
    """A tracker class that records torch's thread count while a library loop runs (issue 31:
    library calls take ``threads=`` for the call only)."""
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")

    class ThreadSpy:
        def __init__(self):
            self.seen = []

        def track(self, iterable, description="", total=None):
            for item in iterable:
                self.seen.append(torch.get_num_threads())
                yield item

        def log(self, message):
            pass

    return ThreadSpy


def peak_rss_above(child: str, *args, timeout: int = 600) -> int:
    """Peak resident memory (bytes, Linux) of the Python script ``child`` run with ``args``, above
    its own baseline: the script prints ``baseline peak`` (ru_maxrss, KiB) as its last two numbers."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", child, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    base, peak = (int(v) * 1024 for v in r.stdout.split()[-2:])
    return peak - base


# ``kexue ARGS`` in a child: the baseline is taken after the modules the command imports (argv[1], comma
# separated) and kexue.cli, so the difference is the command's working memory, not its imports.
CLI_RSS_CHILD = """
import importlib, resource, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
from kexue.cli import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    main(sys.argv[2:])
except SystemExit as e:
    assert not e.code, e.code
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def cli_peak_rss_above(*args, imports: tuple[str, ...] = ("sklearn", "threadpoolctl"), timeout: int = 600) -> int:
    """Peak resident memory (bytes, Linux) of ``kexue ARGS`` run in a child process (CLI_RSS_CHILD), above
    its baseline after ``imports``: what the command imports (``kexue hubness``: scikit-learn and
    threadpoolctl, plus faiss for the FAISS backends; not torch, see cli/_common.use_threads). The command
    must exit 0."""
    return peak_rss_above(CLI_RSS_CHILD, ",".join(imports), *args, timeout=timeout)


def run_kexue(*args, cwd, timeout: int = 900):
    """``python -m kexue ARGS`` as a user runs it, in a child process running this checkout's source
    (a CompletedProcess with text stdout/stderr): the exit code and everything on the real stderr,
    including what a local Dask cluster's processes print, which the in-process ``cli`` fixture does
    not capture. The timeout is the longest the callers needed (a local cluster on a busy machine)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "kexue", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def write_q8_gguf(path, W, arch: str = "llama", tokens=None) -> None:
    """A GGUF holding ``W`` as Q8_0 ``token_embd.weight`` (tied embeddings), written as llama.cpp
    writes one; ``tokens``: the vocabulary in its metadata. Needs the ``gguf`` package."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    if tokens is not None:
        w.add_token_list(tokens)
    w.add_tensor("token_embd.weight", gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
