"""DVC stage ``prepare@<dataset>``: extract + convert + validate one dataset, create the MLflow DB.

Archives come from ``download@<dataset>``, the data root from the profile's configurations
(paper: ``data/cityscapes``, ``data/ade/ADEChallengeData2016`` as in mmseg; synthetic profiles:
a ``synthetic/`` subfolder of those). The image counts checked are the real datasets' or, for a
profile with a miniature, the miniature's. The dataset's data folder is the stage's ``cache:
false, persist: true`` output (so a fresh clone re-creates it); ``results/data/<dataset>.json``
is a small committed digest of the prepared files (from ``<data-root>/manifest.json``, without
its timestamps) that train/evaluate of that dataset depend on, so they re-run exactly when their
prepared data changes. The MLflow store is created here because the sqlite DB must exist and be
migrated before parallel training stages touch it.
"""

from __future__ import annotations

import hashlib
import json
import os

from common import dataset_arg, run_stage, setup_with_profile
from dnlrepro.acquire.download import archive_folder
from dnlrepro.acquire.prepare import prepare
from dnlrepro.core.config import load_config
from dnlrepro.core.files import write_json
from dnlrepro.core.registry import names_of
from dnlrepro.track.tracking import init_db


def main() -> int:
    dataset = dataset_arg()
    ws, profile = setup_with_profile()
    # Every configuration of a dataset shares its data root (test_config checks it).
    root = ws.path(load_config(names_of(dataset, ws)[0], profile, ws=ws).data.data_root)
    expect = profile.expected_counts(dataset)  # None: prepare() checks the real counts
    archives = archive_folder(dataset, ws, profile.settings.data_source == "synthetic")
    nproc = min(8, os.cpu_count() or 1)
    manifest = prepare(dataset, archives, root, expect, nproc=nproc)
    # The per-file sha256 list identifies the data; archive mtimes in the manifest do not.
    files = manifest.get("files", manifest)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    receipt = {
        "profile": profile.name,
        "data_root": ws.relative(root),
        "counts": manifest.get("counts"),
        "files": len(files),
        "files_sha256": digest,
    }
    write_json(ws.results / "data" / f"{dataset}.json", receipt, sort_keys=True)
    init_db()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
