"""DVC stage ``train@<run>``: produce ``work_dirs/<run>/final.pth`` + the training summary.

A run is one (configuration, seed) of ``params/runs.yaml`` (:mod:`dnlrepro.core.runs`); ``<run>`` is
the configuration's name for a row's first seed. Outputs: ``results/<run>/train_summary.json``
(deterministic: config, seed, batch, losses, last validation, weights' sha256),
``results/<run>/{train,lr,val}_curve.csv`` (DVC plots) and ``timings/<run>/train.json`` (wall
time, peak memory: machine-dependent).

* smoke / paper: train (paper: through torchrun with the profile's ``nproc_per_node`` x
  ``nnodes``). Resume state lives in ``work_dirs/<run>/scratch/<digest>/``: not a declared
  output (DVC deletes declared outputs before re-running a stage; a ``persist`` output would
  disable the run-cache), keyed by the resolved-config digest so a changed configuration never
  resumes a stale run, and removed once the run has finished.
* published: no training; the published mmseg checkpoint is fetched (sha256-prefix verified) and
  becomes the stage's checkpoint output.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import run_stage, setup, torchrun
from dnlrepro.acquire import download
from dnlrepro.core.config import load_config
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.core.profile import Profile
from dnlrepro.core.runs import Run, resolve
from dnlrepro.core.workspace import Workspace
from dnlrepro.engine.train import train
from dnlrepro.engine.train_summary import write_curves


def fetch_published(ws: Workspace, run: Run, final: Path, summary: Path) -> None:
    name = run.config
    (source,) = download.fetch("checkpoints", download.default_dest("checkpoints", ws), [name])
    shutil.copyfile(source, final)
    # The stage's timing output: nothing was trained here (the README has the run's Mem).
    timing = {"config": name, "trained": False, "memory_kind": None}
    write_json(ws.timings / run.key / "train.json", timing)
    write_curves({}, summary.parent)  # the stage's plot outputs: no curve without training
    write_json(
        summary,
        {
            "config": name,
            "profile": "published",
            "trained": False,
            "source": download.checkpoint_urls([name])[name],
            "sha256": file_digest(final),
            "note": "published mmseg checkpoint; memory and time of its training are the README's",
        },
    )


def run_training(ws: Workspace, profile: Profile, run: Run, final: Path, summary: Path) -> None:
    cfg = load_config(run.config, profile, {"schedule.seed": run.seed}, ws=ws)
    timing = ws.timings / run.key / "train.json"
    scratch = ws.work_dirs / run.key / "scratch" / cfg.digest()[:16]
    if profile.settings.launcher == "torchrun":
        torchrun(
            profile,
            *("train", "--config", run.config, "--profile", profile.name),
            *("--set", f"schedule.seed={run.seed}"),
            *("--work-dir", str(scratch), "--final-path", str(final)),
            *("--summary-out", str(summary), "--timing-out", str(timing)),
        )
    else:
        train(
            cfg,
            scratch,
            final_path=final,
            summary_out=summary,
            timing_out=timing,
            eval_max_images=profile.settings.eval_max_images,
        )
    # The run is complete: nothing is left to resume, and 12 stale copies would fill the disk.
    shutil.rmtree(ws.work_dirs / run.key / "scratch", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a key of params/runs.yaml")
    key = parser.parse_args().run
    ws, profile = setup()
    run = resolve(ws, profile, key)
    final = ws.work_dirs / key / "final.pth"
    summary = ws.results / key / "train_summary.json"
    final.parent.mkdir(parents=True, exist_ok=True)
    if profile.settings.train:
        run_training(ws, profile, run, final, summary)
    else:
        fetch_published(ws, run, final, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
