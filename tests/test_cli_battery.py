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


def test_hubness_query_and_reference_files_are_checked_first(cli, tmp_path):
    """kexue hubness's file options (--queries, --reference BANK|queries): a missing file, a width
    that differs from the index, and combinations that cannot work are one-line errors, nothing written."""
    import numpy as np

    np.save(tmp_path / "X.npy", np.random.default_rng(0).standard_normal((50, 6)))
    np.save(tmp_path / "narrow.npy", np.zeros((10, 4)))
    out = tmp_path / "o"
    out.mkdir()
    X = tmp_path / "X.npy"
    cases = [
        (["--queries", tmp_path / "none.npy"], "--queries"),
        (["--queries", X, "--reduce", "mp", "--reference", tmp_path / "none.npy"], "--reference"),
        (["--queries", tmp_path / "narrow.npy"], "4 columns"),
        (["--queries", X, "--reduce", "csls", "--reference", tmp_path / "narrow.npy"], "4 columns"),
        (["--reference", X], "--reduce"),
        (["--reduce", "ls", "--reference", "queries"], "--queries"),
        (["--queries", X, "--reduce", "centering", "--reference", "queries"], "--reference"),
        (["--queries", X, "--reduce", "nnn", "--reference", "queries", "--graph", out / "g.npy"], ".npz"),
    ]
    for extra, msg in cases:
        r = cli("hubness", X, "-k", 3, *extra, "--json", out / "m.json")
        assert r.one_line_error and msg in r.err, (extra, r.err)
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------ issue 31: accepted-and-ignored inputs, messages


def _no_network(monkeypatch):
    import urllib.request

    calls = []

    def refuse(url, *a, **k):
        calls.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


def test_data_download_keeps_present_verified_files_offline(cli, monkeypatch):
    from kexue import data

    if not all(p is not None for p in data.present("mnist").values()):
        pytest.skip("MNIST is not present in this checkout's data folders")
    calls = _no_network(monkeypatch)
    r = cli("data", "download", "mnist")
    assert r.code == 0, r.err
    assert calls == [], "a present, verified data set must not touch the network"
    assert "already here" in r.out and "--force" in r.out
    assert data.download("mnist") == list(data.present("mnist").values()) and calls == []


def test_data_download_failure_leaves_no_folder(cli, monkeypatch, tmp_path):
    calls = _no_network(monkeypatch)
    r = cli("data", "download", "stsb", "--data-dir", tmp_path / "new")
    assert r.one_line_error and "could not download" in r.err, r.err
    assert calls and not (tmp_path / "new").exists()  # --data-dir's folder is created for the download only
    (tmp_path / "mine").mkdir()
    r = cli("data", "download", "mnist-test", "--data-dir", tmp_path / "mine", "--force")
    assert r.one_line_error and (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


@pytest.fixture
def emb(tmp_path):
    import numpy as np

    p = tmp_path / "in" / "e.npy"
    p.parent.mkdir()
    np.save(p, np.random.default_rng(0).standard_normal((30, 4)))
    return p


def _written(tmp_path):
    return [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "in"]


@pytest.mark.parametrize("command", [["hubness", "-k", "3"], ["whiten", "fit", "-o", "{out}/w.safetensors"]])
def test_key_on_a_npy_file_is_an_error(cli, emb, tmp_path, command):
    args = [a.replace("{out}", str(tmp_path)) for a in command]
    r = cli(*args[:1 + (args[0] == "whiten")], emb, *args[1 + (args[0] == "whiten"):], "--key", "emb")
    assert r.one_line_error and "key" in r.err and ".npy" in r.err, r.err
    assert not _written(tmp_path)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_bad_kexue_threads_is_a_one_line_error(cli, emb, tmp_path, monkeypatch, value):
    monkeypatch.setenv("KEXUE_THREADS", value)
    r = cli("whiten", "fit", emb, "-o", tmp_path / "w.safetensors")
    assert r.one_line_error and "KEXUE_THREADS" in r.err and repr(value) in r.err, r.err
    assert not _written(tmp_path)
    monkeypatch.setenv("KEXUE_THREADS", "2")
    assert cli("whiten", "fit", emb, "-o", tmp_path / "w.safetensors").code == 0


def test_show_negative_is_refused(cli, emb):
    r = cli("unargmax", emb, "--show", "-1")
    assert r.one_line_error and "--show" in r.err, r.err


def test_messages_count_one_row_and_name_the_file(cli, tmp_path):
    import numpy as np

    one = tmp_path / "one.npy"
    np.save(one, np.ones((1, 3)))
    r = cli("whiten", "fit", one, "-o", tmp_path / "w.safetensors")
    assert r.one_line_error and "1 row;" in r.err and "1 rows" not in r.err, r.err
    from kexue import validate
    from kexue.utils import KexueError

    with pytest.raises(KexueError, match=r"X has 1 row; at least 2"):
        validate.matrix(np.ones((1, 1)), min_rows=2, min_cols=1)
    with pytest.raises(KexueError, match=r"X has 1 column; at least 2"):
        validate.matrix(np.ones((3, 1)), min_cols=2)
    with pytest.raises(KexueError, match=r"x has 1 entry; at least 2"):
        validate.vector(np.ones(1), min_len=2)
    bad = tmp_path / "nan.npy"
    X = np.ones((50, 3))
    X[37, 2] = np.nan
    np.save(bad, X)
    for args in (["hubness", bad, "-k", "3"], ["whiten", "fit", bad, "-o", tmp_path / "w2.safetensors"]):
        r = cli(*args)
        assert r.one_line_error and str(bad) in r.err and "row 37" in r.err and " X " not in r.err, r.err


def test_object_arrays_are_named_as_such_not_damaged(cli, tmp_path):
    import numpy as np

    p = tmp_path / "obj.npy"
    np.save(p, np.array([[1.0, None]], dtype=object), allow_pickle=True)
    for args in (["hubness", p], ["whiten", "fit", p, "-o", tmp_path / "w.safetensors"]):
        r = cli(*args)
        assert r.one_line_error and "object array" in r.err and "never unpickles" in r.err, r.err
        assert "damaged" not in r.err


@pytest.mark.parametrize("args", [[], ["whiten"], ["vae"], ["data", "nosuch"]])
def test_bare_command_prints_help_and_one_useful_line(cli, args):
    r = cli(*args)
    assert r.one_line_error, (r.code, r.err)
    line = r.err.strip()
    assert line.startswith("kexue: error: ") and len(line) > len("kexue: error: ") + 10, line
    if len(args) < 2:
        assert "Usage" in r.out and "--help" in line


def test_help_shows_readable_placeholders(cli):
    for name, cmd in [("", None), *_leaves()]:
        r = cli(*name.split(), "--help")
        assert r.code == 0, (name, r.err)
        usage = next(l for l in r.out.splitlines() if "Usage:" in l)
        assert "{" not in usage, usage
        assert "<bool>" not in r.out, name
        if cmd is not None:
            for p in cmd.params:
                if p.param_type_name == "argument":
                    assert (p.metavar or p.name.upper()) in usage, (name, usage)


# ------------------------------------------------------------------ flags accepted and ignored (issue 31)
# A flag that the chosen mode does not use must be an error, not silently dropped. These need a
# real (tiny, untrained) model file, written once per module.


@pytest.fixture(scope="module")
def ddpm_file(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from kexue.ddpm import DDPM, UNetConfig, linear_schedule

    torch.set_num_threads(1)
    p = tmp_path_factory.mktemp("battery") / "ddpm.safetensors"
    DDPM(UNetConfig(base=4, mults=(1,)), linear_schedule(20), side=8).save(p)
    return p


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, flag", [
    (("sample", "{m}", "--sampler", "ddpm", "--steps", "10"), "--steps"),
    (("sample", "{m}", "--sampler", "ddpm", "--eta", "0.5"), "--eta"),
    (("sample", "{m}", "--sampler", "ddim", "--variance", "beta"), "--variance"),
    (("sample", "{m}", "--variance", "beta"), "--variance"),  # ddim is the default sampler
    (("sample", "{m}", "--steps", "30"), "--steps"),  # more DDIM steps than the model's T = 20
    (("sample", "{m}", "-m", "{m}"), "MODEL"),  # the model given twice
    (("nll", "{m}", "digits", "--timesteps", "1000"), "--timesteps"),  # more strata than T - 1 = 19 terms
    (("nll", "{m}", "digits", "--timesteps", "20"), "--timesteps"),
])
def test_flags_the_mode_does_not_use_are_one_line_errors(cli, ddpm_file, tmp_path, args, flag):
    r = cli("ddpm", *[a.format(m=ddpm_file) for a in args], "-o" if args[0] == "sample" else "--json",
            tmp_path / ("g.npy" if args[0] == "sample" else "v.json"))
    assert r.one_line_error, (r.code, r.err)
    assert flag in r.err, r.err
    assert not any(tmp_path.iterdir()), "nothing may be written"


@pytest.mark.timeout(120)
def test_model_is_positional_everywhere_and_the_old_spelling_still_works(cli, ddpm_file, tmp_path):
    import numpy as np

    runs = {"positional": (ddpm_file,), "-m": ("-m", ddpm_file), "--model": ("--model", ddpm_file)}
    for name, spelling in runs.items():
        r = cli("ddpm", "sample", *spelling, "-n", 2, "--steps", 3, "-o", tmp_path / f"{name.strip('-')}.npy")
        assert r.code == 0, (name, r.err)
    a, b, c = (np.load(tmp_path / f"{n}.npy") for n in ("positional", "m", "model"))
    assert a.shape == (2, 64) and np.array_equal(a, b) and np.array_equal(a, c)
    r = cli("ddpm", "sample", "--help")
    assert "MODEL" in r.out and "--model" not in r.out, "the alias is hidden"
    r = cli("ddpm", "sample", ddpm_file, "--sampler", "ddpm", "-n", 1, "-o", tmp_path / "d.npy")  # defaults fit
    assert r.code == 0, r.err
    r = cli("ddpm", "nll", ddpm_file, "digits", "-n", 2, "--timesteps", 19, "--json", "-")  # T - 1: the full sum
    assert r.code == 0, r.err


def test_library_settings_of_the_other_sampler_are_refused_in_library_words(ddpm_file):
    pytest.importorskip("torch")
    from kexue.ddpm import DDPM
    from kexue.utils import KexueError

    m = DDPM.load(ddpm_file)
    for kw, word in (({"sampler": "ddpm", "steps": 10}, "steps"), ({"sampler": "ddpm", "eta": 0.5}, "eta"),
                     ({"sampler": "ddim", "variance": "beta"}, "variance")):
        with pytest.raises(KexueError, match=word) as e:
            m.sample(1, **kw)
        assert "--" not in str(e.value), "library messages name library parameters"
    with pytest.raises(KexueError, match="timesteps=1000") as e:
        m.nll(__import__("numpy").zeros((1, 64)), timesteps=1000)
    assert "--" not in str(e.value)


def test_ctrl_c_in_any_command_says_interrupted_in_one_line(cli, ddpm_file, tmp_path, monkeypatch):
    """typer turns Ctrl-C into a silent exit 130; the CLI still says what happened, once."""
    from kexue.ddpm import DDPM

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(DDPM, "sample", interrupt)
    r = cli("ddpm", "sample", ddpm_file, "-n", 1, "-o", tmp_path / "g.npy")
    assert r.code == 130 and r.err.strip() == "kexue: interrupted", r.err
    assert not any(tmp_path.iterdir())
