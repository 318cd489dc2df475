"""The smoke profile's references: the recorded smoke baseline and the "did it learn" check.

The smoke profile cannot be compared with the published numbers (synthetic data, minutes of CPU
training), so :mod:`dnlrepro.reports.diff` judges it against two references instead:

* ``params/smoke_baseline.json`` -- the numbers a previous run recorded (``dnlrepro diff
  --update-baseline``) and the machine it ran on (:func:`dnlrepro.engine.machine.fingerprint`:
  CPU, ISA flags, ATen's CPU capability, torch version, threads). Which rule applies depends on
  where the judged run was trained and evaluated (``machine`` in its ``train_summary.json`` and
  in its ``eval.json`` protocol):

  - **same machine**: the exact band, ±:data:`BASELINE_TOLERANCE`. Seeded single-process CPU
    runs repeat bit for bit there, so any change to the numerics shows.
  - **other machine** (or either side records none: "machine unknown"): the run must have
    learned (mIoU >= ``learned_factor`` x its majority-class baseline) and lie within a band
    derived from the recorded seed spread (:func:`spread_band`). A 20-iteration run from random
    weights is chaotic: another vector width or thread count sums floats in another order, the
    runs part after a few iterations and end as far apart as two seeds do (6.59 and 10.26 mIoU
    for two seeds of one row), so the exact band would fail most rows on any other CPU.

* the majority-class baseline of the same labels: each row must reach the profile's
  ``learned_factor`` times it (smoke: 2), on any machine, so a data, loss or inference path that
  collapsed to a constant prediction fails even if such a run was recorded as the baseline.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dnlrepro.core.files import write_json
from dnlrepro.reports.results import Measured, read_json
from dnlrepro.reports.seeds import verdict

logger = logging.getLogger(__name__)


BASELINE_METRICS: tuple[str, ...] = ("mIoU", "mIoU_ms_flip", "mAcc", "aAcc")
BASELINE_REFERENCE = "smoke baseline"  # the rows' ``reference``
# Seeded single-process CPU runs repeat bit for bit on one machine; another CPU or BLAS can sum
# in another order and flip the argmax of a few pixels of the tiny synthetic val set.
BASELINE_TOLERANCE = 0.1
BASELINE_REASON = (
    "smoke runs are seeded and single-process, so they repeat exactly on one machine; another "
    "CPU/BLAS may reorder float sums and flip a few argmax pixels of the tiny synthetic val set"
)
DIGEST_RULE = "a baseline recorded for this run's config digest"
LEARNED_REASON = (
    "a trained model must score clearly above what predicting the most frequent class "
    "everywhere scores on the same labels (the profile's learned_factor times it)"
)
# Other machine: |run - recorded| <= max(SPREAD_FLOOR, SPREAD_K x sigma), sigma the pooled std of
# the recorded seeds of the rows trained with several. The run and the recorded number are two
# draws of that spread, so their difference has std sqrt(2) x sigma; 3 sigma is about 2.1 of
# those (~96% of normal draws). Two seeds estimate sigma roughly, hence the floor (points).
SPREAD_K = 3.0
SPREAD_FLOOR = 1.0
SPREAD_RULE = (
    f"other machine: |run - recorded| <= max({SPREAD_FLOOR:g}, {SPREAD_K:g} x std), std pooled "
    "over the recorded seeds of each row trained with several; a 20-iteration run from random "
    "weights is chaotic, so another CPU lands as far off as another seed "
    "(docs/pipeline.md#smoke-verdicts)"
)


def spread_band(
    configs: Mapping[str, Mapping[str, Any]], groups: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """The other-machine band of each metric from the recorded runs ``configs``.

    ``groups`` maps each row to its runs (first seed first); rows with >= 2 recorded runs give
    the pooled sample std. A metric no row has two numbers of gets no band.
    """
    seeded = {row: [r for r in runs if r in configs] for row, runs in groups.items()}
    seeded = {row: runs for row, runs in seeded.items() if len(runs) >= 2}
    metrics = {}
    for metric in BASELINE_METRICS:
        samples = [[configs[r].get(metric) for r in runs] for runs in seeded.values()]
        samples = [v for v in ([x for x in s if x is not None] for s in samples) if len(v) >= 2]
        dof = sum(len(s) - 1 for s in samples)
        if dof:
            std = math.sqrt(sum(statistics.variance(s) * (len(s) - 1) for s in samples) / dof)
            band = round(max(SPREAD_FLOOR, SPREAD_K * std), 2)
            metrics[metric] = {"std": round(std, 4), "band": band}
    return {
        "rule": SPREAD_RULE,
        "k": SPREAD_K,
        "floor": SPREAD_FLOOR,
        "rows": seeded,
        "metrics": metrics,
    }


def machine_rule(baseline: Mapping[str, Any], meas: Measured) -> str | None:
    """``None`` when run ``meas`` was trained and evaluated on the baseline's machine; else
    which case of the other-machine rule applies (``other machine``, ``machine unknown (..)``)."""
    recorded = baseline.get("machine")
    if not recorded:
        return "machine unknown (the baseline records none)"
    ran = (meas.train.get("machine"), meas.protocol.get("machine"))
    if any(m is None for m in ran):
        return "machine unknown (the run records none)"
    return None if all(m == recorded for m in ran) else "other machine"


def _learned_delta(meas: Measured, factor: float) -> float | None:
    """mIoU minus ``factor`` x the majority-class baseline (None when either is missing)."""
    ours, const = meas.metrics["mIoU"], meas.metrics["baseline_mIoU"]
    return None if ours is None or const is None else round(ours - factor * const, 4)


def _judgement(
    result: str, delta: float | None, tolerance: float | None, why: str, rule: str, note: str = ""
) -> dict:
    """The judgement fields of a smoke row, in the order every diff row lists them."""
    return dict(
        delta=delta, tolerance=tolerance, tolerance_reason=why, rule=rule, verdict=result, note=note
    )


def _other_machine(
    baseline: Mapping[str, Any],
    metric: str,
    value: float | None,
    meas: Measured,
    where: str,
    factor: float | None,
) -> dict:
    """Learned (when the profile sets ``factor``) and within the seed-spread band."""
    spread = baseline.get("other_machine") or {}
    band = (spread.get("metrics") or {}).get(metric, {}).get("band")
    learned = "" if factor is None else f"learned (mIoU >= {factor:g}x majority baseline) and "
    within = "no seed spread recorded" if band is None else f"within ±{band:.2f} of the baseline"
    why, rule = str(spread.get("rule", SPREAD_RULE)), f"{where}: {learned}{within} (seed spread)"
    if band is None:
        note = (
            "no seed spread in the baseline: record one with >= 2 seeds of a row "
            "(the profile's `seeds`), `dnlrepro diff --update-baseline`"
        )
        return _judgement("not comparable", None, band, why, rule, note)
    result, delta = verdict(value, meas.metrics[metric], band)
    note = ""
    gap = None if factor is None else _learned_delta(meas, factor)
    if factor is not None and gap is None and result == "pass":
        result, note = "missing", "no majority-class baseline in eval.json"
    elif gap is not None and gap < 0:
        result = "fail"
        note = f"did not learn: mIoU {gap:+.2f} from {factor:g}x the majority baseline"
    return _judgement(result, delta, band, why, rule, note)


def _check(
    baseline: dict | None,
    recorded: dict | None,
    metric: str,
    meas: Measured,
    digest: str | None,
    factor: float | None,
) -> dict:
    """delta, tolerance, rule, verdict and note of one baseline row."""
    # No number to compare: no baseline for the run, or one of another configuration.
    unjudged = BASELINE_TOLERANCE, BASELINE_REASON, DIGEST_RULE
    if baseline is None or recorded is None:
        note = "no smoke baseline for this run: run `dnlrepro diff --update-baseline`"
        return _judgement("missing", None, *unjudged, note)
    if recorded.get("config_digest") != digest:
        note = (
            f"stale baseline: recorded for config digest {str(recorded.get('config_digest'))[:12]}"
            f", the results are of {str(digest)[:12]}; review, then "
            "`dnlrepro diff --update-baseline`"
        )
        return _judgement("fail", None, *unjudged, note)
    where = machine_rule(baseline, meas)
    if where is None:
        tol = float(baseline.get("tolerance", BASELINE_TOLERANCE))
        result, delta = verdict(recorded.get(metric), meas.metrics[metric], tol)
        why = str(baseline.get("reason", BASELINE_REASON))
        return _judgement(result, delta, tol, why, f"same machine: exact band ±{tol:g}")
    return _other_machine(baseline, metric, recorded.get(metric), meas, where, factor)


def baseline_rows(
    name: str,
    baseline: dict | None,
    meas: Measured,
    digest: str | None,
    config: str | None = None,
    factor: float | None = None,
) -> list[dict]:
    """The smoke-baseline rows of run ``name`` (a seed of row ``config``; default: ``name``).

    ``factor``: the profile's ``learned_factor``, part of the other-machine rule.
    """
    config = config or name
    recorded = (baseline or {}).get("configs", {}).get(name)
    return [
        {
            "config": config,
            "run": name,
            "dataset": "cityscapes" if config.endswith("cityscapes") else "ade20k",
            "metric": metric,
            "reference": BASELINE_REFERENCE,
            "published": None if recorded is None else recorded.get(metric),
            "reproduced": meas.metrics[metric],
            **_check(baseline, recorded, metric, meas, digest, factor),
        }
        for metric in BASELINE_METRICS
    ]


def learned_reference(factor: float) -> str:
    """The ``reference`` of the learned-check rows: ``2 x majority baseline``."""
    return f"{factor:g} x majority baseline"


def learned_row(name: str, meas: Measured, factor: float) -> dict:
    """Smoke: did training learn? mIoU must reach ``factor`` x the majority-class baseline.

    The smoke baseline alone would accept a path that regressed to a constant prediction if the
    baseline had been recorded from one (ADE20K once scored 0.00 everywhere and nobody saw it);
    this row fails such a run whatever was recorded, on any machine.
    """
    ours, const = meas.metrics["mIoU"], meas.metrics["baseline_mIoU"]
    delta = _learned_delta(meas, factor)
    result = "missing" if delta is None else ("pass" if delta >= 0 else "fail")
    rule = f"any machine: mIoU >= {factor:g}x majority baseline"
    note = "" if const is None else f"constant prediction scores {const:.2f}"
    return {
        "config": name,
        "dataset": "cityscapes" if name.endswith("cityscapes") else "ade20k",
        "metric": "mIoU",
        "reference": learned_reference(factor),
        "published": None if const is None else round(factor * const, 2),
        "reproduced": ours,
        **_judgement(result, delta, 0.0, LEARNED_REASON, rule, note),
    }


def load_baseline(
    path: str | Path, groups: Mapping[str, Sequence[str]] | None = None
) -> dict | None:
    """The recorded baseline; a file of the older format (no ``machine``, no ``other_machine``)
    is judged by the other-machine rule, its band derived here from its seeds (``groups``)."""
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
    if not isinstance(data.get("machine"), dict):
        logger.warning(
            "%s records no machine: machine unknown, so every smoke run is judged by the "
            "other-machine rule (learned, and within the seed spread); record the baseline "
            "anew with `dnlrepro diff --update-baseline`",
            path,
        )
        data["machine"] = None
    if not isinstance(data.get("other_machine"), dict):
        data["other_machine"] = spread_band(data["configs"], groups or {})
        logger.info("%s records no seed spread: derived from its runs", path)
    return data


def recorded_machine(runs: Sequence[Measured]) -> dict[str, Any]:
    """The one machine every run was trained and evaluated on (what the baseline records).

    Raises:
        FileNotFoundError: a run's results record no machine (written by older code).
        ValueError: the runs were made on more than one machine.
    """
    seen: dict[str, list[str]] = {}
    for run in runs:
        for where, found in (
            ("train_summary.json", run.train.get("machine")),
            ("eval.json", run.protocol.get("machine")),
        ):
            if not isinstance(found, dict):
                raise FileNotFoundError(
                    f"results/{run.name}/{where} records no machine (written before the "
                    f"fingerprint existed); re-run it with this code: `dvc repro "
                    f"evaluate@{run.name}` (training first when it is out of date)"
                )
            seen.setdefault(json.dumps(found, sort_keys=True), []).append(f"{run.name}/{where}")
    if len(seen) > 1:
        listed = "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in seen.items())
        raise ValueError(
            f"the smoke runs were made on {len(seen)} machines ({listed}); a baseline is one "
            "machine's numbers: run them all on one machine (`dvc repro`), then record"
        )
    return json.loads(next(iter(seen)))


def update_baseline(
    runs: Sequence[Measured],
    path: str | Path,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Record the current smoke results of every run as the baseline (explicit, reviewed in git),
    with the machine they ran on and the seed spread of the rows in ``groups`` (row -> runs)."""
    missing = [m.name for m in runs if m.metrics["mIoU"] is None]
    if missing:
        raise FileNotFoundError(
            f"cannot record a smoke baseline: no results/<run>/eval.json for {missing}; "
            "run `dvc repro` (profile smoke) first"
        )
    configs = {}
    for run in runs:
        digest = run.run.get("config_digest")
        if not digest:
            raise FileNotFoundError(
                f"results/{run.name}/run.json with the config digest is missing; re-run "
                f"`dvc repro evaluate@{run.name}`"
            )
        configs[run.name] = {
            **{m: run.metrics[m] for m in BASELINE_METRICS},
            "config_digest": digest,
        }
    data = {
        "description": "Smoke-profile results recorded by `dnlrepro diff --update-baseline`; the "
        "diff stage compares smoke runs with these numbers.",
        "recorded_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": recorded_machine(runs),
        "tolerance": BASELINE_TOLERANCE,
        "reason": BASELINE_REASON,
        "other_machine": spread_band(configs, groups or {}),
        "configs": configs,
    }
    path = write_json(path, data)
    logger.info("recorded the smoke baseline of %d runs in %s", len(runs), path)
    return path
