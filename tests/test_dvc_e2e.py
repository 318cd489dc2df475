"""End to end: the real DAG with `dvc repro` in a temporary copy, on an even smaller profile.

The copy's smoke profile trains 1 iteration on 2+1 synthetic images and runs two of the twelve
configurations (one Cityscapes 769x769 slide/align_corners row, one ADE20K row); the tables must
still list all 8 + 4 rows, with `-` where nothing was measured. Then the documented baseline
workflow (`dnlrepro diff --update-baseline`, `dvc repro`) and the MLflow runs are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnlrepro.config import CONFIG_NAMES, REPO_ROOT

RUN = ("dnl_r50-d8_769x769_40k_cityscapes", "dnl_r50-d8_512x512_80k_ade20k")


def shrink(repo: Path) -> None:
    profiles_path = repo / "params" / "profiles.yaml"
    profiles = yaml.safe_load(profiles_path.read_text())
    smoke = profiles["smoke"]
    smoke["overrides"].append(
        {
            "match": "*",
            "set": {
                "schedule.max_iters": 1,
                "schedule.checkpoint_interval": 1,
                "schedule.eval_interval": 1,
            },
        }
    )
    synthetic = smoke["settings"]["synthetic"]
    for dataset in ("cityscapes", "ade20k"):
        synthetic[dataset].update(train=2, val=1)
    smoke["settings"]["benchmark"] = {"num_images": 3, "warmup": 1, "train_iters": 0}
    profiles_path.write_text(yaml.safe_dump(profiles, sort_keys=False))
    experiments = {n: {"dataset": "ade20k" if n.endswith("ade20k") else "cityscapes"} for n in RUN}
    (repo / "params" / "experiments.yaml").write_text(yaml.safe_dump({"experiments": experiments}))
    baseline = json.loads((repo / "params" / "smoke_baseline.json").read_text())
    baseline["configs"] = {}
    (repo / "params" / "smoke_baseline.json").write_text(json.dumps(baseline))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("e2e")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for d in ("params", "pipeline", "src"):
        shutil.copytree(REPO_ROOT / d, repo / d, ignore=ignore)
    for f in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / f, repo / f)
    shrink(repo)
    assert run(repo, "-m", "dvc", "init", "--no-scm", "-q").returncode == 0
    return repo


def env_for(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the stages must use <repo>/mlflow.db
    env.update(PYTHONPATH=str(repo / "src"), DNLREPRO_PYTHON=sys.executable, OMP_NUM_THREADS="2")
    return env


def run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=repo,
        env=env_for(repo),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def table_rows(path: Path) -> dict[str, list[str]]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("| DNL"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[8].split("params/")[1].removesuffix(".yaml)")] = cells
    return rows


@pytest.mark.slow
def test_dvc_repro_end_to_end(repo: Path):
    result = run(repo, "-m", "dvc", "repro")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    city, ade = table_rows(repo / "reports/cityscapes.md"), table_rows(repo / "reports/ade20k.md")
    assert len(city) == 8 and len(ade) == 4
    assert list(city) + list(ade) == list(CONFIG_NAMES)
    for name in CONFIG_NAMES:
        cells = {**city, **ade}[name]
        mem, fps, miou, ms = cells[4:8]
        metrics = (
            json.loads((repo / "results" / name / "metrics.json").read_text())
            if name in RUN
            else None
        )
        if name in RUN:
            assert miou == f"{metrics['single_scale']['mIoU']:.2f}"
            assert ms == f"{metrics['ms_flip']['mIoU']:.2f}"
            assert float(fps) > 0
            assert mem == "-"  # CPU: no CUDA max_memory_allocated (§5.5)
        else:
            assert (mem, fps, miou, ms) == ("-", "-", "-", "-")
    assert "Profile: `smoke`" in (repo / "reports/cityscapes.md").read_text()

    report = json.loads((repo / "reports/diff.json").read_text())
    assert report["profile"] == "smoke"
    assert {r["config"] for r in report["rows"]} == set(CONFIG_NAMES)
    published = [r for r in report["rows"] if r["reference"] == "published"]
    assert {r["verdict"] for r in published} == {"not comparable"}
    baseline = [r for r in report["rows"] if r["reference"] == "smoke baseline"]
    assert {r["verdict"] for r in baseline} == {"missing"}

    # MLflow: one training and one evaluation run per configuration, named by DVC stage
    with sqlite3.connect(repo / "mlflow.db") as db:
        stages = {v for (v,) in db.execute("SELECT value FROM tags WHERE key = 'dvc.stage'")}
    assert {f"{s}@{n}" for s in ("train", "evaluate") for n in RUN} <= stages

    # the documented baseline workflow: record, re-run the diff stage, everything recorded passes
    cmd = ["-m", "dnlrepro.cli", "diff", "--update-baseline", "--configs", *RUN]
    result = run(repo, *cmd)
    assert result.returncode == 0, result.stderr
    result = run(repo, "-m", "dvc", "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Running stage 'train@" not in result.stdout
    report = json.loads((repo / "reports/diff.json").read_text())
    recorded = [
        r for r in report["rows"] if r["reference"] == "smoke baseline" and r["config"] in RUN
    ]
    assert {r["verdict"] for r in recorded} == {"pass"}
    check = run(repo, "-m", "dnlrepro.cli", "check", "reports/diff.json")
    assert check.returncode == 1  # the 10 configurations not run are 'missing'
    check = run(repo, "-m", "dnlrepro.cli", "check", "reports/diff.json", "--allow-missing")
    assert check.returncode == 0, check.stdout
    assert run(repo, "-m", "dvc", "status", "-q").returncode == 0  # dvc.lock is consistent
