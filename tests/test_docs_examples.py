"""The guides' examples run as printed (issue 31 item 4).

Every ```python block of README.md and docs/*.md is executed, offline, in a temp folder; the blocks
of one document share one namespace, in order, as a reader pasting them into one session would.
Two HTML comments (invisible in the rendered guide, visible in its source) steer this:

- ``<!-- not run: REASON -->`` right before a block: the test reports the block as skipped with
  REASON (it needs the full data, hours of CPU, the network or a file the reader brings);
- ``<!-- setup: CODE -->`` right before a block: CODE runs first, with small stand-ins for the
  names the guide leaves to the reader (``X``, ``corpus``, ``logits`` …).

Every ``kexue …`` line of a ```bash block or an untagged block is parsed: its subcommand must
exist and every option it uses must be one that subcommand's ``--help`` lists.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARK = re.compile(r"<!--\s*(not run|setup):(.*?)-->\Z", re.S)


class Block:
    def __init__(self, doc: Path, lang: str, code: str, line: int, mark: tuple[str, str] | None):
        self.doc, self.lang, self.code, self.line = doc, lang, code, line
        self.skip = mark[1].strip() if mark and mark[0] == "not run" else None
        self.setup = mark[1].strip() if mark and mark[0] == "setup" else None

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()]
        tail = before.rstrip()
        mark = MARK.match(tail[tail.rfind("<!--"):]) if tail.endswith("-->") else None  # the comment just before
        mark = (mark.group(1), mark.group(2)) if mark else None
        out.append(Block(doc, m.group(1), m.group(2), before.count("\n") + 1, mark))
    return out


PY = {doc: [b for b in blocks(doc) if b.lang == "python"] for doc in DOCS}


def test_markers_are_attached_to_blocks():
    """A marker must sit right before a fence; one elsewhere would silently do nothing."""
    for doc in DOCS:
        text = doc.read_text()
        n_marks = len(re.findall(r"<!--\s*(?:not run|setup):", text))
        attached = sum(1 for b in blocks(doc) if b.skip is not None or b.setup is not None)
        assert n_marks == attached, f"{doc.name}: a <!-- not run/setup --> comment is not directly before a block"


def _skipped():
    for _doc, bs in PY.items():
        for b in bs:
            if b.skip is not None:
                yield pytest.param(b, id=b.id)


@pytest.mark.parametrize("block", list(_skipped()))
def test_blocks_marked_not_run(block):
    assert len(block.skip) > 10, f"{block.id}: say why the block cannot run in a test"
    pytest.skip(f"{block.id}: {block.skip}")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("doc", [pytest.param(d, id=d.name) for d in DOCS if any(b.skip is None for b in PY[d])])
def test_python_blocks_run(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEXUE_THREADS", "1")
    ns: dict = {"__name__": "__docs__"}
    for b in PY[doc]:
        if b.skip is not None:
            continue
        for what, code in (("setup", b.setup), ("block", b.code)):
            if code:
                try:
                    exec(compile(code, f"{b.id} ({what})", "exec"), ns)
                except ImportError as e:
                    if e.name in ("faiss", "sentence_transformers", "transformers", "dask", "distributed"):
                        pytest.skip(f"{b.id} needs {e.name}, which is not installed")
                    raise
                except Exception as e:
                    raise AssertionError(f"{b.id} {what} failed: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------ kexue command lines


def _no_substitutions(line: str) -> str:
    """``$(…)`` (balanced) replaced by a plain word: it is a value, not a kexue option."""
    while (i := line.find("$(")) >= 0:
        depth, j = 0, i + 1
        for j in range(i + 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[j], 0)
            if depth == 0:
                break
        line = line[:i] + "ARG" + line[j + 1:]
    return line


def _commands():
    for doc in DOCS:
        for b in blocks(doc):
            if b.lang not in ("bash", "", "sh", "console"):
                continue
            text = re.sub(r"\\\n\s*", " ", b.code)
            for i, line in enumerate(text.splitlines()):
                line = _no_substitutions(line.split(" #")[0]).strip()
                m = re.match(r"^(?:\$ )?(?:\S*/)?kexue (.*)$", line)
                if m:
                    yield pytest.param(m.group(1), id=f"{doc.name}:{b.line}:{i}")


@pytest.mark.parametrize("args", list(_commands()))
def test_kexue_command_lines_use_existing_commands_and_options(args):
    check_command_line(args)


def test_the_command_line_check_catches_wrong_commands_and_options():
    check_command_line("whiten fit EMB.npy --beta 1 -k 8 -o T.safetensors")
    for bad in ("whiten fitt EMB.npy", "whiten fit EMB.npy --nosuch 1", "hubness EMB [--metrics cosine]"):
        with pytest.raises(AssertionError):
            check_command_line(bad)


def check_command_line(args: str) -> None:
    import typer

    from kexue.cli import app

    tokens = [t for part in shlex.split(args.replace("[", " ").replace("]", " "))
              for t in part.split("|") if t and not t.startswith(">")]
    cmd = typer.main.get_command(app)
    path = ["kexue"]
    while hasattr(cmd, "commands") and tokens and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        assert name in cmd.commands, f"`{' '.join(path)}` has no command {name!r}"
        cmd, path = cmd.commands[name], [*path, name]
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    # options of the group callbacks on the way (e.g. `kexue data --data-dir`) are not mixed in
    for t in tokens:
        if t.startswith("-") and t != "-" and not re.fullmatch(r"-\d[\d.e-]*", t):
            assert t.split("=")[0] in known, f"`{' '.join(path)}` has no option {t}; it takes {sorted(known)}"
