"""Training engine on synthetic Cityscapes (written by ``synth``, converted by ``prepare``).

§ numbers refer to docs/reference.md.

Every run uses the real R50 DNLNet at the smoke profile's tiny crops (32x64 from 128x64 images),
so each iteration costs seconds on 2 CPU cores; the expensive runs share module fixtures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dnlrepro.core.config import Config, load_config
from dnlrepro.core.files import file_digest
from dnlrepro.engine import machine, resume, schedule, train, train_setup
from dnlrepro.engine.resume import ResumeError
from dnlrepro.engine.train import NonFiniteLossError

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on this shared 2-core machine, 2 OpenMP threads competing with other
    processes made a tiny step 10x slower (5 s instead of 0.6 s)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dnlrepro.acquire import prepare, synth

    base = tmp_path_factory.mktemp("cityscapes")
    synth.write_cityscapes(base / "archives", n_train=8, n_val=3, width=128, height=64, seed=0)
    prepare.prepare("cityscapes", base / "archives", base / "root", expect=(8, 3))
    return base / "root"


def tiny_cfg(root: Path, **overrides: Any) -> Config:
    """Smoke config on the synthetic root: 4 iterations, checkpoint every 2, log every 1."""
    base = {
        "data.data_root": str(root),
        "schedule.max_iters": 4,
        "schedule.checkpoint_interval": 2,
        "schedule.eval_interval": 4,
        "schedule.log_interval": 1,
    }
    return load_config(CFG, "smoke", overrides={**base, **overrides})


def state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def full_run(cityscapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted 4-iteration run, tracked in its own MLflow DB."""
    base = tmp_path_factory.mktemp("full")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("DVC_STAGE", f"train@{CFG}")
        cfg = tiny_cfg(cityscapes_root)
        summary = train.train(cfg, base / "wd", summary_out=base / "summary.json")
    return {"cfg": cfg, "dir": base / "wd", "summary": summary, "uri": uri, "base": base}


@pytest.mark.slow
def test_short_run_learns(cityscapes_root: Path, tmp_path: Path) -> None:
    """40 iterations from random weights, paper lr: validation mIoU far above chance.

    Chance on these 3 validation images (15 classes present, the largest 23% of the pixels):
    predicting the majority class everywhere gives mIoU 1.6 and aAcc 23. The run reaches about
    18 mIoU / 62 aAcc and a decode loss of 1.73 (one thread), so the thresholds leave a margin.
    """
    cfg = tiny_cfg(
        cityscapes_root,
        **{
            "schedule.max_iters": 40,
            "schedule.checkpoint_interval": 40,
            "schedule.eval_interval": 40,
            "schedule.log_interval": 10,
        },
    )
    summary = train.train(cfg, tmp_path / "wd", track=False)
    val = summary["last_validation"]
    assert val["iter"] == 40
    assert val["mIoU"] > 10, val
    assert val["aAcc"] > 45, val
    assert summary["final_train_losses"]["decode.loss_seg"] < 2.3  # ln(19) = 2.94 at the start


@pytest.mark.slow
def test_kill_and_resume_reaches_the_same_weights(
    full_run: dict[str, Any],
    cityscapes_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg, work_dir = full_run["cfg"], tmp_path / "wd"
    real_lr_at = schedule.lr_at

    def killed_at_iteration_3(it: int, sched: Any) -> float:
        if it == 3:  # after iteration 2's checkpoint and one more step that is lost
            raise KeyboardInterrupt("simulated kill")
        return real_lr_at(it, sched)

    monkeypatch.setattr(schedule, "lr_at", killed_at_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, work_dir, track=False)
    assert (work_dir / "latest.pth").resolve().name == "iter_2.pth"
    assert not (work_dir / "final.pth").exists()

    # Same command again: resumes from iter_2 (sampler position, optimizer momentum, dropout
    # RNG) -- and a broken tracking URI only warns, it never ends the run.
    monkeypatch.setattr(schedule, "lr_at", real_lr_at)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    with caplog.at_level(logging.INFO, logger="dnlrepro"):
        summary = train.train(cfg, work_dir)
    assert "resumed from" in caplog.text and "at iteration 2/4" in caplog.text
    assert any("MLflow start failed" in r.getMessage() for r in caplog.records)
    assert summary["resumed_from_iteration"] == 2

    resumed, uninterrupted = (
        state_dict_of(work_dir / "final.pth"),
        state_dict_of(full_run["dir"] / "final.pth"),
    )
    assert resumed.keys() == uninterrupted.keys()
    different = [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # ...and the run really trained: the weights moved away from the initial ones.
    init = torch.load(work_dir / "iter_2.pth", map_location="cpu", weights_only=True)
    assert not torch.equal(init["state_dict"]["decode_head.conv_seg.weight"],
                           resumed["decode_head.conv_seg.weight"])  # fmt: skip

    # Re-running a finished command trains nothing more and reports the same run.
    again = train.train(cfg, work_dir, track=False)
    assert again["resumed_from_iteration"] == 4
    assert again["final_train_losses"] == summary["final_train_losses"]
    assert again["last_validation"] == summary["last_validation"]
    assert torch.equal(state_dict_of(work_dir / "final.pth")["decode_head.conv_seg.weight"],
                       resumed["decode_head.conv_seg.weight"])  # fmt: skip


@pytest.mark.slow
def test_summary_and_final_checkpoint(full_run: dict[str, Any]) -> None:
    from dnlrepro import models
    from dnlrepro.data.classes import CLASSES

    cfg, work_dir, summary = full_run["cfg"], full_run["dir"], full_run["summary"]
    on_disk = json.loads((full_run["base"] / "summary.json").read_text())
    assert on_disk == summary
    assert summary["iterations"] == 4 and summary["world_size"] == 1
    # the smoke protocol (runtime.gpus 1 x 2) on one process; the diff compares it with the
    # registry's 4 x 2 = 8 (core/layout.py)
    assert (summary["layout"], summary["global_batch"], summary["bn_group"]) == ("1x2", 2, 2)
    assert cfg.global_batch == 2 and summary["per_gpu_batch"] == 2
    # wall time and memory are machine-dependent: kept apart from the summary (train.json)
    timing = json.loads((work_dir / "train_timing.json").read_text())
    assert not {"memory_kind", "max_memory_mb", "wall_time_s"} & set(summary)
    assert timing["memory_kind"] == "cpu_max_rss" and timing["max_memory_mb"] > 100
    assert timing["max_memory_gb"] == pytest.approx(timing["max_memory_mb"] / 1024, abs=1e-3)
    assert timing["iterations_run"] == 4 and timing["wall_time_s"] > 0
    assert summary["precision"] == {"amp": "none", "allow_tf32": False, "tf32_in_effect": False}
    assert summary["machine"] == machine.fingerprint()  # what the smoke verdicts compare
    assert set(summary["final_train_losses"]) >= {"decode.loss_seg", "aux.loss_seg", "loss"}
    val = summary["last_validation"]
    assert (
        val["iter"] == 4
        and 0 <= val["mIoU"] <= 100
        and set(val["IoU"]) == set(CLASSES["cityscapes"])
    )
    final = work_dir / "final.pth"
    assert summary["checkpoint"] == str(final.resolve())
    assert summary["checkpoint_sha256"] == file_digest(final)

    # final.pth: mmseg's released layout (no optimizer) with config text, CLASSES, PALETTE.
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"meta", "state_dict"}
    meta = ckpt["meta"]
    assert yaml.safe_load(meta["config"]) == cfg.to_dict()
    assert tuple(meta["CLASSES"]) == CLASSES["cityscapes"] and len(meta["PALETTE"]) == 19
    assert meta["iter"] == 4
    model = models.build_segmentor(cfg)
    models.load_checkpoint(model, final, strict=True)
    # Resume files: latest.pth -> the newest iter file, which carries the optimizer state.
    assert (work_dir / "latest.pth").resolve().name == "iter_4.pth"
    resume = torch.load(work_dir / "latest.pth", map_location="cpu", weights_only=True)
    assert resume["iter"] == 4 and resume["config_digest"] == cfg.digest()
    assert resume["optimizer"]["param_groups"][0]["weight_decay"] == 5e-4
    assert torch.equal(resume["state_dict"]["decode_head.conv_seg.weight"],
                       ckpt["state_dict"]["decode_head.conv_seg.weight"])  # fmt: skip


@pytest.mark.slow
def test_run_is_tracked_in_mlflow(full_run: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    cfg = full_run["cfg"]
    client = MlflowClient(tracking_uri=full_run["uri"])
    runs = client.search_runs(
        [client.get_experiment_by_name("cityscapes").experiment_id],
        filter_string=f"tags.config = '{CFG}'",
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "r50 512x1024 40k s0 smoke"
    assert run.data.params["schedule.max_iters"] == "4"
    assert run.data.params["data.data_root"] == cfg.data.data_root
    assert run.data.tags["layout"] == "1x2" and run.data.tags["gpus"] == "1"
    # lr logged at every iteration equals mmcv's poly formula evaluated before it (it from 0).
    lrs = client.get_metric_history(run.info.run_id, "train/lr")
    assert [m.step for m in lrs] == [1, 2, 3, 4]
    for m in lrs:
        sch = cfg.schedule
        expected = schedule.poly_lr(m.step - 1, 4, sch.lr, sch.min_lr, sch.power)
        assert m.value == pytest.approx(expected)
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) == 4
    summary = full_run["summary"]
    # validation as val/...; the run's mIoU column is left to the evaluation (evaluate@)
    assert run.data.metrics["val/mIoU"] == pytest.approx(summary["last_validation"]["mIoU"])
    assert "mIoU" not in run.data.metrics
    val = client.get_metric_history(run.info.run_id, "val/mIoU")
    assert [m.step for m in val] == sorted({m.step for m in val})  # each validation once
    assert not any(k.startswith("IoU/") for k in run.data.metrics)  # per class: an artifact
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "val_per_class_iou.json"} <= artifacts
    assert "training_curves.png" in artifacts


def test_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    from torch import nn

    root = tmp_path / "no-data-needed"
    written_by = tiny_cfg(root)
    opt_model = nn.Linear(2, 2)
    resume.save_train_checkpoint(
        tmp_path / "wd",
        opt_model,
        torch.optim.SGD(opt_model.parameters(), lr=0.1),
        2,
        written_by,
        rng=[torch.get_rng_state()],
    )
    other = tiny_cfg(root, **{"schedule.max_iters": 8})
    with pytest.raises(ResumeError, match=r"different configuration.*--work-dir.*--resume never"):
        train.train(other, tmp_path / "wd", track=False)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_checkpoint(
    cityscapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnlrepro.models.segmentor import EncoderDecoder

    real = EncoderDecoder.forward_train
    calls = {"n": 0}

    def nan_from_third_call(self: EncoderDecoder, img: torch.Tensor, gt: torch.Tensor):
        out = real(self, img, gt)
        calls["n"] += 1
        if calls["n"] >= 3:
            out["decode.loss_seg"] = out["decode.loss_seg"] * float("nan")
        return out

    monkeypatch.setattr(EncoderDecoder, "forward_train", nan_from_third_call)
    work_dir = tmp_path / "wd"
    with pytest.raises(NonFiniteLossError, match=r"iteration 3/4.*iter_2\.pth"):
        train.train(tiny_cfg(cityscapes_root), work_dir, track=False)
    assert (work_dir / "latest.pth").resolve().name == "iter_2.pth"
    assert not (work_dir / "final.pth").exists()
    kept = state_dict_of(work_dir / "iter_2.pth")
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())


def test_cli_rejects_bad_override() -> None:
    from dnlrepro.core.config import ConfigError, parse_overrides

    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["schedule.max_iters"])
    assert parse_overrides(["schedule.max_iters=20", "data.crop_size=[8, 16]"]) == {
        "schedule.max_iters": 20,
        "data.crop_size": [8, 16],
    }


@pytest.mark.slow
def test_two_process_gloo_run_under_torchrun(cityscapes_root: Path, tmp_path: Path) -> None:
    """DDP over 2 gloo processes: a global batch of 4 (runtime.gpus 2 x 2) split 2 x 2 with
    SyncBN (BN group 4), evaluation sharded."""
    work_dir, summary_path = tmp_path / "wd", tmp_path / "summary.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "dnlrepro.cli", "train", "--config", CFG, "--profile", "smoke",
        "--work-dir", str(work_dir), "--summary-out", str(summary_path), "--device", "cpu",
        "--set", f"data.data_root={cityscapes_root}", "--set", "schedule.max_iters=2",
        "--set", "schedule.checkpoint_interval=2", "--set", "schedule.eval_interval=2",
        "--set", "runtime.gpus=2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    summary = json.loads(summary_path.read_text())
    assert summary["world_size"] == 2 and summary["layout"] == "2x2"
    assert (summary["global_batch"], summary["bn_group"]) == (4, 4)
    assert "global batch 4 (runtime.gpus 2 x data.samples_per_gpu 2), BN group 4" in output
    assert "backend gloo, rank 1/2" in output
    assert "using CPUSyncBatchNorm" in output  # SyncBN semantics on CPU too (§3.5)
    assert summary["last_validation"]["image_count"] == 3  # both shards were summed
    assert 0 <= summary["last_validation"]["mIoU"] <= 100
    assert (work_dir / "final.pth").is_file()
    assert (work_dir / "latest.pth").resolve().name == "iter_2.pth"
    ckpt = torch.load(work_dir / "latest.pth", map_location="cpu", weights_only=True)
    assert len(ckpt["rng"]) == 2  # every rank's dropout RNG, for an exact resume


def test_pretrained_backbone_is_found_in_downloads_and_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cfg.model.backbone.pretrained -> downloads/<file of PRETRAINED_URLS> -> backbone (§2.2).

    Training never downloads: a missing backbone names the file and the command that fetches it.
    """
    from dnlrepro import models
    from dnlrepro.core import workspace
    from dnlrepro.core.registry import pretrained_file
    from dnlrepro.engine.distributed import DistInfo

    cfg = load_config(CFG, "smoke", overrides={"model.backbone.pretrained": "resnet50_v1c"})
    torch.manual_seed(123)
    source = models.build_segmentor(cfg).backbone.state_dict()
    # A scratch workspace that shares the real params/: its downloads/ is where training looks.
    scratch = tmp_path / "ws"
    scratch.mkdir()
    (scratch / "dvc.yaml").write_text("stages: {}\n")
    (scratch / "params").symlink_to(workspace.find().params_dir)
    monkeypatch.setenv(workspace.ENV_VAR, str(scratch))
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    expected = scratch / "downloads" / "resnet50_v1c-2cccc1ad.pth"
    with pytest.raises(FileNotFoundError) as err:
        train_setup.build_model(cfg, info, None)
    assert str(expected) in str(err.value)
    assert f"dnlrepro download --what pretrained --config {CFG}" in str(err.value)
    assert "dvc repro download@cityscapes" in str(err.value)
    assert pretrained_file("resnet50_v1c") == expected
    expected.parent.mkdir()
    torch.save({"state_dict": source}, expected)

    def backbone_matches(model: torch.nn.Module) -> bool:
        got = model.backbone.state_dict()
        return all(torch.equal(got[k], v) for k, v in source.items())

    torch.manual_seed(0)
    assert backbone_matches(train_setup.build_model(cfg, info, None))  # the config's name
    torch.manual_seed(0)
    assert not backbone_matches(train_setup.build_model(cfg, info, "none"))  # random init
    torch.manual_seed(0)
    assert backbone_matches(train_setup.build_model(cfg, info, str(expected)))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_options(
    amp: str, cityscapes_root: Path, tmp_path: Path
) -> None:
    """runtime.amp / runtime.channels_last (off in the paper profile) train and checkpoint."""
    cfg = tiny_cfg(
        cityscapes_root,
        **{
            "runtime.amp": amp,
            "runtime.channels_last": True,
            "schedule.max_iters": 2,
            "schedule.eval_interval": 2,
        },
    )
    summary = train.train(cfg, tmp_path / "wd", track=False)
    assert summary["amp"] == amp
    assert all(math.isfinite(v) for v in summary["final_train_losses"].values())
    resume = torch.load(tmp_path / "wd" / "latest.pth", map_location="cpu", weights_only=True)
    # fp16 trains through a GradScaler whose state is part of the resume file.
    assert (resume["scaler"] is not None) == (amp == "fp16")
    weights = state_dict_of(tmp_path / "wd" / "final.pth")
    assert weights["decode_head.conv_seg.weight"].dtype == torch.float32  # master weights


def test_cli_reports_a_refused_resume_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch import nn

    from dnlrepro import cli

    model = nn.Linear(2, 2)
    resume.save_train_checkpoint(
        tmp_path / "wd",
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        2,
        tiny_cfg(tmp_path),
        rng=[torch.get_rng_state()],
    )
    argv = [
        "train",
        "--config",
        CFG,
        "--profile",
        "smoke",
        "--work-dir",
        str(tmp_path / "wd"),
        "--no-track",
        "--set",
        f"data.data_root={tmp_path}",
        "--set",
        "schedule.max_iters=3",
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnlrepro train: error:") and "\n" not in err
    assert "different configuration" in err and "--resume never" in err


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_to_the_same_weights(
    full_run: dict[str, Any], cityscapes_root: Path, tmp_path: Path
) -> None:
    """A real kill -9 of `dnlrepro train` right after its first checkpoint; the same command
    again finishes with the weights of the uninterrupted in-process run (same config digest),
    and goes on in the killed session's MLflow run: one row, each step logged."""
    from mlflow.tracking import MlflowClient

    work_dir = tmp_path / "wd"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable, "-m", "dnlrepro.cli", "train", "--config", CFG, "--profile", "smoke",
        "--work-dir", str(work_dir), "--device", "cpu",
        "--set", f"data.data_root={cityscapes_root}", "--set", "schedule.max_iters=4",
        "--set", "schedule.checkpoint_interval=2", "--set", "schedule.eval_interval=4",
        "--set", "schedule.log_interval=1",
    ]  # fmt: skip
    # the same kernels as the 1-thread reference
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    log = tmp_path / "killed.log"  # a file, not a pipe: a full pipe would block the child
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while not (work_dir / "latest.pth").exists():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (work_dir / "final.pth").exists()  # killed mid-run, not after it finished

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    resumed = state_dict_of(work_dir / "final.pth")
    reference = state_dict_of(full_run["dir"] / "final.pth")
    different = [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cityscapes").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["train_count"] == "2"
    assert f"MLflow run {run.info.run_id} (r50 512x1024 40k s0 smoke): the resumed" in done.stderr
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/lr")]
    # iterations 1-2 from the killed session (its checkpoint at 2), 3-4 from the resumed one;
    # a step the killed session logged after its checkpoint would come again
    assert steps[:2] == [1, 2] and set(steps) == {1, 2, 3, 4}, steps


def test_loader_workers_do_not_change_the_batches(cityscapes_root: Path, tmp_path: Path) -> None:
    """Per-sample seeds from the sampler: 0 or 2 data-loader workers train the same weights."""
    finals = []
    for workers in (0, 2):
        cfg = tiny_cfg(
            cityscapes_root,
            **{
                "data.workers_per_gpu": workers,
                "schedule.max_iters": 2,
                "schedule.eval_interval": 2,
            },
        )
        train.train(cfg, tmp_path / f"w{workers}", track=False, eval_max_images=1)
        finals.append(state_dict_of(tmp_path / f"w{workers}" / "final.pth"))
    different = [k for k in finals[0] if not torch.equal(finals[0][k], finals[1][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_final_weights_go_to_final_path_named_relative_to_the_workspace(
    cityscapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DVC stage trains in a scratch work dir and keeps only ``final_path``; the summary
    names it relative to the workspace root (a committed file must not hold a machine's path)."""
    from dnlrepro.core import workspace

    scratch_ws = tmp_path / "ws"
    scratch_ws.mkdir()
    (scratch_ws / "dvc.yaml").write_text("stages: {}\n")
    (scratch_ws / "params").symlink_to(workspace.find().params_dir)
    monkeypatch.setenv(workspace.ENV_VAR, str(scratch_ws))
    cfg = tiny_cfg(cityscapes_root, **{"schedule.max_iters": 1, "schedule.eval_interval": 1})
    work_dir = scratch_ws / "work_dirs" / CFG / "scratch" / cfg.digest()[:16]
    final = scratch_ws / "work_dirs" / CFG / "final.pth"
    summary = train.train(
        cfg, work_dir, track=False, eval_max_images=1, final_path=final,
        summary_out=tmp_path / "summary.json",
    )  # fmt: skip
    assert final.is_file() and not (work_dir / "final.pth").exists()
    assert summary["checkpoint"] == f"work_dirs/{CFG}/final.pth"
    assert summary["checkpoint_sha256"] == file_digest(final)
    assert summary["profile"] == "smoke"
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
