"""Stage entry points (pipeline/*.py) as DVC runs them: in the workspace, one clear error line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dnlrepro.acquire import synth
from dnlrepro.core.files import file_digest

REPO = Path(__file__).resolve().parents[1]


def test_download_fetches_what_it_can_and_fails_in_one_line(tmp_path: Path):
    ws = tmp_path / "ws"
    shutil.copytree(REPO / "params", ws / "params")
    shutil.copytree(REPO / "pipeline", ws / "pipeline")
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    (ws / "params.yaml").write_text("profile: paper\n")
    local = tmp_path / "local"  # only ADE20K is at hand: no Cityscapes login, no backbones
    (ade,) = synth.write_ade20k(local, 2, 1, min_size=32, max_size=48, seed=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITYSCAPES_", "DNLREPRO_"))}
    env["DNLREPRO_LOCAL_DATA"] = str(local)
    # a stand-in under the real name: its sha256 is named, as the rehearsal names its miniatures
    (tmp_path / "sha256.json").write_text(json.dumps({ade.name: file_digest(ade)}))
    env["DNLREPRO_EXPECTED_SHA256"] = str(tmp_path / "sha256.json")

    def stage(*argv: str) -> tuple[int, list[str]]:
        cmd = [sys.executable, "pipeline/download.py", *argv]
        proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, check=False)
        assert "Traceback" not in proc.stderr
        return proc.returncode, [
            x for x in proc.stderr.splitlines() if "error" in x or "usage" in x
        ]

    rc, (line,) = stage("cityscapes")
    assert rc == 1 and line.startswith("stage download: error: cityscapes: ")
    assert "; pretrained: " in line and "resnet50_v1c" in line
    assert "dvc repro --keep-going" in line  # the ADE20K rows can go on without it
    rc, (line,) = stage("ade20k")  # no backbones at hand either
    assert rc == 1 and line.startswith("stage download: error: pretrained: ")
    # ADE20K was fetched all the same (per-dataset folder): its rows need no Cityscapes login.
    assert (ws / "downloads" / "ade20k" / "ADEChallengeData2016.zip").exists()
    rc, (line,) = stage("coco")
    assert rc == 1 and "KEY is one of cityscapes, ade20k" in line
