"""DVC stage ``evaluate@<run>``: single-scale + ms+flip mIoU, inference speed, provenance.

§ numbers refer to docs/reference.md. A run is one (configuration, seed) of ``params/runs.yaml``;
what it evaluates with comes from ``resolve@<run>`` (``results/<run>/config.yaml`` and block
``evaluate`` of ``run.yaml``). Always both protocols (§5.3; the 512x1024 Cityscapes rows have no
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

import json

from common import run_stage, setup, stage_arg
from dnlrepro.bench.benchmark import benchmark
from dnlrepro.core import resolve
from dnlrepro.core.files import write_bytes_atomic, write_json
from dnlrepro.engine import eval_artifacts
from dnlrepro.engine.evaluate import evaluate


def main() -> int:
    key = stage_arg()
    ws = setup()
    cfg, plan = resolve.read(ws, key)
    checkpoint = ws.work_dirs / key / "final.pth"
    out, timings = ws.results / key, ws.timings / key
    result = evaluate(
        cfg,
        checkpoint,
        split="val",
        ms_flip=True,
        out=out / "eval.json",
        max_images=plan.evaluate.max_images,
        small_window_alt=plan.evaluate.small_window_alt,
    )
    write_json(out / "metrics.json", eval_artifacts.compact_metrics(result))
    write_bytes_atomic(out / "per_class.csv", eval_artifacts.per_class_plot_csv(result))
    bench = plan.evaluate.benchmark
    speed = benchmark(
        cfg,
        checkpoint,
        num_images=bench.num_images,
        warmup=bench.warmup,
        train_iters=bench.train_iters,
        # Real data: time the config's test split (§5.4); synthetic profiles time random images.
        data_root=cfg.data.data_root if plan.evaluate.real_images else None,
        out=timings / "benchmark.json",
    )
    train_timing = timings / "train.json"
    trained = json.loads(train_timing.read_text()) if train_timing.is_file() else {}
    write_json(timings / "speed.json", eval_artifacts.compact_speed(speed, trained))
    record = {
        "config": plan.config,
        "seed": plan.seed,
        "profile": cfg.profile,
        "config_digest": cfg.digest(),
    }
    write_json(out / "run.json", record, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
