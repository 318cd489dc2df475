"""The PNG figures a run keeps in MLflow: training curves and per-class IoU (matplotlib, Agg).

MLflow draws logged metrics itself, but only one run's metric at a time and not a bar per
class; these two files show a run as the report does, in the run's Artifacts tab.
"""

from __future__ import annotations

import math
from typing import Any

FIG_WIDTH_IN = 8.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node or in a DVC stage
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, Any], title: str) -> Any:
    """Loss and learning rate per logged interval, validation mIoU per evaluation."""
    plt = _pyplot()
    train = history.get("train") or []
    val = [v for v in history.get("val") or [] if v.get("mIoU") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(FIG_WIDTH_IN * 1.5, 3.2), layout="constrained")
    iters = [p["iter"] for p in train]
    for key in sorted({k for p in train for k in p if k.startswith("loss")}):
        axes[0].plot(iters, [p.get(key, math.nan) for p in train], label=key)
    axes[0].set_title("training loss")
    if train:
        axes[0].legend(fontsize="small")
    axes[1].plot(iters, [p.get("lr", math.nan) for p in train])
    axes[1].set_title("learning rate")
    axes[2].plot([v["iter"] for v in val], [v["mIoU"] for v in val], marker="o")
    axes[2].set_title("validation mIoU (%)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def per_class_iou(rows: list[dict[str, Any]], title: str) -> Any:
    """One horizontal bar per class (single scale; ms+flip beside it when measured)."""
    plt = _pyplot()
    names = [str(r["class"]) for r in rows]
    height = max(3.0, 0.22 * len(names) + 1.0)
    fig, ax = plt.subplots(figsize=(FIG_WIDTH_IN, height), layout="constrained")
    pos = list(range(len(names)))
    ss = [_num(r.get("IoU")) for r in rows]
    ms = [_num(r.get("IoU (ms+flip)")) for r in rows]
    has_ms = any(not math.isnan(v) for v in ms)
    bar = 0.4 if has_ms else 0.8
    ax.barh([p - (bar / 2 if has_ms else 0) for p in pos], ss, height=bar, label="single scale")
    if has_ms:
        ax.barh([p + bar / 2 for p in pos], ms, height=bar, label="ms+flip")
        ax.legend(fontsize="small")
    ax.set_yticks(pos, names, fontsize="small")
    ax.invert_yaxis()  # the dataset's class order, top to bottom
    ax.set_xlabel("IoU (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    return fig


def _num(value: Any) -> float:
    return math.nan if value is None or value == "" else float(value)


def close(fig: Any) -> None:
    _pyplot().close(fig)
