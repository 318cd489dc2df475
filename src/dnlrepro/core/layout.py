"""Protocol and layout: what a row trains with, and on how many GPUs it runs.

The **protocol** belongs to the row, i.e. to the configuration. A DNLNet row trained with a
global batch of ``runtime.gpus x data.samples_per_gpu`` images per iteration (mmseg's names for
the published run's layout: 4 x 2 = 8 for Cityscapes, 4 x 4 = 16 for ADE20K) and, with SyncBN,
with BN statistics over that whole batch.

The **layout** belongs to the run: ``gpus`` processes (one per GPU; the profile setting
``gpus``, or ``--gpus`` of ``dnlrepro launch``), each with ``global / gpus`` images. Any count
that divides the global batch computes the same iteration (docs/pipeline.md, "Protocol and
layout"; tests/test_layout_equivalence.py checks it on CPU with gloo):

* BN over one batch of 8 images gives the statistics SyncBN gives over 4 x 2 (same mean, same
  biased variance for normalising, same unbiased variance over the global count for the running
  estimate);
* mmseg 0.x's decode and aux losses are a mean over every pixel of equal-sized crops (ignored
  pixels count in the denominator, docs/reference.md §1.6), and DDP averages the gradients over
  the ranks, so the mean of the per-rank means is the mean over the whole batch;
* iteration ``i`` trains on the same images with the same augmentation seeds whatever the count
  (:mod:`dnlrepro.engine.sampler`). Only the dropout masks of the decode head differ (drawn per
  process).

A count that does not divide the global batch is refused, naming the counts that would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dnlrepro.core.config import Config
from dnlrepro.core.schema import ConfigError


@dataclass(frozen=True)
class Layout:
    gpus: int  # training processes, one per GPU (the world size)
    per_gpu_batch: int  # global batch / gpus
    nnodes: int = 1  # torchrun --nnodes; gpus / nnodes processes per node

    def __str__(self) -> str:
        return f"{self.gpus} GPU{'s' if self.gpus > 1 else ''} x {self.per_gpu_batch}"


def valid_counts(global_batch: int) -> list[int]:
    """The GPU counts a global batch can be split over: its divisors."""
    return [n for n in range(1, global_batch + 1) if global_batch % n == 0]


def layout_for(cfg: Config, gpus: int, nnodes: int = 1, where: str = "gpus") -> Layout:
    """``cfg``'s global batch split over ``gpus`` processes on ``nnodes`` nodes.

    Raises:
        ConfigError: ``gpus`` does not divide the global batch (the message lists the counts
            that do), or ``nnodes`` does not divide ``gpus``; ``where`` names the setting.
    """
    batch = cfg.global_batch
    if gpus < 1 or batch % gpus:
        counts = ", ".join(map(str, valid_counts(batch)))
        raise ConfigError(
            f"{where}: {gpus} GPU(s) cannot split the global batch of {cfg.name} ({batch} = "
            f"runtime.gpus {cfg.runtime.gpus} x data.samples_per_gpu {cfg.data.samples_per_gpu}) "
            f"into equal per-GPU batches; use one of {counts}"
        )
    if nnodes < 1 or gpus % nnodes:
        raise ConfigError(
            f"{where}: {gpus} GPU(s) do not spread evenly over nnodes={nnodes}; torchrun starts "
            "the same number of processes on every node"
        )
    return Layout(gpus, batch // gpus, nnodes)


def bn_group(cfg: Config, layout: Layout) -> int:
    """Images per BN statistic: the global batch with SyncBN (or one process), else per GPU."""
    return cfg.global_batch if cfg.model.norm == "SyncBN" else layout.per_gpu_batch


def record(cfg: Config, layout: Layout) -> dict[str, Any]:
    """What ``train_summary.json``, MLflow and the reports record of the protocol and layout."""
    return {
        "layout": f"{layout.gpus}x{layout.per_gpu_batch}",
        "gpus": layout.gpus,
        "nnodes": layout.nnodes,
        "per_gpu_batch": layout.per_gpu_batch,
        "global_batch": cfg.global_batch,
        "bn_group": bn_group(cfg, layout),
    }


def compare(train: dict[str, Any], published_batch: int | None) -> tuple[bool | None, str]:
    """``(same, text)``: does a run's record (:func:`record`) have the published protocol?

    The published rows trained with SyncBN, so their BN group is their batch. ``same`` is None
    when either side is unknown (an older summary, a row without a published batch).
    """
    batch, group = train.get("global_batch"), train.get("bn_group")
    layout = train.get("layout", "?").replace("x", " GPU(s) x ", 1)
    if published_batch is None or batch is None or group is None:
        return None, f"{layout}: protocol not comparable (global batch or BN group unknown)"
    if batch == published_batch and group == published_batch:
        return (
            True,
            f"same protocol as published (global batch {batch}, BN group {group}; {layout})",
        )
    return False, (
        f"different protocol: global batch {batch}, BN group {group} ({layout}); "
        f"published: {published_batch}, {published_batch}"
    )
