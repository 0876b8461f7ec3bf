"""A bad-input battery over every command and every option of type path, int or float.

It walks the real command tree, so a new command or option is covered the day it is added:
- an int or float option given a word, an int option given -1 and a float option given NaN or
  inf end with exit code 2, one line on stderr naming the flag, and no traceback;
- a path argument that does not exist ends the same way.
Values are checked before any work starts, so every case here returns at once.
"""

from __future__ import annotations

import pytest
import typer

from kexue.cli import app

# options whose -1 means something on purpose (none today); keep this list short and explained
INT_ALLOWS_NEGATIVE: set[tuple[str, str]] = set()
# path parameters that name an output folder the command creates (not an input to read)
OUTPUT_DIRS = {("reproduce", "out"), ("reproduce", "publish"), ("data download", "data_dir")}
TORCH_COMMANDS = {"vae", "ddpm"}  # the 'torch' extra


def _leaves():
    def walk(c, path):
        if hasattr(c, "commands"):
            for name, sub in c.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), c

    return list(walk(typer.main.get_command(app), []))


def _kind(p) -> str:
    """'int', 'float', ... of a parameter, across typer versions."""
    if hasattr(p, "bare_type"):  # typer >= 0.2x: its own parameter classes
        return p.bare_type()
    name = getattr(p.type, "name", "")  # click's types: integer, integer range, float, float range
    return {"integer": "int", "float": "float", "path": "Path"}.get(name.split(" ")[0], name)


def _cases():
    for name, cmd in _leaves():
        # every positional argument (optional ones too, e.g. a default data set) gets a missing
        # file, so a command that does not check the option first fails fast instead of working
        required = [p for p in cmd.params if p.required or p.param_type_name == "argument"]
        for p in cmd.params:
            kind = _kind(p)
            flag = next((o for o in p.opts if o.startswith("--")), p.opts[0])
            if p.param_type_name != "option" or getattr(p, "is_flag", False):
                continue
            if kind == "int":
                yield pytest.param(name, flag, "abc", required, id=f"{name} {flag} abc")
                if (name, p.name) not in INT_ALLOWS_NEGATIVE:
                    yield pytest.param(name, flag, "-1", required, id=f"{name} {flag} -1")
            elif kind == "float":
                yield pytest.param(name, flag, "abc", required, id=f"{name} {flag} abc")
                yield pytest.param(name, flag, "nan", required, id=f"{name} {flag} nan")
                yield pytest.param(name, flag, "inf", required, id=f"{name} {flag} inf")


def _required_args(required, tmp_path) -> list[str]:
    """Placeholder values for required parameters: missing files for arguments, which must not be
    read before the option under test is checked."""
    args: list[str] = []
    for p in required:
        value = str(tmp_path / f"missing-{p.name}.npy")
        if p.param_type_name == "option":
            args += [next((o for o in p.opts if o.startswith("--")), p.opts[0]), value]
        else:
            args.append(value)
    return args


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command, flag, value, required", list(_cases()))
def test_bad_numbers_are_one_line_errors_naming_the_flag(cli, tmp_path, command, flag, value, required):
    r = cli(*command.split(), *_required_args([p for p in required if p.param_type_name == "argument"], tmp_path),
            *_required_args([p for p in required if p.param_type_name == "option"], tmp_path), flag, value)
    assert r.one_line_error, (r.code, r.err)
    assert flag in r.err or flag.lstrip("-") in r.err, r.err
    assert not any(tmp_path.iterdir()), "nothing may be written"


def _path_cases():
    for name, cmd in _leaves():
        for p in cmd.params:
            if _kind(p) == "Path" and p.param_type_name == "argument" and (name, p.name) not in OUTPUT_DIRS:
                # torch's commands load their model class first: without torch that is the one line
                marks = pytest.mark.needs("torch") if name.split()[0] in TORCH_COMMANDS else ()
                yield pytest.param(name, p, id=f"{name} {p.name}", marks=marks)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command, param", list(_path_cases()))
def test_missing_input_files_are_one_line_errors(cli, tmp_path, command, param):
    _, cmd = next(c for c in _leaves() if c[0] == command)
    args = _required_args([p for p in cmd.params if p.required and p.param_type_name == "argument"], tmp_path)
    args += _required_args([p for p in cmd.params if p.required and p.param_type_name == "option"], tmp_path)
    r = cli(*command.split(), *args)
    if "this command writes " in r.err:  # a required output option: give it the suffix it asks for
        suffix = r.err.split("this command writes ")[1].split()[0].rstrip(";")
        args = [a[:-len(".npy")] + suffix if a.endswith("missing-out.npy") else a for a in args]
        r = cli(*command.split(), *args)
    assert r.one_line_error, (r.code, r.err)
    assert "not found" in r.err or "does not exist" in r.err or "No such file" in r.err, r.err
    assert not any(tmp_path.iterdir())


def test_the_battery_covers_every_command():
    names = {n for n, _ in _leaves()}
    assert {"reproduce", "hubness", "unargmax", "vae train", "vae score", "ddpm train", "ddpm sample",
            "whiten fit", "whiten apply", "whiten search"} <= names
    assert len(list(_cases())) > 40
