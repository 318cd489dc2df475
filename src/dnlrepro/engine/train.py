"""``dnlrepro train``: mmseg 0.x's iteration-based training, as one loop you can read.

What it reproduces (docs/reference.md sections in brackets):

* SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter; poly lr (power 0.9, min 1e-4)
  set before every iteration, no warm-up [§4.1, §4.2] -- :mod:`dnlrepro.engine.schedule`;
* loss = decode CE + 0.4 x aux CE, ignore 255, mean over all pixels [§1.6] -- the model's
  ``forward_train``, summed and applied by :func:`dnlrepro.engine.step.train_step`;
* DDP + SyncBN across any number of ``torchrun`` processes, per-process batch
  ``samples_per_gpu``, a shuffling distributed sampler cycled forever [§3.5];
* a checkpoint every ``checkpoint_interval`` and evaluation every ``eval_interval`` iterations,
  log lines every ``log_interval`` with mmcv's memory figure [§4.1, §5.5].

What we add: resumable, deterministic runs (the sampler yields per-sample seeds and is positioned
by the iteration; the RNG state of every rank is checkpointed; a checkpoint is only resumed by the
config digest that wrote it), a summary JSON, and MLflow tracking on rank 0.

Set-up lives in :mod:`~dnlrepro.engine.train_setup`, the end-of-run receipt in
:mod:`~dnlrepro.engine.train_summary`; this module is the loop and the command line.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dnlrepro.core.config import Config
from dnlrepro.core.files import write_json
from dnlrepro.core.layout import record
from dnlrepro.engine import distributed, preempt, schedule, train_setup, train_summary, trajectory
from dnlrepro.engine.distributed import DistInfo
from dnlrepro.engine.resume import FINAL, save_final, save_train_checkpoint
from dnlrepro.engine.step import NonFiniteLossError, TrainError, format_values, train_step
from dnlrepro.engine.train_setup import TrainState
from dnlrepro.track.tracking import Tracker

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "TrainError", "add_arguments", "main", "train"]


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
    final_path: str | Path | None = None,
    timing_out: str | Path | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``work_dir``; returns the summary dict (also written to ``summary_out``).

    Args:
        cfg: the resolved configuration.
        work_dir: where ``iter_N.pth``, ``latest.pth`` and ``train.log`` go (the resume state).
        pretrained: backbone weights: ``None`` = as configured (``cfg.model.backbone.pretrained``),
            ``"none"`` = random init, else a local file or a backbone name (its file in
            ``downloads/``; training never downloads).
        resume: ``"auto"`` continues from ``work_dir/latest.pth`` when it exists (same config
            digest only); ``"never"`` starts from scratch and overwrites.
        summary_out: the summary JSON (default: ``work_dir/train_summary.json``).
        device: ``"cpu"``/``"cuda"``; default CUDA when available.
        track: log to MLflow (rank 0 only).
        eval_max_images: evaluate on the first N validation images only (tests, smoke runs).
        final_path: where the final weights go (default ``work_dir/final.pth``); the summary's
            ``checkpoint`` names it, relative to the workspace root when inside it.
        timing_out: wall time and peak memory, the machine-dependent part of the run (default:
            ``work_dir/train_timing.json``). ``train_curve.csv`` / ``val_curve.csv`` go next to
            ``summary_out``.
        reference: the published trajectory to compare with while training
            (:func:`dnlrepro.engine.trajectory.live`); ``log.json`` and ``trajectory.json`` go
            next to ``summary_out``.

    Raises:
        ResumeError: ``work_dir`` holds a checkpoint of another configuration.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        OffTrackError: the lr left the published one (or the mIoU, with stop_if_off_track).
    """
    if resume not in ("auto", "never"):
        raise ValueError(f"resume must be 'auto' or 'never', got {resume!r}")
    work_dir = Path(work_dir)
    final = Path(final_path) if final_path is not None else work_dir / FINAL
    summary_path = Path(summary_out) if summary_out else work_dir / "train_summary.json"
    timing_path = Path(timing_out) if timing_out else work_dir / "train_timing.json"
    with train_setup.process_scope(work_dir, device) as info:
        started = time.perf_counter()
        train_setup.set_determinism(cfg, info.device)
        layout = train_setup.report_layout(cfg, info)
        state = train_setup.start(cfg, work_dir, info, pretrained, resume)
        loader = train_setup.build_loader(cfg, info, layout, start_iter=state.start_iter)
        ref = trajectory.live(reference)  # every rank: the values compared are rank-averaged
        tracking = Tracker(cfg, "train", enabled=info.is_main and track, resume=state.tracking_run)
        with tracking as tracker:
            state.tracking_run = tracker.run_id  # checkpointed: a resume continues this run
            tracker.set_tags({**record(cfg, layout), "device": str(info.device)})
            with preempt.StopOnSignal() as stop:  # a scheduler's warning: checkpoint, stop
                _loop(cfg, state, iter(loader), info, work_dir, tracker, eval_max_images, stop, ref)
            summary = _finish(
                cfg, state, info, tracker, (final, summary_path, timing_path), started,
                eval_max_images,
            )  # fmt: skip
        if info.is_main:
            meta = trajectory.run_meta(cfg, info.world_size, str(info.device))
            trajectory.write_outputs(reference, state.history, meta, summary_path.parent)
        return distributed.broadcast_object(summary, info)


def _loop(
    cfg: Config,
    state: TrainState,
    batches: Iterator[dict[str, torch.Tensor]],
    info: DistInfo,
    work_dir: Path,
    tracker: Any,
    eval_max_images: int | None,
    stop: preempt.StopOnSignal,
    ref: trajectory.Trajectory | trajectory.Off,
) -> None:
    """Iterations ``state.start_iter`` .. ``max_iters``: the whole of mmcv's IterBasedRunner."""
    sched, dev = cfg.schedule, info.device
    meter = _Meter()
    state.ddp_model.train()
    loop_start = t_end = time.perf_counter()
    for it in range(state.start_iter, sched.max_iters):
        # 1. lr for this iteration (mmcv PolyLrUpdaterHook.before_train_iter, `it` from 0).
        lr = schedule.lr_at(it, sched)
        schedule.set_lr(state.optimizer, lr)
        # 2. data: [N, 3, h, w] float32 normalised images, [N, h, w] int64 labels (255 = ignore)
        batch = next(batches)
        img = batch["img"].to(dev, non_blocking=True)
        gt = batch["gt"].to(dev, non_blocking=True)
        if cfg.runtime.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        data_time = time.perf_counter() - t_end
        # 3. forward, loss sum, rank-averaged log values + NaN check, backward, SGD step
        logged = train_step(
            state.ddp_model, img, gt, state.optimizer, state.scaler, amp=cfg.runtime.amp,
            info=info, iteration=it, max_iters=sched.max_iters, work_dir=work_dir,
        )  # fmt: skip
        done, now = it + 1, time.perf_counter()
        meter.update(logged, data_time, now - t_end)
        # 4. periodic log line (mmcv TextLoggerHook)
        if done % sched.log_interval == 0 or done == sched.max_iters:
            sec_per_iter = (now - loop_start) / (done - state.start_iter)
            _log_interval(done, sched.max_iters, lr, sec_per_iter, meter, state, info, tracker)
            ref.on_train(state.history["train"][-1], tracker)  # lr off the published one: stop
            meter = _Meter()
        # 5. validation (its RNG use is forked away, so it cannot change the weights)
        if done % sched.eval_interval == 0 or done == sched.max_iters:
            state.last_val = _validate(state.model, cfg, info, done, eval_max_images)
            state.history["val"].append(state.last_val)
            # val/mIoU ...: the run's mIoU column is the test-set evaluation's (evaluate@)
            tracker.log_metrics(train_summary.val_metrics(state.last_val), done)
            ref.on_val(state.last_val, tracker)
            state.ddp_model.train()
        # 6. checkpoint; after validation (mmcv saves first) so the checkpoint's history holds
        #    this evaluation and a run resumed at max_iters need not repeat it.
        stopping = stop.requested(info)  # $DNLREPRO_STOP_SIGNALS: save now, the next run resumes
        if done % sched.checkpoint_interval == 0 or done == sched.max_iters or stopping:
            _save(work_dir, state, done, cfg, info)
        if stopping and done < sched.max_iters:
            raise stop.error(done, sched.max_iters)
        t_end = time.perf_counter()


def _finish(
    cfg: Config,
    state: TrainState,
    info: DistInfo,
    tracker: Any,
    outputs: tuple[Path, Path, Path],
    started: float,
    eval_max_images: int | None,
) -> dict[str, Any] | None:
    """Final weights, summary + timing JSON, curves, MLflow record (rank 0); else ``None``."""
    final, summary_path, timing_path = outputs
    max_iters = cfg.schedule.max_iters
    if state.last_val is None or state.last_val.get("iter") != max_iters:
        # Only when resuming a checkpoint of max_iters written by an older run without val.
        state.last_val = _validate(state.model, cfg, info, max_iters, eval_max_images)
        tracker.log_metrics(train_summary.val_metrics(state.last_val), max_iters)
    memory_mb = distributed.reduce_max(train_summary.memory_mb(info.device), info)
    if not info.is_main:
        return None
    save_final(final, state.model, cfg, max_iters)
    summary = train_summary.build_summary(
        cfg, info, resumed_from=state.start_iter, history=state.history,
        last_val=state.last_val, final=final,
    )  # fmt: skip
    timing = train_summary.build_timing(
        cfg, info, memory_mb=memory_mb, memory_kind=train_summary.memory_kind(info.device),
        wall_time_s=time.perf_counter() - started, iterations_run=max_iters - state.start_iter,
    )  # fmt: skip
    write_json(summary_path, summary)
    write_json(timing_path, timing)
    train_summary.write_curves(state.history, summary_path.parent)
    train_summary.track_final(tracker, cfg, summary, timing, summary_path, state.history)
    logger.info(
        "training done: %d iterations, mIoU %.2f, final weights %s (sha256 %s)",
        max_iters, train_summary.as_float(state.last_val.get("mIoU")), final,
        summary["checkpoint_sha256"][:12],
    )  # fmt: skip
    return summary


# ------------------------------------------------------------------------------------------------
# Loop helpers
# ------------------------------------------------------------------------------------------------


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


def _log_interval(
    done: int,
    max_iters: int,
    lr: float,
    sec_per_iter: float,
    meter: _Meter,
    state: TrainState,
    info: DistInfo,
    tracker: Any,
) -> None:
    """The log line with ETA, lr, time, memory and losses; the history point; MLflow metrics."""
    losses = meter.averages()
    memory_mb = distributed.reduce_max(train_summary.memory_mb(info.device), info)
    eta = datetime.timedelta(seconds=int(sec_per_iter * (max_iters - done)))
    memory = (
        f"memory: {memory_mb:.0f}"
        if info.device.type == "cuda"
        else f"memory (CPU max RSS, MB): {memory_mb:.0f}"
    )
    logger.info(
        "Iter [%d/%d]\tlr: %.3e, eta: %s, time: %.3f, data_time: %.3f, %s, %s",
        done, max_iters, lr, eta, meter.iter_time / meter.count, meter.data_time / meter.count,
        memory, format_values(losses),
    )  # fmt: skip
    state.history["train"].append({"iter": done, "lr": lr, **losses})
    tracker.log_metrics(
        {
            **{f"train/{k}": v for k, v in losses.items()},
            "train/lr": lr,
            "train/memory_mb": memory_mb,
            "train/time": meter.iter_time / meter.count,
        },
        step=done,
    )


def _validate(
    model: torch.nn.Module, cfg: Config, info: DistInfo, done: int, max_images: int | None
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
    # {"iter", "mIoU", "mAcc", "aAcc", "IoU": {class: %}, "Acc": {class: %}, "image_count"}
    result = {"iter": done, **metrics["single_scale"], "image_count": metrics["image_count"]}
    logger.info(
        "Iter(val) [%d]\tmIoU: %s, mAcc: %s, aAcc: %s",
        done, result["mIoU"], result["mAcc"], result["aAcc"],
    )  # fmt: skip
    return result


def _save(work_dir: Path, state: TrainState, done: int, cfg: Config, info: DistInfo) -> None:
    """``iter_<done>.pth`` + ``latest.pth`` with every rank's RNG state (written by rank 0)."""
    rng = distributed.all_gather_object(torch.get_rng_state(), info)
    if info.is_main:
        save_train_checkpoint(
            work_dir, state.model, state.optimizer, done, cfg, rng=rng,
            scaler=state.scaler.state_dict() if state.scaler.is_enabled() else None,
            history=state.history, mlflow_run_id=state.tracking_run,
        )  # fmt: skip
    distributed.barrier(info)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dnlrepro.core.config import add_config_arguments

    add_config_arguments(parser, overrides=True)
    parser.add_argument("--work-dir", required=True, help="checkpoints, latest.pth, train.log")
    parser.add_argument("--final-path", default=None, help="final weights (WORK_DIR/final.pth)")
    parser.add_argument("--summary-out", default=None, help="write the summary JSON here")
    parser.add_argument(
        "--timing-out", default=None, help="write time and memory here (WORK_DIR/...)"
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="backbone weights: a local file, a name (resnet50_v1c: its file in downloads/, "
        "fetched by `dnlrepro download --what pretrained`), or 'none' for random init "
        "(default: the config's model.backbone.pretrained)",
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
    trajectory.add_arguments(parser)
    parser.add_argument(
        "--eval-max-images",
        type=int,
        default=None,
        help="validate on the first N images only (default: the profile's eval_max_images)",
    )


def main(args: argparse.Namespace) -> int:
    from dnlrepro.core.config import config_from_args

    cfg, profile = config_from_args(args)
    max_images = args.eval_max_images
    if max_images is None and profile is not None:  # a resolved file's runs pass it explicitly
        max_images = profile.settings.eval_max_images
    train(
        cfg,
        args.work_dir,
        pretrained=args.pretrained,
        resume=args.resume,
        summary_out=args.summary_out,
        timing_out=args.timing_out,
        device=args.device,
        track=not args.no_track,
        eval_max_images=max_images,
        final_path=args.final_path,
        reference=trajectory.from_args(args),
    )
    return 0
