"""The diff report's trajectory section: each run against its reference training log.

Reads ``results/<run>/trajectory.json`` (written by ``train@``,
:mod:`dnlrepro.engine.trajectory`) and lists per run the largest lr error, the loss-band verdict
and our validation mIoU at each evaluation of the reference log. Runs without a comparison
(no reference, the published profile, a trajectory not recorded yet) are left out; with none,
the section is absent and the report is unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILE = "trajectory.json"


def read(folder: Path, run: str) -> dict[str, Any] | None:
    """``<folder>/trajectory.json`` of ``run``; None when the run compared itself with nothing."""
    path = folder / FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path}: not readable JSON ({e}); re-run `dvc repro train@{run}`"
        ) from None
    return record if record.get("reference") else None


def collect(results: str | Path, runs: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per run that compared itself with a reference, in ``runs`` order."""
    out = []
    keys = ("max_lr_rel_error", "lr_rtol", "loss_band", "loss_verdict", "miou_tolerance")
    for run in runs:
        record = read(Path(results) / run, run)
        if record is None:
            continue
        out.append(
            {
                "run": run,
                "reference": record["reference"],
                **{k: record.get(k) for k in keys},
                "val": [
                    {k: p[k] for k in ("iter", "mIoU", "ref_mIoU", "below", "on_track")}
                    for p in record.get("val", [])
                ],
            }
        )
    return out


def _val_text(points: list[dict[str, Any]]) -> str:
    if not points:
        return "-"
    return "; ".join(
        f"{p['iter']}: {p['mIoU']:.2f} vs {p['ref_mIoU']:.2f}{'' if p['on_track'] else ' (below)'}"
        for p in points
    )


def markdown(section: list[dict[str, Any]]) -> str:
    """The Markdown section (empty string when no run compared itself)."""
    if not section:
        return ""
    lines = [
        "",
        "## Training trajectories",
        "",
        "Each run against its reference training log while it trained (docs/pipeline.md, "
        '"Reference trajectories"): the largest relative lr error (a run stops above 1e-6), the '
        "loss-band verdict, and our validation mIoU vs the reference at each of its evaluations "
        "(iteration: ours vs reference; below = more than the row's tolerance below).",
        "",
        "| run | reference | max lr error | loss (band) | val mIoU: ours vs reference |",
        "|---|---|---|---|---|",
    ]
    for row in section:
        err = row["max_lr_rel_error"]
        err_s = "-" if err is None else f"{err:.1e}"
        band = row["loss_band"]
        loss_s = f"{row['loss_verdict']} (±{100 * band:.0f}%)" if band is not None else "-"
        lines.append(
            f"| {row['run']} | {row['reference']} | {err_s} | {loss_s} | {_val_text(row['val'])} |"
        )
    return "\n".join(lines) + "\n"
