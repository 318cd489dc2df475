"""``dnlrepro evaluate``: mIoU / mAcc / aAcc as mmseg 0.x reports them (fact sheet §5).

One image at a time (bounded memory): the config's test pipeline (§3.4) makes the views, the model
turns each view into softmax probabilities at the original size (whole or slide per ``cfg.test``,
§5.2), the argmax is scored against the full-resolution label and dropped; only four int64 class
histograms per protocol survive (§5.1, :mod:`dnlrepro.engine.metrics`).

* single scale: the ``(1.0,)``-ratio unflipped view;
* ms+flip (§5.3): 6 ratios x {unflipped, flipped}; the 12 softmax maps (flipped ones flipped
  back by the model) are summed in view order and divided by 12, then argmax. The ratio-1.0
  unflipped view is the single-scale view, so its probabilities are computed once and reused.

Under ``torchrun`` each rank takes a strided shard of the images (``rank::world_size``) and the
histograms are summed with ``all_reduce``; only rank 0 shows progress, writes files and logs to
MLflow.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dnlrepro.config import PROFILES, Config, load_config
from dnlrepro.data.download import file_digest
from dnlrepro.engine.metrics import IoUAccumulator

logger = logging.getLogger(__name__)

# 1.0 is the single-scale view inside the ms+flip set (§3.4).
SINGLE_SCALE = (1.0,)


# ---------------------------------------------------------------------------------------------
# Inference on one image
# ---------------------------------------------------------------------------------------------


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside a DDP / DataParallel wrapper (``inference`` lives there)."""
    return model.module if hasattr(model, "module") else model


def infer_image(
    model: torch.nn.Module,
    img_bgr: np.ndarray,
    cfg: Config,
    ms_flip: bool = False,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities of one image at its original size: single scale, optionally ms+flip.

    Args:
        model: an ``EncoderDecoder`` in eval mode (``inference(img, ori_shape, flip)``).
        img_bgr: HxWx3 uint8 BGR image at original resolution (cv2 decode, §3.3 step 1).
        cfg: the resolved config (test scale, ratios, flip, normalisation).
        ms_flip: also compute the mean softmax of the ms+flip views (§5.3).
        device: where the network runs; default: the model's device.

    Returns:
        ``(probs_ss, probs_ms)``: [1, C, H0, W0] tensors on ``device``; ``probs_ms`` is None
        unless ``ms_flip``.
    """
    from dnlrepro.data import transforms

    net = unwrap(model)
    if device is None:
        device = next(net.parameters()).device
    ori_shape = tuple(img_bgr.shape[:2])  # (H0, W0)

    def run(view: torch.Tensor, flipped: bool) -> torch.Tensor:
        # [3, h, w] -> [1, C, H0, W0] softmax; the model flips a flipped view's output back.
        return net.inference(view.unsqueeze(0).to(device), ori_shape, flip=flipped)

    ((ss_view, _),) = transforms.test_views(
        img_bgr, cfg.test.img_scale, SINGLE_SCALE, False, cfg.data
    )
    probs_ss = run(ss_view, False)
    if not ms_flip:
        return probs_ss, None
    views = transforms.test_views(
        img_bgr, cfg.test.img_scale, cfg.test.ms_ratios, cfg.test.ms_flip, cfg.data
    )
    total: torch.Tensor | None = None
    for view, flipped in views:
        same_as_ss = not flipped and view.shape == ss_view.shape and torch.equal(view, ss_view)
        probs = probs_ss if same_as_ss else run(view, flipped)
        total = probs.clone() if total is None else total.add_(probs)
    assert total is not None  # test_views returns at least one view
    return probs_ss, total / len(views)


# ---------------------------------------------------------------------------------------------
# Dataset evaluation
# ---------------------------------------------------------------------------------------------


def resolve_split(cfg: Config, split: str | None) -> str:
    """``None``/``"val"`` -> ``cfg.data.val_split`` (Cityscapes ``val``, ADE20K ``validation``);
    ``"train"`` -> ``cfg.data.train_split``; anything else is taken literally."""
    if split is None or split == "val":
        return cfg.data.val_split
    if split == "train":
        return cfg.data.train_split
    return split


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    split: str | None = None,
    ms_flip: bool = False,
    max_images: int | None = None,
    data_root: str | Path | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Evaluate an already-built model on a dataset split (all ranks must call it together).

    Args:
        model: the segmentor (possibly DDP-wrapped); its train/eval mode is restored afterwards.
        cfg: the resolved config.
        split: ``"val"`` (default) / ``"train"`` / a literal split folder name.
        ms_flip: also compute the ms+flip metrics (§5.3).
        max_images: evaluate only the first N images (in dataset order).
        data_root: overrides ``cfg.data.data_root``.
        device: where the network runs; default: the model's device.

    Returns:
        ``{"single_scale": {...}, "ms_flip": {...} | None, "image_count": n}``, metrics in percent
        with two decimals (``mIoU``, ``mAcc``, ``aAcc``, ``IoU``/``Acc`` per class, None for NaN).

    Raises:
        RuntimeError: when a label's size differs from its image's size (names both files).
    """
    from dnlrepro.data import classes, datasets

    if data_root is not None:
        cfg = cfg.replace({"data.data_root": str(data_root)})
    split_name = resolve_split(cfg, split)
    dataset = datasets.build_dataset(cfg.data, split_name, mode="test", max_images=max_images)
    rank, world = _rank_world()
    indices = range(rank, len(dataset), world)
    num_classes = cfg.model.num_classes
    acc_ss = IoUAccumulator(num_classes, cfg.model.ignore_index)
    acc_ms = IoUAccumulator(num_classes, cfg.model.ignore_index) if ms_flip else None
    net = unwrap(model)
    was_training = net.training
    net.eval()
    show_bar = rank == 0 and sys.stderr.isatty()
    log_every = max(1, len(indices) // 10)
    logger.info(
        "evaluating %s on %s/%s: %d images (this rank: %d), %s%s",
        cfg.name, cfg.data.dataset, split_name, len(dataset), len(indices), cfg.test.mode,
        " + ms+flip" if ms_flip else "",
    )  # fmt: skip
    try:
        with torch.no_grad():
            bar = tqdm(indices, desc=f"eval {cfg.name}", disable=not show_bar, unit="img")
            for i, idx in enumerate(bar):
                item = dataset[idx]
                # Labels at full original resolution; ADE20K reduce_zero_label here (§5.1, §3.2).
                label = datasets.load_label(item["ann_path"], cfg.data.reduce_zero_label)
                img_bgr = item["img_bgr"]
                if tuple(label.shape[:2]) != tuple(img_bgr.shape[:2]):
                    raise RuntimeError(
                        f"label {item['ann_path']} is {label.shape[1]}x{label.shape[0]} but image "
                        f"{item['img_path']} is {img_bgr.shape[1]}x{img_bgr.shape[0]}; re-run "
                        "`dnlrepro prepare` for this dataset"
                    )
                probs_ss, probs_ms = infer_image(net, img_bgr, cfg, ms_flip, device)
                acc_ss.update(probs_ss.argmax(dim=1)[0].cpu(), label)
                if acc_ms is not None and probs_ms is not None:
                    acc_ms.update(probs_ms.argmax(dim=1)[0].cpu(), label)
                del probs_ss, probs_ms
                if rank == 0 and not show_bar and ((i + 1) % log_every == 0):
                    logger.info("eval %s: %d/%d images", cfg.name, i + 1, len(indices))
    finally:
        net.train(was_training)
    acc_ss.all_reduce()
    if acc_ms is not None:
        acc_ms.all_reduce()
    names = classes.CLASSES[cfg.data.dataset]
    result = {
        "single_scale": acc_ss.to_percent(names),
        "ms_flip": acc_ms.to_percent(names) if acc_ms is not None else None,
        "image_count": acc_ss.count,
    }
    if rank == 0:
        ss, ms = result["single_scale"], result["ms_flip"]
        logger.info(
            "%s: mIoU %s, mAcc %s, aAcc %s%s (%d images)",
            cfg.name, ss["mIoU"], ss["mAcc"], ss["aAcc"],
            f"; ms+flip mIoU {ms['mIoU']}" if ms else "", acc_ss.count,
        )  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoint + model
# ---------------------------------------------------------------------------------------------


def resolve_checkpoint(path_or_url: str | Path) -> Path:
    """A local checkpoint file: the path itself, or a URL downloaded (and sha256-checked) once.

    Delegates to :func:`dnlrepro.models.checkpoint.resolve_path` (mmseg's published file names
    end in ``-<first 8 hex of sha256>.pth``, §6.1, and that prefix is verified).

    Raises:
        FileNotFoundError: when a local path does not exist.
    """
    from dnlrepro.models.checkpoint import resolve_path

    return resolve_path(path_or_url)


def load_model(
    cfg: Config, checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """Build the segmentor, load a checkpoint strictly, move it to ``device`` in eval mode.

    Returns:
        ``(model, meta, local_checkpoint_path)``.

    Raises:
        FileNotFoundError: missing checkpoint. ``ValueError``/``RuntimeError`` from
        :func:`dnlrepro.models.load_checkpoint` when keys or shapes do not match the config.
    """
    from dnlrepro import models

    local = resolve_checkpoint(checkpoint)
    model = models.build_segmentor(cfg)
    meta = models.load_checkpoint(model, local)
    # Evaluation never needs BN statistics synchronised; plain BN avoids any collective.
    model = models.revert_sync_batchnorm(model)
    model.to(device).eval()
    return model, meta, local


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    keep = {}
    for key in ("mmseg_version", "iter", "epoch", "time", "config_digest", "config_name"):
        v = meta.get(key)
        if isinstance(v, str | int | float | bool):
            keep[key] = v
    return keep


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
    return {
        "config": cfg.name,
        "profile": cfg.profile,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_meta": _json_safe(meta or {}),
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
        "percent rounded to 2 decimals (fact sheet §5.1)",
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


def write_json(payload: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    # allow_nan=False: NaN must already be None (JSON null) -- a bare NaN is not valid JSON.
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def evaluate(
    cfg: Config,
    checkpoint: str | Path,
    data_root: str | Path | None = None,
    split: str | None = None,
    ms_flip: bool = False,
    out: str | Path | None = None,
    max_images: int | None = None,
    device: torch.device | str | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Build the model, load ``checkpoint``, evaluate, write ``out`` JSON and log to MLflow.

    Args:
        cfg: the resolved config.
        checkpoint: a local ``.pth`` (mmseg layout or bare state dict) or a URL.
        data_root: overrides ``cfg.data.data_root``.
        split: ``"val"`` (default) / ``"train"`` / a literal split name.
        ms_flip: also compute ms+flip (§5.3).
        out: JSON path (rank 0 writes it).
        max_images: evaluate only the first N images.
        device: default: CUDA when available.
        track: log an MLflow run (rank 0 only).

    Returns:
        ``{"single_scale": ..., "ms_flip": ... | None, "protocol": {...}}``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta, local = load_model(cfg, checkpoint, device)
    if data_root is not None:
        cfg = cfg.replace({"data.data_root": str(data_root)})
    rank, world = _rank_world()
    result = evaluate_model(model, cfg, split, ms_flip, max_images, None, device)
    payload = {
        "single_scale": result["single_scale"],
        "ms_flip": result["ms_flip"],
        "protocol": build_protocol(
            cfg,
            checkpoint,
            file_digest(local) if rank == 0 else None,
            resolve_split(cfg, split),
            ms_flip,
            result["image_count"],
            world,
            meta,
        ),
    }
    if rank == 0:
        if out is not None:
            logger.info("wrote %s", write_json(payload, out))
        if track:
            try:
                log_to_mlflow(cfg, payload)
            except Exception as e:  # MLflow is a view of the JSON: never fail the evaluation
                logger.warning("MLflow logging failed (%s: %s)", type(e).__name__, e)
    return payload


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config name (params/) or YAML path")
    parser.add_argument("--profile", choices=PROFILES, default=None, help="default: params.yaml")
    parser.add_argument("--checkpoint", required=True, help=".pth file or published URL")
    parser.add_argument("--data-root", default=None, help="default: the config's data.data_root")
    parser.add_argument(
        "--split", default="val", help="val (Cityscapes val / ADE20K validation), train, or a name"
    )
    parser.add_argument("--ms-flip", action="store_true", help="also 6 ratios x flip (§5.3)")
    parser.add_argument("--out", default=None, help="metrics JSON path")
    parser.add_argument("--max-images", type=_positive_int, default=None, help="first N images")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(args: argparse.Namespace) -> int:
    from dnlrepro.engine.distributed import cleanup, init_distributed

    cfg = load_config(args.config, profile=args.profile)
    info = init_distributed(args.device)
    try:
        payload = evaluate(
            cfg,
            args.checkpoint,
            data_root=args.data_root,
            split=args.split,
            ms_flip=args.ms_flip,
            out=args.out,
            max_images=args.max_images,
            device=info.device,
            track=not args.no_track,
        )
    finally:
        cleanup(info)
    if info.is_main:
        ss, ms = payload["single_scale"], payload["ms_flip"]
        line = (
            f"{cfg.name}: mIoU {_fmt(ss['mIoU'])} mAcc {_fmt(ss['mAcc'])} aAcc {_fmt(ss['aAcc'])}"
        )
        if ms:
            line += f" | ms+flip mIoU {_fmt(ms['mIoU'])}"
        print(line)
    return 0


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


__all__: Sequence[str] = [
    "evaluate",
    "evaluate_model",
    "infer_image",
    "load_model",
    "resolve_checkpoint",
    "resolve_split",
]
