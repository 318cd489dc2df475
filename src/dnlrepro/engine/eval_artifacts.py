"""What an evaluation leaves behind besides the numbers: protocol, per-class tables, chart, MLflow.

§ numbers refer to docs/reference.md.

The metrics JSON (written by :func:`dnlrepro.engine.evaluate.evaluate`) is the source of truth;
its ``protocol`` block (:func:`build_protocol`) says what was measured and how. The per-class CSV /
markdown tables and the MLflow run are views of that JSON.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from dnlrepro.core import registry, workspace
from dnlrepro.core.config import Config
from dnlrepro.engine import machine
from dnlrepro.engine.inference import SINGLE_SCALE, checkpoint_label

logger = logging.getLogger(__name__)

# Checkpoint meta keys worth recording (mmseg's own plus ours), when they are plain scalars.
_META_KEYS = ("mmseg_version", "iter", "epoch", "time", "config_digest", "config_name")
# test.small_window (§5.2), as the protocol block describes it.
_SMALL_WINDOW_RULES = {
    "unpadded": "fed unpadded (mmseg >= PR #133)",
    "pad": "zero-padded to the crop size, logits cropped back (mmseg v0.5.0)",
}


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
        f"are {_SMALL_WINDOW_RULES[t.small_window]} (§5.2)",
        "small_window": t.small_window,
        "machine": machine.fingerprint(),  # the smoke verdicts compare it with the baseline's
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


def mlflow_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers under the names the training runs use (``mIoU``, ``mAcc``,
    ``aAcc``), ms+flip with a ``_ms_flip`` suffix, and ``baseline_mIoU``.

    Per-class IoU goes in the ``per_class.csv`` artifact, not in 19-150 metrics that would push
    the headline columns out of MLflow's runs table; absent values are left out (never NaN).
    """
    out = {k: v for k, v in compact_metrics(result).items() if v is not None}
    ms = result.get("ms_flip") or {}
    for k in ("mAcc", "aAcc"):
        if ms.get(k) is not None:
            out[f"{k}_ms_flip"] = ms[k]
    return out


def published_metrics(cfg: Config, measured: dict[str, float]) -> dict[str, float]:
    """``published_mIoU`` (and ``_ms_flip``) of the row in params/published.yaml and the signed
    ``delta_...`` = reproduced - published, for the runs table; {} when the row has none.

    A view only: the verdict, with its tolerances and the smoke profile's own reference, is
    ``dnlrepro diff`` (reports/diff.md).
    """
    try:
        entry = registry.load_published(workspace.find().registry_file).entry(cfg.name)
    except (registry.PublishedError, FileNotFoundError) as e:
        logger.info("no published numbers in MLflow for %s: %s", cfg.name, e)
        return {}
    out: dict[str, float] = {}
    for key in ("mIoU", "mIoU_ms_flip"):
        published = entry.metrics.get(key)
        if published is None:
            continue
        out[f"published_{key}"] = float(published)
        if measured.get(key) is not None:
            out[f"delta_{key}"] = round(float(measured[key]) - float(published), 2)
    return out


def log_to_mlflow(cfg: Config, payload: dict[str, Any], started: float | None = None) -> None:
    """The evaluation's part of the (configuration, seed) MLflow run: headline metrics, the
    published numbers and their deltas, protocol tags, JSON, per-class tables and a PNG.

    The run is the training's (:class:`dnlrepro.track.tracking.Tracker` finds it by its tags);
    ``started`` (``time.time()`` when the evaluation began) starts a new run when there is no
    training run to join (a published checkpoint).
    """
    from dnlrepro.track.tracking import Tracker

    with Tracker(cfg, stage="evaluate", enabled=True, started=started) as tracker:
        proto = payload["protocol"]
        tracker.set_tags({f"eval.{k}": v for k, v in proto.items() if not isinstance(v, dict)})
        measured = mlflow_metrics(payload)
        # step: 0, or how many evaluations of this run came before (each step logged once)
        tracker.log_metrics({**measured, **published_metrics(cfg, measured)}, tracker.repeat)
        tracker.log_dict(payload, "eval.json")  # as results/<config>/eval.json
        rows = per_class_rows(payload)
        tracker.log_text(per_class_csv(rows), "per_class.csv")
        tracker.log_text(per_class_markdown(rows), "per_class.md")
        tracker.log_plot("per_class_iou", rows, "per_class_iou.png")


# -- the compact files DVC shows (docs/pipeline.md, "Metrics and plots") ----------------------


def compact_metrics(result: dict[str, Any]) -> dict[str, float | None]:
    """``results/<config>/metrics.json``: the row's headline numbers, in percent.

    ``baseline_mIoU`` is what predicting the most frequent class everywhere would score on the
    same labels (:func:`dnlrepro.engine.metrics.majority_baseline`): a trained model's mIoU
    means something only above it.
    """
    ss, ms = result["single_scale"], result.get("ms_flip") or {}
    return {
        "mIoU": ss["mIoU"],
        "mIoU_ms_flip": ms.get("mIoU"),
        "mAcc": ss["mAcc"],
        "aAcc": ss["aAcc"],
        "baseline_mIoU": (ss.get("majority_baseline") or {}).get("mIoU"),
    }


def compact_speed(bench: dict[str, Any], train_timing: dict[str, Any]) -> dict[str, Any]:
    """``timings/<config>/speed.json``: fps and Mem (GB) as the README columns (§5.4, §5.5).

    ``mem_gb`` is CUDA max_memory_allocated during training, the published column's quantity;
    a CPU run has none (its RSS is in ``timings/<config>/train.json``). The ``mmseg_*`` keys
    are the explicit-attention measurements that compare with the published columns (§5.6).
    """
    cuda_train = train_timing.get("memory_kind") == "cuda_max_memory_allocated"
    comparable = bench.get("mmseg_comparable") or {}
    return {
        "fps": bench.get("fps"),
        "mem_gb": train_timing.get("max_memory_gb") if cuda_train else bench.get("mem_gb"),
        "mmseg_fps": comparable.get("fps"),
        "mmseg_mem_gb": comparable.get("mem_gb"),
    }


def per_class_plot_csv(result: dict[str, Any]) -> bytes:
    """``results/<config>/per_class.csv``: class, IoU, IoU_ms_flip (empty = absent class)."""
    ss, ms = result["single_scale"]["IoU"], (result.get("ms_flip") or {}).get("IoU", {})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "IoU", "IoU_ms_flip"])
    for name, value in ss.items():
        row = [value, ms.get(name)]
        writer.writerow([name, *("" if v is None else v for v in row)])
    return buf.getvalue().encode()
