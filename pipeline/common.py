"""Shared wiring of the DVC stage entry points (``pipeline/*.py``): paths, profile, commands.

Stages call the ``dnlrepro`` commands in-process (one interpreter per stage: torch and mlflow
are imported once), except multi-GPU training, which torchrun must launch. Paths written into
committed files are relative to the repository root, where DVC runs every command.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from dnlrepro.config import ADE20K_CONFIGS, CITYSCAPES_CONFIGS, current_profile, load_config

logger = logging.getLogger("pipeline")

RESULTS = Path("results")
WORK_DIRS = Path("work_dirs")
DATA_RECEIPTS = RESULTS / "data"  # small committed receipts of the download/prepare stages
SMOKE_ARCHIVES = Path("downloads/smoke")  # inside the download stage's output folder
REAL_ARCHIVES = Path("downloads")  # dnlrepro download's default destination
DATASETS = ("cityscapes", "ade20k")


class StageError(RuntimeError):
    """A command of a stage failed; the message names the command."""


def setup() -> str:
    """Logging + working-directory check; returns the active profile."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not Path("dvc.yaml").is_file():
        raise StageError(f"run the stages from the repository root (cwd is {Path.cwd()})")
    profile = current_profile()
    logger.info("profile: %s (params.yaml)", profile)
    return profile


def dnlrepro(*argv: str) -> None:
    """Run ``dnlrepro ARGV`` in this process; a non-zero exit is a :class:`StageError`."""
    from dnlrepro.cli import main

    logger.info("dnlrepro %s", shlex.join(argv))
    rc = main(list(argv))
    if rc:
        raise StageError(f"`dnlrepro {shlex.join(argv)}` exited with {rc} (see the log above)")


def torchrun(nproc: int, nnodes: int, *argv: str) -> None:
    """``torchrun --nproc-per-node N --nnodes M [$DNLREPRO_TORCHRUN_ARGS] -m dnlrepro.cli ARGV``.

    Multi-node rendezvous options (``--node-rank``, ``--rdzv-endpoint`` ...) differ per cluster, so
    they come from ``$DNLREPRO_TORCHRUN_ARGS`` and do not change the stage command in dvc.lock.
    """
    extra = shlex.split(os.environ.get("DNLREPRO_TORCHRUN_ARGS", ""))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--nnodes",
        str(nnodes),
        *extra,
        "-m",
        "dnlrepro.cli",
        *argv,
    ]
    logger.info("%s", shlex.join(cmd))
    rc = subprocess.call(cmd)
    if rc:
        raise StageError(f"`{shlex.join(cmd)}` exited with {rc}")


def data_root(dataset: str, profile: str) -> Path:
    """``cfg.data.data_root`` of the dataset's configurations under ``profile``."""
    name = CITYSCAPES_CONFIGS[0] if dataset == "cityscapes" else ADE20K_CONFIGS[0]
    return Path(load_config(name, profile).data.data_root)


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
