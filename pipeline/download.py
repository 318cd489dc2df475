"""DVC stage ``download@<dataset>``: get one dataset's archives, write a receipt.

* smoke:     synthetic archives with the real names and formats (``dnlrepro.acquire.synth``) into
             ``downloads/<dataset>/synthetic``, at the sizes of ``params/profiles.yaml``
             smoke.settings.synthetic.
* paper:     the real archives into ``downloads/<dataset>``, and the ImageNet backbones of the
             dataset's rows into ``downloads/``.
* published: the real archives and the dataset's published checkpoints (sha256-prefix verified)
             into ``downloads/checkpoints``.

One stage per dataset, so ADE20K (public) is fetched and its rows run without Cityscapes
credentials (``dvc repro --keep-going`` goes on past a failed Cityscapes download). Set
``DNLREPRO_LOCAL_DATA=/path`` to link archives you already have instead of downloading. The
stage's output is ``downloads/<dataset>``, declared ``cache: false`` (archives stay out of git
and of the DVC cache: no second copy of 11 GB) and ``persist: true`` (a re-run, e.g. after a
code change, resumes/verifies instead of deleting what is there). A fresh clone has no
``downloads/``, so ``dvc repro`` runs this stage; ``results/data/downloads/<dataset>.json``
lists what the run saw (names, sizes, sha256) for the record. The backbones and checkpoints
stay outside the stage's folder because rows of both datasets share them; a training or
evaluation stage fetches (and verifies) its own if they are missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common import archives, dataset_arg, run_stage, setup
from dnlrepro.acquire import download, synth
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.core.registry import names_of

NOT_ARCHIVES = (".part", ".verified.json")


def main() -> int:
    dataset = dataset_arg()
    ws, profile = setup()
    folder = archives(ws, profile, dataset)
    weights: list[Path] = []
    if profile.settings.data_source == "synthetic":
        # A clean folder: a stale archive from other sizes must not survive into the receipt.
        shutil.rmtree(folder, ignore_errors=True)
        synth.write(dataset, folder, profile.synthetic_or_fail())
    else:
        local = os.environ.get("DNLREPRO_LOCAL_DATA")
        local_path = Path(local) if local else None
        rows = list(names_of(dataset, ws))
        # ImageNet backbones to train (docs/reference.md §2.2), else the published checkpoints.
        what = "pretrained" if profile.settings.train else "checkpoints"
        dest = download.default_dest(what, ws)
        # The weights are attempted even when the archives failed, so what can be fetched is
        # there for the next run; the stage then fails naming both.
        failed = []
        for step, dest_dir, configs in ((dataset, folder, None), (what, dest, rows)):
            try:
                got = download.fetch(step, dest_dir, configs, local=local_path)
            except (FileNotFoundError, ValueError, RuntimeError) as e:
                failed.append(f"{step}: {e}")
                continue
            if step == what:
                weights = got
        if failed:
            hint = " (the ADE20K rows do not need it: `dvc repro --keep-going`)"
            raise RuntimeError("; ".join(failed) + (hint if dataset == "cityscapes" else ""))
    # This profile's archives only: the real folder's synthetic/ subfolder is another profile's;
    # partial transfers and the verification caches (*.verified.json) are not archives.
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(NOT_ARCHIVES))
    receipt = {
        "profile": profile.name,
        "dataset": dataset,
        "folder": ws.relative(folder),
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files},
        "weights": {ws.relative(p): {"bytes": p.stat().st_size} for p in weights},
    }
    write_json(ws.results / "data" / "downloads" / f"{dataset}.json", receipt, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
