"""``dnlrepro tables``: render ``reports/cityscapes.md`` and ``reports/ade20k.md``.

The tables have the mmseg model-zoo columns (seed: ``configs/dnlnet/README.md``) and rows in the
README's order, filled with OUR numbers from ``results/<config>/``. A number we did not measure is
``-``; nothing is copied from the published table (that comparison is ``reports/diff.md``).
Rendering uses jinja2 with ``StrictUndefined`` so a missing template variable is an error.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import jinja2

from dnlrepro import workspace
from dnlrepro.profile import Profile, load_profile, read_params
from dnlrepro.registry import Published, load_published
from dnlrepro.reports.results import Measured, device_of, load_measured

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
TITLES: dict[str, str] = {"cityscapes": "Cityscapes", "ade20k": "ADE20K"}
HEADER = (
    "Method",
    "Backbone",
    "Crop Size",
    "Lr schd",
    "Mem (GB)",
    "Inf time (fps)",
    "mIoU",
    "mIoU(ms+flip)",
    "config",
    "download",
)
RIGHT_ALIGNED = {"Lr schd", "Mem (GB)", "mIoU"}  # as in the seed table


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML
    )


def fmt(value: float | None, digits: int) -> str:
    """A measured number, or ``-`` when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def row_cells(name: str, published: Published, measured: Measured) -> list[str]:
    entry = published.entry(name)
    m = measured.metrics
    files = []
    if "metrics" in measured.files:
        files.append(f"[metrics](../results/{name}/metrics.json)")
    if "train_summary" in measured.files:
        files.append(f"[train summary](../results/{name}/train_summary.json)")
    return [
        entry.method,
        entry.backbone,
        entry.crop_size,
        str(entry.lr_schd),
        fmt(m["mem_gb"], 1),
        fmt(m["fps"], 2),
        fmt(m["mIoU"], 2),
        fmt(m["mIoU_ms_flip"], 2),
        f"[config](../params/{name}.yaml)",
        " &#124; ".join(files) if files else "-",
    ]


def _pad(rows: list[list[str]]) -> tuple[list[str], list[str], list[list[str]]]:
    """Pad every column to its widest cell, like the seed table (prettier's markdown style)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    header = [h.ljust(w) for h, w in zip(HEADER, widths, strict=True)]
    rule = [
        "-" * (w - 1) + ":" if h in RIGHT_ALIGNED else "-" * w
        for h, w in zip(HEADER, widths, strict=True)
    ]
    body = [
        [
            c.rjust(w) if h in RIGHT_ALIGNED else c.ljust(w)
            for c, h, w in zip(r, HEADER, widths, strict=True)
        ]
        for r in rows
    ]
    return header, rule, body


def render(
    dataset: str,
    names: Sequence[str],
    published: Published,
    measured: dict[str, Measured],
    profile: str,
    profile_description: str,
) -> str:
    """Markdown table of ``names`` (in this order) for ``dataset``."""
    if dataset not in TITLES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(TITLES)}")
    title = TITLES[dataset]
    header, rule, rows = _pad([row_cells(n, published, measured[n]) for n in names])
    devices = sorted({d for n in names if (d := device_of(measured[n]))})
    notes = []
    for n in names:
        if measured[n].metrics["mIoU"] is None:
            notes.append(f"`{n}`: not evaluated yet (no `results/{n}/metrics.json`).")
    if dataset == "cityscapes":
        notes.append(
            "The mmseg README publishes no mIoU(ms+flip) for the 512x1024 rows "
            "(docs/reference.md §5.3); "
            "see diff.md."
        )
    return (
        environment()
        .get_template("table.md.j2")
        .render(
            title=title,
            profile=profile,
            profile_description=" ".join(profile_description.split()),
            device=", ".join(devices) if devices else "unknown (no benchmark or training summary)",
            header=header,
            rule=rule,
            rows=rows,
            notes=notes,
        )
    )


def write_tables(
    out_dir: str | Path,
    results_dir: str | Path,
    published: Published,
    profile: Profile,
) -> list[Path]:
    """Render both tables into ``out_dir``; returns the written paths."""
    description = " ".join(profile.description.split())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in TITLES:
        names = [n for n, row in published.configs.items() if row.dataset == dataset]
        measured = {n: load_measured(n, results_dir) for n in names}
        text = render(dataset, names, published, measured, profile.name, description)
        path = out_dir / f"{dataset}.md"
        path.write_text(text, encoding="utf-8")
        logger.info("wrote %s (%d rows)", path, len(names))
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None, help="default: <workspace>/results")
    parser.add_argument("--published", default=None, help="default: params/published.yaml")
    parser.add_argument("--out", default=None, help="output folder (default: <workspace>/reports)")
    parser.add_argument(
        "--profile", default=None, help="profile that produced the results (default: params.yaml)"
    )


def main(args: argparse.Namespace) -> int:
    ws = workspace.find()
    profile = load_profile(args.profile, ws) if args.profile else read_params(ws)
    write_tables(
        args.out or ws.reports,
        args.results or ws.results,
        load_published(args.published or ws.registry_file),
        profile,
    )
    return 0
