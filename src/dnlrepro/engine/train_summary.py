"""What a finished training run leaves behind: the summary JSON and its MLflow record.

§ numbers refer to docs/reference.md.

The summary (``train_summary.json``) is the run's receipt for the DVC pipeline and the reports:
configuration, layout and protocol, device, peak memory as mmcv logs it (§5.5), wall time, the
last logged losses, the last validation and the final weights with their sha256. MLflow gets
the final and per-class metrics, the configuration, the summary and two figures; MLflow is a
view of the JSON, so every tracking failure only warns (:class:`dnlrepro.track.tracking.Tracker`).
"""

from __future__ import annotations

import math
import resource
from pathlib import Path
from typing import Any

import torch

from dnlrepro.core import workspace
from dnlrepro.core.config import Config
from dnlrepro.core.files import file_digest, write_bytes_atomic
from dnlrepro.core.layout import layout_for, record
from dnlrepro.engine import machine
from dnlrepro.engine.distributed import DistInfo
from dnlrepro.engine.precision import precision_record


def build_summary(
    cfg: Config,
    info: DistInfo,
    *,
    resumed_from: int,
    history: dict[str, Any],
    last_val: dict[str, Any],
    final: Path,
) -> dict[str, Any]:
    """The summary dict; ``checkpoint`` is ``final`` relative to the workspace when inside it.

    Everything in it is a function of the configuration, the data, the code and the machine
    (``machine``: :func:`dnlrepro.engine.machine.fingerprint`, which the smoke verdicts compare),
    so a re-run on the same machine writes the same bytes; time and memory go to
    :func:`build_timing`.
    """
    return {
        "config": cfg.name,
        "profile": cfg.profile,
        "config_digest": cfg.digest(),
        "seed": cfg.schedule.seed,
        "iterations": cfg.schedule.max_iters,
        "resumed_from_iteration": resumed_from,
        "world_size": info.world_size,
        # layout (gpus x per-GPU batch), global batch and BN group: the protocol that ran; the
        # diff compares it with the published one (core/layout.py)
        **record(cfg, layout_for(cfg, info.world_size)),
        "device": info.device.type,
        "amp": cfg.runtime.amp,
        "precision": precision_record(cfg, info.device, cfg.runtime.amp),  # TF32 (§5.7)
        "machine": machine.fingerprint(),
        "final_train_losses": last_losses(history),
        "last_validation": last_val,
        "checkpoint": workspace.find().relative(final),
        "checkpoint_sha256": file_digest(final),
    }


def build_timing(
    cfg: Config,
    info: DistInfo,
    *,
    memory_mb: float,
    memory_kind: str,
    wall_time_s: float,
    iterations_run: int,
) -> dict[str, Any]:
    """Machine-dependent figures of the run (``timings/<config>/train.json``, not results)."""
    return {
        "config": cfg.name,
        "device": str(info.device),
        "device_name": device_name(info.device),
        "world_size": info.world_size,
        "iterations_run": iterations_run,
        "wall_time_s": round(wall_time_s, 2),
        "s_per_iter": round(wall_time_s / iterations_run, 4) if iterations_run else None,
        "max_memory_mb": round(memory_mb, 1),
        "max_memory_gb": round(memory_mb / 1024, 3),  # GB = MB / 1024 (§5.5)
        "memory_kind": memory_kind,
    }


def device_name(device: Any) -> str:
    """``NVIDIA H100 80GB HBM3`` on CUDA, the CPU architecture otherwise."""
    import platform

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return platform.machine() or "cpu"


def write_curves(history: dict[str, Any], out_dir: Path) -> list[Path]:
    """``train_curve.csv`` (iter, loss, lr), ``lr_curve.csv``, ``val_curve.csv`` (iter, mIoU, ...).

    The DVC plots (docs/pipeline.md, "Metrics and plots") read these files.
    """

    def table(header: list[str], rows: list[list[Any]]) -> bytes:
        lines = [",".join(header)]
        lines += [",".join("" if v is None else f"{v:.6g}" for v in row) for row in rows]
        return ("\n".join(lines) + "\n").encode()

    train_rows = [[p["iter"], p.get("loss"), p.get("lr")] for p in history.get("train", [])]
    val_rows = [
        [p["iter"], p.get("mIoU"), p.get("mAcc"), p.get("aAcc")] for p in history.get("val", [])
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{n}_curve.csv" for n in ("train", "lr", "val")]
    write_bytes_atomic(paths[0], table(["iter", "loss", "lr"], train_rows))
    # A DVC plot shows one y per file: the schedule gets its own (docs/pipeline.md).
    write_bytes_atomic(paths[1], table(["iter", "lr"], [[r[0], r[2]] for r in train_rows]))
    write_bytes_atomic(paths[2], table(["iter", "mIoU", "mAcc", "aAcc"], val_rows))
    return paths


def last_losses(history: dict[str, Any]) -> dict[str, float]:
    """The last logged interval averages (also right for a resumed run that trained nothing)."""
    last = (history.get("train") or [{}])[-1]
    return {k: v for k, v in last.items() if k not in ("iter", "lr")}


def val_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics ``val/mIoU``, ``val/mAcc``, ``val/aAcc``: one point per validation; a
    class-less validation reports None, which is not logged."""
    keys = ("mIoU", "mAcc", "aAcc")
    return {f"val/{k}": float(metrics[k]) for k in keys if metrics.get(k) is not None}


def as_float(value: Any) -> float:
    """evaluate_model reports NaN (e.g. a class absent from labels and predictions) as None."""
    return math.nan if value is None else float(value)


def track_final(
    tracker: Any,
    cfg: Config,
    summary: dict[str, Any],
    timing: dict[str, Any],
    summary_path: Path,
    history: dict[str, Any],
) -> None:
    """Training time and memory, config, summary, per-class IoU of the last validation and the
    training curves as a PNG (failures only warn).

    The validation metrics were logged as ``val/...`` when they were measured, each step once;
    the run's ``mIoU`` column is the evaluation's (:func:`dnlrepro.engine.eval_artifacts.
    log_to_mlflow`). Per-class IoU is an artifact, not 19-150 metrics that would crowd the runs
    table; absent values are left out, never logged as NaN.
    """
    last_val = summary["last_validation"]
    per_class = {name: v for name, v in last_val.get("IoU", {}).items() if v is not None}
    scalars = {
        "train_s": timing["wall_time_s"],
        # Mem (GB) is CUDA max_memory_allocated (§5.5); a CPU RSS is another quantity.
        (
            "mem_gb" if timing["memory_kind"] == "cuda_max_memory_allocated" else "cpu_max_rss_gb"
        ): timing["max_memory_gb"],
    }
    tracker.log_metrics(scalars, step=summary["iterations"])
    tracker.log_dict(cfg.to_dict(), "config.yaml")
    tracker.log_dict(
        {"class": list(per_class), "IoU": list(per_class.values())}, "val_per_class_iou.json"
    )
    tracker.log_artifact(summary_path)
    tracker.log_plot("training_curves", history, "training_curves.png")


def memory_mb(dev: torch.device) -> float:
    """mmcv's ``memory`` figure on GPU; the process's peak RSS on CPU (§5.5)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory_kind(dev: torch.device) -> str:
    return "cuda_max_memory_allocated" if dev.type == "cuda" else "cpu_max_rss"
