"""DVC stage ``train@<config>``: produce ``work_dirs/<config>/final.pth`` + the training summary.

* smoke / paper: ``dnlrepro train`` (paper: through torchrun with ``nproc_per_node`` x ``nnodes``
  from the profile settings). Resume state lives in ``work_dirs/<config>/scratch/<digest>/``: not
  a declared output (DVC deletes declared outputs before re-running a stage; a ``persist`` output
  would disable the run-cache), keyed by the resolved-config digest so a changed configuration
  never resumes a stale run, and removed once the run has finished.
* published: no training; the published mmseg checkpoint is fetched (sha256-prefix verified) and
  becomes the stage's checkpoint output.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import REAL_ARCHIVES, RESULTS, WORK_DIRS, dnlrepro, setup, torchrun, write_json
from dnlrepro.config import load_config, profile_settings
from dnlrepro.data.download import CHECKPOINT_URLS, file_digest


def fetch_published(name: str, final: Path, summary: Path) -> None:
    dest = REAL_ARCHIVES / "checkpoints"
    dnlrepro("download", "--what", "checkpoints", "--config", name, "--dest", str(dest))
    url = CHECKPOINT_URLS[name]
    source = dest / Path(url).name
    if not source.is_file():
        raise FileNotFoundError(f"`dnlrepro download` reported success but {source} is missing")
    shutil.copyfile(source, final)
    write_json(
        summary,
        {
            "config": name,
            "trained": False,
            "source": url,
            "sha256": file_digest(final),
            "note": "published mmseg checkpoint; memory and time of its training are the README's",
        },
    )


def train(name: str, profile: str, settings: dict, final: Path, summary: Path) -> None:
    cfg = load_config(name, profile)
    scratch = WORK_DIRS / name / "scratch" / cfg.digest()[:16]
    argv = [
        "train",
        "--config",
        name,
        "--profile",
        profile,
        "--work-dir",
        str(scratch),
        "--summary-out",
        str(summary),
    ]
    if settings.get("launcher", "none") == "torchrun":
        torchrun(int(settings.get("nproc_per_node", 1)), int(settings.get("nnodes", 1)), *argv)
    else:
        dnlrepro(*argv)
    produced = scratch / "final.pth"
    if not produced.is_file():
        raise FileNotFoundError(f"`dnlrepro train` finished without writing {produced}")
    produced.replace(final)
    # The summary names the scratch file, which is moved and then deleted: point it at the
    # declared output, relative to the repository root (the file is committed).
    data = json.loads(summary.read_text(encoding="utf-8"))
    data["checkpoint"] = str(final)
    write_json(summary, data)
    # The run is complete: nothing is left to resume, and 12 stale copies would fill the disk.
    shutil.rmtree(WORK_DIRS / name / "scratch", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    name = parser.parse_args().config
    profile = setup()
    settings = profile_settings(profile)
    final = WORK_DIRS / name / "final.pth"
    summary = RESULTS / name / "train_summary.json"
    final.parent.mkdir(parents=True, exist_ok=True)
    summary.parent.mkdir(parents=True, exist_ok=True)
    if settings.get("train", True):
        train(name, profile, settings, final, summary)
    else:
        fetch_published(name, final, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
