"""What a finished rehearsal must show, beyond every stage having run.

Each check reads what the pipeline itself produced in the scratch copy -- DVC's stage logs, the
diff report, ``dnlrepro check``'s exit code, the tables, the MLflow store -- and returns a
:class:`Check` with a one-line detail. Exact result-file fields are not relied on beyond the
diff report's documented ``rows[].verdict``.

The reference-trajectory checks (profile paper in miniature): every trained run compared itself
with its miniature published log (served by the mirror,
:func:`~dnlrepro.rehearse.mirror.reference_logs`) and its lr matched at every compared iteration;
a reference whose lr is 1% off stops a miniature run at its first logged iteration, with the
message that names both values, and leaves no final weights.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dnlrepro.core.registry import load_published
from dnlrepro.core.runs import parse_stage
from dnlrepro.engine import reflog
from dnlrepro.engine.trajectory import LR_RTOL, TRAJECTORY_FILE
from dnlrepro.rehearse.mirror import Mirror, MirrorFile
from dnlrepro.rehearse.stages import StageRun

WRONG_LR = 1.01
MESSAGE = "differs from the published lr"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def all_stages_ran(expected: list[str], runs: list[StageRun]) -> Check:
    """Every stage of ``dvc.yaml`` ended ``ok`` the last time it ran (skips do not count)."""
    last = {r.stage: r.status for r in runs if r.status != "skipped"}  # the last run wins
    bad = [s for s in expected if last.get(s) != "ok"]
    return Check(
        "every stage ran",
        not bad,
        f"{len(expected) - len(bad)}/{len(expected)} stages ok"
        + (f"; not run or failed: {_listing(bad)}" if bad else ""),
    )


def mirror_served(mirror: Mirror, files: list[MirrorFile]) -> Check:
    """Every miniature went through the mirror (Cityscapes after a login)."""
    missing = [f.name for f in files if f.name not in mirror.served]
    ok = not missing and mirror.logins > 0
    detail = f"{len(files) - len(missing)}/{len(files)} files served, {mirror.logins} login(s)"
    if missing:
        detail += f"; never requested: {', '.join(missing)}"
    if mirror.refused:  # e.g. a 404: the pipeline asked for a URL the mirror does not hold
        detail += f"; refused: {_listing(mirror.refused, 3)}"
    return Check("downloads came from the mirror, verified", ok, detail)


def resumed(victim: str, killed: bool, rerun: list[StageRun]) -> Check:
    """The killed training stage continued from its checkpoint in the re-run."""
    log = [line for r in rerun if r.stage == victim for line in r.log]
    hit = next((line for line in log if "resumed from" in line), None)
    if not killed:
        detail = f"{victim} finished before its first checkpoint could be used to kill it"
    elif hit is None:
        detail = f"{victim} was killed, but its re-run did not log 'resumed from'"
    else:
        detail = f"{victim} killed mid-run, re-run {hit[hit.index('resumed from') :]}"
    return Check("killed training stage resumed", killed and hit is not None, detail)


def sync_bn(runs: list[StageRun], gpus: int) -> Check:
    """Every training stage ran SyncBN across ``gpus`` torchrun processes."""
    trains = {r.stage: r for r in runs if parse_stage(r.stage)[0] == "train" and r.status == "ok"}
    needle = f"SyncBN across {gpus} processes"
    bad = [s for s, r in trains.items() if not any(needle in line for line in r.log)]
    return Check(
        f"SyncBN across {gpus} ranks",
        bool(trains) and not bad,
        f"{len(trains) - len(bad)}/{len(trains)} training stages logged '{needle}'"
        + (f"; not: {', '.join(bad)}" if bad else ""),
    )


def verdicts(root: Path) -> Check:
    """The diff report judged every published number (no ``missing``), and some ``fail``."""
    path = root / "reports" / "diff.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError) as e:
        return Check("every verdict computed", False, f"{path}: {e}")
    counts = Counter(row["verdict"] for row in rows)
    judged = [r for r in rows if r.get("published") is not None and r.get("tolerance") is not None]
    unjudged = [
        f"{r['config']} {r['metric']}" for r in judged if r["verdict"] not in ("pass", "fail")
    ]
    ok = counts.get("missing", 0) == 0 and not unjudged and counts.get("fail", 0) > 0
    detail = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    if unjudged:
        detail += f"; not judged: {', '.join(unjudged[:5])}"
    return Check("every verdict computed (miniature numbers fail)", ok, detail)


def check_command(root: Path, env: dict[str, str]) -> Check:
    """``dnlrepro check reports/diff.json`` exits 1, and only because of ``fail`` verdicts."""
    cmd = [sys.executable, "-m", "dnlrepro.cli", "check", "reports/diff.json"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    lines = out.stdout.splitlines()
    offending = [line for line in lines if line.split(":", 1)[0].isupper()]
    only_fail = bool(offending) and all(line.startswith("FAIL:") for line in offending)
    ok = out.returncode == 1 and only_fail
    last = lines[-1] if lines else out.stderr.strip()[-200:]
    return Check(
        "dnlrepro check fails on the fail verdicts",
        ok,
        f"exit {out.returncode}, {len(offending)} offending line(s); {last}",
    )


def tables(root: Path, configs: list[str]) -> Check:
    """Both tables were rendered and list every row."""
    paths = [root / "reports" / name for name in ("cityscapes.md", "ade20k.md")]
    text = "".join(p.read_text(encoding="utf-8") for p in paths if p.is_file())
    missing = [c for c in configs if c not in text]
    return Check(
        "tables list every row",
        bool(text) and not missing,
        f"{len(configs) - len(missing)}/{len(configs)} rows in reports/cityscapes.md, ade20k.md"
        + (f"; missing: {', '.join(missing)}" if missing else ""),
    )


def mlflow_profile(db: Path, profile: str, configs: list[str]) -> Check:
    """MLflow holds runs of every row, each tagged with the rehearsed profile."""
    if not db.is_file():
        return Check("MLflow runs tagged with the profile", False, f"{db} does not exist")
    query = (
        "SELECT r.run_uuid, MAX(CASE WHEN t.key = 'profile' THEN t.value END), "
        "MAX(CASE WHEN t.key = 'config' THEN t.value END) FROM runs r "
        "LEFT JOIN tags t ON t.run_uuid = r.run_uuid GROUP BY r.run_uuid"
    )
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            runs = con.execute(query).fetchall()
    except sqlite3.Error as e:
        return Check("MLflow runs tagged with the profile", False, f"{db}: {e}")
    wrong = [run for run, tag, _ in runs if tag != profile]
    missing = sorted(set(configs) - {cfg for _, tag, cfg in runs if tag == profile})
    ok = bool(runs) and not wrong and not missing
    detail = f"{len(runs)} runs, {len(runs) - len(wrong)} tagged profile={profile}"
    if missing:
        detail += f"; no run for: {', '.join(missing)}"
    return Check("MLflow runs tagged with the profile", ok, detail)


def compared(root: Path, runs: list[str]) -> Check:
    """Each run's ``results/<run>/trajectory.json`` compared points and found the lr equal."""
    bad, points = [], 0
    for run in runs:
        path = root / "results" / run / TRAJECTORY_FILE
        record = json.loads(path.read_text()) if path.is_file() else {}
        n, err = record.get("compared_train_points", 0), record.get("max_lr_rel_error")
        if not record.get("reference") or not n or err is None or err > LR_RTOL:
            bad.append(f"{run} ({record.get('reason') or f'{n} points, lr error {err}'})")
        points += n
    detail = f"{len(runs) - len(bad)}/{len(runs)} runs compared {points} points, lr exact"
    return Check(
        "training compared itself with the published logs",
        not bad,
        detail + (f"; not: {', '.join(bad)}" if bad else ""),
    )


def _wrong_reference(root: Path, config: str, dest: Path) -> Path:
    """The run's reference log with every lr multiplied by :data:`WRONG_LR`."""
    entry = load_published(root / "params" / "published.yaml").entry(config)
    source = root / "downloads" / "reference_logs" / entry.log.rsplit("/", 1)[-1]
    lines = [json.loads(x) for x in source.read_text().splitlines() if x.strip()]
    for line in lines:
        if line.get("mode") == "train":
            line["lr"] = reflog.mmcv_round(line["lr"] * WRONG_LR)
    return reflog.write(dest, lines)


def wrong_lr_stops(root: Path, env: dict[str, str], run: str, config: str, device: str) -> Check:
    """One process of ``dnlrepro train`` on ``run``'s resolved config against a wrong lr."""
    scratch = root / "work_dirs" / "rehearse-wrong-lr"
    shutil.rmtree(scratch, ignore_errors=True)
    wrong = _wrong_reference(root, config, scratch / "wrong.log.json")
    cmd = [
        sys.executable, "-m", "dnlrepro.cli", "train",
        "--config", str(root / "results" / run / "config.yaml"),
        "--work-dir", str(scratch / "wd"), "--no-track", "--device", device,
        "--reference-log", str(wrong),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    said = re.search(rf"iteration \d+: our lr \S+ .{{0,40}}{MESSAGE} \S+", out.stderr + out.stdout)
    ok = out.returncode != 0 and said is not None and not (scratch / "wd" / "final.pth").exists()
    last = said.group(0) if said else (out.stderr.strip().splitlines() or [""])[-1][-300:]
    return Check("a wrong published lr stops a run", ok, f"exit {out.returncode}; {last}")


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
