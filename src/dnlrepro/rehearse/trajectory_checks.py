"""The rehearsal's reference-trajectory checks (profile paper in miniature).

* every trained run compared itself with its miniature published log (served by the mirror,
  :mod:`dnlrepro.rehearse.reflogs`) and its lr matched at every compared iteration;
* a reference whose lr is 1% off stops a miniature run at its first logged iteration, with the
  message that names both values, and leaves no final weights.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from dnlrepro.core.registry import load_published
from dnlrepro.engine import reflog
from dnlrepro.engine.trajectory import LR_RTOL, TRAJECTORY_FILE
from dnlrepro.rehearse.checks import Check

WRONG_LR = 1.01
MESSAGE = "differs from the published lr"


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
