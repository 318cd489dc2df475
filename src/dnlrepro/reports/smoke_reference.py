"""The smoke profile's references: the recorded smoke baseline and the "did it learn" check.

The smoke profile cannot be compared with the published numbers (synthetic data, minutes of CPU
training), so :mod:`dnlrepro.reports.diff` judges it against two references instead:

* ``params/smoke_baseline.json`` -- the numbers a previous run recorded (``dnlrepro diff
  --update-baseline``), within :data:`BASELINE_TOLERANCE`: any change to the numerics shows;
* the majority-class baseline of the same labels: each row must reach the profile's
  ``learned_factor`` times it (smoke: 2), so a data, loss or inference path that collapsed to
  a constant prediction fails even if such a run was recorded as the baseline.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dnlrepro.core.files import write_json
from dnlrepro.reports.results import Measured, read_json

logger = logging.getLogger(__name__)


def _verdict(
    reference: float | None, value: float | None, tolerance: float
) -> tuple[str, float | None]:
    from dnlrepro.reports.diff import verdict  # diff imports this module: resolve at call time

    return verdict(reference, value, tolerance)


BASELINE_METRICS: tuple[str, ...] = ("mIoU", "mIoU_ms_flip", "mAcc", "aAcc")
BASELINE_REFERENCE = "smoke baseline"  # the rows' ``reference``
# Seeded single-process CPU runs repeat bit for bit on one machine; another CPU or BLAS can sum
# in another order and flip the argmax of a few pixels of the tiny synthetic val set.
BASELINE_TOLERANCE = 0.1
BASELINE_REASON = (
    "smoke runs are seeded and single-process, so they repeat exactly on one machine; another "
    "CPU/BLAS may reorder float sums and flip a few argmax pixels of the tiny synthetic val set"
)
LEARNED_REASON = (
    "a trained model must score clearly above what predicting the most frequent class "
    "everywhere scores on the same labels (the profile's learned_factor times it)"
)


def baseline_rows(
    name: str, baseline: dict | None, meas: Measured, digest: str | None, config: str | None = None
) -> list[dict]:
    """The smoke-baseline rows of run ``name`` (a seed of row ``config``; default: ``name``)."""
    config = config or name
    recorded = (baseline or {}).get("configs", {}).get(name)
    tol = float((baseline or {}).get("tolerance", BASELINE_TOLERANCE))
    reason = str((baseline or {}).get("reason", BASELINE_REASON))
    rows = []
    for metric in BASELINE_METRICS:
        value = None if recorded is None else recorded.get(metric)
        note = ""
        if recorded is None:
            result, delta = "missing", None
            note = "no smoke baseline for this run: run `dnlrepro diff --update-baseline`"
        elif recorded.get("config_digest") != digest:
            result, delta = "fail", None
            old = str(recorded.get("config_digest"))[:12]
            note = (
                f"stale baseline: recorded for config digest {old}"
                f", the results are of {str(digest)[:12]}; review, then "
                "`dnlrepro diff --update-baseline`"
            )
        else:
            result, delta = _verdict(value, meas.metrics[metric], tol)
        rows.append(
            {
                "config": config,
                "run": name,
                "dataset": "cityscapes" if config.endswith("cityscapes") else "ade20k",
                "metric": metric,
                "reference": BASELINE_REFERENCE,
                "published": value,
                "reproduced": meas.metrics[metric],
                "delta": delta,
                "tolerance": tol,
                "tolerance_reason": reason,
                "verdict": result,
                "note": note,
            }
        )
    return rows


def learned_reference(factor: float) -> str:
    """The ``reference`` of the learned-check rows: ``2 x majority baseline``."""
    return f"{factor:g} x majority baseline"


def learned_row(name: str, meas: Measured, factor: float) -> dict:
    """Smoke: did training learn? mIoU must reach ``factor`` x the majority-class baseline.

    The smoke baseline alone would accept a path that regressed to a constant prediction if the
    baseline had been recorded from one (ADE20K once scored 0.00 everywhere and nobody saw it);
    this row fails such a run whatever was recorded.
    """
    ours, const = meas.metrics["mIoU"], meas.metrics["baseline_mIoU"]
    if ours is None or const is None:
        result, delta = "missing", None
    else:
        delta = round(ours - factor * const, 4)
        result = "pass" if delta >= 0 else "fail"
    return {
        "config": name,
        "dataset": "cityscapes" if name.endswith("cityscapes") else "ade20k",
        "metric": "mIoU",
        "reference": learned_reference(factor),
        "published": None if const is None else round(factor * const, 2),
        "reproduced": ours,
        "delta": delta,
        "tolerance": 0.0,
        "tolerance_reason": LEARNED_REASON,
        "verdict": result,
        "note": "" if const is None else f"constant prediction scores {const:.2f}",
    }


def load_baseline(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        logger.warning("no smoke baseline at %s: every smoke verdict will be 'missing'", path)
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("configs"), dict):
        raise ValueError(
            f"{path}: expected {{'configs': {{name: metrics}}, ...}}; regenerate it "
            "with `dnlrepro diff --update-baseline`"
        )
    return data


def update_baseline(runs: Sequence[Measured], path: str | Path) -> Path:
    """Record the current smoke results of every run as the baseline (explicit, reviewed in git)."""
    missing = [m.name for m in runs if m.metrics["mIoU"] is None]
    if missing:
        raise FileNotFoundError(
            f"cannot record a smoke baseline: no results/<run>/eval.json for {missing}; "
            "run `dvc repro` (profile smoke) first"
        )
    configs = {}
    for run in runs:
        name = run.name
        entry: dict[str, Any] = {m: run.metrics[m] for m in BASELINE_METRICS}
        digest = run.run.get("config_digest")
        if not digest:
            raise FileNotFoundError(
                f"results/{name}/run.json with the config digest is missing; re-run "
                f"`dvc repro evaluate@{name}`"
            )
        entry["config_digest"] = digest
        configs[name] = entry
    data = {
        "description": "Smoke-profile results recorded by `dnlrepro diff --update-baseline`; the "
        "diff stage compares smoke runs with these numbers.",
        "recorded_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tolerance": BASELINE_TOLERANCE,
        "reason": BASELINE_REASON,
        "configs": configs,
    }
    path = write_json(path, data)
    logger.info("recorded the smoke baseline of %d runs in %s", len(runs), path)
    return path
