"""Train-pipeline throughput at full Cityscapes size, one worker (docs/reference.md §3.3).

Writes one synthetic 2048x1024 Cityscapes pair (real layout, via ``synth`` + ``prepare``), then
times ``SegDataset.__getitem__`` of ``dnl_r50-d8_512x1024_40k_cityscapes`` (paper values: ratio
in [0.5, 2.0), crop 512x1024): cv2 decode, label decode, resize, crop, flip, photometric,
normalise, pad. cv2 and torch are limited to one thread so the figure is per data-loader worker.
A per-stage breakdown replays the same steps by hand.

    .venv/bin/python benchmarks/bench_pipeline.py [--n 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dnlrepro.acquire import prepare, synth
from dnlrepro.core.config import load_config
from dnlrepro.data import transforms as T
from dnlrepro.data.datasets import build_dataset, load_image, load_label

CONFIG = "dnl_r50-d8_512x1024_40k_cityscapes"


def stage_breakdown(ds, n: int) -> dict[str, float]:
    """Mean milliseconds per stage, replaying TrainPipeline's steps with the same RNG calls."""
    cfg = ds.cfg_data
    pm = ds.pipeline.photometric
    totals: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        totals[name] = totals.get(name, 0.0) + (t1 - t0) * 1000
        return t1

    for i in range(n):
        rng = np.random.default_rng(i)
        t = time.perf_counter()
        img = load_image(ds.img_paths[0])
        t = tick("decode image (cv2)", t)
        label = load_label(ds.ann_paths[0], False)
        t = tick("decode label (Pillow)", t)
        size = T.rescale_size(
            img.shape[1], img.shape[0], T.random_scale(cfg.img_scale, cfg.ratio_range, rng)
        )
        img, label = T.imresize(img, size, "bilinear"), T.imresize(label, size, "nearest")
        t = tick("resize", t)
        img, label = T.random_crop(img, label, cfg.crop_size, rng, cfg.cat_max_ratio)
        t = tick("crop (cat_max_ratio)", t)
        if rng.random() < 0.5:
            img, label = T.hflip(img), T.hflip(label)
        t = tick("flip", t)
        img = T.photometric_distortion(img, rng, **pm)
        t = tick("photometric", t)
        x = T.normalize(img, cfg.mean, cfg.std, cfg.to_rgb)
        T.pad_to(label, cfg.crop_size, 255)
        tick("normalise + pad", t)
        del x
    return {k: v / n for k, v in totals.items()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="samples to time")
    ap.add_argument("--threads", type=int, default=1, help="cv2/torch threads (1 = one worker)")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cityscapes"
        synth.write_cityscapes(Path(tmp) / "arch", 1, 1, width=2048, height=1024, seed=0)
        prepare.prepare("cityscapes", Path(tmp) / "arch", root, expect=(1, 1))
        cfg = load_config(CONFIG, "paper", {"data.data_root": str(root)})
        ds = build_dataset(cfg.data, cfg.data.train_split, "train")
        ds[(0, 0)]  # warm-up (page cache, lazy imports)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.n):
            item = ds[(0, i)]
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert tuple(item["img"].shape) == (3, 512, 1024)
        stages = stage_breakdown(ds, max(args.n // 2, 5))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, {platform.system()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, cv2 {cv2.__version__}, "
        f"threads={args.threads}"
    )
    print(f"{CONFIG}: 2048x1024 -> crop 512x1024, {args.n} samples")
    print(f"throughput: {args.n / dt:.1f} img/s per worker ({dt / args.n * 1000:.1f} ms/img wall)")
    # CPU time excludes waiting for a core on a shared machine (the wall figure includes it).
    print(f"CPU-bound:  {args.n / cpu:.1f} img/s per worker ({cpu / args.n * 1000:.1f} ms/img CPU)")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for k, v in stages.items():
        print(f"  {k:24s} {v:7.1f} ms")


if __name__ == "__main__":
    main()
