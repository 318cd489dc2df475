"""What a Slurm launch submits: one job per DVC stage still to run, its resources and dependencies.

DVC decides what is done: ``dvc status`` lists the stale stages, and only those become jobs, so
running the same launch command again resubmits exactly what did not finish. Each job runs the
local launcher's command (:func:`dnlrepro.launch.stages.dvc_command`), which skips a stage that
turns out to be up to date, so submitting one job too many costs only queue time.

The job scripts (:func:`write_scripts`) are written to ``work_dirs/slurm/<launch>/`` and kept
there: every job is a plain sbatch script rendered from ``templates/job.sbatch.j2``, its resources
as ``#SBATCH`` lines, then the one DVC command it runs. A user can read it, and resubmit it alone
with ``sbatch``. Training jobs also get ``torchrun-node.sh``, the per-node wrapper that ``srun``
starts once per node.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2

from dnlrepro.core import runs
from dnlrepro.core.runs import parse_stage
from dnlrepro.launch.stages import dvc_command, is_shared, stage_command

NODE_SCRIPT = "torchrun-node.sh"
CPUS_PER_GPU = 5  # mmseg's tools/slurm_train.sh default (CPUS_PER_TASK=5 per GPU task)


@dataclass(frozen=True)
class Resources:
    """What every job asks the scheduler for (``None``: the cluster's default)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None  # sbatch --time, e.g. 1-00:00:00
    nodes: int = 1  # per training job; evaluation and the rest use one node
    gpus_per_node: int = 0  # training; evaluation takes one GPU when this is > 0
    cpus_per_task: int | None = None  # default: CPUS_PER_GPU per GPU, 1 without GPUs
    signal_s: int = 300  # USR1 this many seconds before a training job's time limit
    extra: tuple[str, ...] = ()  # passed through to sbatch for every job

    def common(self) -> list[str]:
        opts = [f"--{key}={value}" for key, value in
                (("partition", self.partition), ("account", self.account), ("time", self.time))
                if value]  # fmt: skip
        return [*opts, *self.extra]

    def cpus(self, gpus: int) -> int:
        if self.cpus_per_task is not None:
            return self.cpus_per_task
        return CPUS_PER_GPU * gpus if gpus else 1


@dataclass
class JobSpec:
    """One job: ``name`` is the DVC stage (``train@X``) or ``prepare`` / ``reports``."""

    name: str
    command: list[str]
    options: list[str]  # #SBATCH lines of the script
    after: list[str] = field(default_factory=list)  # jobs of this launch that must succeed first
    training: bool = False  # USR1 before the time limit -> checkpoint -> requeue


def stale_stages(repo: Path) -> set[str]:
    """The stages ``dvc status`` reports as changed (a stage that never ran included)."""
    result = subprocess.run(
        dvc_command("status", "--json"), cwd=repo, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"`dvc status` failed in {repo}: {result.stderr.strip()[-2000:]}; fix the workspace "
            "(e.g. `dvc status` there) before launching"
        )
    return set(json.loads(result.stdout or "{}"))


def options(kind: str, res: Resources) -> list[str]:
    """The sbatch options of a ``prepare`` / ``train`` / ``evaluate`` / ``reports`` job."""
    if kind == "train":
        gpu = [f"--gpus-per-node={res.gpus_per_node}"] if res.gpus_per_node else []
        return [
            f"--nodes={res.nodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={res.cpus(res.gpus_per_node)}",
            *gpu,
            f"--signal=B:USR1@{res.signal_s}",
            "--requeue",
            *res.common(),
        ]
    gpus = 1 if kind == "evaluate" and res.gpus_per_node else 0
    gpu = [f"--gpus-per-node={gpus}"] if gpus else []
    return ["--nodes=1", "--ntasks=1", f"--cpus-per-task={res.cpus(gpus)}", *gpu, *res.common()]


def plan_jobs(
    configs: Sequence[str],
    stage: str,
    stale: set[str],
    res: Resources,
    final: Sequence[str],
    prepare: Sequence[str] = ("prepare",),
) -> tuple[list[JobSpec], list[str]]:
    """The jobs to submit, in submission order, and the stages left out as up to date.

    A stale shared stage (``download@*``, ``prepare@*``, ``resolve@*``) makes every
    configuration's jobs run after a ``prepare`` job that runs ``dvc repro`` of ``prepare`` (the
    launched datasets' ``prepare@<dataset>`` and runs' ``resolve@<run>``,
    :func:`dnlrepro.launch.stages.shared_stages`; their outputs may change the rows);
    evaluation follows a training of this launch; ``reports`` (the ``final`` stages: tables,
    diff, report) follows every other job, with ``stage="all"`` only.
    """
    jobs: list[JobSpec] = []
    skipped: list[str] = []
    shared = bool(prepare) and any(_needed(s, prepare) for s in stale)
    first = ["prepare"] if shared else []
    if shared:
        command = dvc_command("--wait-for-lock", "repro", *prepare)
        jobs.append(JobSpec("prepare", command, options("prepare", res)))
    for config in configs:
        train, evaluate = runs.stage("train", config), runs.stage("evaluate", config)
        run_train = stage in ("train", "all") and (shared or train in stale)
        run_eval = stage in ("evaluate", "all") and (run_train or shared or evaluate in stale)
        if run_train:
            jobs.append(
                JobSpec(train, stage_command(train), options("train", res), first, training=True)
            )
        if run_eval:
            after = [train] if run_train else first
            jobs.append(JobSpec(evaluate, stage_command(evaluate), options("evaluate", res), after))
        skipped += [
            name
            for name, runs, wanted in ((train, run_train, stage != "evaluate"),
                                       (evaluate, run_eval, stage != "train"))
            if wanted and not runs
        ]  # fmt: skip
    if stage == "all" and final and (jobs or stale & set(final)):
        after = [j.name for j in jobs]
        jobs.append(JobSpec("reports", stage_command(*final), options("reports", res), after))
    return jobs, skipped


def _needed(name: str, prepare: Sequence[str]) -> bool:
    """Is stale shared stage ``name`` one the ``prepare`` job runs? (A group name such as
    ``prepare`` stands for every shared stage.)"""
    kind, key = parse_stage(name)
    if not is_shared(name):
        return False
    if any(parse_stage(p)[1] is None for p in prepare):
        return True
    datasets = {k for p in prepare for g, k in [parse_stage(p)] if g == "prepare"}
    return name in prepare or (kind == "download" and key in datasets)


def log_pattern(launch_dir: Path, name: str) -> Path:
    """Where Slurm writes the job's output (``%j``: the job id; appended to on requeue)."""
    return launch_dir / "logs" / f"{name}-%j.out"


def write_scripts(jobs: list[JobSpec], launch_dir: Path, root: Path) -> dict[str, Path]:
    """Render one ``<name>.sbatch`` per job into ``launch_dir``; returns name -> script path."""
    (launch_dir / "logs").mkdir(parents=True, exist_ok=True)
    node_script = launch_dir / NODE_SCRIPT
    source = resources.files("dnlrepro.launch.slurm").joinpath(f"templates/{NODE_SCRIPT}")
    with resources.as_file(source) as path:
        shutil.copyfile(path, node_script)
    node_script.chmod(0o755)
    text = resources.files("dnlrepro.launch.slurm").joinpath("templates/job.sbatch.j2").read_text()
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(text)
    scripts = {}
    for job in jobs:
        script = launch_dir / f"{job.name}.sbatch"
        text = template.render(
            name=job.name,
            launch=launch_dir.name,
            root=root,
            log=log_pattern(launch_dir, job.name),
            options=job.options,
            training=job.training,
            node_script=shlex.quote(str(node_script)),
            command=shlex.join(job.command),
        )
        script.write_text(text, encoding="utf-8")
        script.chmod(0o755)
        scripts[job.name] = script
    return scripts
