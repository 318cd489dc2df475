"""Per-row parts of reports/index.html: every seed's plots, and Mem / fps with their machine.

A row with several seeds has one results folder per run (:mod:`dnlrepro.core.runs`); the page
draws each run's curves, captioned with its seed, so a second seed is never hidden behind the
first. Mem and fps are per machine: a cell shows the number with the machine it was measured
on, or says why there is none, instead of a bare "-".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markupsafe import Markup

from dnlrepro.reports import charts, trajectory_plot
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
        for plot in trajectory_plot.plots(results / key, key):
            plot["title"] += f", seed {seed}" if len(runs) > 1 else ""
            plots.append(plot)
    return plots


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


__all__ = ["DRAW", "PLOTS", "SPEED_METRICS", "machine", "run_plots", "speed_cell"]
