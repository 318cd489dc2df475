"""Shared wiring of the DVC stage entry points (``pipeline/*.py``): logging, workspace, errors.

Each stage calls library functions with typed objects in this process (torch and mlflow are
imported once); only multi-process training starts new processes, because torchrun must
(:func:`dnlrepro.engine.launcher.run_training`). DVC runs every stage command in the workspace
root, so paths written into committed files are relative to it. The stages never branch on the
profile's name: ``resolve@<run>`` turns the profile into per-run files
(:mod:`dnlrepro.core.resolve`) and the data stages ask only where archives come from.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dnlrepro.core import workspace
from dnlrepro.core.errors import run_reporting
from dnlrepro.core.profile import Profile, read_params
from dnlrepro.core.runs import DATASETS
from dnlrepro.core.workspace import Workspace

logger = logging.getLogger("pipeline")


def setup() -> Workspace:
    """Logging and the workspace (the current directory), named in the log."""
    ws = _workspace()
    logger.info("workspace %s", ws.root)
    return ws


def setup_with_profile() -> tuple[Workspace, Profile]:
    """Logging, the workspace and the profile ``params.yaml`` selects (the stages that read it)."""
    ws = _workspace()
    profile = read_params(ws)
    logger.info("workspace %s, profile %s (params.yaml)", ws.root, profile.name)
    return ws, profile


def _workspace() -> Workspace:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return workspace.find()


def run_stage(main: Callable[[], int]) -> int:
    """Run a stage; a user-facing error ends in the library's one clear line, no traceback.

    Set ``DNLREPRO_DEBUG=1`` for the traceback (as ``dnlrepro -v`` does for the CLI).
    """
    stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
    return run_reporting(f"stage {stage}", main, bool(os.environ.get("DNLREPRO_DEBUG")))


def stage_arg(choices: tuple[str, ...] | None = None) -> str:
    """The stage's key (``download@cityscapes`` runs ``download.py cityscapes``)."""
    if len(sys.argv) != 2 or (choices is not None and sys.argv[1] not in choices):
        allowed = f"; KEY is one of {', '.join(choices)}" if choices else ""
        raise SystemExit(f"usage: {Path(sys.argv[0]).name} KEY{allowed}")
    return sys.argv[1]


def dataset_arg() -> str:
    return stage_arg(DATASETS)
