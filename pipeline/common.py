"""Shared wiring of the DVC stage entry points (``pipeline/*.py``): workspace, profile, torchrun.

Each stage reads the pipeline's switch once (``params.yaml``,
:func:`dnlrepro.core.profile.read_params`)
and calls library functions with typed objects in this process (torch and mlflow are imported
once). Only multi-GPU training starts new processes, because torchrun must. DVC runs every
stage command in the workspace root, so paths written into committed files are relative to it.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dnlrepro.acquire.download import default_dest
from dnlrepro.cli import run_reporting
from dnlrepro.core import workspace
from dnlrepro.core.profile import Profile, read_params
from dnlrepro.core.workspace import Workspace

logger = logging.getLogger("pipeline")

DATASETS = ("cityscapes", "ade20k")


class StageError(RuntimeError):
    """A command of a stage failed; the message names the command."""


def setup() -> tuple[Workspace, Profile]:
    """Logging, the workspace (the current directory) and the profile of ``params.yaml``."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    ws = workspace.find()
    profile = read_params(ws)
    logger.info("workspace %s, profile %s (params.yaml)", ws.root, profile.name)
    return ws, profile


def run_stage(main: Callable[[], int]) -> int:
    """Run a stage; a user-facing error ends in the library's one clear line, no traceback.

    Set ``DNLREPRO_DEBUG=1`` for the traceback (as ``dnlrepro -v`` does for the CLI).
    """
    stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
    return run_reporting(f"stage {stage}", main, bool(os.environ.get("DNLREPRO_DEBUG")))


def dataset_arg() -> str:
    """The stage's dataset (``download@cityscapes`` runs ``download.py cityscapes``)."""
    if len(sys.argv) != 2 or sys.argv[1] not in DATASETS:
        raise SystemExit(f"usage: {Path(sys.argv[0]).name} DATASET; DATASET is one of "
                         f"{', '.join(DATASETS)}")  # fmt: skip
    return sys.argv[1]


def archives(ws: Workspace, profile: Profile, dataset: str) -> Path:
    """Where a dataset's archives are: ``downloads/<dataset>`` (the stage's output folder),
    and its ``synthetic/`` subfolder for a profile with synthetic data, so switching profiles
    never mixes synthetic archives with real ones of the same name."""
    folder = default_dest(dataset, ws)
    return folder / "synthetic" if profile.settings.data_source == "synthetic" else folder


def torchrun(profile: Profile, *argv: str) -> None:
    """``[$DNLREPRO_TORCHRUN_WRAPPER] torchrun --nproc-per-node N --nnodes M
    [$DNLREPRO_TORCHRUN_ARGS] -m dnlrepro.cli ARGV``.

    Multi-node rendezvous options (``--node-rank``, ``--rdzv-endpoint`` ...) differ per cluster, so
    they come from ``$DNLREPRO_TORCHRUN_ARGS`` and do not change the stage command in dvc.lock;
    torchrun takes the last of a repeated option, so they may also override ``--nnodes``. The
    wrapper starts torchrun once per node: the Slurm job scripts set it to ``srun ...``.
    """
    wrapper = shlex.split(os.environ.get("DNLREPRO_TORCHRUN_WRAPPER", ""))
    extra = shlex.split(os.environ.get("DNLREPRO_TORCHRUN_ARGS", ""))
    cmd = [
        *wrapper,
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(profile.settings.nproc_per_node),
        "--nnodes",
        str(profile.settings.nnodes),
        *extra,
        "-m",
        "dnlrepro.cli",
        *argv,
    ]
    logger.info("%s", shlex.join(cmd))
    rc = subprocess.call(cmd)
    if rc:
        raise StageError(f"`{shlex.join(cmd)}` exited with {rc}")
