"""Running ``dvc repro`` in the scratch copy: per-stage timing, logs, and the planned kill.

DVC prints ``Running stage 'NAME':`` and then ``> COMMAND`` before each stage it runs,
``Stage 'NAME' didn't change, skipping`` for the others and ``ERROR: failed to reproduce 'NAME'``
when one fails (dvc 3.x). The stage's own output comes in between, so reading DVC's output line
by line gives every stage's command, wall time, log and outcome without touching what the stages
write under ``results/``.

The resume rehearsal kills a training stage the way a preempted node dies: once a condition
holds (its first checkpoint exists), SIGKILL goes to DVC and every process below it (torchrun and
its workers included, whatever their session), with no chance to clean up.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from dnlrepro.launch.stages import dvc_command

logger = logging.getLogger(__name__)

_RUNNING = re.compile(r"^Running stage '(.+)':$")
_SKIPPED = re.compile(r"^Stage '(.+)' didn't change, skipping$")
TAIL = 40  # lines of output kept for a failure report
_FAILED = re.compile(r"^ERROR: failed to reproduce '(.+?)'")


@dataclass
class StageRun:
    """One stage as one ``dvc repro`` ran it."""

    stage: str
    run: int  # 1 = first dvc repro, 2 = the re-run after the kill
    command: str = ""
    started: float = 0.0
    seconds: float = 0.0
    status: str = "running"  # ok | failed | killed | skipped | running
    log: list[str] = field(default_factory=list)


@dataclass
class Kill:
    """Kill the run once ``ready()`` holds while ``stage`` is running."""

    stage: str
    ready: Callable[[], bool]
    done: bool = False


@dataclass
class DvcRun:
    index: int
    command: list[str]
    returncode: int
    stages: list[StageRun]
    log_path: Path
    error: str = ""  # DVC's ERROR line, if any
    tail: list[str] = field(default_factory=list)  # DVC's last output lines


def kill_tree(pid: int) -> int:
    """SIGKILL ``pid``, its process group and all its descendants; the number signalled.

    ``pid`` leads its own session (``start_new_session``), so its group also catches a child
    forked while we were listing; torchrun's workers start sessions of their own, so they are
    found as descendants.
    """
    killed: set[int] = set()
    for _ in range(3):  # a child forked between listing and killing is caught next round
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
                killed.add(p.pid)
        if not procs:
            break
    return len(killed)


class _Reader:
    """Parses DVC's output as it arrives (the watcher thread reads ``current``)."""

    def __init__(self, index: int, log_file) -> None:
        self.index, self.log_file = index, log_file
        self.stages: list[StageRun] = []
        self.current: StageRun | None = None
        self.error = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL)  # all output

    def feed(self, line: str) -> None:
        now = time.monotonic()
        self.log_file.write(line)
        text = line.rstrip("\n")
        self.tail.append(text)
        if m := _RUNNING.match(text):
            self._close(now, "ok")
            self.current = StageRun(m.group(1), self.index, started=now)
            self.stages.append(self.current)
            logger.info("dvc run %d: stage %s ...", self.index, m.group(1))
        elif m := _SKIPPED.match(text):
            self._close(now, "ok")
            self.stages.append(StageRun(m.group(1), self.index, status="skipped"))
        elif m := _FAILED.match(text):
            self.error = text
            for s in self.stages:
                if s.stage == m.group(1) and s.status == "running":
                    s.status, s.seconds = "failed", now - s.started
                    logger.info(
                        "dvc run %d: stage %s failed (%.0f s)", self.index, s.stage, s.seconds
                    )
        elif self.current is not None and text.startswith("> ") and not self.current.command:
            self.current.command = text[2:]
        elif self.current is not None:
            if text.startswith(("Updating lock file", "Generating lock file")):
                self.current.seconds = now - self.current.started  # the command has finished
            self.current.log.append(text)

    def _close(self, now: float, status: str) -> None:
        cur = self.current
        if cur is not None and cur.status == "running":
            cur.seconds = cur.seconds or now - cur.started
            cur.status = status
            logger.info(
                "dvc run %d: stage %s %s (%.0f s)", self.index, cur.stage, status, cur.seconds
            )
        self.current = None


def run_dvc(
    root: Path,
    env: dict[str, str],
    log_path: Path,
    index: int,
    kill: Kill | None = None,
    timeout: float = 3600.0,
) -> DvcRun:
    """``python -m dvc repro`` in ``root``; its output goes to ``log_path`` and is parsed."""
    cmd = dvc_command("repro")
    logger.info("dvc run %d: %s (log: %s)", index, " ".join(cmd[1:]), log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8", buffering=1) as log_file:  # line-buffered
        reader = _Reader(index, log_file)
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1, start_new_session=True,
        )  # fmt: skip
        deadline, timed_out = time.monotonic() + timeout, threading.Event()

        def watch() -> None:  # the planned kill, or the timeout
            while proc.poll() is None:
                cur = reader.current
                victim_running = kill is not None and cur is not None and cur.stage == kill.stage
                if victim_running and not kill.done and kill.ready():
                    n = kill_tree(proc.pid)
                    kill.done = True
                    logger.info("killed %s mid-run (SIGKILL to %d processes)", kill.stage, n)
                    return
                if time.monotonic() > deadline:
                    timed_out.set()
                    kill_tree(proc.pid)
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            reader.feed(line)
        rc = proc.wait()
        watcher.join()
    end = time.monotonic()
    final = "ok" if rc == 0 else "failed"
    if kill is not None and kill.done:
        final = "killed"
    elif timed_out.is_set():
        final = "failed"
        reader.error = reader.error or f"timed out after {timeout:.0f} s"
    elif rc != 0 and not reader.error:
        why = f" (signal {-rc}, not sent by the rehearsal)" if rc < 0 else ""
        reader.error = f"dvc repro exited with {rc}{why} without naming a failed stage"
    reader._close(end, final)
    return DvcRun(index, cmd, rc, reader.stages, log_path, reader.error, list(reader.tail))
