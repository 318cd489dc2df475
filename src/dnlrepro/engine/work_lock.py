"""One trainer per work dir: ``<work_dir>/.train.lock``, held for the whole run.

Two trainers of one run in the same work dir (a second ``dvc repro``, a re-submitted job) would
write over each other's ``iter_N.pth`` / ``latest.pth`` and resume each other's state. The first
trainer holds an advisory ``flock`` on the lock file, which names it (pid and host); a second one
refuses to start. The kernel drops a ``flock`` when its process dies, however it dies, so a lock
file left behind by a dead trainer is taken over (and logged), never an obstacle. Under torchrun
only rank 0 takes it (:func:`dnlrepro.engine.train_setup.process_scope`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"


class AlreadyRunningError(RuntimeError):
    """Another live trainer holds the work dir's lock."""


@contextlib.contextmanager
def hold(work_dir: Path) -> Iterator[Path]:
    """Hold ``work_dir``'s lock while the block runs; the file is emptied on the way out.

    Raises:
        AlreadyRunningError: a live process holds it (the message names its pid and the folder).
    """
    path = work_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(fd, path):
            yield path  # a filesystem without locks: run unguarded, as before (warned)
            return
        previous = os.pread(fd, 256, 0).decode(errors="replace").split()
        if previous:
            logger.warning(
                "taking over the stale training lock %s of pid %s (host %s): that process no "
                "longer holds it",
                path,
                previous[0],
                previous[1] if len(previous) > 1 else "?",
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # no holder named: the next trainer has nothing to take over
    finally:
        os.close(fd)  # releases the flock


def _lock(fd: int, path: Path) -> bool:
    """Take the ``flock`` (True); False where the filesystem has no locks (warned)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split() or ["?"]
        host = f" on host {holder[1]}" if len(holder) > 1 else ""
        raise AlreadyRunningError(
            f"training in {path.parent} is already running (pid {holder[0]}){host}: it holds "
            f"{path}. Wait for it to finish or stop it, or train in another --work-dir"
        ) from None
    except OSError as e:
        logger.warning(
            "cannot lock %s (%s): a second trainer of this run would not be stopped", path, e
        )
        return False
    return True
