"""DVC stage ``evaluate@<config>``: single-scale + ms+flip mIoU, inference speed, provenance.

§ numbers refer to docs/reference.md.

Always both protocols (docs/reference.md §5.3): ``results/<config>/metrics.json`` holds
``single_scale`` and ``ms_flip`` (the 512x1024 Cityscapes rows have no published ms+flip number,
but we measure it). ``results/<config>/benchmark.json`` holds fps as mmseg's ``tools/benchmark.py``
defines it (§5.4) and ``results/<config>/run.json`` the profile and resolved-config digest the
numbers belong to (the diff report uses it to detect a stale smoke baseline).
"""

from __future__ import annotations

import argparse

from common import run_stage, setup
from dnlrepro.config import load_config
from dnlrepro.engine.benchmark import benchmark
from dnlrepro.engine.evaluate import evaluate
from dnlrepro.files import write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    name = parser.parse_args().config
    ws, profile = setup()
    cfg = load_config(name, profile, ws=ws)
    checkpoint = ws.work_dirs / name / "final.pth"
    out = ws.results / name
    evaluate(
        cfg,
        checkpoint,
        split="val",
        ms_flip=True,
        out=out / "metrics.json",
        max_images=profile.settings.eval_max_images,
    )
    bench = profile.settings.benchmark
    benchmark(
        cfg,
        checkpoint,
        num_images=bench.num_images,
        warmup=bench.warmup,
        train_iters=bench.train_iters,
        # Real data: time the config's test split (§5.4); synthetic profiles time random images.
        data_root=cfg.data.data_root if profile.settings.data_source == "real" else None,
        out=out / "benchmark.json",
    )
    run = {"config": name, "profile": profile.name, "config_digest": cfg.digest()}
    write_json(out / "run.json", run, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
