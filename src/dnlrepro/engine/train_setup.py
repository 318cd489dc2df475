"""Everything a training run sets up before its first iteration.

§ numbers refer to docs/reference.md.

In the order :func:`dnlrepro.engine.train.train` uses them: the process (process group, work dir,
log file), determinism flags, the layout (the global batch over the processes), the model
(pretrained backbone, SyncBN, DDP), the optimizer and fp16 scaler, the resume state of an
interrupted run (:func:`start`), and the data loader positioned at the resumed iteration.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnlrepro.core.config import Config
from dnlrepro.core.layout import Layout, bn_group, layout_for
from dnlrepro.core.registry import PRETRAINED_URLS, pretrained_file
from dnlrepro.engine import distributed, precision, schedule, work_lock
from dnlrepro.engine.distributed import DistInfo
from dnlrepro.engine.resume import find_resume, load_resume
from dnlrepro.engine.sampler import InfiniteDistributedSampler

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop trains and what a checkpoint restores."""

    model: nn.Module  # the bare segmentor: checkpoints and validation use it
    ddp_model: nn.Module  # the same model, DDP-wrapped when distributed: the loop trains it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled only for runtime.amp "fp16"
    start_iter: int  # 0, or the iteration of the resumed checkpoint
    history: dict[str, list[dict[str, Any]]]  # {"train": [log points], "val": [validations]}
    last_val: dict[str, Any] | None  # the newest validation (restored from the history)
    # the MLflow run this training logs to: kept in its checkpoints, so that a resumed training
    # continues the interrupted run's row instead of starting a second one
    tracking_run: str | None = None


@contextlib.contextmanager
def process_scope(work_dir: Path, device: str | None) -> Iterator[DistInfo]:
    """This process's part of the run: its process group (torchrun) or none, the work dir and
    its lock, the ``train.log`` copy of the log (rank 0); all undone on exit, also on errors.

    Raises:
        AlreadyRunningError: another live trainer holds the work dir (rank 0 checks; the other
            ranks wait for rank 0 at the barrier, as for every set-up step of rank 0).
    """
    info = distributed.init_distributed(device)
    with contextlib.ExitStack() as undo:  # undone in reverse order
        undo.callback(distributed.cleanup, info)
        if info.is_main:
            work_dir.mkdir(parents=True, exist_ok=True)
            undo.enter_context(work_lock.hold(work_dir))
        distributed.barrier(info)
        if info.is_main:  # a copy of the dnlrepro log in work_dir/train.log
            handler = logging.FileHandler(work_dir / "train.log")
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logging.getLogger("dnlrepro").addHandler(handler)
            undo.callback(handler.close)
            undo.callback(logging.getLogger("dnlrepro").removeHandler, handler)
        undo.callback(torch.set_deterministic_debug_mode, torch.get_deterministic_debug_mode())
        undo.callback(precision.set_tf32_flags, *precision.tf32_flags())
        yield info


def set_determinism(cfg: Config, dev: torch.device) -> None:
    precision.apply_tf32(cfg)  # before the model runs; process_scope restores the flags (§5.7)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
        logger.info(
            "cudnn.benchmark=%s; GPU runs are not bit-deterministic", cfg.runtime.cudnn_benchmark
        )
    else:
        # CPU kernels are deterministic for a fixed thread count; ask torch to keep it that way
        # so a resumed run reaches bit-identical weights (warn only: never fail on a kernel).
        # Same switch as use_deterministic_algorithms(True, warn_only=True), without the
        # import of torch._inductor that costs every training stage seconds.
        torch.set_deterministic_debug_mode("warn")


def report_layout(cfg: Config, info: DistInfo) -> Layout:
    """This run's layout: the configuration's global batch split over the processes (logged).

    Raises:
        ConfigError: the process count does not divide the global batch (the message lists the
            counts that do).
    """
    layout = layout_for(cfg, info.world_size, where=f"{cfg.name}: {info.world_size} processes")
    logger.info(
        "global batch %d (runtime.gpus %d x data.samples_per_gpu %d), BN group %d; this run: %s",
        cfg.global_batch, cfg.runtime.gpus, cfg.data.samples_per_gpu, bn_group(cfg, layout),
        layout,
    )  # fmt: skip
    return layout


def start(
    cfg: Config, work_dir: Path, info: DistInfo, pretrained: str | None, resume: str
) -> TrainState:
    """Model, optimizer and scaler, restored from ``work_dir``'s resume checkpoint if any.

    Raises:
        ResumeError: ``work_dir`` holds a checkpoint of another configuration.
    """
    sched = cfg.schedule
    torch.manual_seed(sched.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    # Rank 0 decides which checkpoint to resume; every rank then loads that file (the work dir
    # must be on a filesystem all ranks share, as mmcv's resume also assumes).
    resume_path = find_resume(work_dir) if resume == "auto" and info.is_main else None
    resume_path = distributed.broadcast_object(resume_path, info)
    ckpt = load_resume(resume_path, cfg) if resume_path else None
    model = build_model(cfg, info, pretrained if ckpt is None else "none")
    optimizer = schedule.build_optimizer(model, sched)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.runtime.amp == "fp16")
    # Different dropout masks per rank (each rank sees different images anyway).
    torch.manual_seed(sched.seed + info.rank)
    state = TrainState(model, model, optimizer, scaler, 0, {"train": [], "val": []}, None)
    if ckpt is not None:
        restore(ckpt, state, info)
        logger.info("resumed from %s at iteration %d/%d", resume_path, state.start_iter,
                    sched.max_iters)  # fmt: skip
    state.ddp_model = wrap_ddp(model, info)
    return state


def build_model(cfg: Config, info: DistInfo, pretrained: str | None) -> nn.Module:
    """The segmentor on ``info.device``, with backbone weights per :func:`pretrained_source`."""
    from dnlrepro import models

    model = models.build_segmentor(cfg)
    source = pretrained_source(cfg, pretrained)
    if source is not None:
        missing, unexpected = models.load_pretrained_backbone(model, source)
        logger.info("backbone weights from %s (%d missing, %d unexpected keys)",
                    source, len(missing), len(unexpected))  # fmt: skip
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
            "one process: SyncBN runs as plain BN over the whole batch of %d images, the "
            "statistics SyncBN computes across the GPUs", cfg.global_batch,
        )  # fmt: skip
    return model


def pretrained_source(cfg: Config, pretrained: str | None) -> Path | None:
    """The local backbone file: ``pretrained`` as given (``"none"``: random init; a backbone name:
    its file in ``downloads/``), else the config's ``model.backbone.pretrained`` (§2.2).

    Training never downloads: the download stage (``dvc repro download@<dataset>``) or
    ``dnlrepro download --what pretrained`` puts the backbones in ``downloads/``.

    Raises:
        FileNotFoundError: the named backbone is not in ``downloads/``; the message names the file
            and the command that fetches it.
    """
    if pretrained is not None and pretrained.lower() == "none":
        return None
    name = cfg.model.backbone.pretrained if pretrained is None else pretrained
    if name is None:
        logger.info("no pretrained backbone (model.backbone.pretrained is null): random init")
        return None
    name = name.removeprefix("open-mmlab://")
    if name not in PRETRAINED_URLS:
        return Path(name)  # a file given with --pretrained
    path = pretrained_file(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained backbone {name} (model.backbone.pretrained of {cfg.name}) is not "
            f"downloaded: {path} does not exist. Fetch it with `dnlrepro download --what "
            f"pretrained --config {cfg.name}` (the pipeline: `dvc repro "
            f"download@{cfg.data.dataset}`), or pass --pretrained PATH / --pretrained none"
        )
    return path


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def restore(ckpt: dict[str, Any], state: TrainState, info: DistInfo) -> None:
    """Weights, optimizer, scaler, this rank's RNG, iteration and history from a checkpoint."""
    state.model.load_state_dict(ckpt["state_dict"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng") or []
    if len(rng) == info.world_size:
        torch.set_rng_state(rng[info.rank])
    else:
        logger.warning(
            "checkpoint holds RNG states of %d process(es), this run has %d: dropout masks "
            "will differ from an uninterrupted run", len(rng), info.world_size,
        )  # fmt: skip
    state.start_iter = int(ckpt["iter"])
    state.history = ckpt.get("history") or {"train": [], "val": []}
    state.last_val = state.history["val"][-1] if state.history.get("val") else None
    state.tracking_run = ckpt.get("mlflow_run_id")


def build_loader(
    cfg: Config, info: DistInfo, layout: Layout, start_iter: int
) -> torch.utils.data.DataLoader:
    """This process's share of each iteration's global batch. The sampler follows the published
    layout's stream (``runtime.gpus`` ranks), so iteration i trains on the same images on any
    GPU count (core/layout.py), and is positioned by the iteration, so a resumed run sees the
    same stream as an uninterrupted one (§3.5)."""
    from dnlrepro.data.datasets import build_dataset

    dataset = build_dataset(cfg.data, cfg.data.train_split, mode="train")
    sampler = InfiniteDistributedSampler(
        len(dataset),
        info.rank,
        info.world_size,
        seed=cfg.schedule.seed,
        start=start_iter * layout.per_gpu_batch,
        batch_size=layout.per_gpu_batch,
        protocol_ranks=cfg.runtime.gpus,  # epochs end at the last full published batch
    )
    workers = cfg.data.workers_per_gpu
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=layout.per_gpu_batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=True,
        # Its own generator: iter(loader) draws a base seed, and drawing it from the global RNG
        # would shift the dropout stream of a resumed run by one draw.
        generator=torch.Generator().manual_seed(cfg.schedule.seed),
    )
