"""The diff report's trajectory section, from the runs' trajectory.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnlrepro.reports import trajectory


def _record(path: Path, **kw: object) -> None:
    path.mkdir(parents=True)
    base = {
        "reference": "x-20200904_233629.log.json", "lr_rtol": 1e-6, "loss_band": 0.3,
        "loss_verdict": "left the band at 1 of 3 points", "miou_tolerance": 1.0,
        "max_lr_rel_error": 0.0,
        "val": [{"iter": 4000, "mIoU": 70.1, "ref_mIoU": 72.0, "below": 1.9, "on_track": False}],
    }  # fmt: skip
    (path / "trajectory.json").write_text(json.dumps({**base, **kw}))


def test_section_lists_compared_runs_only(tmp_path: Path) -> None:
    _record(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "trajectory.json").write_text('{"reference": null, "reason": "off"}')
    section = trajectory.collect(tmp_path, ["a", "b", "c"])
    assert [r["run"] for r in section] == ["a"]
    text = trajectory.markdown(section)
    assert "## Training trajectories" in text
    assert (
        "| a | x-20200904_233629.log.json | 0.0e+00 | left the band at 1 of 3 points (±30%) |"
        in text
    )
    assert "4000: 70.10 vs 72.00 (below)" in text
    assert trajectory.markdown([]) == ""


def test_unreadable_record_names_the_file_and_the_stage(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "trajectory.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"a/trajectory.json: not readable JSON.*train@a"):
        trajectory.collect(tmp_path, ["a"])


def test_index_overlay_only_for_compared_runs(tmp_path: Path) -> None:
    from dnlrepro.reports import row_views

    assert row_views.trajectory_plots(tmp_path / "none", "none") == []
    _record(
        tmp_path / "a",
        train=[{"iter": 50, "loss": 1.2, "lr": 0.00999}],
        published={"train": [{"iter": 50, "loss": 1.1, "lr": 0.00999}],
                   "val": [{"iter": 4000, "mIoU": 72.0}]},
    )  # fmt: skip
    (plot,) = row_views.trajectory_plots(tmp_path / "a", "a")
    assert plot["title"] == "trajectory vs x-20200904_233629.log.json"
    assert plot["svg"].startswith("<svg") and "reference" in plot["svg"]
