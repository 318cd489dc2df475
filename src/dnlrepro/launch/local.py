"""``dnlrepro launch``: run the per-configuration stages in parallel, packed onto the GPUs.

DVC runs one stage at a time per ``dvc repro``; it does, however, release the repository lock
while a stage command runs, so several ``dvc repro -s STAGE`` processes can share one workspace
(verified with dvc 3.67; docs/pipeline.md, "Parallel runs"). The launcher does exactly that:

1. the shared stages first, serially: ``dvc repro prepare@<dataset>`` for the datasets of the
   launched configurations (download + prepare + MLflow DB; ADE20K rows alone need no
   Cityscapes login); a stale shared upstream would otherwise make the parallel runs fail with
   "is busy";
2. the runs (each launched configuration's seeds, :mod:`dnlrepro.core.runs`) packed onto the
   GPUs of ``--gpus``: each run takes as many GPUs as its layout has (``gpus`` of the profile,
   resolved into ``results/<run>/run.yaml``; core/layout.py) and runs
   ``CUDA_VISIBLE_DEVICES=<its GPUs> dvc --wait-for-lock repro -s train@<run>`` (and, with
   ``--stage all``, ``evaluate@<run>`` on the same GPUs); whenever GPUs come free, the first
   waiting run that fits starts. With ``--gpus 0-7``: eight 1-GPU runs at once, or two 4-GPU
   runs;
3. ``dvc repro tables diff report`` serially, then a summary (exit 1 if any stage failed).

``--dry-run`` prints the plan without running anything.

``--backend slurm`` submits the same stage commands as sbatch jobs instead
(:mod:`dnlrepro.launch.slurm`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dnlrepro.core import workspace
from dnlrepro.core.profile import read_params
from dnlrepro.core.resolve import resolve_run
from dnlrepro.core.runs import plan, select, stage
from dnlrepro.launch.slurm import cli as slurm_cli
from dnlrepro.launch.stages import dvc_command, final_stages, shared_stages, stage_command

logger = logging.getLogger(__name__)

STAGES = ("train", "evaluate", "all")
BACKENDS = ("local", "slurm")


@dataclass
class Job:
    config: str  # the run: train@<config> / evaluate@<config>
    need: int = 1  # GPUs of its layout (training); evaluation runs on the first of them
    gpu: str = ""  # the GPUs it ran on, as CUDA_VISIBLE_DEVICES
    stages: tuple[str, ...] = ()
    returncode: int | None = None
    seconds: float = 0.0


def parse_gpus(text: str) -> list[str]:
    """The GPU indices of ``--gpus``: ``"0,1,2"`` -> ``["0", "1", "2"]``, ``"0-2,6"`` ->
    ``["0", "1", "2", "6"]``."""
    gpus: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                raise ValueError(f"--gpus: bad range {part!r}; write e.g. 0-3")
            gpus += [str(i) for i in range(int(lo), int(hi) + 1)]
        elif part.isdigit():
            gpus.append(part)
        else:
            raise ValueError(f"--gpus: {part!r} is not a GPU index; write e.g. 0,1,2,3")
    if not gpus:
        raise ValueError("--gpus is empty; write e.g. --gpus 0,1,2,3")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus lists a GPU twice: {text}")
    return gpus


def stage_commands(job: Job) -> list[list[str]]:
    return [stage_command(stage(s, job.config)) for s in job.stages]


def _run(cmd: list[str], repo: Path, env: dict[str, str] | None = None) -> int:
    logger.info(
        "%s%s",
        f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if env else "",
        shlex.join(cmd),
    )
    return subprocess.call(cmd, cwd=repo, env={**os.environ, **env} if env else None)


def pack(jobs: Sequence[Job], gpus: Sequence[str], repo: Path, stagger: float) -> None:
    """Run every job on ``job.need`` of ``gpus`` at a time: whenever GPUs come free, the first
    waiting job that fits starts (in order, so a 1-GPU job may pass a 4-GPU one that waits)."""
    free, pending, threads = list(gpus), list(jobs), []
    cond = threading.Condition()

    def run(job: Job, devices: list[str]) -> None:
        job.gpu, start = ",".join(devices), time.monotonic()
        try:
            for cmd in stage_commands(job):
                job.returncode = _run(cmd, repo, {"CUDA_VISIBLE_DEVICES": job.gpu})
                if job.returncode:
                    break  # evaluating a failed training makes no sense
                time.sleep(stagger)  # spread dvc.lock writes of runs finishing together
            job.seconds = time.monotonic() - start
            result = "done" if job.returncode == 0 else f"FAILED ({job.returncode})"
            logger.info("GPU %s: %s %s in %.0f s", job.gpu, job.config, result, job.seconds)
        finally:
            with cond:
                free.extend(devices)
                cond.notify_all()

    with cond:
        while pending:
            job = next((j for j in pending if j.need <= len(free)), None)
            if job is None:
                cond.wait()
                continue
            pending.remove(job)
            devices = [free.pop(0) for _ in range(job.need)]
            threads.append(threading.Thread(target=run, args=(job, devices), daemon=True))
            threads[-1].start()
            cond.wait(stagger)  # stagger the starts: lock retries are short (docs/pipeline.md)
    for t in threads:
        t.join()


def launch(
    gpus: Sequence[str],
    configs: Sequence[str],
    stage: str = "all",
    repo: Path | None = None,
    dry_run: bool = False,
    shared: Sequence[str] | None = None,
    final: Sequence[str] | None = None,
    stagger: float = 1.0,
    needs: dict[str, int] | None = None,
) -> list[Job]:
    """Run the plan; returns one :class:`Job` per configuration (``returncode`` None if dry).

    ``repo`` is the workspace the DVC commands run in (default: :func:`workspace.find`);
    ``shared`` the stages run before them (default: :func:`shared_stages`), ``final`` those
    run after every configuration (default: :func:`final_stages`); ``needs`` each run's GPU
    count (default 1; :func:`main` reads the runs' layouts).

    Raises:
        ValueError: a run needs more GPUs than ``gpus`` lists.
    """
    repo = repo if repo is not None else workspace.find().root
    if shared is None:
        shared = shared_stages(configs, workspace.Workspace(repo))
    final = final_stages(repo) if final is None and stage == "all" else (final or ())
    if stage not in STAGES:
        raise ValueError(f"--stage {stage!r}; choose one of {', '.join(STAGES)}")
    stages = ("train", "evaluate") if stage == "all" else (stage,)
    jobs = [Job(config=c, need=(needs or {}).get(c, 1), stages=stages) for c in configs]
    too_big = [f"{j.config} ({j.need})" for j in jobs if j.need > len(gpus)]
    if too_big:
        raise ValueError(
            f"--gpus lists {len(gpus)} GPU(s), fewer than these runs' layouts need: "
            f"{', '.join(too_big)}; list more GPUs or lower `gpus` in params/profiles.yaml"
        )
    if dry_run:
        print(f"1. serial: {shlex.join(dvc_command('repro', *shared))}")
        print(f"2. packed onto GPUs {','.join(gpus)}; each run takes its layout's GPUs:")
        left = len(gpus)
        for job in jobs:
            when = "first round" if job.need <= left else "when GPUs come free"
            left -= job.need if job.need <= left else 0
            for cmd in stage_commands(job):
                print(f"   [{job.need} GPU(s), {when}] CUDA_VISIBLE_DEVICES=<its GPUs> "
                      f"{shlex.join(cmd)}")  # fmt: skip
        if stage == "all" and final:
            print(f"3. serial: {shlex.join(dvc_command('repro', *final))}")
        return jobs
    if shared and _run(dvc_command("repro", *shared), repo):
        raise RuntimeError(f"the shared stages {list(shared)} failed; fix them before launching")
    pack(jobs, gpus, repo, stagger)
    failed = [j for j in jobs if j.returncode]
    if stage == "all" and final and not failed and _run(dvc_command("repro", *final), repo):
        raise RuntimeError(f"the final stages {list(final)} failed")
    return jobs


def summary(jobs: Sequence[Job]) -> str:
    lines = [f"{'config':<45} {'gpu':<8} {'stages':<16} {'result':<10} time"]
    for j in jobs:
        result = "planned" if j.returncode is None else ("ok" if j.returncode == 0 else "FAILED")
        lines.append(
            f"{j.config:<45} {j.gpu or '-':<8} {'+'.join(j.stages):<16} {result:<10} "
            f"{j.seconds:.0f} s"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: subprocesses on this machine (default); slurm: one sbatch job per stage",
    )
    parser.add_argument(
        "--gpus",
        help="local: the GPUs to pack the runs onto, e.g. 0-7 or 0,1,2,3; each run "
        "takes its layout's count (params/profiles.yaml: gpus); required",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        metavar="NAME",
        help="configurations (each with all its seeds) or single runs (<config>-seed<k>) to "
        "run (default: every run of params/runs.yaml, in order)",
    )
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="all",
        help="train only, evaluate only, or train+evaluate then tables/diff",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan, run nothing (slurm: write the job scripts, submit nothing)",
    )
    parser.add_argument("--stagger", type=float, default=1.0, help=argparse.SUPPRESS)
    slurm_cli.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    ws = workspace.find()
    if args.backend == "slurm":
        return slurm_cli.main(args, ws, [] if args.status else _configs(args, ws))
    if args.status or args.wait:
        raise ValueError("--status and --wait belong to --backend slurm")
    if args.gpus is None:
        raise ValueError("--gpus is required with --backend local; write e.g. --gpus 0,1,2,3")
    gpus, runs = parse_gpus(args.gpus), _configs(args, ws)
    needs = _needs(ws, runs) if args.stage != "evaluate" else {}
    jobs = launch(gpus, runs, args.stage, ws.root, args.dry_run, stagger=args.stagger, needs=needs)
    print(summary(jobs))
    return 1 if any(j.returncode for j in jobs) else 0


def _needs(ws: workspace.Workspace, keys: Sequence[str]) -> dict[str, int]:
    """Each run's GPU count: its layout as resolve@ resolves it (core/layout.py)."""
    profile = read_params(ws)
    runs = plan(profile, ws)
    return {key: resolve_run(ws, profile, runs[key])[1].train.gpus for key in keys}


def _configs(args: argparse.Namespace, ws: workspace.Workspace) -> list[str]:
    """The run keys to launch: every seed of each ``--configs`` row (default: every run)."""
    runs = plan(read_params(ws), ws)
    return select(runs, args.configs) if args.configs else list(runs)
