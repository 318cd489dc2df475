"""index.html's overlay of a run's curves on its reference training log's (trajectory.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from markupsafe import Markup
from matplotlib.figure import Figure

from dnlrepro.reports import charts
from dnlrepro.reports.trajectory import FILE


def _line(ax: Any, points: list[tuple[float, float]], **style: Any) -> None:
    if points:
        ax.plot(*zip(*points, strict=True), **style)


def overlay_svg(record: dict[str, Any], salt: str) -> str:
    """Loss and lr (left) and val mIoU (right): ours solid, the reference grey/dashed."""
    fig = Figure(figsize=(7.8, 3.0), layout="constrained")  # no pyplot: no global state
    loss_ax, val_ax = fig.subplots(1, 2)
    ref = record.get("published", {})
    ours = record.get("train", [])
    grey, blue = charts.COLORS["published"], charts.COLORS["reproduced"]
    _line(loss_ax, [(p["iter"], p["loss"]) for p in ref.get("train", [])], color=grey,
          label="reference loss")  # fmt: skip
    _line(loss_ax, [(p["iter"], p["loss"]) for p in ours], color=blue, marker="o", ms=3,
          label="our loss")  # fmt: skip
    lr_ax = loss_ax.twinx()
    _line(lr_ax, [(p["iter"], p["lr"]) for p in ref.get("train", [])], color=grey, ls="--")
    _line(lr_ax, [(p["iter"], p["lr"]) for p in ours], color=charts.COLORS["ms_flip"], ls=":")
    lr_ax.set_ylabel("lr (dashed: reference, dotted: ours)", fontsize=7)
    loss_ax.set_xlabel("iteration")
    loss_ax.set_title("loss and lr vs the reference log", fontsize=9)
    loss_ax.legend(fontsize=7, frameon=False)
    _line(val_ax, [(p["iter"], p["mIoU"]) for p in ref.get("val", [])], color=grey, marker="s",
          ms=4, label="reference")  # fmt: skip
    _line(val_ax, [(p["iter"], p["mIoU"]) for p in record.get("val", [])], color=blue,
          marker="o", ms=4, label="ours")  # fmt: skip
    val_ax.set_xlabel("iteration")
    val_ax.set_ylabel("mIoU (%)")
    val_ax.set_title(f"val mIoU (tolerance {record.get('miou_tolerance')})", fontsize=9)
    val_ax.legend(fontsize=7, frameon=False)
    return charts.to_svg(fig, salt)


def plots(folder: Path, name: str) -> list[dict[str, Any]]:
    """The overlay as a row plot of the page; none when the run compared nothing."""
    path = folder / FILE
    if not path.is_file():
        return []
    record = json.loads(path.read_text(encoding="utf-8"))
    if not record.get("reference"):
        return []
    svg = overlay_svg(record, f"dnlrepro-{name}-trajectory")
    return [{"title": f"trajectory vs {record['reference']}", "svg": Markup(svg), "note": ""}]
