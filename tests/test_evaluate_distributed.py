"""Sharded evaluation over 2 gloo processes equals the single-process result (§5.1 totals).

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnlrepro.core.config import load_config
from dnlrepro.engine.evaluate import evaluate_model
from dnlrepro.engine.inference import load_model
from dnlrepro.engine.metrics import IoUAccumulator
from dnlrepro.models import build_segmentor, save_checkpoint

CONFIG = "dnl_r50-d8_512x1024_40k_cityscapes"
N_VAL = 3  # odd, so the strided shards differ in size (2 + 1)


def _cfg(root: str):
    return load_config(
        CONFIG, "smoke", overrides={"data.data_root": root, "test.img_scale": [64, 32]}
    )


def _worker(rank: int, world: int, init_file: str, root: str, ckpt: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share the CI machine's cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = _cfg(root)
        model, _, _ = load_model(cfg, ckpt, "cpu")
        result = evaluate_model(model, cfg, device="cpu")
        # The raw collective too: int64 histograms summed exactly across ranks.
        acc = IoUAccumulator(3)
        acc.hist += rank + 1
        acc.count = rank + 1
        acc.all_reduce()
        result["hist_sum"] = acc.hist.tolist()
        result["count_sum"] = acc.count
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_single_process(tmp_path):
    from dnlrepro.acquire import prepare, synth

    synth.write_cityscapes(tmp_path / "arch", n_train=1, n_val=N_VAL, width=64, height=32, seed=5)
    root = tmp_path / "root"
    prepare.prepare("cityscapes", tmp_path / "arch", root, expect=(1, N_VAL))
    cfg = _cfg(str(root))
    torch.manual_seed(0)
    model = build_segmentor(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
        model.decode_head.conv_seg.bias.copy_(torch.linspace(-0.5, 0.5, cfg.model.num_classes))
    ckpt = save_checkpoint(tmp_path / "m.pth", model)
    single = evaluate_model(load_model(cfg, ckpt, "cpu")[0], cfg, device="cpu")
    assert single["image_count"] == N_VAL

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(
        _worker,
        args=(2, str(tmp_path / "pg_init"), str(root), str(ckpt), str(out_dir)),
        nprocs=2,
        join=True,
    )
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["hist_sum"] == [[3, 3, 3]] * 4 and r["count_sum"] == 3
        # image_count == 3 (not 6): each rank scored only its strided shard.
        assert r["image_count"] == N_VAL
        assert r["single_scale"] == single["single_scale"]
