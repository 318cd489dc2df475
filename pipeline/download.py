"""DVC stage ``download``: get the archives the profile needs, write a receipt.

* smoke:     ``dnlrepro synth`` writes synthetic archives with the real names and formats into
             ``downloads/smoke`` (sizes from ``params/profiles.yaml`` smoke.settings).
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

from common import (
    DATA_RECEIPTS,
    DATASETS,
    REAL_ARCHIVES,
    SMOKE_ARCHIVES,
    dnlrepro,
    setup,
    write_json,
)
from dnlrepro.config import profile_settings
from dnlrepro.data.download import file_digest


def synthesize(settings: dict) -> Path:
    synthetic = settings.get("synthetic") or {}
    missing = [k for k in ("seed", *DATASETS) if k not in synthetic]
    if missing:
        raise ValueError(
            f"params/profiles.yaml: smoke.settings.synthetic lacks {missing}; it needs seed and "
            "per-dataset train/val counts and sizes"
        )
    # A clean folder: a stale archive from other sizes must not survive into the receipt.
    shutil.rmtree(SMOKE_ARCHIVES, ignore_errors=True)
    for dataset in DATASETS:
        spec = dict(synthetic[dataset])
        argv = [
            "synth",
            "--dataset",
            dataset,
            "--out",
            str(SMOKE_ARCHIVES),
            "--seed",
            str(synthetic["seed"]),
            "--train",
            str(spec.pop("train")),
            "--val",
            str(spec.pop("val")),
        ]
        for key, value in spec.items():  # sizes: width/height, min_size/max_size ...
            argv += [f"--{key.replace('_', '-')}", str(value)]
        dnlrepro(*argv)
    return SMOKE_ARCHIVES


def fetch_real(settings: dict) -> Path:
    local = os.environ.get("DNLREPRO_LOCAL_DATA")
    extra = ["--local", local] if local else []
    for what in DATASETS:
        dnlrepro("download", "--what", what, "--dest", str(REAL_ARCHIVES), *extra)
    if settings.get("train", True):
        # ImageNet backbones (§2.2); training resolves them from the same folder.
        dnlrepro("download", "--what", "pretrained", "--dest", str(REAL_ARCHIVES), *extra)
    else:
        dnlrepro(
            "download",
            "--what",
            "checkpoints",
            "--dest",
            str(REAL_ARCHIVES / "checkpoints"),
            *extra,
        )
    return REAL_ARCHIVES


def main() -> int:
    profile = setup()
    settings = profile_settings(profile)
    source = settings.get("data_source")
    if source == "synthetic":
        folder = synthesize(settings)
    elif source == "real":
        folder = fetch_real(settings)
    else:
        raise ValueError(
            f"params/profiles.yaml: {profile}.settings.data_source is {source!r}; "
            "use 'synthetic' or 'real'"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".part"))
    receipt = {
        "profile": profile,
        "folder": str(folder),
        "files": {
            str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
            for p in files
        },
    }
    write_json(DATA_RECEIPTS / "downloads.json", receipt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
