"""DVC stage ``download``: get the archives the profile needs, write a receipt.

* smoke:     synthetic archives with the real names and formats (``dnlrepro.data.synth``) into
             ``downloads/smoke``, at the sizes of ``params/profiles.yaml`` smoke.settings.synthetic.
* paper:     the real Cityscapes / ADE20K archives and the ImageNet backbones into ``downloads/``.
* published: the real archives and the twelve published checkpoints (sha256-prefix verified).

Set ``DNLREPRO_LOCAL_DATA=/path`` to link archives you already have instead of downloading. The
stage's output is the whole ``downloads/`` folder, declared ``cache: false`` (archives stay out
of git and out of the DVC cache: no second copy of 11 GB) and ``persist: true`` (a re-run, e.g.
after a code change, resumes/verifies instead of deleting what is there). A fresh clone has no
``downloads/``, so ``dvc repro`` runs this stage; ``results/data/downloads.json`` lists what the
run saw (names, sizes, sha256) for the record.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common import DATASETS, run_stage, setup, smoke_archives
from dnlrepro.data import download, synth
from dnlrepro.files import file_digest, write_json


def main() -> int:
    ws, profile = setup()
    if profile.settings.data_source == "synthetic":
        folder = smoke_archives(ws)
        # A clean folder: a stale archive from other sizes must not survive into the receipt.
        shutil.rmtree(folder, ignore_errors=True)
        for dataset in DATASETS:
            synth.write(dataset, folder, profile.synthetic_or_fail())
    else:
        folder = ws.downloads
        local = os.environ.get("DNLREPRO_LOCAL_DATA")
        local_path = Path(local) if local else None
        # ImageNet backbones to train (docs/reference.md §2.2), else the published checkpoints.
        weights = (
            ("pretrained", folder)
            if profile.settings.train
            else ("checkpoints", folder / "checkpoints")
        )
        # Each download is attempted even when an earlier one failed (e.g. no Cityscapes login),
        # so what can be fetched is there for the next run; the stage then fails naming all.
        failed = []
        for what, dest in (*((d, folder) for d in DATASETS), weights):
            try:
                download.fetch(what, dest, local=local_path)
            except (FileNotFoundError, ValueError, RuntimeError) as e:
                failed.append(f"{what}: {e}")
        if failed:
            raise RuntimeError("; ".join(failed))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".part"))
    receipt = {
        "profile": profile.name,
        "folder": ws.relative(folder),
        "files": {
            str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
            for p in files
        },
    }
    write_json(ws.results / "data" / "downloads.json", receipt, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
