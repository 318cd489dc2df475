"""``evaluate`` / ``predict`` without ``--profile`` run a checkpoint with the profile its own
metadata records (our training writes it), else with the configuration's own values; the first
log line says which."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dnlrepro.cli import main as cli_main
from dnlrepro.core.config import load_config
from dnlrepro.models import build_segmentor, save_checkpoint
from dnlrepro.tools.checkpoints import config_for, recorded_profile

CONFIG = "dnl_r50-d8_512x512_80k_ade20k"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ckpt-profile")
    cfg = load_config(CONFIG, "smoke")
    torch.manual_seed(0)
    model = build_segmentor(cfg).eval()
    return {
        "smoke": save_checkpoint(
            base / "smoke.pth", model, meta={"profile": "smoke", "config_digest": cfg.digest()}
        ),
        "other": save_checkpoint(
            base / "other.pth", model, meta={"profile": "smoke", "config_digest": "0" * 64}
        ),
        "mmseg": save_checkpoint(base / "mmseg.pth", model, meta={"mmseg_version": "0.24.1"}),
    }


def args(profile: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(config=CONFIG, profile=profile, overrides=[])


def first_line(caplog: pytest.LogCaptureFixture) -> str:
    return next(r.getMessage() for r in caplog.records if r.name.startswith("dnlrepro"))


def test_recorded_profile_applies_without_profile(checkpoints, caplog) -> None:
    caplog.set_level(logging.INFO)
    assert recorded_profile(checkpoints["smoke"])[0] == "smoke"
    cfg = config_for(args(), checkpoints["smoke"])
    assert cfg.profile == "smoke" and cfg.digest() == load_config(CONFIG, "smoke").digest()
    assert first_line(caplog).startswith("profile: smoke (recorded in the checkpoint")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_profile_flag_wins_over_the_checkpoint(checkpoints, caplog) -> None:
    caplog.set_level(logging.INFO)
    assert config_for(args("paper"), checkpoints["smoke"]).profile == "paper"
    assert first_line(caplog) == "profile: paper (--profile)"


def test_without_a_record_the_configuration_decides(checkpoints, caplog) -> None:
    caplog.set_level(logging.INFO)
    for checkpoint in (checkpoints["mmseg"], "https://example.org/x.pth", None):
        assert recorded_profile(checkpoint) == (None, None)
    assert config_for(args(), checkpoints["mmseg"]).profile == "paper"
    assert first_line(caplog).startswith("profile: paper (default")


def test_a_differing_training_configuration_is_warned_about(checkpoints, caplog) -> None:
    cfg = config_for(args(), checkpoints["other"])
    assert cfg.profile == "smoke"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "differs" in warning and CONFIG in warning and "000000000000" in warning


def test_predict_cli_uses_the_checkpoint_profile(checkpoints, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (24, 40, 3), np.uint8))
    argv = ["predict", "--config", CONFIG, "--checkpoint", str(checkpoints["smoke"])]
    assert cli_main([*argv, "--images", str(image), "--out", str(tmp_path / "out")]) == 0
    assert first_line(caplog).startswith("profile: smoke (recorded in the checkpoint")
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert record["profile"] == "smoke"


def test_evaluate_cli_uses_the_checkpoint_profile(tmp_path, caplog) -> None:
    """A smoke checkpoint of a Cityscapes row, evaluated without --profile: the smoke test
    protocol (its img_scale), said on the first log line."""
    from dnlrepro.acquire import prepare, synth

    name = "dnl_r50-d8_512x1024_40k_cityscapes"
    smoke_cfg = load_config(name, "smoke")
    synth.write_cityscapes(tmp_path / "archives", n_train=1, n_val=1, width=64, height=32, seed=3)
    prepare.prepare("cityscapes", tmp_path / "archives", tmp_path / "root", expect=(1, 1))
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "smoke.pth", build_segmentor(smoke_cfg).eval(),
        meta={"profile": "smoke", "config_digest": smoke_cfg.digest()},
    )  # fmt: skip
    caplog.set_level(logging.INFO)
    out = tmp_path / "m.json"
    argv = ["evaluate", "--config", name, "--checkpoint", str(ckpt), "--data-root",
            str(tmp_path / "root"), "--out", str(out), "--device", "cpu", "--no-track"]  # fmt: skip
    assert cli_main(argv) == 0
    assert first_line(caplog).startswith("profile: smoke (recorded in the checkpoint")
    protocol = json.loads(out.read_text())["protocol"]
    assert protocol["profile"] == "smoke"
    assert protocol["img_scale"] == list(smoke_cfg.test.img_scale)
    assert protocol["img_scale"] != list(load_config(name).test.img_scale)
