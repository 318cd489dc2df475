"""``dnlrepro launch --backend slurm``: submit the plan, show its state, wait for it.

A launch lives in ``work_dirs/slurm/<YYYYmmdd-HHMMSS>/``: the job scripts, their logs under
``logs/`` and ``receipt.json``. ``--status`` reads the newest launch; a new launch is refused
while a job of the previous one is still queued or running (it would train the same
configuration twice).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dnlrepro.core.files import write_json
from dnlrepro.core.profile import Profile, read_params
from dnlrepro.core.workspace import Workspace
from dnlrepro.launch.slurm import plan, queue
from dnlrepro.launch.stages import final_stages, shared_stages

logger = logging.getLogger(__name__)

DRY_RUN = "dry-run"  # the scripts of `--dry-run` go here, overwritten each time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--backend slurm (sbatch; docs/pipeline.md)")
    group.add_argument("--partition", help="sbatch --partition for every job")
    group.add_argument("--account", help="sbatch --account for every job")
    group.add_argument("--time", help="time limit of every job (sbatch --time), e.g. 1-00:00:00")
    group.add_argument(
        "--nodes", type=int, default=None, help="nodes per training job (default: the profile's "
        "nnodes); torchrun runs on all of them"
    )  # fmt: skip
    group.add_argument(
        "--gpus-per-node", type=int, default=None, help="GPUs per node of a training job "
        "(default: the profile's gpus / nnodes with torchrun, else 0); evaluation takes 1 if > 0"
    )  # fmt: skip
    group.add_argument(
        "--cpus-per-task", type=int, default=None, help=f"CPUs per node of a job (default: "
        f"{plan.CPUS_PER_GPU} per GPU, 1 without)"
    )  # fmt: skip
    group.add_argument(
        "--signal-seconds", type=int, default=300, help="USR1 this long before a training "
        "job's time limit: it checkpoints and requeues itself (default 300)"
    )  # fmt: skip
    group.add_argument(
        "--sbatch-arg", action="append", default=[], metavar="ARG", help="passed to sbatch for "
        "every job, e.g. --sbatch-arg=--mem=64G --sbatch-arg=--qos=high (repeatable)"
    )  # fmt: skip
    group.add_argument(
        "--status", action="store_true", help="show the newest launch's jobs (state, exit code, "
        "log) from squeue/sacct; exit 1 if one failed"
    )  # fmt: skip
    group.add_argument(
        "--wait", action="store_true", help="wait until every job has ended; exit 1 if one failed"
    )
    group.add_argument("--poll", type=float, default=30.0, help=argparse.SUPPRESS)


def resources(args: argparse.Namespace, profile: Profile) -> plan.Resources:
    """The sbatch resources; the defaults follow the profile's layout (``gpus``, ``nnodes``)."""
    s = profile.settings
    torchrun = s.gpus > 1  # as engine.launcher.run_training decides
    per_node = s.gpus // s.nnodes
    nodes = args.nodes if args.nodes is not None else s.nnodes
    gpus = args.gpus_per_node if args.gpus_per_node is not None else per_node if torchrun else 0
    if nodes < 1 or gpus < 0:
        raise ValueError(f"--nodes {nodes} / --gpus-per-node {gpus}: need nodes >= 1, GPUs >= 0")
    if torchrun and 0 < gpus < per_node:
        raise ValueError(
            f"--gpus-per-node {gpus}, but profile {profile.name} trains on gpus={s.gpus} over "
            f"nnodes={s.nnodes}, {per_node} processes per node (one per GPU); pass "
            f"--gpus-per-node {per_node} or change gpus in params/profiles.yaml"
        )
    if not torchrun and nodes > 1:
        raise ValueError(
            f"--nodes {nodes}: profile {profile.name} trains in one process (gpus: 1); raise "
            "gpus and nnodes in params/profiles.yaml for multi-node training"
        )
    if torchrun and nodes != s.nnodes:
        raise ValueError(
            f"--nodes {nodes}: profile {profile.name} trains on gpus={s.gpus} over "
            f"nnodes={s.nnodes}; the layout is part of the run (results/<run>/run.yaml), so "
            "change gpus / nnodes in params/profiles.yaml instead of overriding the node count"
        )
    return plan.Resources(
        partition=args.partition, account=args.account, time=args.time, nodes=nodes,
        gpus_per_node=gpus, cpus_per_task=args.cpus_per_task, signal_s=args.signal_seconds,
        extra=tuple(args.sbatch_arg),
    )  # fmt: skip


def main(args: argparse.Namespace, ws: Workspace, configs: Sequence[str]) -> int:
    base = ws.work_dirs / "slurm"
    if args.status:
        receipt_path = newest_receipt(base)
        if receipt_path is None:
            raise FileNotFoundError(f"no launch under {base}; submit one first")
        return show(receipt_path, args.wait, args.poll, ws)
    previous = newest_receipt(base)
    if previous is not None:
        refuse_if_active(previous, ws)
    profile = read_params(ws)
    res = resources(args, profile)
    stale, final = plan.stale_stages(ws.root), final_stages(ws.root)
    prepare = shared_stages(configs, ws)
    jobs, skipped = plan.plan_jobs(configs, args.stage, stale, res, final, prepare)
    if skipped:
        logger.info("up to date (dvc status), not submitted: %s", ", ".join(skipped))
    if not jobs:
        print("nothing to submit: every stage of this launch is up to date (dvc status)")
        return 0
    launch_dir = base / (DRY_RUN if args.dry_run else time.strftime("%Y%m%d-%H%M%S"))
    while not args.dry_run and launch_dir.exists():  # two launches within one second
        launch_dir = launch_dir.with_name(launch_dir.name + "x")
    if args.dry_run:
        shutil.rmtree(launch_dir, ignore_errors=True)  # only this plan's scripts
    scripts = plan.write_scripts(jobs, launch_dir, ws.root)
    if args.dry_run:
        print_plan(jobs, scripts, ws)
        return 0
    receipt: dict[str, Any] = {
        "launch": launch_dir.name, "workspace": str(ws.root), "profile": profile.name,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
        "up_to_date": skipped, "jobs": [],
    }  # fmt: skip
    path = launch_dir / queue.RECEIPT
    queue.submit(jobs, scripts, ws.root, saver(path, receipt))
    print(f"submitted {len(jobs)} jobs; receipt {ws.relative(path)}")
    return show(path, args.wait, args.poll, ws)


def print_plan(jobs: list[plan.JobSpec], scripts: dict[str, Path], ws: Workspace) -> None:
    for job in jobs:
        after = ", ".join(job.after) if len(job.after) < 3 else f"{len(job.after)} jobs"
        after = f"  (afterok: {after})" if job.after else ""
        print(f"sbatch {ws.relative(scripts[job.name])}{after}")
    folder = ws.relative(next(iter(scripts.values())).parent)
    print(f"dry run: {len(jobs)} job scripts written to {folder}, none submitted")


def saver(path: Path, receipt: dict[str, Any]) -> Callable[[list[dict[str, Any]]], None]:
    """A function that stores a job list in ``receipt`` and writes it to ``path``."""

    def save(records: list[dict[str, Any]]) -> None:
        receipt["jobs"] = records
        write_json(path, receipt)

    return save


def show(receipt_path: Path, wait: bool, poll_s: float, ws: Workspace) -> int:
    """Refresh (or wait for) the jobs, save the receipt, print the table; 1 if a job failed."""
    receipt = queue.read_receipt(receipt_path)
    save = saver(receipt_path, receipt)
    if wait:
        queue.wait(receipt["jobs"], save, poll_s)
    else:
        save(queue.refresh(receipt["jobs"]))
    print(status_table(receipt, ws))
    failed, cancelled = queue.failures(receipt["jobs"])
    return 1 if failed or cancelled else 0


def status_table(receipt: dict[str, Any], ws: Workspace) -> str:
    """One line per job (name, id, state, log), then each failure with its log."""
    jobs = receipt["jobs"]
    failed, cancelled = queue.failures(jobs)
    width = max(len(r["name"]) for r in jobs)
    lines = [f"launch {receipt['launch']} (profile {receipt['profile']})",
             f"{'job':<{width}} {'id':>8}  {'state':<24} log"]  # fmt: skip
    for r in jobs:
        state = "not run: " + r["state"] if r in cancelled else queue.describe(r)
        log = ws.relative(r["log"]) if Path(r["log"]).exists() else "-"
        lines.append(f"{r['name']:<{width}} {r['job_id']:>8}  {state:<24} {log}")
    for r in failed:
        lines.append(f"FAILED: {r['name']} (job {r['job_id']}) {queue.describe(r)}; log "
                     f"{ws.relative(r['log'])}")  # fmt: skip
    if cancelled:
        names = ", ".join(r["name"] for r in cancelled)
        lines.append(f"cancelled by Slurm, a job they depend on did not complete: {names}")
    done = sum(r["state"] == queue.DONE for r in jobs)
    lines.append(f"{done}/{len(jobs)} completed, {len(failed)} failed, {len(cancelled)} not run"
                 + ("; run the same launch command again to resubmit what is not done"
                    if failed or cancelled else ""))  # fmt: skip
    return "\n".join(lines)


def newest_receipt(base: Path) -> Path | None:
    found = sorted(p for p in base.glob(f"*/{queue.RECEIPT}") if p.parent.name != DRY_RUN)
    return found[-1] if found else None


def refuse_if_active(receipt_path: Path, ws: Workspace) -> None:
    records = queue.refresh(queue.read_receipt(receipt_path)["jobs"])
    active = [r for r in records if r["state"] in queue.ACTIVE]
    if active:
        names = ", ".join(f"{r['name']} ({r['job_id']}, {r['state']})" for r in active)
        ids = " ".join(r["job_id"] for r in active)
        raise RuntimeError(
            f"the previous launch ({ws.relative(receipt_path)}) still has jobs in the queue: "
            f"{names}; wait for them (dnlrepro launch --backend slurm --status --wait) or cancel "
            f"them (scancel {ids}) before launching again"
        )
