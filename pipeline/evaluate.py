"""DVC stage ``evaluate@<run>``: single-scale + ms+flip mIoU, inference speed, provenance.

§ numbers refer to docs/reference.md. A run is one (configuration, seed) of ``params/runs.yaml``
(:mod:`dnlrepro.core.runs`). Always both protocols (§5.3; the 512x1024 Cityscapes rows have no
published ms+flip number, but we measure it). Outputs, ``<run>`` as in ``train@<run>``:

* ``results/<run>/metrics.json`` -- the compact DVC metric: mIoU, mIoU_ms_flip, mAcc, aAcc
  and the majority-class baseline of the same labels;
* ``results/<run>/eval.json`` -- everything: per-class IoU/Acc of both protocols, the
  protocol, the precision, the checkpoint's sha256 (the tables and the diff read this one);
* ``results/<run>/per_class.csv`` -- the per-class DVC plot;
* ``results/<run>/run.json`` -- configuration, seed, profile and resolved-config digest
  (stale-baseline check);
* ``timings/<run>/benchmark.json`` + ``speed.json`` -- fps as mmseg's ``tools/benchmark.py``
  defines it (§5.4) and Mem (§5.5): machine-dependent, so kept out of ``results/``.
"""

from __future__ import annotations

import argparse
import json

from common import run_stage, setup
from dnlrepro.bench.benchmark import benchmark
from dnlrepro.core.config import load_config
from dnlrepro.core.files import write_bytes_atomic, write_json
from dnlrepro.core.runs import resolve
from dnlrepro.engine import eval_artifacts
from dnlrepro.engine.evaluate import evaluate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a key of params/runs.yaml")
    key = parser.parse_args().run
    ws, profile = setup()
    run = resolve(ws, profile, key)
    cfg = load_config(run.config, profile, {"schedule.seed": run.seed}, ws=ws)
    checkpoint = ws.work_dirs / key / "final.pth"
    out, timings = ws.results / key, ws.timings / key
    result = evaluate(
        cfg,
        checkpoint,
        split="val",
        ms_flip=True,
        out=out / "eval.json",
        max_images=profile.settings.eval_max_images,
        small_window_alt=profile.settings.eval_small_window_alt and cfg.test.mode == "slide",
    )
    write_json(out / "metrics.json", eval_artifacts.compact_metrics(result))
    write_bytes_atomic(out / "per_class.csv", eval_artifacts.per_class_plot_csv(result))
    bench = profile.settings.benchmark
    speed = benchmark(
        cfg,
        checkpoint,
        num_images=bench.num_images,
        warmup=bench.warmup,
        train_iters=bench.train_iters,
        # Real data: time the config's test split (§5.4); synthetic profiles time random images.
        data_root=cfg.data.data_root if profile.settings.data_source == "real" else None,
        out=timings / "benchmark.json",
    )
    train_timing = timings / "train.json"
    trained = json.loads(train_timing.read_text()) if train_timing.is_file() else {}
    write_json(timings / "speed.json", eval_artifacts.compact_speed(speed, trained))
    record = {
        "config": run.config,
        "seed": run.seed,
        "profile": profile.name,
        "config_digest": cfg.digest(),
    }
    write_json(out / "run.json", record, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
