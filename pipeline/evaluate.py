"""DVC stage ``evaluate@<config>``: single-scale + ms+flip mIoU, inference speed, provenance.

Always both protocols (§5.3): ``results/<config>/metrics.json`` holds ``single_scale`` and
``ms_flip`` (the 512x1024 Cityscapes rows have no published ms+flip number, but we measure it).
``results/<config>/benchmark.json`` holds fps as mmseg's ``tools/benchmark.py`` defines it (§5.4)
and ``results/<config>/run.json`` the profile and resolved-config digest the numbers belong to
(the diff report uses it to detect a stale smoke baseline).
"""

from __future__ import annotations

import argparse

from common import RESULTS, WORK_DIRS, dnlrepro, setup, write_json
from dnlrepro.config import load_config, profile_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    name = parser.parse_args().config
    profile = setup()
    settings = profile_settings(profile)
    checkpoint = WORK_DIRS / name / "final.pth"
    out = RESULTS / name
    argv = [
        "evaluate",
        "--config",
        name,
        "--profile",
        profile,
        "--checkpoint",
        str(checkpoint),
        "--split",
        "val",
        "--ms-flip",
        "--out",
        str(out / "metrics.json"),
    ]
    if settings.get("eval_max_images"):
        argv += ["--max-images", str(settings["eval_max_images"])]
    dnlrepro(*argv)
    bench = [
        "benchmark",
        "--config",
        name,
        "--profile",
        profile,
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out / "benchmark.json"),
    ]
    if settings.get("benchmark_images"):
        bench += ["--images", str(settings["benchmark_images"])]
    dnlrepro(*bench)
    cfg = load_config(name, profile)
    write_json(
        out / "run.json", {"config": name, "profile": profile, "config_digest": cfg.digest()}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
