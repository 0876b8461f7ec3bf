"""Dask clusters for work that outgrows one machine: one spelling for every command.

``where`` is ``"local:N"`` (start a ``LocalCluster`` of N worker processes on this machine) or a
scheduler address ``"tcp://HOST:PORT"`` (workers started with ``dask worker`` elsewhere). Dask is
the scheduler; kexue only opens and closes the client.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from collections.abc import Iterator

from kexue.utils import KexueError, require

CONNECT_TIMEOUT = 30  # seconds to reach a Dask scheduler


def check_where(scheduler: str | None, cluster: str | None) -> str | None:
    """The one place ``--scheduler tcp://HOST:PORT`` / ``--cluster local:N`` are checked;
    returns the ``where`` string for :func:`dask_client` (None: run here, without Dask)."""
    if scheduler is not None and cluster is not None:
        raise KexueError("give --scheduler tcp://HOST:PORT or --cluster local:N, not both")
    if cluster is not None and not (cluster.startswith("local:") and cluster[6:].isdigit() and int(cluster[6:]) >= 1):
        raise KexueError(f"--cluster must be local:N with N ≥ 1 workers; got {cluster!r}")
    if scheduler is not None and "://" not in scheduler:
        raise KexueError(f"--scheduler must be a Dask address like tcp://HOST:8786; got {scheduler!r}")
    return scheduler or cluster


@contextmanager
def dask_client(where: str) -> Iterator[object]:
    """A ``dask.distributed.Client`` for ``where`` (``local:N`` or ``tcp://HOST:PORT``), closed
    (with its local cluster) on exit. A missing ``dask`` names the ``dask`` extra."""
    distributed = require("dask", "dask.distributed", "a Dask cluster")
    cluster = None
    if where.startswith("local:"):
        n = where.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise KexueError(f"--cluster local:N needs a worker count N ≥ 1; got {where!r}")
        cluster = distributed.LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(where, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            raise KexueError(f"cannot reach the Dask scheduler {where} ({e}); is `dask scheduler` running there?") from None
    try:
        client.run(_quiet_user_errors)
        yield client
    finally:
        client.close()
        if cluster is not None:
            nanny, slow = logging.getLogger("distributed.nanny"), _SlowExitFilter()
            nanny.addFilter(slow)
            try:
                cluster.close()
            finally:
                nanny.removeFilter(slow)


def _size(path: str) -> int:
    """The size of ``path`` as this process sees it (-1: it cannot); of a directory of ``.npy``
    shards, their total size (a directory's own size differs between filesystems)."""
    try:
        if os.path.isdir(path):
            return sum(e.stat().st_size for e in os.scandir(path) if e.name.endswith(".npy") and not e.name.startswith(".")
                       and e.is_file())
        return os.stat(path).st_size
    except OSError:
        return -1


def blind_workers(client, path) -> list[str]:
    """The workers of ``client`` that do not see the file ``path`` as this process does (same
    size): those that cannot read a block of it themselves."""
    path = os.path.abspath(path)  # as the tasks name it (a worker's working folder may differ)
    size = _size(path)
    return [w for w, s in client.run(_size, path).items() if s != size or s < 0]


class _UserErrorFilter(logging.Filter):
    """Drops a worker's "Compute Failed" record of a kexue user-input error (e.g. a NaN in a block
    of the user's file): the task's exception reaches the caller, which reports it as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("Compute Failed") and len(args) > 3
                    and str(args[3]).startswith(("KexueError(", "KexueTypeError(")))


class _ClosingFilter(logging.Filter):
    """Drops a worker's "Async instruction … ended with CancelledError" warning: distributed logs it
    when a worker closes with tasks still running ("this should exclusively happen in
    Worker.close()"), as when a local cluster is shut down after a user-input error in one block
    cancelled the rest; the error itself is reported as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Async instruction for") and msg.endswith("ended with CancelledError"))


class _SlowExitFilter(logging.Filter):
    """Drops the nanny's "Worker process still alive after 4.0 seconds, killing" while this
    process closes its own local cluster: every result is in by then, and a worker process that
    takes more than distributed's 4 s to exit (a busy machine) is killed by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Worker process still alive after")


def _quiet_user_errors() -> None:
    """Run on every worker (``client.run``): install :class:`_UserErrorFilter` and
    :class:`_ClosingFilter` once."""
    for name, cls in (("distributed.worker", _UserErrorFilter), ("distributed.worker.state_machine", _ClosingFilter)):
        log = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in log.filters):
            log.addFilter(cls())
