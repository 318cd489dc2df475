"""Start one training run: in this process for a single process, through torchrun for more.

Every profile trains through :func:`run_training`, which looks at the process count alone: the
smoke profile's one process and the paper profile's 4 processes run the same command,
``dnlrepro train ARGV`` (:mod:`dnlrepro.engine.train`), so ``dvc repro`` of the default profile
exercises the code path of the runs that cost GPU-days.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys

from dnlrepro import cli
from dnlrepro.engine import train

logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """torchrun exited non-zero; the message names the command."""


def run_training(argv: list[str], gpus: int, nnodes: int = 1) -> None:
    """Run ``dnlrepro train ARGV`` on ``gpus`` processes (one per GPU) over ``nnodes`` nodes.

    One process: parsed and run here (torch and the data stay loaded; SyncBN becomes BN). More:
    ``[$DNLREPRO_TORCHRUN_WRAPPER] torchrun --nproc-per-node N --nnodes M
    [$DNLREPRO_TORCHRUN_ARGS] -m dnlrepro.cli train ARGV``. Multi-node rendezvous options
    (``--node-rank``, ``--rdzv-endpoint`` ...) differ per cluster, so they come from
    ``$DNLREPRO_TORCHRUN_ARGS`` and do not change the stage command in dvc.lock; torchrun takes
    the last of a repeated option, so they may also override ``--nnodes``. The wrapper starts
    torchrun once per node: the Slurm job scripts set it to ``srun ...``.

    Raises:
        LaunchError: torchrun exited non-zero.
    """
    if gpus % nnodes:
        raise ValueError(f"{gpus} processes do not spread evenly over {nnodes} nodes")
    if gpus == 1:
        parser = argparse.ArgumentParser(prog="dnlrepro train")
        train.add_arguments(parser)
        logger.info("one process: dnlrepro train %s", shlex.join(argv))
        train.main(parser.parse_args(argv))
        return
    wrapper = shlex.split(os.environ.get("DNLREPRO_TORCHRUN_WRAPPER", ""))
    extra = shlex.split(os.environ.get("DNLREPRO_TORCHRUN_ARGS", ""))
    cmd = [
        *wrapper,
        sys.executable,
        *("-m", "torch.distributed.run"),
        *("--nproc-per-node", str(gpus // nnodes), "--nnodes", str(nnodes)),
        *extra,
        *("-m", cli.__name__, "train", *argv),
    ]
    logger.info("%s", shlex.join(cmd))
    rc = subprocess.call(cmd)
    if rc:
        raise LaunchError(f"`{shlex.join(cmd)}` exited with {rc}")
