"""Evaluation: mIoU / mAcc / aAcc as mmseg 0.x reports them (docs/reference.md §5).

§ numbers refer to docs/reference.md.

One image at a time (bounded memory): :func:`dnlrepro.engine.inference.infer_image` gives the
softmax at the original size (single scale, and ms+flip when asked, §5.2, §5.3), its argmax is
scored against the full-resolution label and dropped; only four int64 class histograms per
protocol survive (§5.1, :mod:`dnlrepro.engine.metrics`).

Under ``torchrun`` each rank takes a strided shard of the images (``rank::world_size``) and the
histograms are summed with ``all_reduce``; only rank 0 shows progress, writes files and logs to
MLflow (:mod:`dnlrepro.engine.eval_artifacts`). The ``dnlrepro evaluate`` command, which also
fetches a URL checkpoint, is :mod:`dnlrepro.tools.evaluate`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dnlrepro.core.config import Config
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.engine import distributed, eval_artifacts
from dnlrepro.engine.inference import infer_image_modes, load_model, other_small_window, unwrap
from dnlrepro.engine.metrics import IoUAccumulator
from dnlrepro.engine.precision import precision_record
from dnlrepro.track import tracking

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "evaluate_model", "resolve_split"]


def resolve_split(cfg: Config, split: str | None) -> str:
    """``None``/``"val"`` -> ``cfg.data.val_split`` (Cityscapes ``val``, ADE20K ``validation``);
    ``"train"`` -> ``cfg.data.train_split``; anything else is taken literally."""
    if split is None or split == "val":
        return cfg.data.val_split
    if split == "train":
        return cfg.data.train_split
    return split


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    split: str | None = None,
    ms_flip: bool = False,
    max_images: int | None = None,
    data_root: str | Path | None = None,
    device: torch.device | str | None = None,
    small_window_alt: bool = False,
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
        small_window_alt: also the ms+flip metrics with the other ``test.small_window`` mode
            (§5.2); needs ``ms_flip`` and slide inference. Only views with windows smaller than
            the crop run twice.

    Returns:
        ``{"single_scale": {...}, "ms_flip": {...} | None, "ms_flip_alt": {...} | None,
        "image_count": n}``, metrics in percent with two decimals (``mIoU``, ``mAcc``, ``aAcc``,
        ``IoU``/``Acc`` per class, None for NaN); ``ms_flip_alt`` also names its
        ``small_window`` mode.

    Raises:
        RuntimeError: when a label's size differs from its image's size (names both files).
        ValueError: ``small_window_alt`` without ``ms_flip`` or without slide inference.
    """
    from dnlrepro.data import datasets

    if small_window_alt and not (ms_flip and cfg.test.mode == "slide"):
        raise ValueError(
            f"the other test.small_window mode only changes ms+flip slide inference; {cfg.name} "
            f"has test.mode {cfg.test.mode!r} and ms_flip={ms_flip}: drop small_window_alt"
        )
    if data_root is not None:
        cfg = cfg.replace({"data.data_root": str(data_root)})
    split_name = resolve_split(cfg, split)
    dataset = datasets.build_dataset(cfg.data, split_name, mode="test", max_images=max_images)
    rank, world = distributed.rank_world()
    indices = range(rank, len(dataset), world)
    logger.info(
        "evaluating %s on %s/%s: %d images (this rank: %d), %s%s",
        cfg.name, cfg.data.dataset, split_name, len(dataset), len(indices), cfg.test.mode,
        " + ms+flip" if ms_flip else "",
    )  # fmt: skip
    acc_ss = IoUAccumulator(cfg.model.num_classes, cfg.model.ignore_index)
    modes = [cfg.test.small_window] if ms_flip else []
    if small_window_alt:
        modes.append(other_small_window(cfg.test.small_window))
    acc_ms = {m: IoUAccumulator(cfg.model.num_classes, cfg.model.ignore_index) for m in modes}
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            _score(net, cfg, dataset, indices, acc_ss, acc_ms, device, rank)
    finally:
        net.train(was_training)
    return _results(cfg, acc_ss, acc_ms, rank)


def _results(
    cfg: Config, acc_ss: IoUAccumulator, acc_ms: dict[str, IoUAccumulator], rank: int
) -> dict[str, Any]:
    """Sum the histograms over ranks and turn them into percent (§5.1); rank 0 logs them."""
    from dnlrepro.data import classes

    names = classes.CLASSES[cfg.data.dataset]
    acc_ss.all_reduce()
    result = {"single_scale": acc_ss.to_percent(names), "ms_flip": None, "ms_flip_alt": None,
              "image_count": acc_ss.count}  # fmt: skip
    for mode, acc in acc_ms.items():
        acc.all_reduce()
        if mode == cfg.test.small_window:
            result["ms_flip"] = acc.to_percent(names)
        else:
            result["ms_flip_alt"] = {"small_window": mode, **acc.to_percent(names)}
    if rank == 0:
        ss, ms = result["single_scale"], result["ms_flip"]
        logger.info(
            "%s: mIoU %s, mAcc %s, aAcc %s%s (%d images)",
            cfg.name, ss["mIoU"], ss["mAcc"], ss["aAcc"],
            f"; ms+flip mIoU {ms['mIoU']}" if ms else "", acc_ss.count,
        )  # fmt: skip
    return result


def _score(
    net: torch.nn.Module,
    cfg: Config,
    dataset: Any,
    indices: range,
    acc_ss: IoUAccumulator,
    acc_ms: dict[str, IoUAccumulator],
    device: torch.device | str | None,
    rank: int,
) -> None:
    """Add every image of this rank's shard to the histograms (progress on rank 0)."""
    from dnlrepro.data import datasets

    show_bar = rank == 0 and sys.stderr.isatty()
    log_every = max(1, len(indices) // 10)
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
        probs_ss, probs_ms = infer_image_modes(net, img_bgr, cfg, bool(acc_ms), device, [*acc_ms])
        acc_ss.update(probs_ss.argmax(dim=1)[0].cpu(), label)
        for mode, acc in acc_ms.items():
            acc.update(probs_ms[mode].argmax(dim=1)[0].cpu(), label)
        del probs_ss, probs_ms
        if rank == 0 and not show_bar and ((i + 1) % log_every == 0):
            logger.info("eval %s: %d/%d images", cfg.name, i + 1, len(indices))


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
    small_window_alt: bool = False,
    source: str | None = None,
) -> dict[str, Any]:
    """Build the model, load ``checkpoint``, evaluate, write ``out`` JSON and log to MLflow.

    Args:
        cfg: the resolved config.
        checkpoint: a local ``.pth`` (mmseg layout or bare state dict).
        data_root: overrides ``cfg.data.data_root``.
        split: ``"val"`` (default) / ``"train"`` / a literal split name.
        ms_flip: also compute ms+flip (§5.3).
        out: JSON path (rank 0 writes it).
        max_images: evaluate only the first N images.
        device: default: CUDA when available.
        track: log an MLflow run (rank 0 only).
        small_window_alt: also ms+flip with the other ``test.small_window`` mode (§5.2), as
            ``ms_flip_alt`` (see :func:`evaluate_model`).
        source: how the JSON names the checkpoint, e.g. the URL it was downloaded from
            (default: the file).

    Returns:
        ``{"single_scale": ..., "ms_flip": ... | None, "ms_flip_alt": ... | None, "protocol":
        {...}, "precision": {...}}``; the protocol names the profile, the checkpoint and its
        sha256, and how the numbers were measured; ``precision`` the TF32 setting (§5.7).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.time()  # the MLflow run's start: its duration is the evaluation's
    model, meta, local = load_model(cfg, checkpoint, device)
    if data_root is not None:
        cfg = cfg.replace({"data.data_root": str(data_root)})
    rank, world = distributed.rank_world()
    if track and rank == 0:  # a damaged MLflow store fails the evaluation now, not after it
        tracking.check_store(tracking.tracking_uri())
    result = evaluate_model(model, cfg, split, ms_flip, max_images, None, device, small_window_alt)
    protocol = eval_artifacts.build_protocol(
        cfg, source or checkpoint, file_digest(local) if rank == 0 else None,
        resolve_split(cfg, split),
        ms_flip, result["image_count"], world, meta,
    )  # fmt: skip
    payload = {"single_scale": result["single_scale"], "ms_flip": result["ms_flip"],
               "ms_flip_alt": result["ms_flip_alt"], "protocol": protocol,
               "precision": precision_record(cfg, device)}  # fmt: skip
    if rank == 0:
        if out is not None:
            logger.info("wrote %s", write_json(out, payload))
        if track:
            try:
                eval_artifacts.log_to_mlflow(cfg, payload, started)
            except tracking.StoreError:
                raise  # the record is lost: the stage must not count as done
            except Exception as e:  # MLflow is a view of the JSON: never fail the evaluation
                logger.warning("MLflow logging failed (%s: %s)", type(e).__name__, e)
    return payload
