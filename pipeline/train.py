"""DVC stage ``train@<config>``: produce ``work_dirs/<config>/final.pth`` + the training summary.

Outputs: ``results/<config>/train_summary.json`` (deterministic: config, batch, losses, last
validation, weights' sha256), ``results/<config>/{train,lr,val}_curve.csv`` (DVC plots) and
``timings/<config>/train.json`` (wall time, peak memory: machine-dependent).

* smoke / paper: train (paper: through torchrun with the profile's ``nproc_per_node`` x
  ``nnodes``). Resume state lives in ``work_dirs/<config>/scratch/<digest>/``: not a declared
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
from dnlrepro.config import load_config
from dnlrepro.data import download
from dnlrepro.engine.train import train
from dnlrepro.engine.train_summary import write_curves
from dnlrepro.files import file_digest, write_json
from dnlrepro.profile import Profile
from dnlrepro.workspace import Workspace


def fetch_published(ws: Workspace, name: str, final: Path, summary: Path) -> None:
    (source,) = download.fetch("checkpoints", download.default_dest("checkpoints", ws), [name])
    shutil.copyfile(source, final)
    # The stage's timing output: nothing was trained here (the README has the run's Mem).
    timing = {"config": name, "trained": False, "memory_kind": None}
    write_json(ws.timings / name / "train.json", timing)
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


def run_training(ws: Workspace, profile: Profile, name: str, final: Path, summary: Path) -> None:
    cfg = load_config(name, profile, ws=ws)
    timing = ws.timings / name / "train.json"
    scratch = ws.work_dirs / name / "scratch" / cfg.digest()[:16]
    if profile.settings.launcher == "torchrun":
        torchrun(
            profile,
            *("train", "--config", name, "--profile", profile.name),
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
    shutil.rmtree(ws.work_dirs / name / "scratch", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    name = parser.parse_args().config
    ws, profile = setup()
    final = ws.work_dirs / name / "final.pth"
    summary = ws.results / name / "train_summary.json"
    final.parent.mkdir(parents=True, exist_ok=True)
    if profile.settings.train:
        run_training(ws, profile, name, final, summary)
    else:
        fetch_published(ws, name, final, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
