"""``dnlrepro benchmark``: fps and training memory of one configuration, as mmseg measures them.

The measurement is :func:`dnlrepro.bench.benchmark.benchmark` (local files only); this command
also takes an http(s) URL or a backbone name as ``--checkpoint`` and downloads it first
(:func:`dnlrepro.tools.checkpoints.fetched`).
"""

from __future__ import annotations

import argparse
import contextlib
import json

from dnlrepro.bench.benchmark import benchmark
from dnlrepro.core.config import add_config_arguments, config_from_args
from dnlrepro.tools.checkpoints import fetched


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", default=None, help=".pth or URL (default: random init)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--num-images", type=int, default=200, help="images timed (mmseg: 200)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up images excluded (5)")
    parser.add_argument("--data-root", default=None, help="time real images (default: random)")
    parser.add_argument("--split", default="val", help="split for --data-root (default val)")
    parser.add_argument(
        "--train-iters", type=int, default=5, help="training iterations for Mem (0: skip)"
    )
    parser.add_argument(
        "--no-mmseg-comparable",
        action="store_true",
        help="skip the second measurement with mmseg's explicit attention (§5.6)",
    )
    parser.add_argument("--out", default=None, help="JSON path")


def main(args: argparse.Namespace) -> int:
    cfg, _ = config_from_args(args)
    with contextlib.ExitStack() as stack:
        local = None if args.checkpoint is None else stack.enter_context(fetched(args.checkpoint))
        result = benchmark(
            cfg,
            checkpoint=local,
            device=args.device,
            num_images=args.num_images,
            warmup=args.warmup,
            data_root=args.data_root,
            split=args.split,
            train_iters=args.train_iters,
            out=args.out,
            mmseg_comparable=not args.no_mmseg_comparable,
        )
    comparable = result["mmseg_comparable"] or {}
    summary = {k: result[k] for k in ("config", "device", "fps", "mem_gb")}
    summary["mmseg_comparable"] = {k: comparable.get(k) for k in ("fps", "mem_gb")}
    print(json.dumps(summary))
    return 0
