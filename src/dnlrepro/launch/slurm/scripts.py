"""The job scripts of a launch, written to ``work_dirs/slurm/<launch>/`` and kept there.

Every job is a plain sbatch script rendered from ``templates/job.sbatch.j2``: its resources as
``#SBATCH`` lines, then the one DVC command it runs. A user can read it, and resubmit it alone
with ``sbatch``. Training jobs also get ``torchrun-node.sh``, the per-node wrapper that
``srun`` starts once per node.
"""

from __future__ import annotations

import shlex
import shutil
from importlib import resources
from pathlib import Path

import jinja2

from dnlrepro.launch.slurm.plan import JobSpec

NODE_SCRIPT = "torchrun-node.sh"


def _template() -> jinja2.Template:
    text = resources.files("dnlrepro.launch.slurm").joinpath("templates/job.sbatch.j2").read_text()
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string(text)


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
    template = _template()
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
