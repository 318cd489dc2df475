"""``dnlrepro launch``: run the per-configuration stages in parallel, one GPU each.

DVC runs one stage at a time per ``dvc repro``; it does, however, release the repository lock
while a stage command runs, so several ``dvc repro -s STAGE`` processes can share one workspace
(verified with dvc 3.67; docs/pipeline.md, "Parallel runs"). The launcher does exactly that:

1. the shared stages first, serially: ``dvc repro prepare@<dataset>`` for the datasets of the
   launched configurations (download + prepare + MLflow DB; ADE20K rows alone need no
   Cityscapes login); a stale shared upstream would otherwise make the parallel runs fail with
   "is busy";
2. a queue of runs (each launched configuration's seeds, :mod:`dnlrepro.core.runs`); one worker per
   GPU runs ``CUDA_VISIBLE_DEVICES=<gpu> dvc --wait-for-lock repro -s train@<run>`` (and, with
   ``--stage all``, ``evaluate@<run>`` on the same GPU); when it finishes, the worker takes the
   next run;
3. ``dvc repro tables diff report`` serially, then a summary (exit 1 if any stage failed).

``--dry-run`` prints the plan without running anything. A worker uses one GPU, so with the
``paper`` profile set ``nproc_per_node: 1`` or give each worker a GPU group (``--gpus 0-3,4-7``
exports ``CUDA_VISIBLE_DEVICES=0,1,2,3`` for one worker).

``--backend slurm`` submits the same stage commands as sbatch jobs instead
(:mod:`dnlrepro.launch.slurm`).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dnlrepro.core import workspace
from dnlrepro.core.profile import read_params
from dnlrepro.core.runs import plan, select, stage
from dnlrepro.launch.stages import dvc_command, final_stages, shared_stages

logger = logging.getLogger(__name__)

STAGES = ("train", "evaluate", "all")
BACKENDS = ("local", "slurm")


@dataclass
class Job:
    config: str  # the run: train@<config> / evaluate@<config>
    gpu: str = ""
    stages: tuple[str, ...] = ()
    returncode: int | None = None
    seconds: float = 0.0


def parse_gpus(text: str) -> list[str]:
    """``"0,1,2"`` -> ``["0", "1", "2"]``; ``"0-3,4-7"`` -> ``["0,1,2,3", "4,5,6,7"]``."""
    groups = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                raise ValueError(f"--gpus: bad range {part!r}; write e.g. 0-3")
            groups.append(",".join(str(i) for i in range(int(lo), int(hi) + 1)))
        elif part.isdigit():
            groups.append(part)
        else:
            raise ValueError(f"--gpus: {part!r} is not a GPU index; write e.g. 0,1,2,3")
    if not groups:
        raise ValueError("--gpus is empty; write e.g. --gpus 0,1,2,3")
    if len(set(groups)) != len(groups):
        raise ValueError(f"--gpus lists a GPU twice: {text}")
    return groups


def stage_commands(job: Job) -> list[list[str]]:
    return [dvc_command("--wait-for-lock", "repro", "-s", stage(s, job.config)) for s in job.stages]


def _run(cmd: list[str], repo: Path, env: dict[str, str] | None = None) -> int:
    logger.info(
        "%s%s",
        f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if env else "",
        shlex.join(cmd),
    )
    return subprocess.call(cmd, cwd=repo, env={**os.environ, **env} if env else None)


def _worker(
    gpu: str, jobs: queue.Queue, done: list[Job], repo: Path, lock: threading.Lock, stagger: float
) -> None:
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return
        job.gpu = gpu
        start = time.monotonic()
        for cmd in stage_commands(job):
            job.returncode = _run(cmd, repo, {"CUDA_VISIBLE_DEVICES": gpu})
            if job.returncode:
                break  # evaluating a failed training makes no sense
            time.sleep(stagger)  # spread dvc.lock writes of workers finishing together
        job.seconds = time.monotonic() - start
        with lock:
            done.append(job)
        logger.info(
            "GPU %s: %s %s in %.0f s",
            gpu,
            job.config,
            "done" if job.returncode == 0 else f"FAILED ({job.returncode})",
            job.seconds,
        )


def launch(
    gpus: Sequence[str],
    configs: Sequence[str],
    stage: str = "all",
    repo: Path | None = None,
    dry_run: bool = False,
    shared: Sequence[str] | None = None,
    final: Sequence[str] | None = None,
    stagger: float = 1.0,
) -> list[Job]:
    """Run the plan; returns one :class:`Job` per configuration (``returncode`` None if dry).

    ``repo`` is the workspace the DVC commands run in (default: :func:`workspace.find`);
    ``shared`` the stages run before them (default: :func:`shared_stages`), ``final`` those
    run after every configuration (default: :func:`final_stages`).
    """
    repo = repo if repo is not None else workspace.find().root
    if shared is None:
        shared = shared_stages(configs, workspace.Workspace(repo))
    final = final_stages(repo) if final is None and stage == "all" else (final or ())
    if stage not in STAGES:
        raise ValueError(f"--stage {stage!r}; choose one of {', '.join(STAGES)}")
    stages = ("train", "evaluate") if stage == "all" else (stage,)
    jobs = [Job(config=c, stages=stages) for c in configs]
    if dry_run:
        print(f"1. serial: {shlex.join(dvc_command('repro', *shared))}")
        print(f"2. parallel on {len(gpus)} worker(s), each takes the next configuration:")
        for i, job in enumerate(jobs):
            gpu = gpus[i % len(gpus)]
            for cmd in stage_commands(job):
                print(
                    f"   [GPU {gpu}, first round]" if i < len(gpus) else "   [next free GPU]",
                    f"CUDA_VISIBLE_DEVICES=<gpu> {shlex.join(cmd)}",
                )
        if stage == "all" and final:
            print(f"3. serial: {shlex.join(dvc_command('repro', *final))}")
        return jobs
    if shared and _run(dvc_command("repro", *shared), repo):
        raise RuntimeError(f"the shared stages {list(shared)} failed; fix them before launching")
    pending: queue.Queue = queue.Queue()
    for job in jobs:
        pending.put(job)
    done: list[Job] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_worker, args=(g, pending, done, repo, lock, stagger), daemon=True)
        for g in gpus
    ]
    for i, t in enumerate(threads):
        t.start()
        if i + 1 < len(threads):
            time.sleep(stagger)  # stagger the starts: lock retries are short (docs/pipeline.md)
    for t in threads:
        t.join()
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
    from dnlrepro.launch.slurm import (
        cli as slurm_cli,
    )  # here: dnlrepro.launch.slurm imports this module

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: subprocesses on this machine (default); slurm: one sbatch job per stage",
    )
    parser.add_argument(
        "--gpus", help="local: one worker per entry: 0,1,2,3 (or GPU groups 0-3,4-7); required"
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
        from dnlrepro.launch.slurm import cli as slurm_cli

        return slurm_cli.main(args, ws, [] if args.status else _configs(args, ws))
    if args.status or args.wait:
        raise ValueError("--status and --wait belong to --backend slurm")
    if args.gpus is None:
        raise ValueError("--gpus is required with --backend local; write e.g. --gpus 0,1,2,3")
    gpus = parse_gpus(args.gpus)
    jobs = launch(gpus, _configs(args, ws), args.stage, ws.root, args.dry_run, stagger=args.stagger)
    print(summary(jobs))
    return 1 if any(j.returncode for j in jobs) else 0


def _configs(args: argparse.Namespace, ws: workspace.Workspace) -> list[str]:
    """The run keys to launch: every seed of each ``--configs`` row (default: every run)."""
    runs = plan(read_params(ws), ws)
    return select(runs, args.configs) if args.configs else list(runs)
