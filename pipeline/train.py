"""DVC stage ``train@<run>``: produce ``work_dirs/<run>/final.pth`` + the training summary.

A run is one (configuration, seed) of ``params/runs.yaml``; everything it computes with comes
from ``resolve@<run>`` (``results/<run>/config.yaml`` and block ``train`` of ``run.yaml``).
Outputs: ``results/<run>/train_summary.json`` (deterministic: config, seed, batch, losses, last
validation, weights' sha256), ``results/<run>/{train,lr,val}_curve.csv`` (DVC plots) and
``timings/<run>/train.json`` (wall time, peak memory: machine-dependent), ``results/<run>/log.json``
(the run in mmseg 0.x's log format) and ``results/<run>/trajectory.json`` (the comparison with
the reference trajectory of ``run.yaml``'s ``train.reference``, :mod:`dnlrepro.engine.trajectory`).

* source ``train``: :func:`dnlrepro.engine.launcher.run_training`, in this process or through
  torchrun depending on the process count alone. Resume state lives in
  ``work_dirs/<run>/scratch/<digest>/``: not a declared output (DVC deletes declared outputs
  before re-running a stage; a ``persist`` output would disable the run-cache), keyed by the
  resolved-config digest so a changed configuration never resumes a stale run, and removed
  once the run has finished.
* source ``published``: the published mmseg checkpoint that ``download@<dataset>`` fetched and
  verified becomes the stage's checkpoint output.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from common import run_stage, setup, stage_arg
from dnlrepro.core import resolve
from dnlrepro.core.config import Config
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.core.resolve import RunPlan
from dnlrepro.core.runs import stage
from dnlrepro.core.workspace import Workspace
from dnlrepro.engine.launcher import run_training
from dnlrepro.engine.train_summary import write_curves
from dnlrepro.engine.trajectory import write_outputs

logger = logging.getLogger(__name__)


def copy_published(ws: Workspace, plan: RunPlan, final: Path, summary: Path) -> None:
    source = ws.path(plan.train.checkpoint_file or "")
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: the published checkpoint of {plan.config} is missing; "
            f"`dvc repro {stage('download', plan.dataset)}` fetches and verifies it"
        )
    shutil.copyfile(source, final)
    # The stage's timing output: nothing was trained here (the README has the run's Mem).
    timing = {"config": plan.config, "trained": False, "memory_kind": None}
    write_json(ws.timings / plan.run / "train.json", timing)
    write_curves({}, summary.parent)  # the stage's plot outputs: no curve without training
    write_outputs(
        None, {}, {"exp_name": f"{plan.config}.py", "note": "not trained here"}, summary.parent
    )
    record = {
        "config": plan.config,
        "profile": "published",
        "trained": False,
        "source": plan.train.checkpoint,
        "sha256": file_digest(final),
        "note": "published mmseg checkpoint; memory and time of its training are the README's",
    }
    write_json(summary, record)


def reference_args(ws: Workspace, plan: RunPlan) -> list[str]:
    """``dnlrepro train``'s reference options from the run plan (docs/pipeline.md, "Reference
    trajectories"). The stage never downloads: a missing published log is an error naming the
    download stage; a smoke reference not yet recorded is a warning naming the command."""
    ref = plan.train.reference
    if ref is None:
        return []
    log = ws.path(ref.log)
    if not log.is_file():
        if ref.source == "published":
            raise FileNotFoundError(
                f"{log}: the published training log of {plan.config} (the reference trajectory) "
                f"is missing; `dvc repro download@{plan.dataset}` fetches and pins it (or set "
                "settings.reference.source: off in params/profiles.yaml)"
            )
        logger.warning(
            "%s: no recorded reference trajectory yet, nothing compared; once train@%s has "
            "completed, `dnlrepro reflog record %s` records one",
            log, plan.run, plan.config,
        )  # fmt: skip
        return []
    argv = ["--reference-log", str(log), "--miou-tolerance", str(ref.miou_tolerance)]
    argv += ["--loss-band", str(ref.loss_band)]
    return argv + (["--stop-if-off-track"] if ref.stop_if_off_track else [])


def train(ws: Workspace, cfg: Config, plan: RunPlan, final: Path, summary: Path) -> None:
    scratch = ws.work_dirs / plan.run / "scratch" / cfg.digest()[:16]
    argv = [
        *("--config", str(ws.results / plan.run / resolve.CONFIG_FILE)),
        *("--work-dir", str(scratch), "--final-path", str(final)),
        *("--summary-out", str(summary)),
        *("--timing-out", str(ws.timings / plan.run / "train.json")),
    ]
    if plan.train.val_max_images is not None:
        argv += ["--eval-max-images", str(plan.train.val_max_images)]
    argv += reference_args(ws, plan)
    run_training(argv, plan.train.gpus, plan.train.nnodes)
    # The run is complete: nothing is left to resume, and 12 stale copies would fill the disk.
    shutil.rmtree(ws.work_dirs / plan.run / "scratch", ignore_errors=True)


def main() -> int:
    key = stage_arg()
    ws = setup()
    cfg, plan = resolve.read(ws, key)
    final = ws.work_dirs / key / "final.pth"
    summary = ws.results / key / "train_summary.json"
    final.parent.mkdir(parents=True, exist_ok=True)
    if plan.train.source == "published":
        copy_published(ws, plan, final, summary)
    else:
        train(ws, cfg, plan, final, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
