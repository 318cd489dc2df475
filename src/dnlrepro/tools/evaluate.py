"""``dnlrepro evaluate``: mIoU / mAcc / aAcc of a checkpoint (docs/reference.md §5).

The command line around :func:`dnlrepro.engine.evaluate.evaluate`: ``--checkpoint`` may be a URL
or a pretrained name, fetched here (:func:`dnlrepro.tools.checkpoints.fetched`) before the engine
loads the local file; the metrics JSON still names the checkpoint as given.
"""

from __future__ import annotations

import argparse
import math

from dnlrepro.core.config import add_config_arguments
from dnlrepro.engine import distributed
from dnlrepro.engine.evaluate import evaluate
from dnlrepro.tools.checkpoints import config_for, fetched


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        help=".pth file or published URL; without --profile, the profile our training recorded "
        "in the file applies (else the configuration's own values)",
    )
    parser.add_argument("--data-root", default=None, help="default: the config's data.data_root")
    parser.add_argument(
        "--split", default="val", help="val (Cityscapes val / ADE20K validation), train, or a name"
    )
    parser.add_argument("--ms-flip", action="store_true", help="also 6 ratios x flip (§5.3)")
    parser.add_argument(
        "--small-window-alt",
        action="store_true",
        help="with --ms-flip on a slide config: also ms+flip with the other test.small_window "
        "mode (unpadded/pad, §5.2), written as ms_flip_alt",
    )
    parser.add_argument("--out", default=None, help="metrics JSON path")
    parser.add_argument("--max-images", type=_positive_int, default=None, help="first N images")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(args: argparse.Namespace) -> int:
    # first, so that the first log line names the profile: the one a local checkpoint of ours
    # records, unless --profile (a URL is a published mmseg checkpoint, which records none)
    cfg = config_for(args, args.checkpoint)
    info = distributed.init_distributed(args.device)
    try:
        with fetched(args.checkpoint) as local:
            payload = evaluate(
                cfg,
                local,
                data_root=args.data_root,
                split=args.split,
                ms_flip=args.ms_flip,
                out=args.out,
                max_images=args.max_images,
                device=info.device,
                track=not args.no_track,
                small_window_alt=args.small_window_alt,
                source=str(args.checkpoint),
            )
    finally:
        distributed.cleanup(info)
    if info.is_main:
        ss, ms = payload["single_scale"], payload["ms_flip"]
        line = (
            f"{cfg.name}: mIoU {_fmt(ss['mIoU'])} mAcc {_fmt(ss['mAcc'])} aAcc {_fmt(ss['aAcc'])}"
        )
        if ms:
            line += f" | ms+flip mIoU {_fmt(ms['mIoU'])}"
        print(line)
    return 0


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
