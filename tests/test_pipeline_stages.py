"""Stage entry points (pipeline/*.py) as DVC runs them: in the workspace, one clear error line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dnlrepro.data import synth

REPO = Path(__file__).resolve().parents[1]


def test_download_fetches_what_it_can_and_fails_in_one_line(tmp_path: Path):
    ws = tmp_path / "ws"
    shutil.copytree(REPO / "params", ws / "params")
    shutil.copytree(REPO / "pipeline", ws / "pipeline")
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    (ws / "params.yaml").write_text("profile: paper\n")
    local = tmp_path / "local"  # only ADE20K is at hand: no Cityscapes login, no backbones
    synth.write_ade20k(local, 2, 1, min_size=32, max_size=48, seed=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITYSCAPES_", "DNLREPRO_"))}
    env["DNLREPRO_LOCAL_DATA"] = str(local)
    proc = subprocess.run(
        [sys.executable, "pipeline/download.py"], cwd=ws, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "error" in x]
    assert line.startswith("stage download: error: cityscapes: ")
    assert "; pretrained: " in line and "resnet50_v1c" in line
    # ADE20K was fetched all the same: its rows need no Cityscapes credentials.
    assert (ws / "downloads" / "ADEChallengeData2016.zip").is_file()
