"""write_all: a command's reports are replaced all together or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnlrepro.reports.outputs import ReportWriteError, write_all


def test_all_files_are_replaced(tmp_path: Path):
    (tmp_path / "a.md").write_text("old")
    written = write_all({tmp_path / "a.md": b"new a", tmp_path / "sub" / "b.json": b"new b"})
    assert [p.read_bytes() for p in written] == [b"new a", b"new b"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.md", "b.json", "sub"]


def test_a_temporary_that_cannot_be_written_changes_nothing(tmp_path: Path):
    (tmp_path / "a.md").write_text("old")
    (tmp_path / f".b.json.{os.getpid()}.tmp").mkdir()  # blocks b.json's temporary, also for root
    with pytest.raises(ReportWriteError, match=r"could not write \S*/b\.json \("):
        write_all({tmp_path / "a.md": b"new", tmp_path / "b.json": b"new"})
    assert (tmp_path / "a.md").read_text() == "old" and not (tmp_path / "b.json").exists()
    assert not (tmp_path / f".a.md.{os.getpid()}.tmp").exists()


def test_a_failed_rename_puts_back_the_files_already_replaced(tmp_path: Path):
    (tmp_path / "a.md").write_text("old")
    (tmp_path / "c.csv").mkdir()  # the last target: a.md and b.json are replaced first
    files = {tmp_path / "a.md": b"new", tmp_path / "b.json": b"new", tmp_path / "c.csv": b"new"}
    with pytest.raises(ReportWriteError, match=r"could not write .*c\.csv .*none of"):
        write_all(files)
    assert (tmp_path / "a.md").read_text() == "old"  # restored
    assert not (tmp_path / "b.json").exists()  # did not exist before: removed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "c.csv"]
