"""``dnlrepro check reports/diff.json``: the CI tolerance gate.

Exits 1 when any verdict is ``fail`` -- or ``missing`` (a number we should have and do not),
unless ``--allow-missing`` -- and prints one line per offending row. ``not comparable`` rows
(nothing published, hardware-dependent, smoke vs published) never fail.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dnlrepro.reports.diff import VERDICTS
from dnlrepro.reports.results import read_json

logger = logging.getLogger(__name__)


def failures(report: dict, allow_missing: bool = False) -> list[dict]:
    """Rows whose verdict fails the check."""
    bad = {"fail"} if allow_missing else {"fail", "missing"}
    return [r for r in report["rows"] if r["verdict"] in bad]


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `dvc repro diff` (or `dnlrepro diff`)")
    report = read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise ValueError(f"{path}: not a diff report (no 'rows'); regenerate with `dnlrepro diff`")
    for i, row in enumerate(report["rows"]):
        got = row.get("verdict") if isinstance(row, dict) else row
        if got not in VERDICTS:
            raise ValueError(
                f"{path}: rows[{i}] has verdict {got!r}; expected one of {', '.join(VERDICTS)}"
            )
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", nargs="?", default="reports/diff.json", help="diff.json path")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="do not fail on 'missing' verdicts (partial runs)",
    )


def main(args: argparse.Namespace) -> int:
    report = load_report(args.report)
    bad = failures(report, args.allow_missing)
    summary = ", ".join(f"{report['summary'].get(v, 0)} {v}" for v in VERDICTS)
    for r in bad:
        print(
            f"{r['verdict'].upper()}: {r['config']} {r['metric']} vs {r['reference']}: "
            f"reference {r['published']}, reproduced {r['reproduced']}, delta {r['delta']}, "
            f"tolerance {r['tolerance']} {r['note']}".rstrip()
        )
    print(f"{args.report}: profile {report.get('profile')}: {summary}")
    return 1 if bad else 0
