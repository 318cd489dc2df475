"""What each stage would cost at full size: iterations (or images) x seconds each.

§ numbers refer to docs/reference.md.

* **CPU** (an estimate, and labelled so): the seconds the miniature stage measured -- a training
  iteration (the ``Iter [..] time:`` log line) or one single-scale image (the benchmark's
  ``fps``) -- times the FLOP ratio of the real to the miniature work. FLOPs of one forward pass
  are ``a*q + b*q**2`` for ``q`` feature-map positions (convolutions grow with the pixels, the
  non-local block with their square, §5.3); ``a`` and ``b`` are fitted per backbone from two
  forward passes on PyTorch's ``meta`` device under ``FlopCounterMode``, which costs no compute.
  Evaluation counts the single-scale view plus the six ms+flip ratios x 2 flips, slide windows
  included.
* **CUDA** (measured): a few training iterations at the real crop and the layout's per-GPU batch
  (the train loop's own step, one GPU, BN instead of SyncBN), and one real-size image through
  single-scale and ms+flip inference; GPU-hours per row and peak
  ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dnlrepro.bench.measure import sync
from dnlrepro.core.config import Config
from dnlrepro.data.transforms import rescale_size

_ITER_TIME = re.compile(r"Iter \[\d+/\d+\].*?\btime: ([0-9.]+)")
_FPS = re.compile(r"\b([0-9]+(?:\.[0-9]+)?) fps\b")


def measured_iteration(log: list[str]) -> float | None:
    """Seconds of the last training iteration a stage logged (the warmest one)."""
    found = [float(m.group(1)) for line in log if (m := _ITER_TIME.search(line))]
    return found[-1] if found else None


def measured_image(log: list[str]) -> float | None:
    """Seconds per single-scale image: 1 / the first fps of the benchmark's result line (ours)."""
    found = [
        float(m.group(1))
        for line in log
        if "INFO dnlrepro.bench.benchmark:" in line and (m := _FPS.search(line))
    ]
    return 1 / found[-1] if found and found[-1] > 0 else None


def _positions(h: int, w: int) -> int:
    return math.ceil(h / 8) * math.ceil(w / 8)  # output stride 8 (D8)


class Flops:
    """Forward FLOPs ``a*q + b*q**2`` per backbone depth, fitted on the meta device (the class
    count only changes the last 1x1 convolution: well under 1% of the FLOPs)."""

    def __init__(self) -> None:
        self._coef: dict[int, tuple[float, float]] = {}

    def forward(self, cfg: Config, h: int, w: int) -> float:
        key = cfg.model.backbone.depth
        if key not in self._coef:
            self._coef[key] = _fit(cfg)
        a, b = self._coef[key]
        q = _positions(h, w)
        return a * q + b * q * q

    def train(self, cfg: Config, per_gpu_batch: int) -> float:
        h, w = cfg.data.crop_size
        return per_gpu_batch * self.forward(cfg, h, w)

    def evaluate(self, cfg: Config, image_wh: tuple[int, int], ms_flip: bool = True) -> float:
        """One image: single-scale, plus (``ms_flip``) every ms ratio with and without flip."""
        total = self._view(cfg, image_wh, 1.0)
        if ms_flip:
            flips = 2 if cfg.test.ms_flip else 1
            total += sum(flips * self._view(cfg, image_wh, r) for r in cfg.test.ms_ratios)
        return total

    def _view(self, cfg: Config, image_wh: tuple[int, int], ratio: float) -> float:
        long_side, short_side = cfg.test.img_scale
        w, h = rescale_size(*image_wh, (int(long_side * ratio), int(short_side * ratio)))
        if cfg.test.mode != "slide":
            return self.forward(cfg, h, w)
        (ch, cw), (sh, sw) = cfg.test.crop_size, cfg.test.stride
        rows = max(h - ch + sh - 1, 0) // sh + 1  # mmseg slide_inference's grid
        cols = max(w - cw + sw - 1, 0) // sw + 1
        return rows * cols * self.forward(cfg, min(ch, h), min(cw, w))


def _fit(cfg: Config) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from dnlrepro.models import build_segmentor

    with torch.device("meta"):
        model = build_segmentor(cfg).eval()
    rows, flops = [], []
    for side in (64, 128):
        x = torch.empty(1, 3, side, side, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.encode_decode(x)
        q = _positions(side, side)
        rows.append([q, q * q])
        flops.append(counter.get_total_flops())
    a, b = np.linalg.solve(np.array(rows, dtype=float), np.array(flops, dtype=float))
    return float(a), float(b)


@dataclass
class RowCost:
    """The real run's cost of one stage."""

    units: int  # iterations (train) or images (evaluate)
    unit: str  # "it" | "img"
    seconds_each: float
    workers: int  # GPUs (or processes) busy for that time
    source: str  # "cpu-estimate" | "cuda-measured"
    peak_mem_gb: float | None = None
    note: str = ""

    @property
    def hours(self) -> float:
        return self.units * self.seconds_each / 3600

    @property
    def device_hours(self) -> float:
        return self.hours * self.workers

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "hours": self.hours, "device_hours": self.device_hours}

    def text(self) -> str:
        kind = "GPU-h" if self.source == "cuda-measured" else "CPU-h est."
        mem = f", peak {self.peak_mem_gb:.1f} GB" if self.peak_mem_gb is not None else ""
        each = (
            f"{self.seconds_each:,.0f}" if self.seconds_each >= 100 else f"{self.seconds_each:.3g}"
        )
        total = f"{self.device_hours:,.0f}"
        return f"{self.units} {self.unit} x {each} s x {self.workers} = {total} {kind}{mem}"


def cpu_train(flops: Flops, real: Config, mini: Config, mini_s: float, gpus: int) -> RowCost:
    """The real run on ``gpus`` GPUs from the miniature's seconds per iteration on as many
    processes: each process's work is its per-GPU batch (global / gpus) of crops."""
    ratio = flops.train(real, real.global_batch // gpus) / flops.train(
        mini, mini.global_batch // gpus
    )
    return RowCost(
        real.schedule.max_iters, "it", mini_s * ratio, gpus, "cpu-estimate",
        note=f"measured {mini_s:.3g} s/it at the rehearsal size x FLOP ratio {ratio:,.0f}",
    )  # fmt: skip


def cpu_evaluate(
    flops: Flops, real: Config, mini: Config, mini_s: float, images: int, image_wh: tuple, mini_wh
) -> RowCost:
    """Single-scale + ms+flip of every real val image, from the mini single-scale time."""
    ratio = flops.evaluate(real, image_wh) / flops.evaluate(mini, mini_wh, ms_flip=False)
    return RowCost(
        images, "img", mini_s * ratio, 1, "cpu-estimate",
        note=f"measured {mini_s:.3g} s/img single-scale at the rehearsal size x FLOP ratio "
        f"{ratio:,.0f} (single-scale + ms+flip at full size)",
    )  # fmt: skip


def time_train(
    cfg: Config, device: str = "cuda", iters: int = 3, per_gpu_batch: int | None = None
) -> tuple[float, float | None]:
    """(seconds per iteration, peak GB) of the train step at ``cfg``'s crop and ``per_gpu_batch``
    images (default: the published layout's, ``data.samples_per_gpu``)."""
    from dnlrepro import models
    from dnlrepro.engine import schedule
    from dnlrepro.engine.step import train_step

    dev = torch.device(device)
    torch.manual_seed(0)
    model = models.revert_sync_batchnorm(models.build_segmentor(cfg)).to(dev).train()
    opt = schedule.build_optimizer(model, cfg.schedule)
    (h, w), n = cfg.data.crop_size, per_gpu_batch or cfg.data.samples_per_gpu
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for it in range(iters + 1):  # the first step allocates gradients and momentum: not timed
        img = torch.randn(n, 3, h, w, device=dev)
        gt = torch.randint(0, cfg.model.num_classes, (n, h, w), device=dev)
        sync(dev)
        t0 = time.perf_counter()
        train_step(model, img, gt, opt, iteration=it, max_iters=iters + 1)
        sync(dev)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    del model, opt
    return float(np.median(times[1:])), peak


def time_evaluate(cfg: Config, image_hw: tuple[int, int], device: str = "cuda") -> float:
    """Seconds of single-scale + ms+flip inference of one random ``image_hw`` image."""
    from dnlrepro import models
    from dnlrepro.engine.inference import infer_image

    dev = torch.device(device)
    torch.manual_seed(0)
    model = models.revert_sync_batchnorm(models.build_segmentor(cfg)).to(dev).eval()
    img = np.random.default_rng(0).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    with torch.no_grad():
        infer_image(model, img, cfg, False, dev)  # warm-up (kernel selection, allocations)
        sync(dev)
        t0 = time.perf_counter()
        infer_image(model, img, cfg, True, dev)
        sync(dev)
    del model
    return time.perf_counter() - t0
