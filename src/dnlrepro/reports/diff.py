"""``dnlrepro diff``: every reproduced number against its reference, with tolerance and verdict.

References:

* profiles ``paper`` / ``published``: the published README numbers (``params/published.yaml``),
  with the per-metric tolerance (0.5 mIoU points by default, §7) or a documented wider one.
* profile ``smoke``: the recorded smoke baseline (``params/smoke_baseline.json``, regenerated
  only by ``dnlrepro diff --update-baseline``): the exact band on the machine that recorded it,
  else learned and within the recorded seed spread (:mod:`dnlrepro.reports.smoke_reference`).
  The published numbers are listed too, as ``not comparable`` (random weights, a few
  iterations, synthetic data).

A row trained with several seeds (:mod:`dnlrepro.core.runs`) is judged by its seeds' mean: with
n >= 2 seeds a published number passes when |mean - published| <= max(tolerance, K_STD x std)
(:mod:`dnlrepro.reports.seeds`); the smoke baseline is checked per run.

Every row names the ``rule`` it was judged by. Verdicts: ``pass`` (|delta| <= tolerance),
``fail``, ``missing`` (we have no number where one is
expected), ``not comparable`` (nothing published, or hardware-dependent). A configuration without
a published entry is an error, never a skip. The stage writes ``reports/diff.md`` and
``reports/diff.json`` and succeeds; ``dnlrepro check`` turns failed verdicts into an exit code.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dnlrepro.core import workspace
from dnlrepro.core.layout import compare
from dnlrepro.core.profile import load_profile, read_params
from dnlrepro.core.registry import METRICS, Published, load_published
from dnlrepro.core.runs import of_rows, plan
from dnlrepro.reports import trajectory
from dnlrepro.reports.outputs import json_bytes, write_all
from dnlrepro.reports.results import Measured, aggregate, load_measured, num
from dnlrepro.reports.seeds import (
    SEED_RULE,
    allowed,
    reproduced_text,
    rule_text,
    seed_fields,
    tolerance_text,
    verdict,
)
from dnlrepro.reports.smoke_reference import (
    baseline_rows,
    learned_row,
    load_baseline,
    update_baseline,
)
from dnlrepro.reports.tables import environment

logger = logging.getLogger(__name__)

# Fields that explain most "cannot reproduce" gaps in mmseg's issues (#1169: GPUs x batch; #87:
# single-scale vs ms+flip): GPUs x batch, crop, test scales (docs/reference.md §8).
PROTOCOL_EVAL_KEYS = (
    "split",
    "image_count",
    "mode",
    "crop_size",
    "stride",
    "img_scale",
    "scales",
    "flip",
    "world_size",
)
PROTOCOL_TRAIN_KEYS = (
    "trained",
    "source",
    "world_size",
    "layout",  # gpus x per-GPU batch (core/layout.py)
    "global_batch",
    "bn_group",
    "iterations",
    "max_iters",
    "norm",
    "device",
)
VERDICTS: tuple[str, ...] = ("pass", "fail", "missing", "not comparable")
LABELS = {
    "mIoU": "mIoU",
    "mIoU_ms_flip": "mIoU(ms+flip)",
    "mIoU_ms_flip_alt": "mIoU(ms+flip), other small-window mode",
    "mAcc": "mAcc",
    "aAcc": "aAcc",
    "mem_gb": "Mem (GB)",
    "fps": "fps",
}


def _published_row(
    name: str, pub: Published, meas: Measured, profile: str, metric: str, note: str | None = None
) -> dict:
    """``metric`` of row ``name`` against the published number (``mIoU_ms_flip_alt``: against
    the published ms+flip one); ``note`` replaces the registry's."""
    published = "mIoU_ms_flip" if metric == "mIoU_ms_flip_alt" else metric
    entry = pub.entry(name)  # raises on a missing entry: never skip a configuration
    tol, spread = pub.tolerance(name, published, profile), meas.spread.get(metric)
    value = entry.metrics[published]
    limit, rule = allowed(tol.value, spread)
    if profile == "smoke":
        # Random weights and synthetic data: shown for orientation, never judged.
        result, delta = "not comparable", None
        note = note or "smoke profile: synthetic data, a few iterations from random weights"
    else:
        result, delta = verdict(value, meas.metrics[metric], limit)
        if note is None:
            note = entry.notes.get(metric, "") if value is None else ""
            if value is not None and tol.value is None:
                note = "hardware-dependent: " + tol.reason
    return {
        "config": name,
        "dataset": entry.dataset,
        "metric": metric,
        "reference": "published",
        "published": value,
        "reproduced": meas.metrics[metric],
        "delta": delta,
        "tolerance": tol.value,
        "tolerance_reason": tol.reason,
        "allowed": limit,
        "rule": rule,
        **seed_fields(spread),
        "verdict": result,
        "note": note,
    }


def _published_rows(name: str, pub: Published, meas: Measured, profile: str) -> list[dict]:
    """Every published metric of row ``name``, and for slide rows evaluated both ways (§5.2) the
    other small-window mode's ms+flip number.

    Which mode produced the published ms+flip number is not recorded upstream, so that row names
    the mode and whether it reproduces it; the main ``mIoU_ms_flip`` row keeps the configured
    mode (``test.small_window``) and its note names the mode that is within tolerance.
    """
    rows = [_published_row(name, pub, meas, profile, metric) for metric in METRICS]
    if meas.metrics.get("mIoU_ms_flip_alt") is None:
        return rows
    ours = meas.protocol.get("small_window", "unpadded")
    other = "pad" if ours == "unpadded" else "unpadded"
    note = f"ms+flip with small windows '{other}' (configured: '{ours}', §5.2)"
    alt = _published_row(name, pub, meas, profile, "mIoU_ms_flip_alt", note)
    main = rows[METRICS.index("mIoU_ms_flip")]
    if main["delta"] is not None and alt["delta"] is not None:
        ok = [m for m, r in ((ours, main), (other, alt)) if r["verdict"] == "pass"]
        found = " and ".join(f"'{m}'" for m in ok) if ok else "neither mode"
        main["note"] = (main["note"] + "; " if main["note"] else "") + f"reproduced by: {found}"
    return [*rows, alt]


def protocol_match(train: dict[str, Any], published_batch: Any) -> tuple[bool | None, str]:
    """Did the run train with the published protocol (global batch and BN group)? A published
    checkpoint did, by definition; see :func:`dnlrepro.core.layout.compare`."""
    if train.get("trained") is False:
        return True, "the published checkpoint: trained with the published protocol"
    return compare(train, published_batch if isinstance(published_batch, int) else None)


def our_protocol(meas: Measured) -> dict[str, Any]:
    """The protocol fields we ran with (evaluation, then training), next to the published ones."""
    out = {k: meas.protocol[k] for k in PROTOCOL_EVAL_KEYS if k in meas.protocol}
    if meas.protocol.get("checkpoint_sha256"):
        out["checkpoint_sha256"] = str(meas.protocol["checkpoint_sha256"])[:8]
    out |= {f"train.{k}": meas.train[k] for k in PROTOCOL_TRAIN_KEYS if k in meas.train}
    if meas.benchmark.get("device"):
        out["benchmark.device"] = meas.benchmark["device"]
    return out


def build_diff(
    names: Sequence[str],
    published: Published,
    measured: dict[str, Measured],
    profile: str,
    baseline: dict | None = None,
    learned_factor: float | None = None,
    per_run: dict[str, list[Measured]] | None = None,
) -> dict[str, Any]:
    """The diff report as a JSON-serialisable dict (``rows``, ``summary``, ``protocols``).

    ``measured`` holds each row (its seeds' means, :func:`~dnlrepro.reports.results.aggregate`);
    ``per_run`` each row's runs, checked one by one against the smoke baseline (default: the row
    is its one run). ``learned_factor`` (the profile's setting; smoke: 2) adds, per row, the
    check that mIoU reaches that multiple of the majority-class baseline.
    """
    rows: list[dict] = []
    protocols = {}
    for name in names:
        meas = measured[name]
        if profile == "smoke":
            for run in (per_run or {}).get(name, [meas]):
                digest = run.run.get("config_digest")
                rows += baseline_rows(run.name, baseline, run, digest, name, learned_factor)
        if learned_factor is not None:
            rows.append(learned_row(name, meas, learned_factor))
        protocol = published.entry(name).protocol
        same, text = protocol_match(meas.train, protocol.get("batch"))
        for row in _published_rows(name, published, meas, profile):
            row["protocol"] = {True: "same", False: "different", None: "unknown"}[same]
            rows.append(row)  # the verdict says which protocol it judged
        protocols[name] = {"published": protocol, "ours": our_protocol(meas), "match": text}
    return {
        "profile": profile,
        "reference": "smoke baseline" if profile == "smoke" else "published",
        "published_file": _relative(published.path),
        "source": published.source,
        "definitions": published.definitions,
        "summary": {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS},
        "rows": rows,
        "protocols": protocols,
    }


def _relative(path: Path) -> str:
    """The registry path as committed files show it: relative to the workspace when inside."""
    try:
        return workspace.find().relative(path)
    except workspace.WorkspaceError:
        return str(path)


def shown(r: dict[str, Any]) -> dict[str, Any]:
    """Verdict row ``r`` with its cells as diff.md and index.html print them (``*_s``)."""
    return {
        **r,
        "label": LABELS.get(r["metric"], r["metric"]),
        "config": r.get("run", r["config"]),
        "published_s": num(r.get("published")),
        "reproduced_s": reproduced_text(r),
        "delta_s": num(r.get("delta"), signed=True),
        "tolerance_s": tolerance_text(r),
        "rule_s": rule_text(r),
    }


def render_markdown(report: dict[str, Any]) -> str:
    rows = [shown(r) for r in report["rows"]]
    reasons = sorted(
        {
            (r["label"], "n/a" if r["tolerance"] is None else f"±{r['tolerance']:.2f}",
             r["tolerance_reason"])
            for r in rows
        }
    )  # fmt: skip
    return (
        environment()
        .get_template("diff.md.j2")
        .render(report=report, rows=rows, reasons=reasons, verdicts=VERDICTS, seed_rule=SEED_RULE)
    ) + trajectory.markdown(report.get("trajectory", []))


def verdict_counts(report: dict[str, Any]) -> dict[str, int]:
    """``reports/summary.json``, the DVC metric of the whole pipeline: how many comparisons got
    each verdict (``not_comparable`` with an underscore, a plain column name). Four numbers, so
    ``dvc exp show --only-changed`` says at a glance what an experiment did to the verdicts."""
    return {v.replace(" ", "_"): int(report["summary"].get(v, 0)) for v in VERDICTS}


def write_diff(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``diff.json``, ``diff.md`` and ``summary.json`` in ``out_dir``, as one set."""
    json_path, md_path = Path(out_dir) / "diff.json", Path(out_dir) / "diff.md"
    write_all(
        {
            json_path: json_bytes(report),
            md_path: render_markdown(report).encode("utf-8"),
            Path(out_dir) / "summary.json": json_bytes(verdict_counts(report)),
        }
    )
    logger.info("wrote %s and %s: %s", md_path, json_path, report["summary"])
    return md_path, json_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None, help="default: <workspace>/results")
    parser.add_argument("--published", default=None, help="default: params/published.yaml")
    parser.add_argument("--baseline", default=None, help="default: params/smoke_baseline.json")
    parser.add_argument("--out", default=None, help="output folder (default: <workspace>/reports)")
    parser.add_argument("--profile", default=None, help="default: the switch in params.yaml")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        metavar="NAME",
        help="configurations to compare (default: every row of params/published.yaml)",
    )
    parser.add_argument(
        "--update-baseline",
        action="store_true",
        help="record the current smoke results as the baseline, then report",
    )


def run(
    ws: workspace.Workspace,
    profile: str,
    configs: Sequence[str] | None = None,
    update: bool = False,
    paths: dict[str, str | Path | None] | None = None,
    learned_factor: float | None = None,
) -> dict[str, Any]:
    """Build and write the diff report of ``ws`` (``paths`` may override results, published,
    baseline and out); with ``update``, first record the smoke results as the baseline."""
    paths = paths or {}
    published = load_published(paths.get("published") or ws.registry_file)
    names = list(configs or published.configs)
    for name in names:
        published.entry(name)  # a name without a registry entry: its error, before reading runs
    baseline_file = paths.get("baseline") or ws.baseline_file
    results = paths.get("results") or ws.results
    rows = of_rows(plan(load_profile(profile, ws), ws), names)
    per_run = {n: [load_measured(r.key, results) for r in rows[n]] for n in names}
    measured = {n: aggregate(n, per_run[n], [r.seed for r in rows[n]]) for n in names}
    groups = {n: [r.key for r in rows[n]] for n in names}
    if update:
        if profile != "smoke":
            raise ValueError(f"--update-baseline records smoke results; the profile is {profile!r}")
        update_baseline([m for n in names for m in per_run[n]], baseline_file, groups)
    baseline = load_baseline(baseline_file, groups) if profile == "smoke" else None
    report = build_diff(names, published, measured, profile, baseline, learned_factor, per_run)
    section = trajectory.collect(results, [r.key for n in names for r in rows[n]])
    if section:  # the runs that compared themselves with a reference training log
        report["trajectory"] = section
    write_diff(report, paths.get("out") or ws.reports)
    return report


def main(args: argparse.Namespace) -> int:
    ws = workspace.find()
    profile = load_profile(args.profile, ws) if args.profile else read_params(ws)
    paths = {k: getattr(args, k) for k in ("results", "published", "baseline", "out")}
    factor = profile.settings.learned_factor
    run(ws, profile.name, args.configs, args.update_baseline, paths, factor)
    return 0
