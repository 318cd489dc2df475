"""What an evaluation leaves behind besides the numbers: protocol, per-class tables, chart, MLflow.

§ numbers refer to docs/reference.md.

The metrics JSON (written by :func:`dnlrepro.engine.evaluate.evaluate`) is the source of truth;
its ``protocol`` block (:func:`build_protocol`) says what was measured and how. The per-class CSV /
markdown tables, the IoU bar chart and the MLflow run are views of that JSON.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dnlrepro.config import Config
from dnlrepro.engine.inference import SINGLE_SCALE, checkpoint_label

# Checkpoint meta keys worth recording (mmseg's own plus ours), when they are plain scalars.
_META_KEYS = ("mmseg_version", "iter", "epoch", "time", "config_digest", "config_name")


def build_protocol(
    cfg: Config,
    checkpoint: str | Path,
    checkpoint_sha256: str | None,
    split: str,
    ms_flip: bool,
    image_count: int,
    world_size: int,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What was measured and how, for the ``protocol`` key of the metrics JSON."""
    t = cfg.test
    meta = meta or {}
    return {
        "config": cfg.name,
        "profile": cfg.profile,
        "checkpoint": checkpoint_label(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_meta": {
            k: meta[k] for k in _META_KEYS if isinstance(meta.get(k), str | int | float | bool)
        },
        "dataset": cfg.data.dataset,
        "split": split,
        "mode": t.mode,
        "crop_size": list(t.crop_size) if t.crop_size else None,
        "stride": list(t.stride) if t.stride else None,
        "img_scale": list(t.img_scale),
        # Ratios of img_scale used by the ms+flip protocol (the single-scale one is always 1.0).
        "scales": list(t.ms_ratios) if ms_flip else list(SINGLE_SCALE),
        "flip": bool(ms_flip and t.ms_flip),
        "image_count": image_count,
        "world_size": world_size,
        "align_corners": cfg.model.align_corners,
        "reduce_zero_label": cfg.data.reduce_zero_label,
        "metric": "mmseg 0.x: dataset-level histograms, ignore 255, nanmean over classes, "
        "percent rounded to 2 decimals (docs/reference.md §5.1)",
        "ms_flip_rule": "mean of softmax over views (§5.3); slide windows larger than the image "
        "are fed unpadded (mmseg >= PR #133, §5.2)",
    }


def per_class_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class: IoU / Acc single-scale and (when present) ms+flip."""
    ss, ms = result["single_scale"], result.get("ms_flip")
    rows = []
    for name in ss["IoU"]:
        row = {"class": name, "IoU": ss["IoU"][name], "Acc": ss["Acc"][name]}
        if ms:
            row["IoU (ms+flip)"] = ms["IoU"][name]
            row["Acc (ms+flip)"] = ms["Acc"][name]
        rows.append(row)
    return rows


def per_class_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["class"])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def per_class_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v).strip())

    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def iou_bar_chart(result: dict[str, Any], title: str) -> Any:
    """Horizontal per-class IoU bars (NaN classes drawn as 0 and marked 'n/a')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["single_scale"]["IoU"])
    ss = [result["single_scale"]["IoU"][n] for n in names]
    ms = [result["ms_flip"]["IoU"][n] for n in names] if result.get("ms_flip") else None
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(names) + 1)))
    h = 0.4 if ms else 0.8
    ax.barh(y - (h / 2 if ms else 0), [v or 0.0 for v in ss], height=h, label="single scale")
    if ms:
        ax.barh(y + h / 2, [v or 0.0 for v in ms], height=h, label="ms+flip")
    for i, v in enumerate(ss):
        if v is None:
            ax.text(1, i, "n/a", va="center", fontsize=7)
    ax.set_yticks(y, [n.strip() for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def mlflow_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat metric dict: ``mIoU``, ``IoU/<class>``, ``ms_flip.mIoU``, ``ms_flip.IoU/<class>``."""
    out: dict[str, float] = {}
    for prefix, block in (("", result["single_scale"]), ("ms_flip.", result.get("ms_flip"))):
        if not block:
            continue
        for k in ("mIoU", "mAcc", "aAcc"):
            if block[k] is not None:
                out[prefix + k] = block[k]
        for name, v in block["IoU"].items():
            if v is not None:
                out[f"{prefix}IoU/{name.strip()}"] = v
    return out


def log_to_mlflow(cfg: Config, payload: dict[str, Any]) -> None:
    """One MLflow run (stage "evaluate"): metrics, protocol tags, JSON, per-class table, chart."""
    import matplotlib.pyplot as plt

    from dnlrepro.engine.tracking import Tracker

    with Tracker(cfg, stage="evaluate", enabled=True) as tracker:
        proto = payload["protocol"]
        tracker.set_tags({f"eval.{k}": v for k, v in proto.items() if not isinstance(v, dict)})
        tracker.log_metrics(mlflow_metrics(payload))
        tracker.log_dict(payload, "metrics.json")
        rows = per_class_rows(payload)
        with tempfile.TemporaryDirectory() as tmp:
            for fname, text in (
                ("per_class.csv", per_class_csv(rows)),
                ("per_class.md", per_class_markdown(rows)),
            ):
                (Path(tmp) / fname).write_text(text, encoding="utf-8")
                tracker.log_artifact(Path(tmp) / fname)
        fig = iou_bar_chart(payload, f"{cfg.name} ({cfg.profile}) per-class IoU")
        tracker.log_figure(fig, "per_class_iou.png")
        plt.close(fig)
