"""Wall time of ``dnlrepro rehearse`` per profile, with the per-stage sums from its receipt.

Runs each rehearsal as CI does (``dnlrepro rehearse --profile P``, CPU), timed around the whole
command (wall, and the CPU seconds of the whole process tree, which the load of a shared machine
changes little), then groups the receipt's stage rows: set-up (copy + mirror), download, prepare,
train, evaluate, reports (tables, diff, report). The load average is printed because this
2-core machine is shared.

    .venv/bin/python benchmarks/bench_rehearse.py [--profiles paper published]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("set-up", "download", "prepare", "train", "evaluate", "reports")


def group(stage: str) -> str:
    if stage.startswith(("train@", "evaluate@")):
        return stage.split("@", 1)[0]
    if stage in ("tables", "diff", "report"):
        return "reports"
    kind = stage.split("@", 1)[0]  # download@cityscapes -> download
    return kind if kind in ("download", "prepare") else "set-up"


def bench(profile: str, out: Path) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "dnlrepro.cli",
        "rehearse",
        "--profile",
        profile,
        "--out",
        str(out),
    ]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc = subprocess.call(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the whole tree: stages, torchrun, ...
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    receipt = json.loads((out / "receipt.json").read_text())
    sums = dict.fromkeys(GROUPS, 0.0)
    for row in receipt["rows"]:
        sums[group(row["stage"])] += row["seconds"]
    return {"profile": profile, "rc": rc, "ok": receipt["ok"], "wall_s": round(wall),
            "cpu_s": round(cpu),
            "load": (round(load_before, 1), round(os.getloadavg()[0], 1)),
            **{k: round(v) for k, v in sums.items()}}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["paper", "published"])
    parser.add_argument("--out", type=Path, default=ROOT / "work_dirs" / "bench_rehearse")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")  # fmt: skip
    head = "| profile | ok | wall (s) | CPU (s) | load avg (start, end) | "
    print(head + " | ".join(GROUPS) + " |")
    print("|---" * (5 + len(GROUPS)) + "|")
    for profile in args.profiles:
        r = bench(profile, args.out / profile)
        cells = [r["profile"], r["ok"], r["wall_s"], r["cpu_s"], r["load"], *(r[g] for g in GROUPS)]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
