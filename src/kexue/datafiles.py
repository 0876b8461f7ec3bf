"""The data files kexue does not get from a package: where they are looked for, their SHA-256
checks, and ``kexue data download``. The loaders in :mod:`kexue.data` read them through
:func:`require_file`.

A file is looked up in a data directory, in this order: the ``data_dir`` argument
(``--data-dir`` on the CLI), the environment variable ``KEXUE_DATA``, ``../shared/data`` next to
a checkout of this repository, ``../shared/data`` next to the current directory, and
``~/.cache/kexue/data`` (where ``kexue data download`` puts files). Files are SHA-256 verified
on first use.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kexue.utils import KexueError, atomic_path

_HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class RemoteFile:
    """A file found in the data directory, with its checksums and public source."""

    relpath: str
    sha256: str  # of the file as distributed here (.gz)
    raw_sha256: str  # of the decompressed bytes, so a differently compressed copy is accepted
    url: str
    size: int


FILES = {
    "mnist-test-images": RemoteFile(
        "mnist/t10k-images-idx3-ubyte.gz",
        "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
        1648877,
    ),
    "mnist-test-labels": RemoteFile(
        "mnist/t10k-labels-idx1-ubyte.gz",
        "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
        4542,
    ),
    "mnist-train-images": RemoteFile(
        "mnist/train-images-idx3-ubyte.gz",
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        9719438,
    ),
    "mnist-train-labels": RemoteFile(
        "mnist/train-labels-idx1-ubyte.gz",
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
        28857,
    ),
    "stsb": RemoteFile(
        "stsb/stsbenchmark.tsv.gz",
        "aa3ae9b0060fdab8a7239df4bed7668086b4181e7cf6e921d086a70f9e42c17e",
        "e15fd8684f9b3950051acf11301ee4dda78aee328b33b56e2b5dde6b2d7a1f93",
        "https://sbert.net/datasets/stsbenchmark.tsv.gz",
        392336,
    ),
}
# which remote files make up each downloadable data set
DOWNLOADS = {"mnist-test": ["mnist-test-images", "mnist-test-labels"],
             "mnist-train": ["mnist-train-images", "mnist-train-labels"], "stsb": ["stsb"]}
# `kexue data download mnist` fetches both MNIST sets
ALIASES = {"mnist": ["mnist-train", "mnist-test"]}


# ---------------------------------------------------------------------------------------------
# locating files


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The data directories searched, in order (see the module docstring)."""
    dirs: list[Path] = []
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    if os.environ.get("KEXUE_DATA"):
        return [Path(os.environ["KEXUE_DATA"]).expanduser()]
    # src/kexue/datafiles.py -> repo is parents[2]; shared/ sits beside the checkout
    dirs.append(_HERE.parents[3] / "shared" / "data")
    dirs.append(Path.cwd().parent / "shared" / "data")
    dirs.append(cache_root() / "data")
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def cache_root() -> Path:
    """Where kexue keeps downloads and derived caches (``KEXUE_CACHE`` or ``~/.cache/kexue``)."""
    return Path(os.environ.get("KEXUE_CACHE", Path.home() / ".cache" / "kexue")).expanduser()


def check_data_dir(data_dir: str | os.PathLike | None) -> None:
    """Raise KexueError if an explicitly given data directory does not exist."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise KexueError(f"data directory {data_dir} does not exist; pass an existing folder with --data-dir (it should contain mnist/ and stsb/)")


def find_file(key: str, data_dir=None) -> Path | None:
    """Path of remote file ``key`` in the first data directory that has it, else None."""
    rf = FILES[key]
    for d in candidate_dirs(data_dir):
        p = d / rf.relpath
        if p.is_file():
            return p
    return None


def sha256_file(path: Path, decompress: bool = False) -> str:
    h = hashlib.sha256()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@cache
def _verified(path: Path, mtime: float, key: str) -> bool:
    rf = FILES[key]
    if sha256_file(path) == rf.sha256:
        return True
    try:
        return sha256_file(path, decompress=True) == rf.raw_sha256
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def require_file(key: str, data_dir=None) -> Path:
    """The verified path of remote file ``key``; a clear KexueError if missing or corrupt."""
    rf = FILES[key]
    p = find_file(key, data_dir)
    dataset = next(name for name, keys in DOWNLOADS.items() if key in keys)
    if p is None:
        where = ", ".join(str(d) for d in candidate_dirs(data_dir))
        raise KexueError(
            f"{rf.relpath} not found (looked in {where}); pass --data-dir or set KEXUE_DATA, "
            f"or fetch it with `kexue data download {dataset}`"
        )
    if not _verified(p, p.stat().st_mtime, key):
        raise KexueError(f"{p} is corrupt (SHA-256 mismatch); delete it and run `kexue data download {dataset}`")
    return p


# ---------------------------------------------------------------------------------------------
# downloads


def _remote_keys(name: str) -> list[str]:
    if name in ALIASES:
        return [k for part in ALIASES[name] for k in _remote_keys(part)]
    if name not in DOWNLOADS:
        raise KexueError(f"nothing to download for {name!r}; downloadable: {', '.join([*ALIASES, *DOWNLOADS])} "
                         "(the others ship with packages)")
    return DOWNLOADS[name]


def present(name: str, data_dir=None) -> dict[str, Path | None]:
    """For each file of downloadable data set ``name``: its path if it is found (where the loaders
    look) and passes its SHA-256 check, else None."""
    out: dict[str, Path | None] = {}
    for key in _remote_keys(name):
        p = find_file(key, data_dir)
        out[key] = p if p is not None and _verified(p, p.stat().st_mtime, key) else None
    return out


def download(name: str, data_dir=None, progress=None, *, force: bool = False) -> list[Path]:
    """Fetch a public data set into the data directory and verify it (never used by tests).

    Files already present and verified (see :func:`present`) are kept and their paths returned
    without touching the network, unless ``force``. A failed download leaves neither a partial
    file nor a folder it created."""
    dest = Path(data_dir).expanduser() if data_dir else (Path(os.environ["KEXUE_DATA"]) if os.environ.get("KEXUE_DATA") else cache_root() / "data")
    have = present(name, data_dir)
    out: list[Path] = []
    for key in _remote_keys(name):
        kept = have[key]
        if kept is not None and not force:
            out.append(kept)
            continue
        out.append(_fetch(FILES[key], dest / FILES[key].relpath))
    return out


def _fetch(rf: RemoteFile, target: Path) -> Path:
    made = [d for d in (target.parent, *target.parent.parents) if not d.exists()]  # folders this call creates
    try:
        with atomic_path(target, parents=True) as tmp:
            try:
                with urllib.request.urlopen(rf.url, timeout=60) as r, open(tmp, "wb") as f:
                    while chunk := r.read(1 << 16):
                        f.write(chunk)
            except OSError as e:
                raise KexueError(f"could not download {rf.url} ({e}); check the network or copy the file to {target}") from None
            if sha256_file(tmp) != rf.sha256 and sha256_file(tmp, decompress=True) != rf.raw_sha256:
                raise KexueError(f"{rf.url} does not match its SHA-256; not saved")
    except BaseException:
        for d in made:  # innermost first; a folder something else has filled stays
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return target
