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
from dataclasses import dataclass
from pathlib import Path

import jinja2

from dnlrepro.core import workspace
from dnlrepro.core.config import load_config
from dnlrepro.core.layout import compare
from dnlrepro.core.profile import Profile, load_profile, read_params
from dnlrepro.core.registry import Published, load_published
from dnlrepro.reports.outputs import write_all
from dnlrepro.reports.results import Measured, device_of, load_rows, num, with_spread

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
TITLES: dict[str, str] = {"cityscapes": "Cityscapes", "ade20k": "ADE20K"}
HEADER = (
    "Method",
    "Backbone",
    "Crop Size",
    "Lr schd",
    "GPUs x batch",  # not in the model zoo's table: the layout each row trained with
    "Mem (GB)",
    "Inf time (fps)",
    "mIoU",
    "mIoU(ms+flip)",
    "config",
    "download",
)
RIGHT_ALIGNED = {"Lr schd", "Mem (GB)", "mIoU"}  # as in the seed table


def environment(**options: bool) -> jinja2.Environment:
    """The templates' environment: markdown (no autoescape) unless ``options`` say otherwise."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        **{"autoescape": False, **options},
    )


@dataclass(frozen=True)
class Ran:
    """What a profile actually ran for a row, when it is not the paper's (e.g. smoke)."""

    crop: str  # "HxW" like the published column
    iters: int
    baseline: bool  # show the majority-class baseline beside mIoU


def ran_as(name: str, profile: Profile, ws: workspace.Workspace) -> Ran | None:
    """The crop and schedule ``profile`` resolves for ``name``; None for the paper's own."""
    if not profile.overrides and profile.miniature is None:
        return None
    resolved = ws.results / name / "config.yaml"  # what resolve@<name> resolved
    cfg = load_config(resolved, ws=ws) if resolved.is_file() else load_config(name, profile, ws=ws)
    h, w = cfg.data.crop_size  # (h, w), as mmseg's crop_size
    return Ran(f"{h}x{w}", cfg.schedule.max_iters, profile.settings.data_source == "synthetic")


def _beside(ours: str, paper: str) -> str:
    return paper if ours == paper else f"{ours} (paper {paper})"


def layout_cell(protocol: dict, train: dict) -> str:
    """Our layout (gpus x per-GPU batch) beside the published one; ``=`` when the two are the
    same protocol (global batch and BN group, core/layout.py), ``-`` when nothing trained."""
    paper = f"{protocol.get('gpus', '?')}x{protocol.get('samples_per_gpu', '?')}"
    ours = train.get("layout")
    if train.get("trained") is False:
        return paper  # the published checkpoint itself
    if ours is None:
        return "-"
    same, _ = compare(train, protocol.get("batch"))
    return paper if ours == paper else f"{ours} ({'=' if same else 'paper'} {paper})"


def row_cells(
    name: str, published: Published, measured: Measured, ran: Ran | None = None
) -> list[str]:
    entry = published.entry(name)
    m = measured.metrics
    miou = with_spread(measured, "mIoU")
    if ran and ran.baseline and m["mIoU"] is not None and m["baseline_mIoU"] is not None:
        miou += f" (const. {m['baseline_mIoU']:.2f})"
    files = []
    if "eval" in measured.files:
        files.append(f"[metrics](../results/{name}/eval.json)")
    if "train_summary" in measured.files:
        files.append(f"[train summary](../results/{name}/train_summary.json)")
    return [
        entry.method,
        entry.backbone,
        _beside(ran.crop, entry.crop_size) if ran else entry.crop_size,
        _beside(str(ran.iters), str(entry.lr_schd)) if ran else str(entry.lr_schd),
        layout_cell(entry.protocol, measured.train),
        num(m["mem_gb"], 1),
        num(m["fps"], 2),
        miou,
        with_spread(measured, "mIoU_ms_flip"),
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
    ran: dict[str, Ran | None] | None = None,
) -> str:
    """Markdown table of ``names`` (in this order) for ``dataset``.

    ``ran`` gives, per row, what a reduced profile actually ran; its crop and iterations are
    then shown beside the paper's, and (synthetic data) the mIoU beside the majority-class
    baseline, ``const.``: what predicting the most frequent class everywhere scores.
    """
    ran = ran or {}
    if dataset not in TITLES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(TITLES)}")
    header, rule, rows = _pad([row_cells(n, published, measured[n], ran.get(n)) for n in names])
    devices = sorted({d for n in names if (d := device_of(measured[n]))})
    notes = []
    for n in names:
        if measured[n].metrics["mIoU"] is None:
            notes.append(f"`{n}`: not evaluated yet (no `results/{n}/eval.json`).")
    if any(measured[n].spread.get("mIoU") and measured[n].spread["mIoU"].n > 1 for n in names):
        notes.append(
            "`a ± s (n=k)`: mean and sample standard deviation over the row's k seeds "
            "(the profile's `seeds`; per-seed numbers in diff.md and `results/<run>/`)."
        )
    if any(r and r.baseline for r in ran.values()):
        notes.append(
            "`const.`: mIoU of predicting the most frequent class everywhere on the same "
            "labels; a trained model is only learning when it scores above it."
        )
    if dataset == "cityscapes":
        notes.append(
            "The mmseg README publishes no mIoU(ms+flip) for the 512x1024 rows "
            "(docs/reference.md §5.3); see diff.md."
        )
    return (
        environment()
        .get_template("table.md.j2")
        .render(
            title=TITLES[dataset],
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
    ws: workspace.Workspace | None = None,
) -> list[Path]:
    """Render both tables and ``published_vs_reproduced.csv`` into ``out_dir``."""
    ws = ws or workspace.find()
    out_dir = Path(out_dir)
    files, rows = {}, [["config", "dataset", "metric", "published", "reproduced"]]
    for dataset in TITLES:
        names = [n for n, row in published.configs.items() if row.dataset == dataset]
        measured = load_rows(names, profile, results_dir, ws)
        ran = {n: ran_as(n, profile, ws) for n in names}
        text = render(dataset, names, published, measured, profile.name, profile.description, ran)
        rows += comparison_rows(dataset, names, published, measured)
        files[out_dir / f"{dataset}.md"] = text.encode("utf-8")
    csv = ("\n".join(",".join(r) for r in rows) + "\n").encode()
    files[out_dir / "published_vs_reproduced.csv"] = csv
    written = write_all(files)  # all three, or none
    logger.info("wrote %s", ", ".join(map(str, written)))
    return written


def comparison_rows(
    dataset: str, names: Sequence[str], published: Published, measured: dict[str, Measured]
) -> list[list[str]]:
    """``config,dataset,metric,published,reproduced`` rows of ``names``."""
    rows = []
    for n in names:
        for metric in ("mIoU", "mIoU_ms_flip"):
            values = (published.entry(n).metrics.get(metric), measured[n].metrics.get(metric))
            if values != (None, None):
                rows.append([n, dataset, metric, *("" if v is None else f"{v:g}" for v in values)])
    return rows


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
        ws,
    )
    return 0
