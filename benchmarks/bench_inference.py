"""Whole-image DNLNet inference: SDPA vs the naive [P, P] attention (time and peak memory).

R50-D8, random weights, batch 1, ``model.inference`` in whole mode (forward, two-step resize,
softmax), fp32. Each variant runs in a fresh subprocess so its peak memory is that process's
``ru_maxrss`` alone (on CUDA: ``torch.cuda.max_memory_allocated``). At 1024x2048 the DNL block
attends over P = 128 * 256 = 32768 positions: one fp32 P x P matrix is 4 GiB
(docs/reference.md §5.3).

    .venv/bin/python benchmarks/bench_inference.py [--size 1024 2048] [--variants sdpa naive]
        [--repeat 1] [--threads N] [--device cpu|cuda]

Prints one JSON line per variant and a markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args: argparse.Namespace) -> dict:
    from dnlrepro.core.config import load_config
    from dnlrepro.models import build_segmentor

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = load_config(args.config, "paper", overrides={"model.backbone.pretrained": None})
    torch.manual_seed(0)
    model = build_segmentor(cfg, attention=args.attention).to(dev).eval()
    h, w = args.size
    img = torch.randn(1, 3, h, w, device=dev)
    rss_model = rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(args.repeat):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        probs = model.inference(img, (h, w))
        labels = probs.argmax(dim=1).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    assert tuple(labels.shape) == (1, h, w)
    out = {
        "attention": args.attention,
        "size": [h, w],
        "positions": ((h - 1) // 8 + 1) * ((w - 1) // 8 + 1),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "time_s": min(times),
        "rss_after_build_mb": round(rss_model, 1),
        "peak_rss_mb": round(rss_mb(), 1),
    }
    if dev.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CFG)
    p.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    p.add_argument("--variants", nargs="+", default=["sdpa", "naive"], choices=["sdpa", "naive"])
    p.add_argument("--repeat", type=int, default=1, help="timed runs per variant (min reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--attention", help=argparse.SUPPRESS)  # set in the worker subprocess
    args = p.parse_args()
    if args.attention:
        print(json.dumps(worker(args)), flush=True)
        return
    rows = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--attention", variant, "--config", args.config]
        cmd += ["--size", *map(str, args.size), "--repeat", str(args.repeat)]
        cmd += ["--device", args.device] + (
            ["--threads", str(args.threads)] if args.threads else []
        )
        res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if res.returncode != 0:
            print(f"{variant}: failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    print(f"\n{date}, {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}\n")
    print(
        "| attention | input (h x w) | positions P | time (s) | peak RSS (GB) | after build (GB) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attention']} | {r['size'][0]}x{r['size'][1]} | {r['positions']} | "
            f"{r['time_s']:.1f} | {r['peak_rss_mb'] / 1024:.2f} | "
            f"{r['rss_after_build_mb'] / 1024:.2f} |"
        )


if __name__ == "__main__":
    main()
