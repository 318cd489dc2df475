"""1 x 8 against 4 x 2 on one GPU: peak memory and seconds per iteration per GPU, real sizes.

The protocol of a row is its global batch (8 Cityscapes, 16 ADE20K); a layout of g GPUs puts
global / g images on each (docs/pipeline.md, "Protocol and layout"). This times the training
step (:func:`dnlrepro.rehearse.cost.time_train`: the train loop's own step, random inputs, BN
instead of SyncBN, no all-reduce) at the real crop for every per-GPU batch the row's layouts
use, on one GPU, and prints one JSON line per (row, layout) with the peak
``torch.cuda.max_memory_allocated`` (the Mem column's quantity, docs/reference.md §5.5). A
4 x 2 run's per-GPU figures are those of batch 2 plus its all-reduce traffic, which one GPU
cannot show.

    .venv/bin/python benchmarks/bench_layout.py [--configs NAME ...] [--iters 5]
"""

from __future__ import annotations

import argparse
import json

import torch

from dnlrepro.core.config import load_config
from dnlrepro.core.layout import valid_counts
from dnlrepro.rehearse.cost import time_train

ROWS = ("dnl_r50-d8_512x1024_40k_cityscapes", "dnl_r101-d8_769x769_40k_cityscapes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(ROWS))
    p.add_argument("--iters", type=int, default=5, help="timed iterations after one warm-up")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 4], help="layouts to measure")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_layout.py measures GPU memory: it needs CUDA")
    for name in args.configs:
        cfg = load_config(name, "paper", {"model.backbone.pretrained": None})
        for gpus in args.gpus:
            if gpus not in valid_counts(cfg.global_batch):
                continue
            batch = cfg.global_batch // gpus
            try:
                seconds, peak = time_train(cfg, "cuda", args.iters, per_gpu_batch=batch)
            except torch.cuda.OutOfMemoryError:
                seconds, peak = None, None
            torch.cuda.empty_cache()
            print(json.dumps({
                "config": name, "layout": f"{gpus}x{batch}", "s_per_iter": seconds,
                "peak_gb": None if peak is None else round(peak, 2),
                "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
