"""``dnlrepro profile [NAME]``: switch the pipeline's profile, or show and check the active one.

A switch writes ``params.yaml`` (its comments kept), ``params/runs.yaml`` (the stage list:
:func:`dnlrepro.core.runs.switch`) and every run's resolved files (``results/<run>/config.yaml``
and ``run.yaml``, what ``resolve@<run>`` writes: :mod:`dnlrepro.core.resolve`), so that ``dvc
status`` right after the switch names every training and evaluation the switch makes stale.
Every run is resolved before anything is written: a switch that fails writes nothing.
"""

from __future__ import annotations

import argparse
import logging

from dnlrepro.core import resolve, runs, workspace
from dnlrepro.core.profile import PROFILES, load_profile, read_params

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        choices=PROFILES,
        help="the profile to switch to (default: show the active one and check params/runs.yaml)",
    )


def main(args: argparse.Namespace) -> int:
    ws = workspace.find()
    if args.name:
        profile = load_profile(args.name, ws)
        planned = runs.plan(profile, ws)
        for run in planned.values():  # a configuration the profile cannot resolve fails here
            resolve.resolve_run(ws, profile, run)
        runs.switch(ws, args.name)
        for run in planned.values():
            resolve.write(ws, profile, run)
        logger.info(
            "params.yaml: profile %s; %s: %d runs, each resolved into results/<run>/",
            args.name, ws.runs_file, len(planned),
        )  # fmt: skip
    else:
        planned = runs.check(ws, read_params(ws))
    for run in planned.values():
        print(f"{run.key}\tseed {run.seed}")
    return 0
