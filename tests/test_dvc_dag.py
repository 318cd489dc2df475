"""The DVC DAG: stage names, the foreach list, and per-configuration invalidation.

The invalidation test copies the pipeline definition and the code into a temporary DVC repo,
records fake outputs for every stage (``dvc commit``), edits one file and asks ``dvc status``
which stages changed -- no stage command runs, so it takes seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnlrepro.config import CONFIG_NAMES, REPO_ROOT, dataset_of

ONE = "dnl_r101-d8_512x512_80k_ade20k"


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False
    )
    return result


def test_experiments_list_is_the_config_list():
    experiments = yaml.safe_load((REPO_ROOT / "params" / "experiments.yaml").read_text())
    assert list(experiments["experiments"]) == list(CONFIG_NAMES)
    for name, item in experiments["experiments"].items():
        assert item == {"dataset": dataset_of(name)}


def test_stage_names_follow_the_mmseg_config_names():
    result = dvc(REPO_ROOT, "stage", "list", "--name-only")
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    expected = [
        "download",
        "prepare",
        *(f"train@{n}" for n in CONFIG_NAMES),
        *(f"evaluate@{n}" for n in CONFIG_NAMES),
        "tables",
        "diff",
    ]
    assert names == expected


def fake_outputs(repo: Path) -> None:
    """Every declared output of every stage, so `dvc commit` can record a lock file."""
    for path in ("downloads/smoke/a.zip", "data/smoke/x.txt"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x")
    for name in ("downloads", "cityscapes", "ade20k"):
        (repo / "results" / "data").mkdir(parents=True, exist_ok=True)
        (repo / "results" / "data" / f"{name}.json").write_text("{}")
    for name in CONFIG_NAMES:
        (repo / "work_dirs" / name).mkdir(parents=True)
        (repo / "work_dirs" / name / "final.pth").write_text(name)
        (repo / "results" / name).mkdir(parents=True)
        for f in ("train_summary", "metrics", "benchmark", "run"):
            (repo / "results" / name / f"{f}.json").write_text(json.dumps({"n": name}))
    (repo / "reports").mkdir()
    for f in ("cityscapes.md", "ade20k.md", "diff.md", "diff.json"):
        (repo / "reports" / f).write_text("{}")


@pytest.fixture(scope="module")
def locked_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dag")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for d in ("params", "pipeline", "src"):
        shutil.copytree(REPO_ROOT / d, repo / d, ignore=ignore)
    for f in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / f, repo / f)
    assert dvc(repo, "init", "--no-scm", "-q").returncode == 0
    fake_outputs(repo)
    result = dvc(repo, "commit", "-f", "-q")
    assert result.returncode == 0, result.stderr
    return repo


def changed_stages(repo: Path) -> set[str]:
    result = dvc(repo, "status", "--json")
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout or "{}"))


def edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))
    return text


@pytest.mark.slow
def test_editing_one_configuration_invalidates_only_its_stages(locked_copy: Path):
    assert changed_stages(locked_copy) == set()
    path = locked_copy / "params" / f"{ONE}.yaml"
    original = edit(path, "lr: 0.01", "lr: 0.02")
    try:
        assert changed_stages(locked_copy) == {f"train@{ONE}", f"evaluate@{ONE}"}
    finally:
        path.write_text(original)
    assert changed_stages(locked_copy) == set()


@pytest.mark.slow
def test_other_profiles_and_published_numbers_touch_only_what_uses_them(locked_copy: Path):
    profiles = locked_copy / "params" / "profiles.yaml"
    original = edit(profiles, "nproc_per_node: 4", "nproc_per_node: 8")  # the paper block
    try:
        assert changed_stages(locked_copy) == set()  # params.yaml selects smoke
    finally:
        profiles.write_text(original)
    published = locked_copy / "params" / "published.yaml"
    original = edit(published, "mIoU: 78.61", "mIoU: 78.62")
    try:
        assert changed_stages(locked_copy) == {"tables", "diff"}
    finally:
        published.write_text(original)


@pytest.mark.slow
def test_model_code_invalidates_training_and_evaluation_only(locked_copy: Path):
    path = locked_copy / "src" / "dnlrepro" / "models" / "__init__.py"
    original = path.read_text()
    path.write_text(original + "\n# touched\n")
    try:
        changed = changed_stages(locked_copy)
    finally:
        path.write_text(original)
    assert changed == {f"{s}@{n}" for s in ("train", "evaluate") for n in CONFIG_NAMES}
