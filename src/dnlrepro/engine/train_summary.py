"""What a finished training run leaves behind: the summary JSON and its MLflow record.

§ numbers refer to docs/reference.md.

The summary (``train_summary.json``) is the run's receipt for the DVC pipeline and the reports:
configuration, batch, device, peak memory as mmcv logs it (§5.5), wall time, the last logged
losses, the last validation and the final weights with their sha256. MLflow gets the final and
per-class metrics, the configuration, the summary and two figures; MLflow is a view of the JSON,
so every tracking failure only warns (:class:`dnlrepro.engine.tracking.Tracker`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dnlrepro import workspace
from dnlrepro.config import Config
from dnlrepro.engine.distributed import DistInfo
from dnlrepro.files import file_digest


def build_summary(
    cfg: Config,
    info: DistInfo,
    *,
    resumed_from: int,
    memory_mb: float,
    memory_kind: str,
    wall_time_s: float,
    history: dict[str, Any],
    last_val: dict[str, Any],
    final: Path,
) -> dict[str, Any]:
    """The summary dict; ``checkpoint`` is ``final`` relative to the workspace when inside it."""
    effective_batch = info.world_size * cfg.data.samples_per_gpu
    return {
        "config": cfg.name,
        "profile": cfg.profile,
        "config_digest": cfg.digest(),
        "iterations": cfg.schedule.max_iters,
        "resumed_from_iteration": resumed_from,
        "world_size": info.world_size,
        "samples_per_gpu": cfg.data.samples_per_gpu,
        "effective_batch": effective_batch,
        "published_batch": cfg.published_batch,
        "device": str(info.device),
        "amp": cfg.runtime.amp,
        "max_memory_mb": round(memory_mb, 1),
        "max_memory_gb": round(memory_mb / 1024, 3),  # GB = MB / 1024 (§5.5)
        "memory_kind": memory_kind,
        "wall_time_s": round(wall_time_s, 2),
        "final_train_losses": last_losses(history),
        "last_validation": last_val,
        "checkpoint": workspace.find().relative(final),
        "checkpoint_sha256": file_digest(final),
    }


def last_losses(history: dict[str, Any]) -> dict[str, float]:
    """The last logged interval averages (also right for a resumed run that trained nothing)."""
    last = (history.get("train") or [{}])[-1]
    return {k: v for k, v in last.items() if k not in ("iter", "lr")}


def val_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: as_float(metrics[k]) for k in ("mIoU", "mAcc", "aAcc") if k in metrics}


def as_float(value: Any) -> float:
    """evaluate_model reports NaN (e.g. a class absent from labels and predictions) as None."""
    return math.nan if value is None else float(value)


def track_final(
    tracker: Any,
    cfg: Config,
    summary: dict[str, Any],
    history: dict[str, Any],
    summary_path: Path,
) -> None:
    """Final metrics, per-class IoU, config, summary and plots (all failures only warn)."""
    last_val = summary["last_validation"]
    # evaluate_model's IoU is a {class name: percent | None} dict.
    per_class = {name: as_float(v) for name, v in last_val.get("IoU", {}).items()}
    tracker.log_metrics(
        {
            **{f"final/{k}": v for k, v in val_scalars(last_val).items()},
            **{f"IoU/{c}": v for c, v in per_class.items()},
            "max_memory_mb": summary["max_memory_mb"],
            "wall_time_s": summary["wall_time_s"],
        },
        step=summary["iterations"],
    )
    tracker.log_dict(cfg.to_dict(), "config.yaml")
    tracker.log_dict(
        {"class": list(per_class), "IoU": list(per_class.values())}, "per_class_iou.json"
    )
    tracker.log_artifact(summary_path)
    if not tracker.enabled:
        return
    with contextlib.suppress(Exception):  # plotting is a nicety; never fail a finished run
        import matplotlib.pyplot as plt

        for name, fig in figures(history, per_class):
            tracker.log_figure(fig, name)
            plt.close(fig)


def figures(history: dict[str, Any], per_class: dict[str, float]) -> Iterator[tuple[str, Any]]:
    """``training_curves.png`` (loss, lr, val mIoU) and ``per_class_iou.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_pts, val_pts = history.get("train", []), history.get("val", [])
    fig, (ax_loss, ax_lr, ax_val) = plt.subplots(1, 3, figsize=(13, 3.5))
    its = [p["iter"] for p in train_pts]
    for key in ("loss", "decode.loss_seg", "aux.loss_seg"):
        ax_loss.plot(its, [p.get(key, math.nan) for p in train_pts], label=key)
    ax_loss.set(xlabel="iteration", title="training loss")
    ax_loss.legend()
    ax_lr.plot(its, [p["lr"] for p in train_pts])
    ax_lr.set(xlabel="iteration", title="learning rate")
    ax_val.plot([p["iter"] for p in val_pts], [p.get("mIoU", math.nan) for p in val_pts], "o-")
    ax_val.set(xlabel="iteration", title="val mIoU (%)")
    fig.tight_layout()
    yield "training_curves.png", fig
    if per_class:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(per_class)), 4))
        ax.bar(range(len(per_class)), list(per_class.values()))
        ax.set_xticks(range(len(per_class)), list(per_class), rotation=90, fontsize=7)
        ax.set(ylabel="IoU (%)", title="per-class IoU")
        fig.tight_layout()
        yield "per_class_iou.png", fig
