"""``dnlrepro check reports/diff.json``: the CI tolerance gate, judged against the registry.

The report must hold every row the registry (``params/published.yaml``) and the report's profile
call for: per configuration, each published metric; for the smoke profile also each run's
smoke-baseline metrics and, with ``learned_factor``, the majority-baseline row. A row that is
absent counts as ``missing``; a published number with a tolerance that a paper/published report
left ``not comparable`` counts as not judged. Exits 1 on any ``fail``, ``missing`` (unless
``--allow-missing``) or not-judged row, and prints one line per offending row naming the run:
configuration and seed(s). A report that is empty or malformed (missing keys, wrong types, a
summary that disagrees with its rows) is an error naming the file and the key, never a pass.
``not comparable`` rows (nothing published, hardware-dependent, smoke vs published) never fail.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from dnlrepro.core import workspace
from dnlrepro.core.config import PROFILES
from dnlrepro.core.profile import Profile, load_profile
from dnlrepro.core.registry import METRICS, Published, load_published
from dnlrepro.core.runs import Run, plan
from dnlrepro.reports.diff import VERDICTS
from dnlrepro.reports.results import read_json
from dnlrepro.reports.smoke_reference import BASELINE_METRICS, BASELINE_REFERENCE, learned_reference

logger = logging.getLogger(__name__)

# Every row dnlrepro diff writes has these keys (smoke-baseline rows add ``run``).
ROW_KEYS = ("config", "metric", "reference", "published", "reproduced", "delta", "tolerance",
            "verdict", "note")  # fmt: skip
_TEXT_KEYS = ("config", "metric", "reference")
_REGENERATE = "regenerate it with `dnlrepro diff` (or `dvc repro diff`)"
NOT_JUDGED = "not judged"
ABSENT = "absent from the report"


class ReportError(ValueError):
    """diff.json is empty or malformed; the message names the file and the key."""


def load_report(path: str | Path) -> dict:
    """The diff report, its structure checked (keys, types, verdicts, summary vs rows)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `dvc repro diff` (or `dnlrepro diff`)")
    report = read_json(path)
    if not isinstance(report, dict):
        raise ReportError(f"{path}: not a diff report (a {type(report).__name__}); {_REGENERATE}")
    rows = report.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ReportError(
            f"{path}: key 'rows' must be a non-empty list of verdicts, got "
            f"{_short(rows)}; an empty report judges nothing; {_REGENERATE}"
        )
    if report.get("profile") not in PROFILES:
        raise ReportError(
            f"{path}: key 'profile' is {report.get('profile')!r}; expected one of "
            f"{', '.join(PROFILES)}; {_REGENERATE}"
        )
    for i, row in enumerate(rows):
        _check_row(path, i, row)
    _check_summary(path, report.get("summary"), rows)
    return report


def _check_row(path: Path, i: int, row: Any) -> None:
    if not isinstance(row, dict):
        raise ReportError(f"{path}: key 'rows[{i}]' must be a mapping, got {_short(row)}")
    for key in ROW_KEYS:
        if key not in row:
            raise ReportError(f"{path}: key 'rows[{i}].{key}' is missing; {_REGENERATE}")
    for key in (*_TEXT_KEYS, *(("run",) if "run" in row else ())):
        if not isinstance(row[key], str):
            raise ReportError(
                f"{path}: key 'rows[{i}].{key}' must be a string, got {_short(row[key])}"
            )
    if row["verdict"] not in VERDICTS:
        raise ReportError(
            f"{path}: rows[{i}] has verdict {row['verdict']!r}; expected one of "
            f"{', '.join(VERDICTS)}"
        )


def _check_summary(path: Path, summary: Any, rows: list[dict]) -> None:
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    if not isinstance(summary, dict):
        raise ReportError(
            f"{path}: key 'summary' must be a mapping verdict -> count, got "
            f"{_short(summary)}; {_REGENERATE}"
        )
    if {v: summary.get(v, 0) for v in VERDICTS} != counts:
        raise ReportError(
            f"{path}: key 'summary' ({summary}) disagrees with the rows ({counts}); {_REGENERATE}"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def expected_rows(
    profile: Profile, registry: Published, ws: workspace.Workspace
) -> dict[tuple[str, str, str, str], str]:
    """``(config, run, reference, metric)`` of every row the registry and the profile call for
    -> the run label (configuration and seed(s)) that a failure line names."""
    runs = plan(profile, ws)
    out: dict[tuple[str, str, str, str], str] = {}
    for name in registry.configs:
        own = [r for r in runs.values() if r.config == name]
        for metric in METRICS:
            out[(name, name, "published", metric)] = _row_label(name, own)
        if profile.name == "smoke":
            for run in own:
                for metric in BASELINE_METRICS:
                    out[(name, run.key, BASELINE_REFERENCE, metric)] = _run_label(run)
        factor = profile.settings.learned_factor
        if factor is not None:
            out[(name, name, learned_reference(factor), "mIoU")] = _row_label(name, own)
    return out


def _run_label(run: Run) -> str:
    return f"{run.config} seed {run.seed}" + (f" (run {run.key})" if run.key != run.config else "")


def _row_label(name: str, runs: list[Run]) -> str:
    seeds = ", ".join(str(r.seed) for r in runs)
    return f"{name} seed{'s' if len(runs) > 1 else ''} {seeds}" if runs else name


def judge(report: dict, ws: workspace.Workspace, allow_missing: bool = False) -> list[dict]:
    """The offending rows, each with ``label`` (the run): failed, missing (also absent from the
    report) unless ``allow_missing``, and published numbers left unjudged outside smoke.

    Raises:
        ReportError: a row names a configuration that is not in the registry (a stale report).
    """
    profile = load_profile(report["profile"], ws)
    registry = load_published(ws.registry_file)
    wanted = expected_rows(profile, registry, ws)
    seen: set[tuple[str, str, str, str]] = set()
    bad: list[dict] = []
    for i, row in enumerate(report["rows"]):
        if row["config"] not in registry.configs:
            raise ReportError(
                f"rows[{i}]: configuration {row['config']!r} is not in the registry "
                f"{ws.registry_file}: the report is stale; {_REGENERATE}"
            )
        key = (row["config"], row.get("run", row["config"]), row["reference"], row["metric"])
        seen.add(key)
        label = wanted.get(key, key[1])
        if row["verdict"] == "fail" or (row["verdict"] == "missing" and not allow_missing):
            bad.append({**row, "label": label})
        elif profile.name != "smoke" and _unjudged(row, registry, profile.name):
            note = "a published number with a tolerance must get a verdict"
            bad.append({**row, "label": label, "verdict": NOT_JUDGED, "note": note})
    if not allow_missing:
        bad += [_absent(key, label) for key, label in wanted.items() if key not in seen]
    return bad


def _unjudged(row: dict, registry: Published, profile: str) -> bool:
    """A published row left ``not comparable`` although it has a number and a tolerance."""
    if row["reference"] != "published" or row["metric"] not in METRICS:
        return False
    tol = registry.tolerance(row["config"], row["metric"], profile).value
    published = registry.entry(row["config"]).metrics[row["metric"]]
    return row["verdict"] == "not comparable" and tol is not None and published is not None


def _absent(key: tuple[str, str, str, str], label: str) -> dict:
    config, _run, reference, metric = key
    return {
        "config": config,
        "label": label,
        "metric": metric,
        "reference": reference,
        "verdict": "missing",
        "note": ABSENT,
    }


def _line(r: dict) -> str:
    head = f"{r['verdict'].upper()}: {r['label']} {r['metric']} vs {r['reference']}: "
    if r["note"] == ABSENT:
        return head + ABSENT
    return (
        head + f"reference {r['published']}, reproduced {r['reproduced']}, delta {r['delta']}, "
        f"tolerance {r['tolerance']} {r['note']}"
    ).rstrip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", nargs="?", default="reports/diff.json", help="diff.json path")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="do not fail on 'missing' verdicts or rows absent from the report (partial runs)",
    )


def main(args: argparse.Namespace) -> int:
    report = load_report(args.report)
    try:
        bad = judge(report, workspace.find(), args.allow_missing)
    except ReportError as e:
        raise ReportError(f"{args.report}: {e}") from None
    summary = ", ".join(f"{report['summary'].get(v, 0)} {v}" for v in VERDICTS)
    for r in bad:
        print(_line(r))
    absent = sum(r["note"] == ABSENT for r in bad)
    print(
        f"{args.report}: profile {report['profile']}: {summary}"
        + (f"; {absent} expected row(s) absent" if absent else "")
    )
    return 1 if bad else 0
