"""Time and peak memory of one DNLNet training step (R50-D8, default 256x512 crop, batch 2).

The step is the train loop's own (:func:`dnlrepro.engine.step.train_step` after the poly lr):
forward_train (decode + 0.4 aux CE), loss sum and NaN check, backward, SGD with momentum and
weight decay. Inputs are random (data loading is not timed). On CPU the
peak memory is the process's max RSS (what the train loop logs on CPU); on CUDA it is
``torch.cuda.max_memory_allocated`` (mmcv's "memory", docs/reference.md §5.5).

    .venv/bin/python benchmarks/bench_train_step.py [--crop 256 512] [--batch 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from dnlrepro.core.config import load_config
from dnlrepro.engine import schedule
from dnlrepro.engine.step import train_step
from dnlrepro.models import build_segmentor

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CFG)
    p.add_argument("--crop", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = load_config(args.config, "paper", overrides={"model.backbone.pretrained": None})
    torch.manual_seed(0)
    model = build_segmentor(cfg).to(dev).train()
    opt = schedule.build_optimizer(model, cfg.schedule)
    h, w = args.crop
    img = torch.randn(args.batch, 3, h, w, device=dev)
    gt = torch.randint(0, cfg.model.num_classes, (args.batch, h, w), device=dev)
    gt[:, : h // 8] = cfg.model.ignore_index  # some ignored pixels, as in real labels

    rss_before = rss_mb()
    times = []
    for it in range(args.steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        schedule.set_lr(opt, schedule.lr_at(it, cfg.schedule))
        train_step(model, img, gt, opt, iteration=it, max_iters=args.steps + 1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if it > 0:  # the first step allocates gradients and momentum buffers
            times.append(time.perf_counter() - t0)
    result = {
        "config": args.config,
        "device": str(dev),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "crop_hw": [h, w],
        "batch": args.batch,
        "steps": args.steps,
        "step_s_median": round(statistics.median(times), 3),
        "step_s_min": round(min(times), 3),
        "peak_rss_mb": round(rss_mb(), 1),
        "rss_before_steps_mb": round(rss_before, 1),
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        result["cuda_max_memory_allocated_mb"] = round(
            torch.cuda.max_memory_allocated(dev) / 2**20, 1
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
