"""Checkpoints reach teammates and CI through a DVC remote; profiles switch as the README says.

"origin" is a scratch git repository: this checkout (``clone_repo``) with the smoke profile
shrunk to 4+1 synthetic images and 1 iteration, the registry cut to one Cityscapes and one
ADE20K row, and ``profile: paper`` committed. Then, as documented (docs/pipeline.md):

1. the README's profile-switch command (``dnlrepro profile``) with ``smoke`` for ``paper`` (the
   paper profile needs real data and GPUs), then ``dvc repro``: the whole DAG under the new
   profile;
2. ``git commit`` of ``dvc.lock``, ``results/``, ``timings/``, ``reports/``, a local-folder
   remote (``dvc remote add -d``) and ``dvc push``;
3. a teammate: ``git clone`` + ``dvc pull`` + ``dvc repro --allow-missing`` runs nothing, and a
   plain ``dvc repro`` re-runs only the stages whose ``cache: false`` outputs a pull cannot
   restore (``downloads/``, ``data/``), never a training or an evaluation; the committed files
   stay byte-identical;
4. the README's command with ``paper`` itself: ``dvc repro --dry`` then plans every stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import write_runs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# The fewest rows the DAG runs with: `prepare` reads each dataset's data root from a row of it.
ROWS = ("dnl_r50-d8_512x1024_40k_cityscapes", "dnl_r50-d8_512x512_80k_ade20k")
PER_ROW = {f"{stage}@{row}" for stage in ("resolve", "train", "evaluate") for row in ROWS}
SHARED = {f"{stage}@{d}" for stage in ("download", "prepare") for d in ("cityscapes", "ade20k")}
# What git tracks and the pipeline writes: a teammate's clone must keep these byte-identical.
COMMITTED = ("dvc.lock", "results", "timings", "reports")


def switch_command(profile: str) -> str:
    """The README's profile-switch line (section "Profiles"), for ``profile``, with this
    interpreter for ``.venv/bin/dnlrepro`` (the copy has no venv)."""
    lines = [
        line.split("#")[0].strip()
        for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith(".venv/bin/dnlrepro profile ")
    ]
    assert len(lines) == 1, f"README.md: expected one `dnlrepro profile NAME` line, got {lines}"
    assert lines[0] in (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8")
    assert lines[0] == ".venv/bin/dnlrepro profile paper", f"README.md: untested: {lines[0]}"
    return f"{shlex.quote(sys.executable)} -m dnlrepro.cli profile {profile}"


def env() -> dict[str, str]:
    """This interpreter for the stages; workspace and MLflow store come from the folder."""
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DNLREPRO_WORKSPACE", "MLFLOW_TRACKING_URI", "PYTHONPATH", "DVC_ROOT")
    }
    out.update(DNLREPRO_PYTHON=sys.executable, OMP_NUM_THREADS="2")
    return out


def sh(cwd: Path, command: str | list[str], ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command,
        shell=isinstance(command, str),
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if ok:
        assert result.returncode == 0, (
            f"{command} in {cwd} exited {result.returncode}\n"
            + result.stdout[-4000:]
            + result.stderr[-4000:]
        )
    return result


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(cwd, [sys.executable, "-m", "dvc", *args])


def git(cwd: Path, *args: str) -> str:
    return sh(cwd, ["git", *args]).stdout


def stages_run(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout))


def digests(root: Path, parts: tuple[str, ...] = COMMITTED) -> dict[str, str]:
    """sha256 of every file under ``root/parts``."""
    out = {}
    for part in parts:
        top = root / part
        for f in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def without_data_hash(lock: Path) -> dict:
    """``dvc.lock`` without the prepare stages' hashes of their ``data/`` folders."""
    stages = yaml.safe_load(lock.read_text())["stages"]
    for name, stage in stages.items():
        for out in stage.get("outs", []) if name.startswith("prepare@") else []:
            if out["path"].startswith("data/"):
                del out["md5"]
    return stages


def shrink(root: Path, shrink_smoke) -> None:
    """4+1 images (ADE20K's batch is 4), 1 iteration, two ms+flip ratios (``shrink_smoke``), the
    registry's ``ROWS`` only, no recorded smoke baseline."""
    shrink_smoke(root, train=4, val=1)
    path = root / "params" / "published.yaml"
    registry = yaml.safe_load(path.read_text())
    registry["configs"] = {k: v for k, v in registry["configs"].items() if k in ROWS}
    assert set(registry["configs"]) == set(ROWS)
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    write_runs(root)
    baseline = json.loads((root / "params" / "smoke_baseline.json").read_text())
    baseline["configs"] = {}
    (root / "params" / "smoke_baseline.json").write_text(json.dumps(baseline))


@dataclass
class Origin:
    root: Path
    remote: Path
    switch: subprocess.CompletedProcess  # the `dvc repro` after the documented switch
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, clone_repo, shrink_smoke) -> Origin:
    top = tmp_path_factory.mktemp("dvc-remote")
    root = clone_repo(top / "origin", git=True)
    shrink(root, shrink_smoke)
    params = root / "params.yaml"
    params.write_text(re.sub(r"(?m)^profile: .*$", "profile: paper", params.read_text()))
    write_runs(root)
    git(root, "commit", "-qam", "paper profile, smaller smoke profile, fewer rows")
    seconds: dict[str, float] = {}

    start = time.monotonic()
    sh(root, switch_command("smoke"))
    switched = dvc(root, "repro")
    seconds["switch + dvc repro"] = time.monotonic() - start
    git(root, "add", "-A")
    git(root, "commit", "-qm", "dvc repro (smoke)")

    start = time.monotonic()
    remote = top / "remote"
    dvc(root, "remote", "add", "-d", "local", str(remote))
    dvc(root, "push")
    git(root, "commit", "-qam", "DVC remote")
    seconds["dvc push"] = time.monotonic() - start
    return Origin(root, remote, switched, seconds)


def test_switch_runs_the_whole_dag_under_the_new_profile(origin: Origin) -> None:
    assert stages_run(origin.switch) >= {*SHARED, *PER_ROW, "tables", "diff", "report"}
    text = (origin.root / "params.yaml").read_text()
    assert re.search(r"(?m)^profile: smoke$", text)
    assert text.startswith("# The one switch of the pipeline")  # comments kept
    for table in ("cityscapes", "ade20k"):
        assert "Profile: `smoke`" in (origin.root / "reports" / f"{table}.md").read_text()
    for row in ROWS:
        run = json.loads((origin.root / "results" / row / "run.json").read_text())
        assert run["profile"] == "smoke"
    assert dvc(origin.root, "status", "--json").stdout.strip() in ("{}", "")
    assert git(origin.root, "status", "--porcelain") == ""


def test_fresh_clone_pull_and_repro_runs_no_training(origin: Origin, tmp_path: Path) -> None:
    mate = tmp_path / "mate"
    git(tmp_path, "clone", "-q", str(origin.root), str(mate))
    committed = digests(mate)
    assert not (mate / "work_dirs").exists()

    # The remote holds the checkpoints and nothing else (datasets are never pushed).
    pushed = [p for p in origin.remote.rglob("*") if p.is_file()]
    assert sorted(p.stat().st_size for p in pushed) == sorted(
        (origin.root / "work_dirs" / row / "final.pth").stat().st_size for row in ROWS
    )

    start = time.monotonic()
    pulled = dvc(mate, "pull")
    checkpoints = {mate / "work_dirs" / row / "final.pth" for row in ROWS}
    assert all(p.is_file() for p in checkpoints), pulled.stdout + pulled.stderr
    for row in ROWS:  # the pulled weights are the ones the committed results were measured with
        summary = json.loads((mate / "results" / row / "train_summary.json").read_text())
        weights = (mate / "work_dirs" / row / "final.pth").read_bytes()
        assert hashlib.sha256(weights).hexdigest() == summary["checkpoint_sha256"]

    nothing = dvc(mate, "repro", "--allow-missing")
    assert stages_run(nothing) == set(), nothing.stdout
    assert digests(mate) == committed
    origin.seconds["clone + pull + repro --allow-missing"] = time.monotonic() - start

    # A plain `dvc repro` rebuilds the cache: false outputs no remote holds (the synthetic
    # archives, the prepared data): same bytes, so no training, evaluation or report re-runs.
    start = time.monotonic()
    plain = dvc(mate, "repro")
    assert stages_run(plain) == SHARED, plain.stdout
    assert digests(mate, ("results", "timings", "reports")) == {
        k: v for k, v in committed.items() if k != "dvc.lock"
    }
    # dvc.lock: at most the hash of data/ changes (its manifest records the archives' mtimes).
    assert without_data_hash(mate / "dvc.lock") == without_data_hash(origin.root / "dvc.lock")
    assert dvc(mate, "status", "--json").stdout.strip() in ("{}", "")
    origin.seconds["dvc repro (download, prepare)"] = time.monotonic() - start
    print(f"\ntimings (s): {json.dumps({k: round(v) for k, v in origin.seconds.items()})}")


def test_switch_to_paper_plans_every_stage(origin: Origin) -> None:
    """The README's command verbatim; ``--dry`` (the paper profile needs real data and GPUs)."""
    sh(origin.root, switch_command("paper"))
    before = digests(origin.root, (*COMMITTED, "params"))
    try:
        planned = dvc(origin.root, "repro", "--dry")
        assert stages_run(planned) >= {*SHARED, *PER_ROW, "tables", "diff", "report"}
        assert "profile: paper" in git(origin.root, "diff", "params.yaml")
        assert digests(origin.root, (*COMMITTED, "params")) == before  # --dry wrote nothing
    finally:
        git(origin.root, "checkout", "--", "params.yaml", "params/runs.yaml")
