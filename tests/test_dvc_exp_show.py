"""``dvc exp show`` as documented (docs/pipeline.md, "Comparing experiments"): the verdict counts
are the pipeline's headline metric and the first columns of the default (paged) view,
``--only-changed --drop 'results/|timings/'`` fits an 80-column terminal, and ``dvc metrics diff``
lists the per-row numbers that moved."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dnlrepro.core.registry import load_published
from dnlrepro.reports import diff
from dnlrepro.reports.results import load_measured

REPO = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")
ROW = "dnl_r50-d8_512x1024_40k_cityscapes"
DROP = "results/|timings/"  # docs/pipeline.md: the per-row files; their changes: dvc metrics diff


def test_summary_holds_the_verdict_counts(tmp_path: Path) -> None:
    committed = json.loads((REPO / "reports" / "diff.json").read_text(encoding="utf-8"))
    names = sorted({r["config"] for r in committed["rows"]})
    report = diff.build_diff(
        names, load_published(), {n: load_measured(n, REPO / "results") for n in names}, "paper"
    )
    diff.write_diff(report, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    expected = {}
    for row in report["rows"]:
        key = row["verdict"].replace(" ", "_")
        expected[key] = expected.get(key, 0) + 1
    assert {k: v for k, v in summary.items() if v} == expected
    assert set(summary) == {"pass", "fail", "missing", "not_comparable"}


def test_summary_is_the_diff_stage_metric() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert stages["diff"]["metrics"] == [{"reports/summary.json": {"cache": False}}]


@pytest.mark.slow
def test_only_changed_fits_80_columns(tmp_path: Path, clone_repo) -> None:
    root = clone_repo(tmp_path / "clone", git=True)
    # an "experiment": one row's mIoU and the verdict counts moved in the workspace
    metrics = root / "results" / ROW / "metrics.json"
    values = json.loads(metrics.read_text(encoding="utf-8"))
    values["mIoU"] = round(values["mIoU"] - 1.0, 2)
    metrics.write_text(json.dumps(values), encoding="utf-8")
    summary = root / "reports" / "summary.json"
    counts = {"pass": 1, "fail": 1, "missing": 0, "not_comparable": 0}
    if summary.is_file():
        counts = json.loads(summary.read_text(encoding="utf-8"))
        counts["pass"], counts["fail"] = counts["pass"] - 1, counts["fail"] + 1
    summary.write_text(json.dumps(counts), encoding="utf-8")
    env = {**os.environ, "COLUMNS": "80"}
    command = [str(DVC), "exp", "show", "--no-pager", "--only-changed", "--drop", DROP]
    shown = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert max(map(len, shown.stdout.splitlines())) <= 80, shown.stdout
    assert "…" not in shown.stdout, shown.stdout  # nothing cut
    header = next(line for line in shown.stdout.splitlines() if "Experiment" in line).split()
    assert {"pass", "fail"} <= set(header) and "mIoU" not in shown.stdout, shown.stdout
    # the per-row numbers that moved: one line each
    changed = subprocess.run(
        [str(DVC), "metrics", "diff"], cwd=root, capture_output=True, text=True, check=False
    )
    (line,) = [x for x in changed.stdout.splitlines() if ROW in x]
    assert line.split()[1:] == ["mIoU", f"{values['mIoU'] + 1.0:g}", f"{values['mIoU']:g}", "-1.0"]


def _as_a_terminal_shows_it(root: Path, columns: int = 80) -> list[str]:
    """``dvc exp show`` with no option, on a terminal: DVC renders the whole table and pipes it to
    its pager, ``less -RS``, which cuts each line at the terminal's edge (the rest is a scroll
    away). A pseudo-terminal makes DVC take that path; ``cat`` as the pager keeps the output."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "DVC_PAGER": "cat", "NO_COLOR": "1"}
    command = [str(DVC), "exp", "show"]
    proc = subprocess.Popen(
        command, cwd=root, env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        if not select.select([leader], [], [], 1.0)[0]:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")
    return [line[:columns] for line in text.splitlines()]


@pytest.mark.slow
def test_the_default_view_opens_on_the_verdict_counts(tmp_path: Path, clone_repo) -> None:
    # DVC orders metric columns by the stages' order in dvc.yaml: diff is listed first for this
    root = clone_repo(tmp_path / "clone", git=True)
    shown = _as_a_terminal_shows_it(root)
    header = next(line for line in shown if "Experiment" in line).split()
    assert header[:6] == ["Experiment", "Created", "pass", "fail", "missing", "not_comparable"], (
        shown
    )
    counts = json.loads((root / "reports" / "summary.json").read_text(encoding="utf-8"))
    expected = [str(counts[k]) for k in ("pass", "fail", "missing", "not_comparable")]
    workspace = next(line for line in shown if line.split()[:1] == ["workspace"]).split()
    assert workspace[2:6] == expected, shown
