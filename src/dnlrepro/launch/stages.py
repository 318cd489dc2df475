"""The DVC stages a launch runs, shared by the local and the Slurm backends.

A launch runs, in order: the *shared* stages serially (``prepare@<dataset>`` of the launched
runs' datasets, with their ``download@<dataset>``, and each launched run's cheap
``resolve@<run>``), then ``train@<run>`` / ``evaluate@<run>`` per run in parallel, then the
*final* report stages (tables, diff, report). Stage names come from :mod:`dnlrepro.core.runs`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from dnlrepro.core import workspace
from dnlrepro.core.registry import load_published
from dnlrepro.core.runs import DATASET_STAGES, REPORT_STAGES, config_of, parse_stage, stage

# run serially before any training: the per-dataset stages and the runs' resolution
SHARED: tuple[str, ...] = (*DATASET_STAGES, "resolve")


def dvc_command(*args: str) -> list[str]:
    # The dvc of this interpreter: `dvc` on PATH may belong to another environment.
    return [sys.executable, "-m", "dvc", *args]


def stage_command(*stages: str) -> list[str]:
    """``dvc --wait-for-lock repro -s STAGE...``: what both backends run for a stage.

    Single-item (``-s``, run in the order given): a job runs only its own stages, so the Slurm
    reports job never trains a configuration left out of this launch (its rows stay as they
    are). The shared stages are the exception (the local ``dvc repro`` of them, the Slurm
    ``prepare`` job): they run with their upstream ``download@<dataset>``.
    """
    return dvc_command("--wait-for-lock", "repro", "-s", *stages)


def is_shared(name: str) -> bool:
    """``download@ade20k`` / ``prepare@cityscapes`` / ``resolve@<run>`` (or a group name)."""
    return parse_stage(name)[0] in SHARED


def shared_stages(runs: Sequence[str], ws: workspace.Workspace | None = None) -> list[str]:
    """``prepare@<dataset>`` for the datasets of ``runs`` (registry order of first use; ``dvc
    repro`` of them runs their ``download@<dataset>`` too), then ``resolve@<run>`` of each."""
    rows = load_published((ws or workspace.find()).registry_file).configs
    names = [config_of(r) for r in runs]
    datasets = dict.fromkeys(rows[c].dataset for c in names if c in rows)
    return [stage("prepare", d) for d in datasets] + [stage("resolve", r) for r in runs]


def stage_names(repo: Path, env: dict[str, str] | None = None) -> list[str]:
    """The stage names of ``repo``'s dvc.yaml (``dvc stage list --name-only``), in file order."""
    result = subprocess.run(
        dvc_command("stage", "list", "--name-only"),
        cwd=repo, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"`dvc stage list` failed in {repo}: {result.stderr.strip()[-2000:]}")
    return result.stdout.split()


def final_stages(repo: Path) -> list[str]:
    """The report stages of ``repo``'s ``dvc.yaml`` in the order they must run (tables, diff,
    report: :data:`~dnlrepro.core.runs.REPORT_STAGES`), not in file order: ``dvc repro -s`` runs
    its targets as given, and ``diff`` is listed first in the file for ``dvc exp show``."""
    present = set(stage_names(repo))
    return [s for s in REPORT_STAGES if s in present]
