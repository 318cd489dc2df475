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

BENCHMARK_KEYS = ("num_images", "warmup", "train_iters")


def benchmark_args(settings: dict, profile: str, data_root: str) -> list[str]:
    """Options of ``dnlrepro benchmark`` from the profile settings (mmseg's 200/5 by default)."""
    args = []
    # A profile's ``settings.benchmark`` overrides mmseg's 200 images / 5 warm-up (the smoke
    # profile times a handful: its CPU fps only shows that the column is wired up).
    options = dict(settings.get("benchmark") or {})
    if settings.get("data_source") == "real":
        # §5.4 times the config's test split; synthetic profiles time random images instead.
        args += ["--data-root", data_root]
    for key, value in options.items():
        if key not in BENCHMARK_KEYS:
            raise ValueError(
                f"params/profiles.yaml: {profile}.settings.benchmark.{key} is unknown; "
                f"allowed: {', '.join(BENCHMARK_KEYS)}"
            )
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    name = parser.parse_args().config
    profile = setup()
    settings = profile_settings(profile)
    cfg = load_config(name, profile)
    ckpt = str(WORK_DIRS / name / "final.pth")
    out = RESULTS / name
    common = ["--config", name, "--profile", profile, "--checkpoint", ckpt]
    evaluate = ["evaluate", *common, "--split", "val", "--ms-flip"]
    if settings.get("eval_max_images"):
        evaluate += ["--max-images", str(settings["eval_max_images"])]
    dnlrepro(*evaluate, "--out", str(out / "metrics.json"))
    bench = benchmark_args(settings, profile, cfg.data.data_root)
    dnlrepro("benchmark", *common, *bench, "--out", str(out / "benchmark.json"))
    write_json(
        out / "run.json", {"config": name, "profile": profile, "config_digest": cfg.digest()}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
