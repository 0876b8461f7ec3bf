"""The ``kexue`` command line: a thin layer over the library.

Built-in commands: ``reproduce`` and ``data``. Each technique may add its own commands with a
module ``kexue/cli/<name>.py`` that defines ``register(app: typer.Typer)``; such modules are
found automatically and must import their heavy libraries inside the command functions so that
``kexue --help`` stays fast.

Errors a user can fix (:class:`kexue.utils.KexueError`, bad options, unreadable files) print one
line to stderr and exit with code 2 — never a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import shlex
import sys
from pathlib import Path
from collections.abc import Iterable, Iterator, Sized

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kexue import __version__
from kexue.utils import KexueError

# typer >= 0.2x vendors click; older releases use click itself. Catch both families.
_EXIT: tuple = (typer.Exit,)
_ABORT: tuple = (typer.Abort,)
_USAGE: tuple = (typer.BadParameter.__mro__[2],)  # ClickException
try:
    import click

    _EXIT += (click.exceptions.Exit,)
    _ABORT += (click.exceptions.Abort,)
    _USAGE += (click.ClickException,)
except ImportError:
    pass

# soft_wrap: messages are one line even when stderr is not a terminal (rich would wrap at 80).
# markup=False: what we print holds paths, model ids, tokens and extras ('x[/y].npy', '[INST]',
# 'kexue[dask]') that rich would eat as markup or crash on; the few styled lines opt in.
console = Console(stderr=True, soft_wrap=True, markup=False)
out_console = Console(soft_wrap=True, markup=False)

app = typer.Typer(
    name="kexue",
    help="Eight techniques from Su Jianlin's Scientific Spaces as tools, with reproducible experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class RichTracker:
    """Progress bars and log lines on stderr for library code that reports through a tracker."""

    def __init__(self, console: Console = console):
        self.console = console

    def track(self, iterable: Iterable, description: str = "", total: int | None = None) -> Iterator:
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        # bars only on a terminal: on a pipe or a log file (make reproduce > log, CI) rich cannot
        # erase a transient bar and leaves one blank line per bar instead (issue 31)
        with Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
                      disable=not self.console.is_terminal) as p:
            task = p.add_task(description, total=total)
            for item in iterable:
                yield item
                p.advance(task)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)


def _version(value: bool):
    if value:
        out_console.print(f"kexue {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    """kexue: VAE densities, EG optimisers, unargmaxable classes, logsumexp, whitening, EXACT, DDPM, hubness."""


@app.command()
def reproduce(
    names: list[str] | None = typer.Argument(None, help="Experiments to run. See --list."),
    quick: bool = typer.Option(False, "--quick", help="Small settings that finish in minutes (CI)."),
    all_: bool = typer.Option(False, "--all", help="Run every experiment (needed for full mode without names: hours)."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Report directory."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (>= 0); the same seed on the same machine gives the same numbers."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with mnist/ and stsb/ (default: $KEXUE_DATA or ../shared/data)."),
    publish: Path | None = typer.Option(None, "--publish", help="Also publish the sections to DIR/results and rebuild DIR/RESULTS.md."),
    list_: bool = typer.Option(False, "--list", help="List the experiments and exit."),
):
    """Run experiments and write OUT/report.md, OUT/results.json and figures."""
    from kexue import data, report

    if list_:
        t = Table("name", "SPEC", "title")
        for n in report.available():
            m = report.load(n)
            t.add_row(n, m.SPEC, m.TITLE)
        out_console.print(t)
        return
    data.check_data_dir(data_dir)
    names = names or []
    if not names and not quick and not all_:
        raise KexueError("full mode of every experiment takes hours: name experiments (see --list), add --quick, or pass --all")
    for n in names:
        report.load(n)
    command = "kexue " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def done(s):
        console.print(f"[green]✓[/green] {escape(s.name)}: {s.seconds:.1f} s" + (f" over {s.legs} legs" if s.legs > 1 else ""),
                      markup=True)

    path, sections = report.reproduce(names, seed=seed, quick=quick, out=out, data_dir=str(data_dir) if data_dir else None,
                                      command=command, tracker=RichTracker(), publish_to=publish, on_section=done)
    out_console.print(f"report: {path}")
    if publish:
        out_console.print(f"published: {publish / 'RESULTS.md'}")


data_app = typer.Typer(help="Data sets and models: list what is known and available; download public data sets.",
                       invoke_without_command=True)
app.add_typer(data_app, name="data")


@data_app.callback()
def data_list(ctx: typer.Context,
              data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with mnist/ and stsb/.")):
    """List every data set and model the project knows, its source and whether it is available here."""
    if ctx.invoked_subcommand is not None:
        return
    from kexue import data

    data.check_data_dir(data_dir)
    for e in data.catalogue(data_dir):
        mark = "[green]available[/green]" if e.available else "[red]missing[/red]"
        size = "" if e.size is None else f" · {e.size / 2**20:.1f} MiB"
        sha = f" · sha256 {e.sha256}" if e.sha256 else ""
        out_console.print(f"[bold]{escape(e.name)}[/bold] — {escape(e.what)} ({mark}{size})", highlight=False, markup=True)
        out_console.print(f"    source: {e.source}", highlight=False, soft_wrap=True)
        out_console.print(f"    location: {e.location}{sha}", highlight=False, soft_wrap=True)


@data_app.command("download")
def data_download(name: str = typer.Argument(..., help="mnist (training and test sets), mnist-train, mnist-test or stsb"),
                  data_dir: Path | None = typer.Option(None, "--data-dir", help="Where to put it (default: $KEXUE_DATA or ~/.cache/kexue/data)."),
                  force: bool = typer.Option(False, "--force", help="Download again even if the files are present and verified.")):
    """Download a public data set (needs internet; verified by SHA-256); files already present and verified are kept."""
    from kexue import data

    have = data.present(name, data_dir)
    if not force and all(p is not None for p in have.values()):
        for p in have.values():
            out_console.print(f"present and verified: {p}", highlight=False)
        out_console.print(f"{name} is already here; nothing downloaded (--force downloads again)", highlight=False)
        return
    for p in data.download(name, data_dir, force=force):
        out_console.print(f"{'present and verified' if p in have.values() and not force else 'saved'}: {p}", highlight=False)


def _register_plugins() -> None:
    import kexue.cli as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        mod = importlib.import_module(f"kexue.cli.{m.name}")
        if hasattr(mod, "register"):
            mod.register(app)


_register_plugins()


def _usage_message(e) -> str:
    """click's message, or for a bare ``kexue`` / ``kexue GROUP`` (whose help typer has just printed
    to stdout, leaving the message empty) a line naming the commands to choose from, exit code 2
    as click gives it."""
    msg = e.format_message().strip()
    ctx = getattr(e, "ctx", None)
    if msg and "\n" not in msg or ctx is None or not hasattr(ctx.command, "list_commands"):
        return msg.splitlines()[0] if msg else "missing command; see kexue --help"
    names = ctx.command.list_commands(ctx)
    return f"missing command: {ctx.command_path} needs one of {', '.join(names)} (see {ctx.command_path} COMMAND --help)"


def _readable_help() -> None:
    """typer 0.29's rich help writes a required argument as ``{emb}`` in the usage line and gives
    every flag a ``<bool>`` type; show ``EMB`` / ``[EMB]`` as click does and no type for flags.
    Patched on typer's classes because the placeholders come from typer itself, not our options;
    a typer without these methods is left alone."""
    from typer import core

    arg, opt = core.TyperArgument, getattr(core, "TyperOption", None)
    if hasattr(arg, "_usage_display_name"):
        def usage_name(self) -> str:
            name = self.metavar or self.name.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        setattr(arg, "_usage_display_name", usage_name)  # noqa: B010 (patching typer's class)
    if hasattr(arg, "display_name_raw"):
        setattr(arg, "display_name_raw", property(lambda self: self.metavar or self.name.upper()))  # noqa: B010
    if opt is not None and hasattr(opt, "display_type_rich"):
        shown = opt.display_type_rich

        def display_type_rich(self, ctx):
            return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

        opt.display_type_rich = display_type_rich


_readable_help()


_INTERRUPT_SAID: list[bool] = []


def interrupted(e: KeyboardInterrupt, resume: bool) -> typer.Exit:
    """Ctrl-C in a resumable command: print where its checkpoint stands (from
    ``kexue.train.TrainingInterrupted``) in one line and return the Exit(130) to raise. typer
    turns a KeyboardInterrupt into a silent exit 130, so commands catch it themselves."""
    step, ckpt = getattr(e, "step", None), getattr(e, "ckpt", None)
    if step is not None and ckpt is not None:
        again = "the same command" if resume else "the same command with --resume"
        console.print(f"kexue: interrupted at step {step}; rerun {again} to resume", markup=False, highlight=False)
    else:
        console.print("kexue: interrupted")
    _INTERRUPT_SAID.append(True)
    return typer.Exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="kexue", standalone_mode=False)
    except _EXIT as e:  # typer.Exit inside eager callbacks
        sys.exit(getattr(e, "exit_code", 0))
    except _ABORT:
        console.print("kexue: aborted")
        sys.exit(130)
    except _USAGE as e:
        console.print(f"kexue: error: {_usage_message(e)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KexueError as e:
        console.print(f"kexue: error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("kexue: interrupted")
        sys.exit(130)
    except OSError as e:  # unreadable input, unwritable output: the user's to fix
        console.print(f"kexue: error: {e.strerror or e} ({e.filename or ''}); check the path and permissions",
                      markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    if rv == 130 and not _INTERRUPT_SAID:  # typer's silent exit on Ctrl-C
        console.print("kexue: interrupted")
    _INTERRUPT_SAID.clear()
    sys.exit(rv if isinstance(rv, int) else 0)
