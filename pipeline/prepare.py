"""DVC stage ``prepare``: extract + convert + validate both datasets, create the MLflow DB.

Calls ``dnlrepro prepare`` per dataset (archives from the download stage, data root from the
configurations of the profile) and copies a digest of each ``<data-root>/manifest.json`` to
``results/data/<dataset>.json``: that small committed file is what train/evaluate depend on, so
they re-run when the prepared data changes. ``dnlrepro mlflow-init`` runs here because the
sqlite DB must exist and be migrated before parallel training stages touch it.
"""

from __future__ import annotations

import json

from common import (
    DATA_RECEIPTS,
    DATASETS,
    REAL_ARCHIVES,
    SMOKE_ARCHIVES,
    data_root,
    dnlrepro,
    setup,
    sha256,
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
        counts = {k: v for k, v in data.items() if isinstance(v, int | float | str)}
        write_json(
            DATA_RECEIPTS / f"{dataset}.json",
            {
                "profile": profile,
                "data_root": str(root),
                "manifest": str(manifest),
                "manifest_sha256": sha256(manifest),
                "summary": counts,
            },
        )
    dnlrepro("mlflow-init")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
