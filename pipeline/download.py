"""DVC stage ``download@<dataset>``: get one dataset's archives and weights, write a receipt.

One path for every profile: fetch -> verify -> link into ``downloads/<dataset>`` (then
``prepare@<dataset>`` extracts and checks). Only where the archives come from differs:

* ``data_source: synthetic`` (smoke): archives in the real names and formats, written once at
  the profile's miniature sizes into ``downloads/synthetic-source/<dataset>``
  (:func:`dnlrepro.acquire.synth.local_source`), which the downloader reads as it reads a
  user's ``DNLREPRO_LOCAL_DATA``; they land in ``downloads/<dataset>/synthetic`` so that
  switching profiles never mixes them with real archives of the same names.
* ``data_source: real``: the real archives from their sites, or linked from
  ``DNLREPRO_LOCAL_DATA=/path`` when set.

Weights: the ImageNet backbones the dataset's configurations start from (none when a profile
trains from random weights) into ``downloads/``, or, for a profile that does not train, the
rows' published checkpoints into ``downloads/checkpoints``; with real data also the rows'
published training logs into ``downloads/reference_logs`` (the reference trajectories that
training compares itself with, pinned by sha256 on first download). One stage per dataset, so ADE20K
(public) is fetched and its rows run without Cityscapes credentials (``dvc repro
--keep-going``). ``downloads/<dataset>`` is ``cache: false`` (no second copy of 11 GB) and
``persist: true`` (a re-run resumes/verifies instead of deleting); the receipt
``results/data/downloads/<dataset>.json`` lists what the run saw (names, sizes, sha256).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common import dataset_arg, run_stage, setup_with_profile
from dnlrepro.acquire import download, synth
from dnlrepro.core.config import load_config
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.core.profile import Profile
from dnlrepro.core.registry import names_of
from dnlrepro.core.workspace import Workspace

NOT_ARCHIVES = (".part",)


def source(ws: Workspace, profile: Profile, dataset: str, folder: Path) -> Path | None:
    """Where the archives are linked from (None: downloaded from their sites)."""
    if profile.settings.data_source == "synthetic":
        sizes = profile.miniature.synthetic()  # load_profile checked that there is one
        local = synth.local_source(ws.downloads / "synthetic-source" / dataset, dataset, sizes)
        os.environ[download.EXPECTED_SHA256_ENV] = str(local / synth.EXPECTED_SHA256)
        # Links only, re-made every run: an archive of other sizes must not survive into the
        # receipt.
        shutil.rmtree(folder, ignore_errors=True)
        return local
    local = os.environ.get("DNLREPRO_LOCAL_DATA")
    return Path(local) if local else None


def fetch_all(ws: Workspace, profile: Profile, dataset: str, folder: Path) -> list[Path]:
    """The archives, then the weights (and, with real data, the published training logs);
    returns the weights and logs. Each is attempted even when one fails, so what can be fetched
    is there for the next run; the error names every failure."""
    rows = list(names_of(dataset, ws))
    if profile.settings.train:  # the rows that start from ImageNet weights (docs/reference.md §2.2)
        what = "pretrained"
        rows = [n for n in rows if load_config(n, profile, ws=ws).model.backbone.pretrained]
    else:
        what = "checkpoints"
    local = source(ws, profile, dataset, folder)
    steps = [(dataset, folder, None, local)]
    if rows:
        local_weights = None if profile.settings.data_source == "synthetic" else local
        steps.append((what, download.default_dest(what, ws), rows, local_weights))
    if profile.settings.data_source == "real":  # the published training logs (small, pinned)
        rows_all = list(names_of(dataset, ws))
        names = [Path(u).name for u in download.log_urls(rows_all).values()]
        # linked from DNLREPRO_LOCAL_DATA when all are there (offline machines), else downloaded
        logs_from = local if local and all((local / n).is_file() for n in names) else None
        steps.append(("logs", download.default_dest("logs", ws), rows_all, logs_from))
    failed, weights = [], []
    for step, dest, configs, linked_from in steps:
        try:
            got = download.fetch(step, dest, configs, local=linked_from)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            failed.append(f"{step}: {e}")
            continue
        weights += got if step in (what, "logs") else []
    if failed:
        hint = " (the ADE20K rows do not need it: `dvc repro --keep-going`)"
        raise RuntimeError("; ".join(failed) + (hint if dataset == "cityscapes" else ""))
    return weights


def main() -> int:
    dataset = dataset_arg()
    ws, profile = setup_with_profile()
    synthetic = profile.settings.data_source == "synthetic"
    folder = download.archive_folder(dataset, ws, synthetic)
    weights = fetch_all(ws, profile, dataset, folder)
    logs = [p for p in weights if p.name.endswith(".log.json")]  # the reference trajectories
    # This profile's archives only: the real folder's synthetic/ subfolder is another profile's;
    # partial transfers and the verification caches (*.verified.json) are not archives.
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(NOT_ARCHIVES))
    receipt = {
        "profile": profile.name,
        "dataset": dataset,
        "folder": ws.relative(folder),
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files},
        "weights": {ws.relative(p): {"bytes": p.stat().st_size} for p in weights if p not in logs},
        # sha256 too: train@ depends on this receipt, so it re-runs when a reference log changes
        "reference_logs": {
            ws.relative(p): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in logs
        },
    }
    write_json(ws.results / "data" / "downloads" / f"{dataset}.json", receipt, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
