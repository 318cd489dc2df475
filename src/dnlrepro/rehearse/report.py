"""The rehearsal's receipt (JSON) and its printed summary: differences, stage table, checks.

The stage table has one row per stage run (the killed training stage appears twice: killed, then
resumed), with what ran, its seconds, its outcome and, for training and evaluation rows, what the
same stage costs at full size (:mod:`~dnlrepro.rehearse.cost`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dnlrepro.core.config import Config, load_config
from dnlrepro.core.miniature import REAL_COUNTS, image_size
from dnlrepro.core.profile import load_profile
from dnlrepro.core.registry import load_published
from dnlrepro.core.runs import parse_stage
from dnlrepro.core.workspace import Workspace
from dnlrepro.rehearse import cost, fit, shrink
from dnlrepro.rehearse.checks import Check
from dnlrepro.rehearse.mirror import MirrorFile
from dnlrepro.rehearse.stages import DvcRun

_RUN_SH = "sh pipeline/run.sh "
_ENV_SHOWN = (
    "DNLREPRO_MIRROR",
    "DNLREPRO_EXPECTED_SHA256",
    "DNLREPRO_TORCHRUN_ARGS",
    "DNLREPRO_PYTHON",
    "PYTHONPATH",
    "MLFLOW_TRACKING_URI",
    "CUDA_VISIBLE_DEVICES",
)
LOG_TAIL = 40
_ERROR = re.compile(r"\b\w*(Error|Exception)\b|: error: ")


@dataclass
class Receipt:
    profile: str
    device: str  # requested
    stage_device: str  # what the stages used
    device_note: str
    gpus: int  # the layout: training processes (one per GPU on CUDA)
    workspace: str
    started_utc: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    seconds: float = 0.0
    scratch: str | None = None
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    change_summary: list[str] = field(default_factory=list)
    mirror_url: str = ""
    mirror_files: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    dvc_runs: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    cost_note: str = ""
    gpu_memory: float | None = None  # --gpu-memory: the capacity the estimated fits are judged by
    fits: list[fit.Fit] = field(default_factory=list)  # paper: which layouts fit, per row
    logs: dict[str, list[str]] = field(default_factory=dict)  # stage -> its last ok run's log

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.checks) and all(c.ok for c in self.checks)

    def setup(self, name: str, what: str, seconds: float) -> None:
        self.rows.append(_row(name, 0, what, seconds, "ok"))

    def add_runs(self, runs: list[DvcRun]) -> None:
        for run in runs:
            self.dvc_runs.append(
                {"run": run.index, "command": " ".join(run.command[1:]),
                 "returncode": run.returncode, "error": run.error, "log": str(run.log_path)}
            )  # fmt: skip
            for s in run.stages:
                if s.status == "skipped":
                    continue
                status = "killed (planned)" if s.status == "killed" else s.status
                what = s.command.removeprefix(_RUN_SH) or "-"
                self.rows.append(_row(s.stage, s.run, what, s.seconds, status))
                if s.status == "ok":
                    self.logs[s.stage] = s.log

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("logs", "checks")}
        out["ok"] = self.ok
        out["checks"] = [asdict(c) for c in self.checks]
        out["changes"] = [{"what": w, "real": r, "rehearsal": m} for w, r, m in self.changes]
        out["fits"] = [asdict(f) for f in self.fits]
        return out


def _row(stage: str, run: int, what: str, seconds: float, status: str) -> dict[str, Any]:
    return {"stage": stage, "run": run, "what": what, "seconds": round(seconds, 1),
            "status": status, "cost": None, "cost_text": "-"}  # fmt: skip


def file_entry(f: MirrorFile) -> dict[str, Any]:
    return {"name": f.name, "real_url": f.url, "bytes": f.path.stat().st_size, "sha256": f.sha256}


def env_differences(env: dict[str, str]) -> dict[str, str]:
    shown = {k: env[k] for k in _ENV_SHOWN if k in env}
    shown["CITYSCAPES_USERNAME"] = "(the mirror's test account)"
    return shown


def failure(runs: list[DvcRun]) -> dict[str, Any]:
    """The failing stage, its command, DVC's error and the tail of its log."""
    for run in runs:
        for s in run.stages:
            if s.status == "failed":
                return {"stage": s.stage, "command": s.command, "error": run.error,
                        "log": str(run.log_path), "errors": _error_lines(s.log),
                        "log_tail": s.log[-LOG_TAIL:]}  # fmt: skip
    last = runs[-1]
    return {"stage": None, "command": " ".join(last.command), "error": last.error
            or f"dvc repro exited with {last.returncode}", "log": str(last.log_path),
            "errors": _error_lines(last.tail), "log_tail": last.tail}  # fmt: skip


def setup_failure(error: Exception) -> dict[str, Any]:
    """A failure of the rehearsal's own set-up (copy, sizes, mirror), not of a stage."""
    return {"stage": None, "command": "dnlrepro rehearse (set-up)",
            "error": f"{type(error).__name__}: {error}", "log": "-", "errors": [],
            "log_tail": []}  # fmt: skip


def _error_lines(log: list[str], limit: int = 8) -> list[str]:
    """The first distinct lines that name an error (the root cause is rarely in the tail)."""
    out: list[str] = []
    for line in log:
        if _ERROR.search(line) and line.strip() not in out:
            out.append(line.strip())
    return out[:limit]


# ---------------------------------------------------------------------------------------------
# Cost of the real run, per row
# ---------------------------------------------------------------------------------------------


def add_costs(rec: Receipt, ws: Workspace, sws: Workspace, configs: list[str]) -> None:
    """Fill each train/evaluate row's ``cost`` (CPU: FLOP-scaled estimate; CUDA: measured)."""
    real_profile = load_profile(rec.profile, ws)
    flops = cost.Flops()
    for row in rec.rows:
        kind, name = parse_stage(row["stage"])
        if name not in configs or row["status"] != "ok":
            continue
        if kind == "train" and rec.profile == "published":  # fetches the published weights
            continue
        real = load_config(name, real_profile, ws=ws)
        mini = load_config(name, rec.profile, ws=sws)
        row_cost = _row_cost(rec, kind, real, mini, flops, rec.logs.get(row["stage"], []))
        if row_cost is not None:
            row["cost"], row["cost_text"] = row_cost.to_dict(), row_cost.text()
        if kind == "train":  # which layouts fit: measured on this GPU, or estimated (fit.py)
            if rec.device == "cuda":
                rec.fits.append(fit.measure(real, rec.gpus))
            else:
                capacity = rec.gpu_memory or fit.DEFAULT_GPU_GB
                rec.fits.append(fit.estimate(real, load_published(ws.registry_file), capacity))
    if rec.device == "cuda":
        rec.cost_note = (
            "measured on CUDA: training iterations at the real crop and per-GPU batch on one GPU "
            "(BN instead of SyncBN, no all-reduce), x the published GPUs; evaluation: one "
            "real-size image through single-scale + ms+flip, x the val images"
        )
    else:
        rec.cost_note = (
            "CPU ESTIMATE, not a GPU measurement: the miniature's measured seconds per iteration "
            "(per single-scale image) x the FLOP ratio of the real to the miniature work; "
            "rerun with --device cuda on the target GPU for GPU-hours"
        )


def _row_cost(
    rec: Receipt,
    kind: str,
    real: Config,
    mini: Config,
    flops: cost.Flops,
    log: list[str],
) -> cost.RowCost | None:
    gpus = rec.gpus  # training rows: the rehearsed layout (--gpus)
    dataset = real.data.dataset
    images = REAL_COUNTS[dataset][1]
    real_wh = image_size(dataset)
    if rec.device == "cuda":
        if kind == "train":
            seconds, peak = cost.time_train(real, "cuda", per_gpu_batch=real.global_batch // gpus)
            return cost.RowCost(real.schedule.max_iters, "it", seconds, gpus, "cuda-measured",
                                peak)  # fmt: skip
        seconds = cost.time_evaluate(real, (real_wh[1], real_wh[0]), "cuda")
        return cost.RowCost(images, "img", seconds, 1, "cuda-measured")
    if kind == "train":
        measured = cost.measured_iteration(log)
        return None if measured is None else cost.cpu_train(flops, real, mini, measured, gpus)
    measured = cost.measured_image(log)
    if measured is None:
        return None
    mini_wh = image_size(dataset, shrink.FACTORS.of(dataset))
    return cost.cpu_evaluate(flops, real, mini, measured, images, real_wh, mini_wh)


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


def render(rec: Receipt, receipt_path: Path) -> str:
    lines = [
        f"dnlrepro rehearse --profile {rec.profile}: every stage of the real run, in miniature "
        f"(stages: {rec.device_note}; {rec.gpus if rec.profile == 'paper' else 1} process(es))",
        "",
        "Differences from the real run (every key in the receipt):",
        "  1. sizes: " + "\n     ".join(rec.change_summary),
        f"  2. files: {len(rec.mirror_files)} miniatures under their real names from the mirror "
        f"{rec.mirror_url or '-'} (DNLREPRO_MIRROR), verified against the mirror's own sha256 "
        "(DNLREPRO_EXPECTED_SHA256); Cityscapes through its login with the mirror's account",
        "",
        _table(rec.rows),
        "",
        "Checks:",
        *(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in rec.checks),
    ]
    if rec.cost_note:
        lines += ["", f"Cost column: {rec.cost_note}."]
        lines += _totals(rec.rows)
    lines += fit.render(rec.fits)
    if rec.failure is not None:
        f = rec.failure
        lines += ["", f"FAILED stage: {f['stage'] or '(no stage: the rehearsal itself)'}",
                  f"  command: {f['command']}", f"  error: {f['error']}"]  # fmt: skip
        if f["errors"]:
            lines += ["  error lines:", *(f"    {line}" for line in f["errors"])]
        if f["log_tail"]:
            lines.append(f"  log (last {LOG_TAIL} lines of the stage; all of it in {f['log']}):")
            lines += [f"    {line}" for line in f["log_tail"]]
    verdict = "OK: every stage of the profile ran" if rec.ok else "FAILED"
    lines += ["", f"{verdict} ({rec.seconds:.0f} s). Receipt: {receipt_path}"]
    if rec.scratch:
        lines.append(f"Scratch copy and mirror kept in {rec.scratch}")
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("stage", "run", "what ran", "s", "status", "real run: iterations x s = cost")
    body = [
        (
            r["stage"],
            str(r["run"] or "-"),
            r["what"],
            f"{r['seconds']:.1f}",
            r["status"],
            r["cost_text"],
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def _totals(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for kind, label in (("train@", "training"), ("evaluate@", "evaluation")):
        costs = [r["cost"] for r in rows if r["stage"].startswith(kind) and r["cost"]]
        if costs:
            unit = "GPU-h" if costs[0]["source"] == "cuda-measured" else "CPU-h (estimate)"
            total = sum(c["device_hours"] for c in costs)
            out.append(f"  all {label} rows: {total:,.0f} {unit}")
    return out
