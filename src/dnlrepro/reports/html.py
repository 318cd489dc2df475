"""``dnlrepro report``: ``reports/index.html``, one static page with everything the reports hold.

The page (jinja2, ``templates/index.html.j2``) shows the profile and what its numbers mean, the
Cityscapes and ADE20K tables with the published and the reproduced value of every number side by
side, each number's protocol (a ``title`` tooltip on the cell, and a protocol column), the verdicts
of ``reports/diff.json`` in colour, and plots (:mod:`dnlrepro.reports.charts`) as inline SVG.

It is self-contained: inline CSS and SVG, no JavaScript, no URL outside the repository, so it opens
offline from disk. The same inputs give a byte-identical page (no timestamp anywhere; see
:func:`dnlrepro.reports.charts.to_svg`). A plot whose CSV does not exist yet is a short note in
the page; a malformed CSV or ``diff.json`` is an error naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from markupsafe import Markup

from dnlrepro.core import workspace
from dnlrepro.core.profile import Profile, load_profile, read_params
from dnlrepro.core.registry import METRICS, Published, PublishedEntry, load_published
from dnlrepro.core.runs import of_rows, plan
from dnlrepro.reports import charts, row_views
from dnlrepro.reports.diff import LABELS, VERDICTS, shown
from dnlrepro.reports.diff import our_protocol as protocol_fields
from dnlrepro.reports.outputs import write_all
from dnlrepro.reports.results import Measured, device_of, load_rows, num, read_json, with_spread
from dnlrepro.reports.tables import TITLES, environment

logger = logging.getLogger(__name__)

# What the numbers of each profile are; shown in the page header next to the description.
PROFILE_NOTES: dict[str, tuple[str, str]] = {
    "smoke": (
        "warn",
        "Smoke profile: synthetic data at tiny image sizes, a few training iterations from "
        "random weights. The reproduced numbers are meaningless against the published ones; "
        "they are shown to exercise every code path. The verdicts compare them with the "
        "recorded smoke baseline, and list the published numbers as not comparable.",
    ),
    "paper": (
        "info",
        "Paper profile: trained on the real datasets with the published schedules and "
        "protocols; the verdicts compare every number with the published one within its "
        "tolerance.",
    ),
    "published": (
        "info",
        "Published profile: the twelve published mmseg checkpoints, evaluated by this code on "
        "the real validation sets (no training, so no training curves).",
    ),
}


def load_diff(path: Path) -> dict[str, Any] | None:
    """``reports/diff.json`` as ``dnlrepro diff`` writes it; ``None`` when it does not exist."""
    if not path.is_file():
        return None
    data = read_json(path)
    rows = data.get("rows") if isinstance(data, dict) else None
    keys = ("config", "metric", "reference", "verdict")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and set(keys) <= set(r) for r in rows
    ):
        raise ValueError(
            f"{path}: expected a mapping with 'rows', each with {', '.join(keys)}; "
            "re-run `dnlrepro diff`"
        )
    for i, row in enumerate(rows):
        for key in ("published", "reproduced", "delta", "tolerance"):
            value = row.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(
                    f"{path}: 'rows[{i}].{key}' must be a number or null, got {value!r}; "
                    "re-run `dnlrepro diff`"
                )
    return data


def size(value: Any) -> str:
    """``[h, w]`` -> ``hxw``; anything else as text."""
    return "x".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def fields(mapping: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, text)`` pairs of a protocol block; lists and booleans as JSON writes them."""
    return [
        (k, "-" if v is None else json.dumps(v) if isinstance(v, list | dict | bool) else str(v))
        for k, v in mapping.items()
    ]


def published_protocol(p: dict[str, Any]) -> str:
    """Short text of the published run's protocol (``params/published.yaml`` ``protocol``)."""
    parts = [f"test {p.get('test_mode', '?')} @ {p.get('test_scale', '?')}"]
    if "gpus" in p:
        parts.append(f"train {p['gpus']}x{p.get('samples_per_gpu', '?')} {p.get('norm', '')}")
    parts += [str(p[k]) for k in ("split", "hardware") if k in p]
    return "; ".join(parts)


def our_protocol(meas: Measured) -> str:
    """Short text of our run's protocol (``eval.json`` protocol + ``train_summary.json``)."""
    p, t = meas.protocol, meas.train
    if not p:
        return "not evaluated yet"
    mode = str(p.get("mode", "?"))
    if mode == "slide":
        mode += f" {size(p.get('crop_size'))}, stride {size(p.get('stride'))}"
    parts = [f"test {mode} @ {size(p.get('img_scale'))}"]
    if t:
        parts.append(
            f"train {t.get('layout', '?')} (BN group {t.get('bn_group', '?')}), "
            f"{t.get('iterations', '?')} iters on {t.get('device', '?')}"
        )
    parts.append(f"{p.get('split', '?')} ({p.get('image_count', '?')} images)")
    profile = meas.run.get("profile") or p.get("profile")
    if profile:
        parts.append(f"profile {profile}")
    return "; ".join(parts)


def _published_title(metric: str, entry: PublishedEntry, published: Published) -> str:
    p = entry.protocol
    if entry.metrics[metric] is None:
        return entry.notes.get(metric, "not published")
    scale = {
        "mIoU": "single scale",
        "mIoU_ms_flip": f"ms+flip: ratios {p.get('ms_ratios', '?')}, flip {p.get('flip', '?')}",
    }.get(metric, f"measured on {p.get('hardware', '?')}")
    return f"{published.definitions[metric]}\nProtocol: {scale}; {published_protocol(p)}"


def _our_title(metric: str, meas: Measured) -> str:
    p, b = meas.protocol, meas.benchmark
    if metric == "mIoU":
        return f"single scale; {our_protocol(meas)}\nmetric: {p.get('metric', '?')}"
    if metric == "mIoU_ms_flip":
        return (
            f"ms+flip: ratios {p.get('scales', '?')}, flip {p.get('flip', '?')}; "
            f"{our_protocol(meas)}\n{p.get('ms_flip_rule', '')}".strip()
        )
    if metric == "fps":
        if not b:
            return "not benchmarked yet"
        if b.get("device") != "cuda":  # results.load_measured: not the published quantity
            # no number here: the page must not change with the machine's load (the timings
            # are kept apart, in timings/, so a re-run leaves results/ and reports/ identical)
            return (
                f"measured on {device_of(meas) or '?'}: a CPU timing, not shown against the "
                f"V100 column (timings/{meas.name}/speed.json)"
            )
        return (
            f"{device_of(meas) or '?'}: {b.get('num_images', '?')} images after "
            f"{b.get('warmup', '?')} warm-up, input {b.get('input', '?')}, "
            f"{b.get('test_mode', '?')} inference"
        )
    kind = meas.train.get("memory_kind", "cuda_max_memory_allocated")
    if meas.metrics[metric] is not None:
        return f"training memory, {kind}, on {device_of(meas) or '?'}"
    if kind != "cuda_max_memory_allocated":
        return f"not comparable: the run recorded {kind}, not torch.cuda.max_memory_allocated"
    return "not measured yet (Mem is CUDA max_memory_allocated of training)"


def row_context(
    name: str, published: Published, meas: Measured, diff_rows: list[dict], paths: dict[str, Any]
) -> dict[str, Any]:
    """Everything the template shows for one configuration (``paths``: results, link_root and
    ``runs``, each row's (run key, seed) pairs; a row without runs there is its own folder)."""
    entry = published.entry(name)
    mine = [r for r in diff_rows if r["config"] == name]
    verdict_of = {r["metric"]: r["verdict"] for r in mine if r["reference"] == "published"}
    cells = []
    for metric in METRICS:
        digits = 1 if metric == "mem_gb" else 2
        speed = row_views.speed_cell(metric, meas) if metric in row_views.SPEED_METRICS else None
        cells.append(
            {
                "metric": metric,
                "published": num(entry.metrics[metric], digits),
                "published_title": _published_title(metric, entry, published),
                "ours": speed["text"] if speed else with_spread(meas, metric, digits),
                "machine": speed["machine"] if speed else "",
                "ours_title": "\n".join(
                    t for t in (_our_title(metric, meas), speed and speed["why"]) if t
                ),
                "verdict": verdict_of.get(metric),
            }
        )
    counts = [(v, sum(r["verdict"] == v for r in mine)) for v in VERDICTS]
    return {
        "name": name,
        "entry": entry,
        "config_href": f"{paths['link_root']}params/{name}.yaml",
        "cells": cells,
        "verdicts": [(v, n) for v, n in counts if n],
        "protocol_published": published_protocol(entry.protocol),
        "protocol_ours": our_protocol(meas),
        "accuracy": f"{num(meas.metrics['mAcc'])} / {num(meas.metrics['aAcc'])}",
        "protocol_tables": [
            ("published (params/published.yaml)", fields(entry.protocol)),
            (f"ours (results/{name}/)", fields(protocol_fields(meas))),
        ],
        "plots": row_views.run_plots(
            paths.get("runs", {}).get(name) or [(name, 0)], Path(paths["results"])
        ),
    }


def diff_context(diff: dict[str, Any] | None) -> dict[str, Any] | None:
    """The diff rows formatted for the page (``None``: no ``diff.json`` yet)."""
    if diff is None:
        return None
    rows = [{"tolerance_reason": "", "note": "", **shown(r)} for r in diff["rows"]]
    summary = diff.get("summary") or {}
    return {
        "profile": diff.get("profile", "?"),
        "reference": diff.get("reference", "?"),
        "summary": [(v, summary.get(v, 0)) for v in VERDICTS],
        "rows": rows,
    }


def comparison_chart(path: Path) -> dict[str, Any]:
    """The published-vs-reproduced plot of ``reports/published_vs_reproduced.csv``, or a note."""
    rows = charts.read_csv(path, charts.PUBLISHED_VS_REPRODUCED)
    if not rows:
        what = "no rows" if rows == [] else "not written yet"
        return {"svg": None, "note": f"reports/{path.name}: {what}"}
    return {
        "svg": Markup(charts.published_vs_reproduced_svg(rows, LABELS, "dnlrepro-pvr")),
        "note": "",
    }


def render_page(ws: workspace.Workspace, profile: Profile, out: Path) -> str:
    """The page for workspace ``ws``, whose numbers were produced under ``profile``."""
    published = load_published(ws.registry_file)
    diff = load_diff(ws.reports / "diff.json")
    diff_rows = diff["rows"] if diff else []
    link_root = Path(os.path.relpath(ws.root, out.parent)).as_posix() + "/"
    runs = of_rows(plan(profile, ws), list(published.configs))
    row_runs = {n: [(r.key, r.seed) for r in rs] for n, rs in runs.items()}
    paths = {"results": ws.results, "link_root": link_root, "runs": row_runs}
    measured = load_rows(list(published.configs), profile, ws.results, ws)
    tables = []
    for dataset, title in TITLES.items():
        names = [n for n, e in published.configs.items() if e.dataset == dataset]
        rows = [row_context(n, published, measured[n], diff_rows, paths) for n in names]
        tables.append({"dataset": dataset, "title": title, "rows": rows})
    devices = sorted({d for m in measured.values() if (d := device_of(m))})
    # autoescape: every value is text; only the SVG is marked safe
    return (
        environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
        .get_template("index.html.j2")
        .render(
            profile=profile,
            profile_note=PROFILE_NOTES.get(profile.name, ("info", "")),
            description=" ".join(profile.description.split()),
            devices=devices,
            tables=tables,
            metrics=[(m, LABELS[m]) for m in METRICS],
            diff=diff_context(diff),
            comparison=comparison_chart(ws.reports / "published_vs_reproduced.csv"),
            published=published,
            link_root=link_root,
        )
    )


def write_report(out: str | Path | None = None, profile: Profile | None = None) -> Path:
    """Render and write the page atomically (default ``<workspace>/reports/index.html``)."""
    ws = workspace.find()
    out = Path(out) if out is not None else ws.reports / "index.html"
    profile = profile or read_params(ws)
    data = render_page(ws, profile, out.resolve()).encode("utf-8")
    write_all({out: data})
    logger.info("wrote %s (%d bytes, profile %s)", out, len(data), profile.name)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="default: <workspace>/reports/index.html")
    parser.add_argument(
        "--profile", default=None, help="profile that produced the results (default: params.yaml)"
    )


def main(args: argparse.Namespace) -> int:
    ws = workspace.find()
    write_report(args.out, load_profile(args.profile, ws) if args.profile else None)
    return 0
