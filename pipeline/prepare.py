"""DVC stage ``prepare``: extract + convert + validate both datasets, create the MLflow DB.

Calls ``dnlrepro prepare`` per dataset (archives from the download stage, data root from the
configurations of the profile). The ``data/`` folder is the stage's ``cache: false, persist:
true`` output (so a fresh clone re-creates it); ``results/data/<dataset>.json`` is a small
committed digest of the prepared files (from ``<data-root>/manifest.json``, without its
timestamps) that train/evaluate of that dataset depend on, so they re-run exactly when their
prepared data changes. ``dnlrepro mlflow-init`` runs here because the
sqlite DB must exist and be migrated before parallel training stages touch it.
"""

from __future__ import annotations

import hashlib
import json

from common import (
    DATA_RECEIPTS,
    DATASETS,
    REAL_ARCHIVES,
    SMOKE_ARCHIVES,
    data_root,
    dnlrepro,
    setup,
    write_json,
)
from dnlrepro.config import profile_settings


def main() -> int:
    profile = setup()
    settings = profile_settings(profile)
    synthetic = settings.get("data_source") == "synthetic"
    archives = SMOKE_ARCHIVES if synthetic else REAL_ARCHIVES
    for dataset in DATASETS:
        root = data_root(dataset, profile)
        argv = [
            "prepare",
            "--dataset",
            dataset,
            "--archives",
            str(archives),
            "--data-root",
            str(root),
        ]
        if synthetic:  # the counts are known exactly; the real ones are checked by prepare
            spec = settings["synthetic"][dataset]
            argv += ["--expect-train", str(spec["train"]), "--expect-val", str(spec["val"])]
        dnlrepro(*argv)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"`dnlrepro prepare` did not write {manifest}")
        data = json.loads(manifest.read_text(encoding="utf-8"))
        # The per-file sha256 list identifies the data; archive mtimes in the manifest do not.
        files = data.get("files", data)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        receipt = {
            "profile": profile,
            "data_root": str(root),
            "counts": data.get("counts"),
            "files": len(files),
            "files_sha256": digest,
        }
        write_json(DATA_RECEIPTS / f"{dataset}.json", receipt)
    dnlrepro("mlflow-init")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
