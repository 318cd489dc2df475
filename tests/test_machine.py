"""The machine fingerprint the smoke verdicts compare, and the results that record it."""

from __future__ import annotations

from pathlib import Path

import torch

from dnlrepro.core.config import load_config
from dnlrepro.engine import eval_artifacts, machine

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"


def test_fingerprint_names_cpu_isa_capability_torch_and_threads(monkeypatch, tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    )
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.fingerprint() == {
        "cpu": "Test CPU 9000",
        "isa": ["avx2", "fma", "avx", "sse4_2"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")  # not Linux: still a fingerprint
    assert machine.fingerprint()["isa"] == [] and machine.fingerprint()["cpu"]


def test_eval_protocol_records_where_it_ran(monkeypatch):
    monkeypatch.setattr(machine, "fingerprint", lambda: {"cpu": "elsewhere"})
    cfg = load_config(CFG, "smoke")
    protocol = eval_artifacts.build_protocol(cfg, "final.pth", None, "val", False, 2, 1)
    assert protocol["machine"] == {"cpu": "elsewhere"}
