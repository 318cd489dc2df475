"""One trainer per work dir: a live holder is refused by pid, a dead one's lock is taken over."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnlrepro import cli
from dnlrepro.engine import train_setup, work_lock

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"
HOLDER = """
import sys
from pathlib import Path
from dnlrepro.engine import work_lock
with work_lock.hold(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)
"""


@pytest.fixture()
def holder(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A second process that holds ``tmp_path/wd``'s lock until stdin closes."""
    wd = tmp_path / "wd"
    wd.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(wd)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_second_trainer_refuses_a_live_holder(holder, tmp_path: Path, capsys):
    wd = tmp_path / "wd"
    with (
        pytest.raises(work_lock.AlreadyRunningError) as caught,
        train_setup.process_scope(wd, "cpu"),
    ):
        pytest.fail("entered a work dir another trainer holds")
    message = str(caught.value)
    assert f"already running (pid {holder.pid})" in message and str(wd) in message
    argv = ["train", "--config", CFG, "--profile", "smoke", "--work-dir", str(wd), "--no-track"]
    assert cli.main(argv) == 1  # the command line: one line, before any data is read
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnlrepro train: error:") and f"(pid {holder.pid})" in err
    assert "\n" not in err


def test_lock_of_a_killed_trainer_is_taken_over(holder, tmp_path: Path, caplog):
    wd = tmp_path / "wd"
    holder.send_signal(signal.SIGKILL)  # no clean-up: the file still names it
    holder.wait()
    assert (wd / work_lock.LOCK_NAME).read_text().split()[0] == str(holder.pid)
    with caplog.at_level(logging.WARNING), train_setup.process_scope(wd, "cpu"):
        assert "taking over the stale training lock" in caplog.text
        assert f"of pid {holder.pid}" in caplog.text
    assert (wd / work_lock.LOCK_NAME).read_text() == ""  # released: nothing to take over


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path: Path, caplog):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / work_lock.LOCK_NAME).write_text("4194303 elsewhere\n")  # above Linux's pid_max
    with caplog.at_level(logging.WARNING), train_setup.process_scope(wd, "cpu"):
        assert "pid 4194303 (host elsewhere)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), train_setup.process_scope(wd, "cpu"):
        assert "stale" not in caplog.text  # a clean exit leaves nothing to take over
