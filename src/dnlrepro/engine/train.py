"""``dnlrepro train``: mmseg 0.x's iteration-based training, as one loop you can read.

What it reproduces (fact sheet sections in brackets):

* SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter; poly lr (power 0.9, min 1e-4)
  set before every iteration, no warm-up [§4.1, §4.2] -- :mod:`dnlrepro.engine.schedule`;
* loss = decode CE + 0.4 x aux CE, ignore 255, mean over all pixels [§1.6] -- the model's
  ``forward_train``;
* DDP + SyncBN across any number of ``torchrun`` processes, per-process batch
  ``samples_per_gpu``, a shuffling distributed sampler cycled forever [§3.5];
* a checkpoint every ``checkpoint_interval`` and evaluation every ``eval_interval`` iterations,
  log lines every ``log_interval`` with mmcv's memory figure [§4.1, §5.5].

What we add: resumable, deterministic runs (the sampler yields per-sample seeds and is positioned
by the iteration; the RNG state of every rank is checkpointed; a checkpoint is only resumed by the
config digest that wrote it), a summary JSON, and MLflow tracking on rank 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from dnlrepro.config import PROFILES, Config, ConfigError, load_config, profile_settings
from dnlrepro.data.download import file_digest
from dnlrepro.engine import checkpointing, distributed, schedule
from dnlrepro.engine.distributed import DistInfo
from dnlrepro.engine.sampler import InfiniteDistributedSampler

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainError(RuntimeError):
    """Training cannot continue; the message says why and what to do."""


class NonFiniteLossError(TrainError):
    """The loss became NaN/inf; the run stops before the bad step is applied."""


@dataclass
class _Meter:
    """Per-interval averages of the logged scalars (mmcv's ``log_buffer.average(interval)``)."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    data_time: float = 0.0
    iter_time: float = 0.0

    def update(self, values: dict[str, float], data_time: float, iter_time: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.data_time += data_time
        self.iter_time += iter_time

    def averages(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def train(
    cfg: Config,
    work_dir: str | Path,
    *,
    pretrained: str | None = None,
    resume: str = "auto",
    summary_out: str | Path | None = None,
    device: str | None = None,
    track: bool = True,
    eval_max_images: int | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``work_dir``; returns the summary dict (also written to ``summary_out``).

    Args:
        cfg: the resolved configuration.
        work_dir: where ``iter_N.pth``, ``latest.pth``, ``final.pth`` and ``train.log`` go.
        pretrained: backbone weights: ``None`` = as configured (``cfg.model.backbone.pretrained``),
            ``"none"`` = random init, else a path or URL.
        resume: ``"auto"`` continues from ``work_dir/latest.pth`` when it exists (same config
            digest only); ``"never"`` starts from scratch and overwrites.
        summary_out: optional path of the summary JSON.
        device: ``"cpu"``/``"cuda"``; default CUDA when available.
        track: log to MLflow (rank 0 only).
        eval_max_images: evaluate on the first N validation images only (tests, smoke runs).

    Raises:
        ResumeError: ``work_dir`` holds a checkpoint of another configuration.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    if resume not in ("auto", "never"):
        raise ValueError(f"resume must be 'auto' or 'never', got {resume!r}")
    work_dir = Path(work_dir)
    info = distributed.init_distributed(device)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(info)
    log_handler = _add_file_log(work_dir, info)
    previous_determinism = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, work_dir, info, pretrained, resume, summary_out, track, eval_max_images)
    finally:
        torch.use_deterministic_algorithms(previous_determinism)
        if log_handler is not None:
            logging.getLogger("dnlrepro").removeHandler(log_handler)
            log_handler.close()
        distributed.cleanup(info)


def _train(
    cfg: Config,
    work_dir: Path,
    info: DistInfo,
    pretrained: str | None,
    resume: str,
    summary_out: str | Path | None,
    track: bool,
    eval_max_images: int | None,
) -> dict[str, Any]:
    from dnlrepro.engine.tracking import Tracker

    sched, dev = cfg.schedule, info.device
    started = time.perf_counter()
    _set_determinism(cfg, dev)
    effective_batch = info.world_size * cfg.data.samples_per_gpu
    _check_batch(cfg, effective_batch, info)

    # -- model, optimizer, resume state --------------------------------------------------------
    torch.manual_seed(sched.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    # Rank 0 decides which checkpoint to resume; every rank then loads that file (the work dir
    # must be on a filesystem all ranks share, as mmcv's resume also assumes).
    resume_path = checkpointing.find_resume(work_dir) if resume == "auto" and info.is_main else None
    resume_path = distributed.broadcast_object(resume_path, info)
    ckpt = checkpointing.load_resume(resume_path, cfg) if resume_path else None
    model = _build_model(cfg, info, pretrained if ckpt is None else "none")
    optimizer = schedule.build_optimizer(model, sched)
    amp = cfg.runtime.amp
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16")
    start_iter, history, last_val = 0, {"train": [], "val": []}, None
    # Different dropout masks per rank (each rank sees different images anyway).
    torch.manual_seed(sched.seed + info.rank)
    if ckpt is not None:
        start_iter, history, last_val = _restore(ckpt, model, optimizer, scaler, info)
        logger.info("resumed from %s at iteration %d/%d", resume_path, start_iter, sched.max_iters)
    ddp_model = _wrap_ddp(model, info)

    # -- data: the sampler is positioned by the iteration, so a resumed run sees the same stream
    loader = _build_loader(cfg, info, start=start_iter * cfg.data.samples_per_gpu)
    batches = iter(loader)

    memory_kind = "cuda_max_memory_allocated" if dev.type == "cuda" else "cpu_max_rss"
    meter = _Meter()
    # The last logged averages; restored from the history when resuming a finished run.
    final_losses = {
        k: v for k, v in (history["train"] or [{}])[-1].items() if k not in ("iter", "lr")
    }
    loop_start, loop_start_iter = time.perf_counter(), start_iter
    tracker_ctx = Tracker(cfg, "train", enabled=info.is_main and track)
    with tracker_ctx as tracker:
        tracker.set_tags(
            {
                "world_size": info.world_size,
                "effective_batch": effective_batch,
                "published_batch": cfg.published_batch,
                "device": str(dev),
            }
        )
        ddp_model.train()
        t_end = time.perf_counter()
        for it in range(start_iter, sched.max_iters):
            # 1. lr for this iteration (mmcv PolyLrUpdaterHook.before_train_iter, it from 0).
            lr = schedule.lr_at(it, sched)
            schedule.set_lr(optimizer, lr)
            # 2. data
            batch = next(batches)
            img = batch["img"].to(dev, non_blocking=True)  # [N, 3, h, w] float32, normalised
            gt = batch["gt"].to(dev, non_blocking=True)  # [N, h, w] int64, 255 = ignore
            if cfg.runtime.channels_last:
                img = img.contiguous(memory_format=torch.channels_last)
            data_time = time.perf_counter() - t_end
            # 3. forward: losses already weighted (decode 1.0, aux 0.4), §1.6
            with torch.autocast(dev.type, dtype=AMP_DTYPES.get(amp), enabled=amp != "none"):
                outputs = ddp_model(img, gt)
            loss = sum(v for k, v in outputs.items() if "loss" in k)
            # 4. logged values averaged over ranks (mmseg _parse_losses); also the NaN check,
            #    so every rank stops together and the bad step is never applied.
            names = [*outputs.keys(), "loss"]
            values = torch.stack([v.detach().float() for v in outputs.values()] + [loss.detach()])
            values = distributed.reduce_mean(values.cpu(), info).tolist()
            logged = dict(zip(names, values, strict=True))
            if not math.isfinite(logged["loss"]):
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {it + 1}/{sched.max_iters} "
                    f"({_fmt(logged)}); no step was applied and the last good checkpoint "
                    f"{checkpointing.find_resume(work_dir) or '(none yet)'} is kept. Lower "
                    "schedule.lr, turn off runtime.amp, or check the labels"
                )
            # 5. backward and step
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done = it + 1
            now = time.perf_counter()
            meter.update(logged, data_time, now - t_end)
            t_end = now
            # 6. periodic log line (mmcv TextLoggerHook)
            if done % sched.log_interval == 0 or done == sched.max_iters:
                final_losses = meter.averages()
                memory_mb = distributed.reduce_max(_memory_mb(dev), info)
                rate = (now - loop_start) / (done - loop_start_iter)
                _log_line(done, sched.max_iters, lr, rate, meter, memory_mb, memory_kind)
                history["train"].append({"iter": done, "lr": lr, **final_losses})
                tracker.log_metrics(
                    {
                        **{f"train/{k}": v for k, v in final_losses.items()},
                        "train/lr": lr,
                        "train/memory_mb": memory_mb,
                        "train/time": meter.iter_time / meter.count,
                    },
                    step=done,
                )
                meter = _Meter()
            # 7. validation (its RNG use is forked away, so it cannot change the weights)
            if done % sched.eval_interval == 0 or done == sched.max_iters:
                last_val = _validate(model, cfg, info, done, eval_max_images)
                history["val"].append(last_val)
                tracker.log_metrics({f"val/{k}": v for k, v in _scalars(last_val).items()}, done)
                ddp_model.train()
            # 8. checkpoint; after validation (mmcv saves first) so the checkpoint's history
            #    holds this evaluation and a run resumed at max_iters need not repeat it.
            if done % sched.checkpoint_interval == 0 or done == sched.max_iters:
                _save(work_dir, model, optimizer, done, cfg, scaler, history, info)
            t_end = time.perf_counter()

        # -- end of training ------------------------------------------------------------------
        if last_val is None or last_val.get("iter") != sched.max_iters:
            # Only when resuming a checkpoint of max_iters written by an older run without val.
            last_val = _validate(model, cfg, info, sched.max_iters, eval_max_images)
        memory_mb = distributed.reduce_max(_memory_mb(dev), info)
        summary = None
        if info.is_main:
            final = checkpointing.save_final(
                work_dir / checkpointing.FINAL, model, cfg, sched.max_iters
            )
            summary = {
                "config": cfg.name,
                "profile": cfg.profile,
                "config_digest": cfg.digest(),
                "iterations": sched.max_iters,
                "resumed_from_iteration": loop_start_iter,
                "world_size": info.world_size,
                "samples_per_gpu": cfg.data.samples_per_gpu,
                "effective_batch": effective_batch,
                "published_batch": cfg.published_batch,
                "device": str(dev),
                "amp": amp,
                "max_memory_mb": round(memory_mb, 1),
                "max_memory_gb": round(memory_mb / 1024, 3),  # GB = MB / 1024 (§5.5)
                "memory_kind": memory_kind,
                "wall_time_s": round(time.perf_counter() - started, 2),
                "final_train_losses": final_losses,
                "last_validation": last_val,
                "checkpoint": str(final.resolve()),
                "checkpoint_sha256": file_digest(final),
            }
            if summary_out is not None:
                Path(summary_out).parent.mkdir(parents=True, exist_ok=True)
                Path(summary_out).write_text(json.dumps(summary, indent=2) + "\n")
            _track_final(tracker, cfg, summary, history, summary_out, work_dir)
            logger.info(
                "training done: %d iterations, mIoU %.2f, final weights %s (sha256 %s)",
                sched.max_iters,
                _num(last_val.get("mIoU")),
                final,
                summary["checkpoint_sha256"][:12],
            )
    summary = distributed.broadcast_object(summary, info)
    return summary


# ------------------------------------------------------------------------------------------------
# Set-up helpers
# ------------------------------------------------------------------------------------------------


def _set_determinism(cfg: Config, dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
        logger.info(
            "cudnn.benchmark=%s; GPU runs are not bit-deterministic", cfg.runtime.cudnn_benchmark
        )
    else:
        # CPU kernels are deterministic for a fixed thread count; ask torch to keep it that way
        # so a resumed run reaches bit-identical weights (warn_only: never fail on a kernel).
        torch.use_deterministic_algorithms(True, warn_only=True)


def _check_batch(cfg: Config, effective_batch: int, info: DistInfo) -> None:
    logger.info(
        "effective batch %d = %d process(es) x %d images (published: %d = %d GPUs x %d)",
        effective_batch,
        info.world_size,
        cfg.data.samples_per_gpu,
        cfg.published_batch,
        cfg.runtime.gpus,
        cfg.data.samples_per_gpu,
    )
    if effective_batch != cfg.published_batch and info.is_main:
        logger.warning(
            "effective batch %d differs from the published %d (%s): BN statistics and the "
            "optimisation differ from the paper run; launch torchrun with %d processes to match",
            effective_batch,
            cfg.published_batch,
            cfg.name,
            cfg.runtime.gpus,
        )


def _build_model(cfg: Config, info: DistInfo, pretrained: str | None) -> nn.Module:
    from dnlrepro import models

    model = models.build_segmentor(cfg)
    source = _pretrained_source(cfg, pretrained)
    if source is not None:
        missing, unexpected = models.load_pretrained_backbone(model, source)
        logger.info(
            "backbone weights from %s (%d missing, %d unexpected keys)",
            source,
            len(missing),
            len(unexpected),
        )
    model.to(info.device)
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if info.distributed and cfg.model.norm == "SyncBN":
        # nn.SyncBatchNorm on GPUs, CPUSyncBatchNorm (gloo all_reduce) on CPU: BN statistics
        # over the whole effective batch, as the published 4-GPU runs (§3.5).
        model = models.convert_sync_batchnorm(model)
        logger.info("SyncBN across %d processes", info.world_size)
    elif cfg.model.norm == "SyncBN":
        logger.info(
            "not distributed: SyncBN runs as plain BN, so BN statistics are per-process "
            "(%d images per BN batch)", cfg.data.samples_per_gpu,
        )  # fmt: skip
    return model


def _pretrained_source(cfg: Config, pretrained: str | None) -> str | None:
    if pretrained is not None:
        return None if pretrained.lower() == "none" else pretrained
    name = cfg.model.backbone.pretrained
    if name is None:
        logger.info("no pretrained backbone (model.backbone.pretrained is null): random init")
        return None
    from dnlrepro.models import PRETRAINED_URLS

    if name not in PRETRAINED_URLS:
        raise ConfigError(
            f"model.backbone.pretrained {name!r} has no download URL; known: "
            f"{', '.join(PRETRAINED_URLS)}"
        )
    return PRETRAINED_URLS[name]


def _wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _build_loader(cfg: Config, info: DistInfo, start: int) -> torch.utils.data.DataLoader:
    from dnlrepro.data.datasets import build_dataset

    dataset = build_dataset(cfg.data, cfg.data.train_split, mode="train")
    sampler = InfiniteDistributedSampler(
        len(dataset), info.rank, info.world_size, seed=cfg.schedule.seed, start=start
    )
    workers = cfg.data.workers_per_gpu
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.data.samples_per_gpu,
        sampler=sampler,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=True,
        # Its own generator: iter(loader) draws a base seed, and drawing it from the global RNG
        # would shift the dropout stream of a resumed run by one draw.
        generator=torch.Generator().manual_seed(cfg.schedule.seed),
    )


def _restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng") or []
    if len(rng) == info.world_size:
        torch.set_rng_state(rng[info.rank])
    else:
        logger.warning(
            "checkpoint holds RNG states of %d process(es), this run has %d: dropout masks "
            "will differ from an uninterrupted run",
            len(rng),
            info.world_size,
        )
    history = ckpt.get("history") or {"train": [], "val": []}
    last_val = history["val"][-1] if history.get("val") else None
    return int(ckpt["iter"]), history, last_val


# ------------------------------------------------------------------------------------------------
# Loop helpers
# ------------------------------------------------------------------------------------------------


def _save(
    work_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    done: int,
    cfg: Config,
    scaler: torch.amp.GradScaler,
    history: dict[str, Any],
    info: DistInfo,
) -> None:
    rng = distributed.all_gather_object(torch.get_rng_state(), info)
    if info.is_main:
        checkpointing.save_train_checkpoint(
            work_dir,
            model,
            optimizer,
            done,
            cfg,
            rng=rng,
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
            history=history,
        )
    distributed.barrier(info)


def _validate(
    model: nn.Module, cfg: Config, info: DistInfo, done: int, max_images: int | None
) -> dict[str, Any]:
    """Single-scale validation (every rank evaluates a shard; the histograms are all-reduced).

    The torch RNG is forked so evaluation never shifts the training stream: a resumed run
    continues exactly as an uninterrupted one.
    """
    from dnlrepro.engine.evaluate import evaluate_model

    devices = [info.device.index or 0] if info.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        metrics = evaluate_model(
            model, cfg, split=cfg.data.val_split, ms_flip=False, max_images=max_images
        )
    single = metrics.get("single_scale", metrics)  # {"mIoU", "mAcc", "aAcc", "IoU": {...}}
    result = {"iter": done, **_plain(single), "image_count": metrics.get("image_count")}
    logger.info(
        "Iter(val) [%d]\tmIoU: %s, mAcc: %s, aAcc: %s",
        done, result.get("mIoU"), result.get("mAcc"), result.get("aAcc"),
    )  # fmt: skip
    return result


def _log_line(
    done: int,
    max_iters: int,
    lr: float,
    sec_per_iter: float,
    meter: _Meter,
    memory_mb: float,
    memory_kind: str,
) -> None:
    eta = datetime.timedelta(seconds=int(sec_per_iter * (max_iters - done)))
    memory = (
        f"memory: {memory_mb:.0f}"
        if memory_kind == "cuda_max_memory_allocated"
        else f"memory (CPU max RSS, MB): {memory_mb:.0f}"
    )
    logger.info(
        "Iter [%d/%d]\tlr: %.3e, eta: %s, time: %.3f, data_time: %.3f, %s, %s",
        done,
        max_iters,
        lr,
        eta,
        meter.iter_time / meter.count,
        meter.data_time / meter.count,
        memory,
        _fmt(meter.averages()),
    )


def _memory_mb(dev: torch.device) -> float:
    """mmcv's ``memory`` figure on GPU; the process's peak RSS on CPU (§5.5)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:.4f}" for k, v in values.items())


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: _num(metrics[k]) for k in ("mIoU", "mAcc", "aAcc") if k in metrics}


def _num(value: Any) -> float:
    """evaluate_model reports NaN (e.g. a class absent from labels and predictions) as None."""
    return math.nan if value is None else float(value)


def _plain(obj: Any) -> Any:
    """JSON/pickle-friendly copy of evaluate_model's result (numpy / tensors -> floats)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _plain(obj.tolist())
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return float(obj)


def _per_class(cfg: Config, last_val: dict[str, Any]) -> dict[str, float]:
    from dnlrepro.data.classes import CLASSES

    iou = last_val.get("IoU")
    if isinstance(iou, dict):
        return {str(k): _num(v) for k, v in iou.items()}
    if isinstance(iou, list):
        return {c: _num(v) for c, v in zip(CLASSES[cfg.data.dataset], iou, strict=False)}
    return {}


def _track_final(
    tracker: Any,
    cfg: Config,
    summary: dict[str, Any],
    history: dict[str, Any],
    summary_out: str | Path | None,
    work_dir: Path,
) -> None:
    """Final metrics, per-class IoU, config, summary and plots (all failures only warn)."""
    last_val = summary["last_validation"]
    per_class = _per_class(cfg, last_val)
    tracker.log_metrics(
        {
            **{f"final/{k}": v for k, v in _scalars(last_val).items()},
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
    summary_path = Path(summary_out) if summary_out else work_dir / "train_summary.json"
    if not summary_out:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    tracker.log_artifact(summary_path)
    with contextlib.suppress(Exception):  # plotting is a nicety; never fail a finished run
        for name, fig in _figures(history, per_class):
            tracker.log_figure(fig, name)
            import matplotlib.pyplot as plt

            plt.close(fig)


def _figures(history: dict[str, Any], per_class: dict[str, float]) -> Iterator[tuple[str, Any]]:
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


def _add_file_log(work_dir: Path, info: DistInfo) -> logging.Handler | None:
    if not info.is_main:
        return None
    handler = logging.FileHandler(work_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    lib_logger = logging.getLogger("dnlrepro")
    lib_logger.addHandler(handler)
    return handler


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config name (params/) or YAML path")
    parser.add_argument("--profile", choices=PROFILES, default=None, help="default: params.yaml")
    parser.add_argument("--work-dir", required=True, help="checkpoints, latest.pth, train.log")
    parser.add_argument("--summary-out", default=None, help="write the summary JSON here")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="backbone weights: path or URL, or 'none' for random init (default: the config's)",
    )
    parser.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="auto",
        help="auto: continue from WORK_DIR/latest.pth of the same config (default)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available"
    )
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--eval-max-images",
        type=int,
        default=None,
        help="validate on the first N images only (default: profile setting)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for local debugging (YAML value), e.g. schedule.max_iters=20; "
        "changes the config digest, so it never resumes another run",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. schedule.max_iters=20")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, profile=args.profile, overrides=parse_overrides(args.overrides))
    max_images = args.eval_max_images
    if max_images is None:
        max_images = profile_settings(cfg.profile).get("eval_max_images")
    train(
        cfg,
        args.work_dir,
        pretrained=args.pretrained,
        resume=args.resume,
        summary_out=args.summary_out,
        device=args.device,
        track=not args.no_track,
        eval_max_images=max_images,
    )
    return 0
