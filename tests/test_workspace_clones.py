"""One installed package, many workspaces: every path resolves against the clone a command runs in.

* two clones driven by this interpreter (the package installed once) each write only into
  themselves, and the checkout the package is installed from is never written;
* ``dvc exp run --temp`` runs the stages in DVC's temporary copy, whose outputs become the
  experiment (``dvc exp show``), while the parent repository's data folders stay empty;
* a non-editable install (a wheel installed with ``pip --target``) reads the clone's params and
  writes into the clone, never into the source tree it was built from.

Each clone is the checkout's tracked and not-ignored files (``clone_repo`` in conftest.py) with a
smaller smoke profile, so the stages run in seconds on CPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CFG = "dnl_r50-d8_512x1024_40k_cityscapes"  # the cheapest row on CPU (32x64 crops, batch 2)
WRITTEN = ("results", "reports", "data", "downloads", "work_dirs", "mlflow.db", "mlruns")

pytestmark = pytest.mark.slow


def env(**extra: str) -> dict[str, str]:
    """This interpreter's environment; the workspace and MLflow store come from the folder."""
    out = dict(os.environ)
    for key in ("DNLREPRO_WORKSPACE", "MLFLOW_TRACKING_URI", "PYTHONPATH", "DVC_ROOT"):
        out.pop(key, None)
    out.update(DNLREPRO_PYTHON=sys.executable, OMP_NUM_THREADS="2", **extra)
    return out


def run(cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, (
        f"{args} in {cwd} exited {result.returncode}\n"
        + result.stdout[-4000:]
        + result.stderr[-4000:]
    )
    return result


def snapshot(root: Path, parts: tuple[str, ...] = WRITTEN) -> dict[str, tuple]:
    """(size, mtime, sha256 of files up to 16 MB) of every file under ``root/parts``."""
    out: dict[str, tuple] = {}
    for part in parts:
        top = root / part
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            digest = hashlib.sha256(f.read_bytes()).hexdigest() if st.st_size < 2**24 else None
            out[str(f.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def receipt(root: Path, name: str) -> dict:
    """``results/data/<name>.json``; ``downloads/ade20k`` names a download receipt."""
    return json.loads((root / "results" / "data" / f"{name}.json").read_text())


def stages_run(result: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", result.stdout)


# -- Two clones, one interpreter -----------------------------------------------------------------


def test_two_clones_one_interpreter_write_only_into_themselves(
    tmp_path: Path, clone_repo, shrink_smoke
) -> None:
    a, b = clone_repo(tmp_path / "a"), clone_repo(tmp_path / "b")
    shrink_smoke(a, train=2, val=1)
    shrink_smoke(b, train=3, val=2)  # other sizes: each clone must read its own params
    import dnlrepro

    package = Path(dnlrepro.__file__).resolve()
    assert not package.is_relative_to(tmp_path)  # the code is not the clones' copy
    repo_before, b_before = snapshot(REPO), snapshot(b)

    for clone, (train, val), other in ((a, (2, 1), b), (b, (3, 2), a)):
        other_before = snapshot(other)
        result = run(clone, "-m", "dvc", "repro", "prepare")  # both prepare@ and their downloads
        assert set(stages_run(result)) == {
            f"{kind}@{d}" for kind in ("download", "prepare") for d in ("cityscapes", "ade20k")
        }
        assert f"workspace {clone.resolve()}, profile smoke" in result.stdout + result.stderr
        assert {p.name for p in (clone / "downloads" / "cityscapes" / "synthetic").iterdir()} == {
            "gtFine_trainvaltest.zip",
            "leftImg8bit_trainvaltest.zip",
        }
        ade_archives = clone / "downloads" / "ade20k" / "synthetic"
        assert {p.name for p in ade_archives.iterdir()} == {"ADEChallengeData2016.zip"}
        assert (clone / "data" / "cityscapes" / "synthetic").is_dir()
        assert (clone / "data" / "ade" / "synthetic" / "ADEChallengeData2016").is_dir()
        assert (clone / "mlflow.db").is_file()  # the store of this workspace ($DVC_ROOT)
        # Committed receipts name workspace-relative paths and this clone's sizes.
        assert receipt(clone, "downloads/cityscapes")["folder"] == "downloads/cityscapes/synthetic"
        city = receipt(clone, "cityscapes")
        assert city["data_root"] == "data/cityscapes/synthetic"
        assert city["counts"] == {"train": train, "val": val}
        # shrink_smoke keeps at least one ADE20K batch (4 images) to train on
        assert receipt(clone, "ade20k")["counts"] == {"training": max(train, 4), "validation": val}
        assert str(clone) not in json.dumps(
            [receipt(clone, n) for n in ("downloads/cityscapes", "downloads/ade20k", "cityscapes")]
        )
        assert snapshot(other) == other_before  # the other clone is untouched
        if clone == a:
            assert snapshot(b) == b_before
            assert not (b / "downloads").exists() and not (b / "data").exists()

    assert snapshot(REPO) == repo_before  # nor is the checkout the package is installed from


# -- dvc exp run --temp ----------------------------------------------------------------------------


def assert_shown(shown: dict, full: dict, where: str = "") -> None:
    """Every value ``dvc exp show`` reports is the file's (it leaves out nulls and lists)."""
    for key, value in shown.items():
        if isinstance(value, dict):
            assert_shown(value, full[key], f"{where}{key}.")
        else:
            assert full[key] == value, f"{where}{key}"


def test_dvc_exp_run_temp_records_the_experiment_and_leaves_the_parent_alone(
    tmp_path: Path, clone_repo, shrink_smoke
) -> None:
    repo = clone_repo(tmp_path / "exp", git=True)
    shrink_smoke(repo, train=2, val=2)
    subprocess.run(["git", "commit", "-qam", "smaller smoke profile"], cwd=repo, check=True)
    before = snapshot(repo)

    # DVC_ROOT names this (parent) repository inside the temporary copy; DNLREPRO_PYTHON picks
    # the interpreter (the copy has no .venv).
    setting = "params/profiles.yaml:smoke.settings.eval_max_images=1"
    target = f"evaluate@{CFG}"
    result = run(
        repo, "-m", "dvc", "exp", "run", "--temp", "-n", "one-image", "-S", setting, target
    )
    dataset = CFG.rsplit("_", 1)[1]  # only this row's dataset is downloaded and prepared
    ran = stages_run(result)
    assert sorted(ran) == sorted(
        [f"resolve@{CFG}", f"download@{dataset}", f"prepare@{dataset}", f"train@{CFG}", target]
    )
    assert ran.index(f"download@{dataset}") < ran.index(f"prepare@{dataset}")
    assert ran[-2:] == [f"train@{CFG}", target]  # the setting reaches both through resolve@
    temp = re.search(r"workspace (\S+), profile smoke", result.stdout + result.stderr)
    assert temp, result.stdout[-3000:]
    assert Path(temp.group(1)).is_relative_to(repo / ".dvc" / "tmp" / "exps")

    # The parent workspace got no data, downloads, checkpoints or results: only the shared
    # MLflow store, which lives at $DVC_ROOT by design (engine/tracking.py).
    after = snapshot(repo)
    assert {k for k in after if not k.startswith(("mlflow.db", "mlruns/"))} == set(before)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not any((repo / d).exists() for d in ("data", "downloads", "work_dirs"))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True)
    assert status.stdout == b""
    with sqlite3.connect(repo / "mlflow.db") as db:
        found = db.execute("SELECT value FROM tags WHERE key LIKE 'dvc.stage.%'")
        tags = {v for (v,) in found}  # dvc.stage.train, dvc.stage.evaluate: one run, both
    assert {f"train@{CFG}", target} <= tags

    show = run(repo, "-m", "dvc", "exp", "show", "--json")
    (baseline,) = (r for r in json.loads(show.stdout) if r["name"] == "main")
    (exp,) = (x["revs"][0] for x in baseline["experiments"] if x["revs"][0]["name"] == "one-image")
    params = exp["data"]["params"]["params/profiles.yaml"]["data"]["smoke"]["settings"]
    assert params["eval_max_images"] == 1
    metrics = exp["data"]["metrics"][f"results/{CFG}/metrics.json"]["data"]
    assert {"mIoU", "mIoU_ms_flip", "mAcc", "aAcc", "baseline_mIoU"} == set(metrics)
    # The experiment's commit holds what exp show reports, and -S reached the stage.
    committed = {
        f: subprocess.run(
            ["git", "show", f"{exp['rev']}:results/{CFG}/{f}.json"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for f in ("metrics", "eval", "run", "train_summary")
    }
    assert_shown(metrics, json.loads(committed["metrics"]))
    evaluated = json.loads(committed["eval"])
    assert evaluated["protocol"]["image_count"] == 1  # -S reached the stage
    assert evaluated["protocol"]["profile"] == "smoke"
    # ... and names no path of the temporary copy (paths are relative to the workspace).
    assert [f for f, text in committed.items() if str(repo) in text] == []
    assert {"config", "checkpoint_sha256", "image_count"} <= set(evaluated["protocol"])
    assert {"mIoU", "mAcc", "aAcc"} <= set(evaluated["single_scale"]) & set(evaluated["ms_flip"])
    run_json = json.loads(committed["run"])
    assert run_json["config"] == CFG and run_json["profile"] == "smoke"
    assert exp["data"]["metrics"][f"timings/{CFG}/speed.json"]["data"]["fps"] > 0
    # The workspace row still shows the committed (parent's) numbers.
    main_metrics = baseline["data"]["metrics"][f"results/{CFG}/metrics.json"]["data"]
    assert_shown(main_metrics, json.loads((repo / "results" / CFG / "metrics.json").read_text()))


# -- A wheel, installed elsewhere --------------------------------------------------------------

PROBE = """\
import json, runpy, sys
kind, target, out, *argv = sys.argv[1:]
sys.argv = [target, *argv]
code = 0
try:
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
except SystemExit as e:
    code = e.code
files = {
    n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] == "dnlrepro"
}
with open(out, "w") as f:
    json.dump(files, f)
sys.exit(code)
"""


def builds_offline() -> bool:
    """This venv can build the wheel itself: setuptools>=68 (pyproject) with bdist_wheel."""
    try:
        version = tuple(int(x) for x in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    # setuptools >= 70.1 has bdist_wheel built in; older ones need the `wheel` package.
    has_wheel = importlib.util.find_spec("wheel") is not None
    return version >= (70, 1) or (version >= (68, 0) and has_wheel)


def test_wheel_install_works_from_a_clone(tmp_path: Path, clone_repo) -> None:
    # Build from a clean copy: an in-tree build writes build/ and *.egg-info into the source.
    repo_before = snapshot(REPO)
    source = clone_repo(tmp_path / "source")
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    isolation = ["--no-build-isolation"] if builds_offline() else []  # else pip needs an index
    run(
        tmp_path,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        *isolation,
        "-w",
        str(wheels),
        str(source),
    )
    (wheel,) = wheels.glob("dnlrepro-*.whl")
    run(tmp_path, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel))
    assert (site / "dnlrepro" / "reports" / "templates" / "table.md.j2").is_file()

    clone = clone_repo(tmp_path / "clone")
    params = clone / "params" / f"{CFG}.yaml"
    params.write_text(params.read_text().replace("\n  lr: 0.01\n", "\n  lr: 0.0123\n", 1))
    assert "\n  lr: 0.0123\n" in params.read_text()

    def probe(kind: str, target: str, *argv: str, path: str = str(site)) -> str:
        out = tmp_path / "modules.json"
        result = run(clone, "-c", PROBE, kind, target, str(out), *argv, PYTHONPATH=path)
        modules = json.loads(out.read_text())
        assert modules, "dnlrepro was not imported"
        outside = {n: f for n, f in modules.items() if not Path(f).resolve().is_relative_to(site)}
        assert outside == {}, f"modules not from the wheel: {outside}"
        return result.stdout + result.stderr

    shown = probe("module", "dnlrepro.cli", "show-config", "--config", CFG, "--flat")
    assert "schedule.lr: 0.0123" in shown  # the clone's params, not the checkout's

    probe("path", "pipeline/download.py", "ade20k", path=f"{site}{os.pathsep}{clone / 'pipeline'}")
    archives = {p.name for p in (clone / "downloads" / "ade20k" / "synthetic").iterdir()}
    assert archives == {"ADEChallengeData2016.zip"}
    assert receipt(clone, "downloads/ade20k")["folder"] == "downloads/ade20k/synthetic"

    table = clone / "reports" / "cityscapes.md"
    table.unlink()
    probe("module", "dnlrepro.cli", "tables")  # the templates are package data of the wheel
    assert f"[config](../params/{CFG}.yaml)" in table.read_text()

    assert snapshot(REPO) == repo_before
    assert not (REPO / "build").exists()
