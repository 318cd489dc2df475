"""Per-row parts of reports/index.html: every seed's plots, and Mem / fps with their machine.

A row with several seeds has one results folder per run (:mod:`dnlrepro.core.runs`); the page
draws each run's curves, captioned with its seed, so a second seed is never hidden behind the
first, and each run's overlay on its reference training log (``trajectory.json``). Mem and fps
are per machine: a cell shows the number with the machine it was measured on, or says why there
is none, instead of a bare "-".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markupsafe import Markup
from matplotlib.figure import Figure

from dnlrepro.reports import charts, trajectory
from dnlrepro.reports.results import Measured, device_of

PLOTS: tuple[tuple[str, str, charts.CsvSpec], ...] = (
    ("train_curve.csv", "training curve", charts.TRAIN_CURVE),
    ("val_curve.csv", "validation curve", charts.VAL_CURVE),
    ("per_class.csv", "per-class IoU", charts.PER_CLASS),
)
DRAW = {
    "train_curve.csv": charts.train_curve_svg,
    "val_curve.csv": charts.val_curve_svg,
    "per_class.csv": charts.per_class_svg,
}
SPEED_METRICS = ("mem_gb", "fps")


def run_plots(runs: list[tuple[str, int]], results: Path) -> list[dict[str, Any]]:
    """One entry per (plot, run) of a row, plot by plot, each run's seed in the caption when
    the row has several: its SVG, or a note saying the CSV is not there yet."""
    plots = []
    for filename, title, spec in PLOTS:
        for key, seed in runs:
            caption = f"{title}, seed {seed}" if len(runs) > 1 else title
            rows = charts.read_csv(results / key / filename, spec)
            rel = f"results/{key}/{filename}"
            if rows is None:
                plots.append(
                    {"title": caption, "svg": None, "note": f"not measured yet (no {rel})"}
                )
            elif not rows:
                plots.append({"title": caption, "svg": None, "note": f"no rows yet in {rel}"})
            else:
                svg = DRAW[filename](rows, f"dnlrepro-{key}-{filename}")
                plots.append({"title": caption, "svg": Markup(svg), "note": ""})
    for key, seed in runs:  # each run against its reference training log, if it compared
        for plot in trajectory_plots(results / key, key):
            plot["title"] += f", seed {seed}" if len(runs) > 1 else ""
            plots.append(plot)
    return plots


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


def trajectory_plots(folder: Path, name: str) -> list[dict[str, Any]]:
    """The overlay as a row plot of the page; none when the run compared nothing."""
    record = trajectory.read(folder, name)
    if record is None:
        return []
    svg = overlay_svg(record, f"dnlrepro-{name}-trajectory")
    return [{"title": f"trajectory vs {record['reference']}", "svg": Markup(svg), "note": ""}]


def machine(meas: Measured) -> str | None:
    """The machine a row was measured on: the GPU's name, or the CPU's with its thread count."""
    device = device_of(meas)
    if device is None or not device.startswith("cpu"):
        return device
    found = meas.protocol.get("machine")
    if isinstance(found, dict) and found.get("cpu"):
        threads = found.get("threads")
        return f"CPU: {found['cpu']}" + (f", {threads} threads" if threads else "")
    return device


def speed_cell(metric: str, meas: Measured) -> dict[str, str]:
    """``{"text", "machine", "why"}`` of the Mem or fps cell (``why`` joins its tooltip).

    A CUDA measurement is the published quantity: the number, with the GPU under it. A CPU run
    has no such number (Mem is ``torch.cuda.max_memory_allocated``, fps a V100 figure): the cell
    says so in a few words; the tooltip names the machine and the file that holds the timing.
    The CPU figure itself stays out of the page, which must not change with the machine's load
    (a re-run leaves reports/ byte-identical; the timings live in timings/).
    """
    where = machine(meas) or "unknown machine"
    value = meas.metrics.get(metric)
    if value is not None:
        text = f"{value:.{1 if metric == 'mem_gb' else 2}f}"
        return {"text": text, "machine": where, "why": f"measured on {where}"}
    if metric == "fps":
        if meas.benchmark.get("fps") is None:
            return {"text": "-", "machine": "not benchmarked yet", "why": ""}
        why = f"{where}: a CPU timing, not the V100 figure (timings/{meas.name}/speed.json)"
        return {"text": "-", "machine": "CPU run: not comparable", "why": why}
    kind = meas.train.get("memory_kind")
    if kind is None:
        return {"text": "-", "machine": "not trained yet", "why": ""}
    why = f"{where}: {kind}, not CUDA max_memory_allocated (timings/{meas.name}/train.json)"
    return {"text": "-", "machine": "CPU run: no CUDA memory", "why": why}
