"""The reference comparison inside real (tiny) training runs, and where runs find their reference.

Every run is the real R50 DNLNet at the smoke sizes on synthetic Cityscapes, 4 iterations.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dnlrepro.core import resolve, runs
from dnlrepro.core.config import Config, load_config
from dnlrepro.core.profile import load_profile
from dnlrepro.core.workspace import find
from dnlrepro.engine import reflog, train
from dnlrepro.engine.trajectory import OffTrackError

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-iteration run without a reference: its log.json becomes the reference."""
    from dnlrepro.acquire import prepare, synth

    base = tmp_path_factory.mktemp("traj")
    synth.write_cityscapes(base / "archives", n_train=8, n_val=2, width=128, height=64, seed=0)
    prepare.prepare("cityscapes", base / "archives", base / "root", expect=(8, 2))
    cfg = _cfg(base / "root")
    train.train(cfg, base / "a", track=False, summary_out=base / "a" / "summary.json")
    return {"cfg": cfg, "base": base, "log": base / "a" / "log.json"}


def _cfg(root: Path) -> Config:
    over = {
        "data.data_root": str(root),
        "schedule.max_iters": 4,
        "schedule.checkpoint_interval": 4,
        "schedule.eval_interval": 2,
        "schedule.log_interval": 1,
    }
    return load_config(CFG, "smoke", overrides=over)


def _ref(log: Path, **kw: Any) -> dict[str, Any]:
    return {"log": str(log), "miou_tolerance": 0.5, "loss_band": 0.5, **kw}


def test_training_writes_an_mmseg_log_and_no_comparison(recorded: dict[str, Any]) -> None:
    log = reflog.read(recorded["log"])
    assert [p.iter for p in log.train] == [1, 2, 3, 4]
    assert [p.iter for p in log.val] == [2, 4]
    assert log.meta["exp_name"] == f"{CFG}.py" and log.meta["seed"] == 0
    assert "decode.loss_seg" in log.train[0].values
    traj = json.loads((recorded["base"] / "a" / "trajectory.json").read_text())
    assert traj["reference"] is None
    assert (recorded["base"] / "a" / "trajectory_loss.csv").read_text() == "iter,curve,loss\n"


def test_same_run_against_its_recording_is_on_track(recorded: dict[str, Any]) -> None:
    out = recorded["base"] / "b"
    ref = _ref(recorded["log"], stop_if_off_track=True)
    train.train(recorded["cfg"], out, track=False, summary_out=out / "s.json", reference=ref)
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["compared_train_points"] == 4
    assert traj["max_lr_rel_error"] <= 1e-6
    assert traj["loss_verdict"] == "in band"
    assert [v["iter"] for v in traj["val"]] == [2, 4]
    assert all(v["on_track"] for v in traj["val"])
    assert [p["iter"] for p in traj["published"]["train"]] == [1, 2, 3, 4]
    loss_csv = (out / "trajectory_loss.csv").read_text().splitlines()
    assert loss_csv[0] == "iter,curve,loss" and len(loss_csv) == 1 + 4 + 4
    assert {line.split(",")[1] for line in loss_csv[1:]} == {"reference", "ours"}
    assert (out / "trajectory_val.csv").read_text().startswith("iter,curve,mIoU\n2,reference,")


def test_a_wrong_published_lr_stops_the_run(recorded: dict[str, Any], tmp_path: Path) -> None:
    lines = [json.loads(x) for x in recorded["log"].read_text().splitlines()]
    for line in lines:
        if line.get("mode") == "train" and line["iter"] == 2:
            line["lr"] = round(line["lr"] * 1.01, 5)
    wrong = reflog.write(tmp_path / "wrong.log.json", lines)
    with pytest.raises(OffTrackError, match=r"iteration 2: our lr .* published lr"):
        train.train(recorded["cfg"], tmp_path / "wd", track=False, reference=_ref(wrong))
    assert not (tmp_path / "wd" / "final.pth").exists()


def test_run_plans_name_their_reference() -> None:
    ws = find()
    paper = load_profile("paper", ws)
    run = runs.plan(paper, ws)[CFG]
    _, plan = resolve.resolve_run(ws, paper, run)
    ref = plan.train.reference
    assert ref is not None and ref.source == "published"
    assert ref.log == f"downloads/reference_logs/{CFG}-20200904_233629.log.json"
    assert ref.miou_tolerance == 1.0  # the registry's 40k tolerance under profile paper
    smoke = load_profile("smoke", ws)
    _, plan = resolve.resolve_run(ws, smoke, runs.plan(smoke, ws)[CFG])
    assert plan.train.reference.log == f"params/reference_logs/smoke/{CFG}.log.json"
    published = load_profile("published", ws)
    _, plan = resolve.resolve_run(ws, published, runs.plan(published, ws)[CFG])
    assert plan.train.reference is None  # nothing trains


def _workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import shutil

    from dnlrepro.core import workspace

    root = tmp_path / "ws"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copytree(find().params_dir, root / "params")
    monkeypatch.setenv(workspace.ENV_VAR, str(root))
    return root


def test_record_and_facts_commands(
    recorded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnlrepro import cli

    root = _workspace(tmp_path, monkeypatch)
    run_dir = root / "results" / f"{CFG}-seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "log.json").write_bytes(recorded["log"].read_bytes())
    (run_dir / "train_summary.json").write_text('{"iterations": 5, "profile": "smoke"}')
    assert cli.main(["reflog", "record", f"{CFG}-seed1"]) == 1  # incomplete: 4 of 5 iterations
    (run_dir / "train_summary.json").write_text('{"iterations": 4, "profile": "smoke"}')
    assert cli.main(["reflog", "record", f"{CFG}-seed1"]) == 0
    dest = root / "params" / "reference_logs" / "smoke" / f"{CFG}.log.json"
    assert dest.read_bytes() == recorded["log"].read_bytes()
    # facts: one downloaded published log, the other rows pending
    from test_reflog import _lines

    logs = root / "downloads" / "reference_logs"
    logs.mkdir(parents=True)
    reflog.write(logs / f"{CFG}-20200904_233629.log.json", _lines())
    assert cli.main(["reflog", "facts"]) == 0
    table = json.loads((root / "params" / "published_runs.json").read_text())
    assert table[CFG]["gpus"] == {"Tesla V100-SXM2-32GB": 4}
    assert table[CFG]["versions"]["MMCV"] == "1.1.1"
    assert sum("pending" in row for row in table.values()) == 11


def test_train_stage_never_downloads_a_missing_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.util

    from dnlrepro.core.workspace import Workspace

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "pipeline"))
    spec = importlib.util.spec_from_file_location("train_stage", "pipeline/train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    ws = Workspace(tmp_path)
    paper = load_profile("paper", find())
    _, plan = resolve.resolve_run(find(), paper, runs.plan(paper, find())[CFG])
    with pytest.raises(FileNotFoundError, match=r"`dvc repro download@cityscapes` fetches"):
        stage.reference_args(ws, plan)
    log = ws.path(plan.train.reference.log)
    log.parent.mkdir(parents=True)
    log.write_text("{}\n")
    argv = stage.reference_args(ws, plan)
    assert argv[:2] == ["--reference-log", str(log)] and "--miou-tolerance" in argv
    smoke = load_profile("smoke", find())
    _, plan = resolve.resolve_run(find(), smoke, runs.plan(smoke, find())[CFG])
    assert stage.reference_args(ws, plan) == []  # not recorded yet: a warning, no comparison
    assert "dnlrepro reflog record" in caplog.text


def test_rehearsal_checks_compared_runs_and_a_wrong_lr(
    recorded: dict[str, Any], tmp_path: Path
) -> None:
    """The paper rehearsal's two checks, on a workspace holding one tiny trained run."""
    import os
    import shutil

    from dnlrepro.core.config import write_resolved
    from dnlrepro.core.registry import load_published
    from dnlrepro.rehearse import checks

    root = tmp_path / "ws"
    (root / "params").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(find().registry_file, root / "params" / "published.yaml")
    name = load_published(root / "params" / "published.yaml").entry(CFG).log.rsplit("/", 1)[1]
    (root / "downloads" / "reference_logs").mkdir(parents=True)
    shutil.copy(recorded["log"], root / "downloads" / "reference_logs" / name)
    write_resolved(recorded["cfg"], root / "results" / CFG / "config.yaml")
    good = {"reference": name, "compared_train_points": 4, "max_lr_rel_error": 0.0}
    (root / "results" / CFG / "trajectory.json").write_text(json.dumps(good))
    off = root / "results" / "other"
    off.mkdir()
    (off / "trajectory.json").write_text('{"reference": null, "reason": "no reference"}')
    assert checks.compared(root, [CFG]).ok
    check = checks.compared(root, [CFG, "other"])
    assert not check.ok and "other (no reference)" in check.detail
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DNLREPRO_WORKSPACE", None)
    check = checks.wrong_lr_stops(root, env, CFG, CFG, "cpu")
    assert check.ok, check.detail
    assert "iteration 1" in check.detail
