"""Checkpoints never execute code: every entry point refuses a pickle that would run code.

The payload's ``__reduce__`` calls ``open(marker, "w")``: loading it with a full unpickler would
create the marker file. ``dnlrepro evaluate``, ``dnlrepro predict``, training's resume and the
download of a published-style checkpoint URL must refuse it, name the file and the global, leave
no marker and keep nothing of a bad download.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnlrepro import cli
from dnlrepro.core import workspace

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"
GLOBAL = f"{open.__module__}.{open.__name__}"  # what the pickle names: io.open


class CodeRunner:
    """Unpickling this calls open(marker, "w"): the marker appears if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def payloads(folder: Path, marker: Path) -> list[Path]:
    """The payload as a plain pickle file and inside a torch.save zip, in an mmseg-like dict."""
    ckpt = {"meta": {"CLASSES": ("road",)}, "state_dict": {}, "x": CodeRunner(marker)}
    plain = folder / "plain.pth"
    plain.write_bytes(pickle.dumps(ckpt))
    zipped = folder / "zipped.pth"
    torch.save(ckpt, zipped)
    return [plain, zipped]


@pytest.fixture()
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace sharing the real params/ (downloads go to its downloads/)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dvc.yaml").write_text("stages: {}\n")
    (ws / "params").symlink_to(workspace.find().params_dir)
    monkeypatch.setenv(workspace.ENV_VAR, str(ws))
    return ws


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``dnlrepro ARGV`` in this process; it must fail in one line: that line."""
    assert cli.main(list(argv)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ": error: " in ln]
    return line


def assert_refused(line: str, path: Path, marker: Path) -> None:
    assert str(path) in line and f"refused: the file holds the global {GLOBAL}" in line
    assert "not a checkpoint we can trust" in line
    assert not marker.exists()


def test_the_payload_really_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plain, _ = payloads(tmp_path, marker)
    pickle.loads(plain.read_bytes())  # what weights_only=False would do
    assert marker.exists()


def test_evaluate_refuses_it(tmp_path: Path, scratch: Path, capsys) -> None:
    marker = tmp_path / "marker"
    for path in payloads(tmp_path, marker):
        line = run_cli(capsys, "evaluate", "--config", CFG, "--profile", "smoke",
                       "--checkpoint", str(path), "--no-track")  # fmt: skip
        assert line.startswith("dnlrepro evaluate: error: ")
        assert_refused(line, path, marker)


def test_predict_refuses_it(tmp_path: Path, scratch: Path, capsys) -> None:
    marker = tmp_path / "marker"
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(image)
    for path in payloads(tmp_path, marker):
        out = tmp_path / f"out_{path.stem}"
        line = run_cli(capsys, "predict", "--config", CFG, "--profile", "smoke", "--checkpoint",
                       str(path), "--images", str(image), "--out", str(out))  # fmt: skip
        assert_refused(line, path, marker)
        assert not out.exists()  # nothing written


def test_training_does_not_resume_it(tmp_path: Path, scratch: Path, capsys) -> None:
    marker = tmp_path / "marker"
    for path in payloads(tmp_path, marker):
        work_dir = tmp_path / f"wd_{path.stem}"
        work_dir.mkdir()
        latest = work_dir / "latest.pth"
        latest.write_bytes(path.read_bytes())
        line = run_cli(capsys, "train", "--config", CFG, "--profile", "smoke", "--work-dir",
                       str(work_dir), "--pretrained", "none", "--no-track")  # fmt: skip
        assert line.startswith(f"dnlrepro train: error: cannot resume from {latest}")
        assert_refused(line, latest, marker)


def test_a_downloaded_checkpoint_is_refused_and_not_kept(
    tmp_path: Path, scratch: Path, http_dir: tuple[Path, str], capsys
) -> None:
    """The published profile's path: a checkpoint URL (sha256-prefix named, as OpenMMLab's) is
    downloaded, verified, refused by the loader and deleted with its verification record."""
    root, base = http_dir
    marker = tmp_path / "marker"
    for path in payloads(tmp_path, marker):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        name = f"{CFG}_{path.stem}-{digest}.pth"
        (root / name).write_bytes(path.read_bytes())
        line = run_cli(capsys, "evaluate", "--config", CFG, "--profile", "published",
                       "--checkpoint", f"{base}/{name}", "--no-track")  # fmt: skip
        assert_refused(line, scratch / "downloads" / name, marker)
        assert f"downloaded from {base}/{name}; the download was deleted" in line
        assert not list((scratch / "downloads").iterdir())  # no file, .part or .verified.json


def test_a_text_file_is_named_not_a_key_error(tmp_path: Path, scratch: Path, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint\n")
    line = run_cli(capsys, "evaluate", "--config", CFG, "--profile", "smoke",
                   "--checkpoint", str(text), "--no-track")  # fmt: skip
    assert f"{text}: not a PyTorch checkpoint" in line and "torch.save" in line
