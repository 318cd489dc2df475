"""End to end: the real DAG with `dvc repro` in a temporary copy, on an even smaller profile.

§ numbers refer to docs/reference.md.

The copy's smoke profile trains 1 iteration on 2+1 synthetic images, and its registry
(``params/published.yaml`` ``configs:``, the pipeline's rows) keeps two of the twelve
configurations (one Cityscapes 769x769 slide/align_corners row, one ADE20K row). Then the documented
baseline workflow (`dnlrepro diff --update-baseline`, `dvc repro`) and the MLflow runs are checked,
and finally a third registry row that was never run must appear in the tables as `-` and in the
diff as `missing`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import keep_rows

REPO = Path(__file__).resolve().parents[1]
RUN = ("dnl_r50-d8_769x769_40k_cityscapes", "dnl_r50-d8_512x512_80k_ade20k")
UNRUN = "dnl_r101-d8_512x1024_40k_cityscapes"  # a registry row added after the runs, never run
SEED1 = f"{RUN[1]}-seed1"  # the ADE20K row trains seeds 0 and 1 (two runs, one table row)
RUNS = (*RUN, SEED1)


def shrink(repo: Path, shrink_smoke) -> None:
    shrink_smoke(repo, train=2, val=1)
    path = repo / "params" / "profiles.yaml"  # two seeds for the ADE20K row (dnlrepro.core.runs)
    profiles = yaml.safe_load(path.read_text())
    profiles["smoke"]["seeds"].append({"match": RUN[1], "seeds": [0, 1]})
    path.write_text(yaml.safe_dump(profiles, sort_keys=False))
    keep_rows(repo, RUN)
    baseline = json.loads((repo / "params" / "smoke_baseline.json").read_text())
    baseline["configs"] = {}
    (repo / "params" / "smoke_baseline.json").write_text(json.dumps(baseline))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, shrink_smoke) -> Path:
    repo = tmp_path_factory.mktemp("e2e")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for d in ("params", "pipeline", "src"):
        shutil.copytree(REPO / d, repo / d, ignore=ignore)
    for f in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / f, repo / f)
    shrink(repo, shrink_smoke)
    assert run(repo, "-m", "dvc", "init", "--no-scm", "-q").returncode == 0
    return repo


def env_for(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the stages must use <repo>/mlflow.db
    env.pop("DNLREPRO_WORKSPACE", None)  # the stages find their workspace themselves
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
            rows[cells[9].split("params/")[1].removesuffix(".yaml)")] = cells
    return rows


def check_tables(repo: Path, rows: tuple[str, ...]) -> None:
    """Both tables list the registry ``rows`` (README order); numbers only where measured."""
    registry = yaml.safe_load((repo / "params" / "published.yaml").read_text())["configs"]
    assert set(registry) == set(rows)
    city, ade = table_rows(repo / "reports/cityscapes.md"), table_rows(repo / "reports/ade20k.md")
    assert list(city) == [n for n in registry if registry[n]["dataset"] == "cityscapes"]
    assert list(ade) == [n for n in registry if registry[n]["dataset"] == "ade20k"]
    for name in rows:
        cells = {**city, **ade}[name]
        layout, mem, fps, miou, ms = cells[4:9]
        if name in RUN:
            metrics = json.loads((repo / "results" / name / "metrics.json").read_text())
            if name == RUN[1]:  # two seeds: mean ± sample std (n=2)
                seeds = [
                    metrics,
                    json.loads((repo / "results" / SEED1 / "metrics.json").read_text()),
                ]
                for cell, key in ((miou, "mIoU"), (ms, "mIoU_ms_flip")):
                    values = [m[key] for m in seeds]
                    mean, std = statistics.fmean(values), statistics.stdev(values)
                    assert cell.startswith(f"{mean:.2f} ± {std:.2f} (n=2)"), (cell, values)
            else:
                assert miou.split(" (const. ")[0] == f"{metrics['mIoU']:.2f}"
                assert ms == f"{metrics['mIoU_ms_flip']:.2f}"
            assert miou.endswith(f" (const. {metrics['baseline_mIoU']:.2f})")
            # smoke trains runtime.gpus 1 x 2: another protocol than the published 4 x 2 / 4 x 4
            assert layout in ("1x2 (paper 4x2)", "1x4 (paper 4x4)"), layout
            speed = json.loads((repo / "timings" / name / "speed.json").read_text())
            assert speed["fps"] > 0 and speed["mem_gb"] is None  # CPU: no CUDA Mem (§5.5)
            assert (mem, fps) == ("-", "-")  # CPU timings stay out of the tables
        else:
            assert (mem, fps, miou, ms) == ("-", "-", "-", "-")
    assert "Profile: `smoke`" in (repo / "reports/cityscapes.md").read_text()


def stages_run(result: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", result.stdout)


@pytest.mark.slow
def test_dvc_repro_end_to_end(repo: Path):
    result = run(repo, "-m", "dvc", "repro")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # The registry is the list of rows: only its two rows are trained and evaluated, the
    # ADE20K row once per seed.
    per_row = {f"{s}@{n}" for s in ("resolve", "train", "evaluate") for n in RUNS}
    shared = {f"{s}@{d}" for s in ("download", "prepare") for d in ("cityscapes", "ade20k")}
    assert set(stages_run(result)) == {*shared, *per_row, "tables", "diff", "report"}
    check_tables(repo, RUN)

    report = json.loads((repo / "reports/diff.json").read_text())
    assert report["profile"] == "smoke"
    assert {r["config"] for r in report["rows"]} == set(RUN)
    published = [r for r in report["rows"] if r["reference"] == "published"]
    assert {r["verdict"] for r in published} == {"not comparable"}
    seeded = [r for r in published if r["config"] == RUN[1] and r["metric"] == "mIoU"]
    assert [(r["n"], sorted(r["seeds"])) for r in seeded] == [(2, ["0", "1"])]
    assert "max(tolerance, 2 x std)" in seeded[0]["rule"]
    baseline = [r for r in report["rows"] if r["reference"] == "smoke baseline"]
    assert {r["verdict"] for r in baseline} == {"missing"}

    # MLflow: one run per (configuration, seed) holding its training and its evaluation, each
    # stage named in a tag `dvc.stage.<stage>`; a row's seeds share the tag `config` (mlflow
    # ui: group by it) and differ in the tag `seed`
    with sqlite3.connect(repo / "mlflow.db") as db:
        stages = {v for (v,) in db.execute("SELECT value FROM tags WHERE key LIKE 'dvc.stage.%'")}
        seeds = db.execute(
            "SELECT s.value, COUNT(*) FROM tags c JOIN tags s ON s.run_uuid = c.run_uuid "
            "WHERE c.key = 'config' AND c.value = ? AND s.key = 'seed' GROUP BY s.value",
            (RUN[1],),
        ).fetchall()
    assert {s for s in per_row if not s.startswith("resolve@")} <= stages  # resolve@: no MLflow
    assert sorted(seeds) == [("0", 1), ("1", 1)]  # one run per seed: train + evaluate in it

    # the documented baseline workflow: record, re-run the diff stage, everything recorded passes
    cmd = ["-m", "dnlrepro.cli", "diff", "--update-baseline", "--configs", *RUN]
    result = run(repo, *cmd)
    assert result.returncode == 0, result.stderr
    result = run(repo, "-m", "dvc", "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stages_run(result) == ["diff", "report"]
    report = json.loads((repo / "reports/diff.json").read_text())
    recorded = [r for r in report["rows"] if r["reference"] == "smoke baseline"]
    assert {r["config"] for r in recorded} == set(RUN)
    assert {r["run"] for r in recorded} == set(RUNS)  # each seed against its own record
    assert {r["verdict"] for r in recorded} == {"pass"}
    check = run(repo, "-m", "dnlrepro.cli", "check", "reports/diff.json")
    assert check.returncode == 0, check.stdout + check.stderr  # every row is recorded
    assert run(repo, "-m", "dvc", "status", "-q").returncode == 0  # dvc.lock is consistent

    # A registry row that was never run: `-` in the tables, 'missing' in the diff, and `check`
    # fails unless told to allow it. Only the reports are re-rendered (--single-item).
    keep_rows(repo, (*RUN, UNRUN))
    result = run(repo, "-m", "dvc", "repro", "--single-item", "tables", "diff", "report")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stages_run(result) == ["tables", "diff", "report"]
    check_tables(repo, (*RUN, UNRUN))
    assert f"`{UNRUN}`: not evaluated yet" in (repo / "reports/cityscapes.md").read_text()
    report = json.loads((repo / "reports/diff.json").read_text())
    assert {r["config"] for r in report["rows"]} == {*RUN, UNRUN}
    unrun = [r for r in report["rows"] if r["config"] == UNRUN]
    assert {r["verdict"] for r in unrun if r["reference"] == "smoke baseline"} == {"missing"}
    check = run(repo, "-m", "dnlrepro.cli", "check", "reports/diff.json")
    assert check.returncode == 1  # the configuration not run is 'missing'
    check = run(repo, "-m", "dnlrepro.cli", "check", "reports/diff.json", "--allow-missing")
    assert check.returncode == 0, check.stdout
    status = run(repo, "-m", "dvc", "status", "--json")
    assert status.returncode == 0, status.stderr
    # the new row's stages, and download@ (it reads the registry's rows: their weights)
    assert set(json.loads(status.stdout)) == {
        *(f"{s}@{UNRUN}" for s in ("resolve", "train", "evaluate")),
        "download@cityscapes",
        "download@ade20k",
    }


@pytest.mark.slow
def test_committed_results_do_not_name_the_clone(repo: Path):
    """Committed results are the same in every clone: paths are relative to the workspace.

    (metrics.json's protocol.checkpoint and benchmark.json's checkpoint once named the absolute
    path of the clone's work_dirs/.)
    """
    files = sorted((repo / "results").rglob("*.json"))
    if not any(f.name == "metrics.json" for f in files):
        pytest.skip("needs the results of test_dvc_repro_end_to_end (run the whole module)")
    assert [str(f.relative_to(repo)) for f in files if str(repo) in f.read_text()] == []
