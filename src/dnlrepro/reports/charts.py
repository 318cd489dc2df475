"""The CSV files behind the HTML report's plots, and the plots as inline SVG (matplotlib).

Files (written by the stages; a file that does not exist means "not measured yet"):

* ``results/<config>/train_curve.csv``  ``iter,loss,lr``
* ``results/<config>/val_curve.csv``    ``iter,mIoU``
* ``results/<config>/per_class.csv``    ``class,IoU,IoU_ms_flip``
* ``reports/published_vs_reproduced.csv``  ``config,dataset,metric,published,reproduced``

A file that exists but cannot be read (missing column, a word where a number belongs, a ragged
line) is a :class:`CsvError` naming the file and the line. An empty number cell or ``nan`` is a
missing value (e.g. a class absent from the validation set, a README ``-`` cell).

The SVG is byte-for-byte reproducible: a fixed ``svg.hashsalt`` per figure (so clip-path ids are
stable and also unique within the page), ``svg.fonttype: none`` (text stays text, no glyph paths
whose ids depend on the font cache) and no metadata block (no date, no creator URL). Figures are
bare ``Figure`` objects (no pyplot): no global figure registry to leak, no GUI backend.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure


class CsvError(ValueError):
    """A CSV file exists but is malformed; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class CsvSpec:
    columns: tuple[str, ...]  # the header (extra columns are allowed and ignored)
    required: tuple[str, ...]  # cells that may not be empty
    text: tuple[str, ...] = ()  # cells kept as strings; all others are numbers


TRAIN_CURVE = CsvSpec(("iter", "loss", "lr"), required=("iter",))
VAL_CURVE = CsvSpec(("iter", "mIoU"), required=("iter",))
PER_CLASS = CsvSpec(("class", "IoU", "IoU_ms_flip"), required=("class",), text=("class",))
PUBLISHED_VS_REPRODUCED = CsvSpec(
    ("config", "dataset", "metric", "published", "reproduced"),
    required=("config", "dataset", "metric"),
    text=("config", "dataset", "metric"),
)
# Everything the SVG backend would write into <metadata>: None leaves it out (Date: no timestamp).
NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
_ID = re.compile(r' id="([^"]+)"')
_REF = re.compile(r'(?:href="|url\()#([^")]+)')
# One font name per <text> instead of matplotlib's ten-name fallback list (a third of the bytes
# of a 150-class chart); DejaVu Sans is the font matplotlib lays the text out with anyway.
SVG_RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}
COLORS = {"published": "#8c8c8c", "reproduced": "#1f77b4", "ms_flip": "#ff7f0e"}


def _cell_number(text: str, path: Path, line: int, column: str) -> float | None:
    if text == "" or text.lower() == "nan":
        return None
    try:
        value = float(text)
    except ValueError:
        raise CsvError(
            f"{path}: line {line}, column '{column}': {text!r} is not a number (leave the cell "
            "empty for a missing value)"
        ) from None
    if not math.isfinite(value):
        raise CsvError(f"{path}: line {line}, column '{column}': {text!r} is not finite")
    return value


def read_csv(path: str | Path, spec: CsvSpec) -> list[dict[str, Any]] | None:
    """The rows of ``path`` as dicts of ``spec.columns``; ``None`` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    expected = ",".join(spec.columns)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in spec.columns if c not in header]
            if missing:
                raise CsvError(
                    f"{path}: missing column(s) {', '.join(missing)}; the header must include "
                    f"'{expected}' (found '{','.join(header)}')"
                )
            rows = [_row(raw, spec, path, reader.line_num) for raw in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise CsvError(f"{path}: not a readable UTF-8 CSV file ({e}); expected '{expected}'") from e
    return rows


def _row(raw: dict[str | None, Any], spec: CsvSpec, path: Path, line: int) -> dict[str, Any]:
    if None in raw or any(raw[c] is None for c in spec.columns):
        raise CsvError(f"{path}: line {line} does not have as many fields as the header")
    row: dict[str, Any] = {}
    for column in spec.columns:
        text = raw[column].strip()
        if column in spec.required and text == "":
            raise CsvError(f"{path}: line {line}, column '{column}' is empty")
        row[column] = text if column in spec.text else _cell_number(text, path, line, column)
    return row


def to_svg(fig: Figure, salt: str) -> str:
    """``fig`` as an ``<svg>`` element for inlining into HTML (no XML prolog, no metadata)."""
    buf = io.StringIO()
    with matplotlib.rc_context(SVG_RC | {"svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata=NO_METADATA)
    text = buf.getvalue()
    return _drop_unused_ids(text[text.index("<svg") :].strip())


def _drop_unused_ids(svg: str) -> str:
    """Keep only the ids the SVG refers to (markers, clip paths: unique per salt). matplotlib
    also names every group ``figure_1``, ``text_1``, ..., which would repeat in every figure of
    the page (duplicate HTML ids) and make up a third of the markup."""
    used = set(_REF.findall(svg))
    return _ID.sub(lambda m: m.group(0) if m.group(1) in used else "", svg)


def train_curve_svg(rows: Sequence[dict[str, Any]], salt: str) -> str:
    """Training loss (left axis) and learning rate (right axis) against the iteration."""
    fig = Figure(figsize=(5.2, 3.0), layout="constrained")
    ax = fig.add_subplot()
    points = [(r["iter"], r["loss"]) for r in rows if r["loss"] is not None]
    if points:
        ax.plot(
            *zip(*points, strict=True), marker="o", ms=3, color=COLORS["reproduced"], label="loss"
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    lr = [(r["iter"], r["lr"]) for r in rows if r["lr"] is not None]
    if lr:
        twin = ax.twinx()
        twin.plot(*zip(*lr, strict=True), ls="--", color=COLORS["ms_flip"], label="lr")
        twin.set_ylabel("learning rate")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.set_title("training loss and learning rate", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return to_svg(fig, salt)


def val_curve_svg(rows: Sequence[dict[str, Any]], salt: str) -> str:
    """Validation mIoU against the iteration."""
    fig = Figure(figsize=(5.2, 3.0), layout="constrained")
    ax = fig.add_subplot()
    points = [(r["iter"], r["mIoU"]) for r in rows if r["mIoU"] is not None]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", ms=4, color=COLORS["reproduced"])
    ax.set_xlabel("iteration")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("validation mIoU (single scale)", fontsize=10)
    ax.grid(alpha=0.3)
    return to_svg(fig, salt)


def _barh(
    ax: Any, y: Sequence[float], values: Sequence[float | None], height: float, label: str, **kw
) -> Any:
    """Horizontal bars of the values that exist (a missing value draws nothing, not a 0 bar)."""
    kept = [(pos, v) for pos, v in zip(y, values, strict=True) if v is not None]
    pos, widths = [p for p, _ in kept], [v for _, v in kept]
    return ax.barh(pos, widths, height=height, label=label, **kw)


def per_class_svg(rows: Sequence[dict[str, Any]], salt: str) -> str:
    """Per-class IoU bars, single scale and ms+flip; an empty cell draws no bar ("n/a")."""
    names = [r["class"] for r in rows]
    fig = Figure(figsize=(6.5, max(2.5, 0.16 * len(names) + 1.2)), layout="constrained")
    ax = fig.add_subplot()
    y = range(len(names))
    has_ms = any(r["IoU_ms_flip"] is not None for r in rows)
    h = 0.4 if has_ms else 0.8
    _barh(ax, [i - h / 2 if has_ms else i for i in y], [r["IoU"] for r in rows], h, "single scale")
    if has_ms:
        ms = [r["IoU_ms_flip"] for r in rows]
        _barh(ax, [i + h / 2 for i in y], ms, h, "ms+flip", color=COLORS["ms_flip"])
    for i, r in enumerate(rows):
        if r["IoU"] is None and r["IoU_ms_flip"] is None:
            ax.text(0.5, i, "n/a", va="center", fontsize=6, color="#777777")
    ax.set_yticks(list(y), names, fontsize=6 if len(names) > 40 else 7)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.set_title("per-class IoU", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    return to_svg(fig, salt)


def short_name(config: str) -> str:
    """``dnl_r50-d8_512x1024_40k_cityscapes`` -> ``r50-d8 512x1024 40k`` (axis labels)."""
    parts = config.split("_")
    if parts and parts[0] == "dnl":
        parts = parts[1:]
    if len(parts) > 1 and parts[-1] in ("cityscapes", "ade20k"):
        parts = parts[:-1]
    return " ".join(parts)


def published_vs_reproduced_svg(
    rows: Sequence[dict[str, Any]], metric_labels: dict[str, str], salt: str
) -> str:
    """One panel per (metric, dataset): published and reproduced bars per configuration."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    known = [m for m in metric_labels if any(r["metric"] == m for r in rows)]
    metrics = known + sorted({r["metric"] for r in rows} - set(known))
    fig = Figure(figsize=(11.0, 0.9 + 2.3 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(datasets), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            cells = [r for r in rows if r["metric"] == metric and r["dataset"] == dataset]
            y = range(len(cells))
            for offset, key in ((-0.2, "published"), (0.2, "reproduced")):
                values = [c[key] for c in cells]
                bars = _barh(ax, [k + offset for k in y], values, 0.4, key, color=COLORS[key])
                labels = [f"{v:.2f}" for v in values if v is not None]
                ax.bar_label(bars, labels, padding=2, fontsize=6)
            ax.set_yticks(list(y), [short_name(c["config"]) for c in cells], fontsize=7)
            ax.set_ylim(len(cells) - 0.5, -0.5)
            ax.set_title(f"{dataset}: {metric_labels.get(metric, metric)}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.margins(x=0.12)  # room for the value labels
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize=8, frameon=False)
    return to_svg(fig, salt)
