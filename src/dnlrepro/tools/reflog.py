"""``dnlrepro reflog``: record a reference trajectory, or say what the published runs were.

* ``dnlrepro reflog record RUN``: ``results/<RUN>/log.json`` (our run in mmseg 0.x's log format,
  written by every training) becomes ``params/reference_logs/<profile>/<config>.log.json``, the
  reference that profile's runs of that configuration compare with (``settings.reference.source:
  recorded``). It is read back strictly first, so a broken log is never recorded.
* ``dnlrepro reflog facts``: from the metadata line of each downloaded published log
  (``downloads/reference_logs``, fetched by ``download@<dataset>`` with real data), the GPU model
  and count, seed and versions of the published run and its validation mIoU per evaluation;
  written to ``params/published_runs.json`` (commit it) and printed as a Markdown table for
  docs/reference.md §6.4. Rows whose log is not downloaded are listed as pending.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from dnlrepro.core import workspace
from dnlrepro.core.files import write_json
from dnlrepro.core.profile import read_params
from dnlrepro.core.reference import recorded_path
from dnlrepro.core.registry import load_published
from dnlrepro.core.runs import config_of, plan
from dnlrepro.engine import reflog
from dnlrepro.engine.trajectory import LOG_FILE

logger = logging.getLogger(__name__)

FACTS_FILE = "params/published_runs.json"


def record(ws: workspace.Workspace, run: str) -> Path:
    """Copy ``results/<run>/log.json`` to the profile's recorded references; the path written."""
    folder = ws.results / run
    source = folder / LOG_FILE
    summary_file = folder / "train_summary.json"
    if not source.is_file() or not summary_file.is_file():
        raise FileNotFoundError(
            f"{source}: no training log of run {run!r}; `dvc repro train@{run}` writes it"
        )
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    if not summary.get("iterations") or summary.get("trained") is False:
        raise ValueError(f"{summary_file}: run {run!r} was not trained here; nothing to record")
    log = reflog.read(source)  # strict: a malformed log is never recorded
    if log.train[-1].iter != summary["iterations"]:
        raise ValueError(
            f"{source}: the log ends at iteration {log.train[-1].iter}, the run has "
            f"{summary['iterations']}; record only a complete run"
        )
    dest = recorded_path(ws, str(summary["profile"]), config_of(run))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    logger.info(
        "recorded %s -> %s (%d train, %d val lines); commit it: runs of %s under profile %s "
        "now compare with it",
        source, ws.relative(dest), len(log.train), len(log.val), config_of(run),
        summary["profile"],
    )  # fmt: skip
    return dest


def first_seed_runs(ws: workspace.Workspace) -> list[str]:
    """The active profile's runs whose key is their configuration (each row's first seed)."""
    return [key for key, run in plan(read_params(ws), ws).items() if key == run.config]


def facts(ws: workspace.Workspace) -> dict[str, Any]:
    """Per row: what the published run's log says, or why it is pending."""
    out: dict[str, Any] = {}
    for name, entry in load_published(ws.registry_file).configs.items():
        path = ws.downloads / "reference_logs" / entry.log.rsplit("/", 1)[-1]
        if not path.is_file():
            out[name] = {
                "pending": f"{ws.relative(path)} missing: dvc repro download@{entry.dataset}"
            }
            continue
        out[name] = {"log": entry.log, **reflog.run_facts(reflog.read(path))}
    return out


def markdown(table: dict[str, Any]) -> str:
    lines = ["| config | GPUs | seed | PyTorch | MMCV | MMSegmentation | last val mIoU |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name, row in table.items():
        if "pending" in row:
            lines.append(f"| {name} | pending | | | | | |")
            continue
        gpus = ", ".join(f"{n}x {model}" for model, n in row["gpus"].items()) or "?"
        v = row["versions"]
        last = list(row["val"].values())[-1] if row["val"] else "?"
        lines.append(
            f"| {name} | {gpus} | {row['seed']} | {v.get('PyTorch', '?')} | {v.get('MMCV', '?')} "
            f"| {v.get('MMSegmentation', '?')} | {last} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record", help="results/RUN/log.json -> params/reference_logs/...")
    rec.add_argument(
        "run",
        nargs="?",
        help="the run key (params/runs.yaml), e.g. a configuration name; default: every "
        "configuration's first-seed run of the active profile",
    )
    sub.add_parser("facts", help=f"what the published runs were -> {FACTS_FILE}")


def main(args: argparse.Namespace) -> int:
    ws = workspace.find()
    if args.action == "record":
        for run in [args.run] if args.run else first_seed_runs(ws):
            record(ws, run)
        return 0
    table = facts(ws)
    write_json(ws.path(FACTS_FILE), table, sort_keys=False)
    print(markdown(table))
    pending = sum("pending" in row for row in table.values())
    logger.info("wrote %s (%d of %d rows pending)", FACTS_FILE, pending, len(table))
    return 0
