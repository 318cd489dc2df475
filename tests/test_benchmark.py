"""``dnlrepro benchmark``: mmseg's fps definition (§5.4) and the CPU fallback for Mem (§5.5).

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from dnlrepro.bench.benchmark import benchmark, benchmark_inference, random_image_shape
from dnlrepro.cli import main as cli_main
from dnlrepro.core.config import load_config

CONFIG = "dnl_r50-d8_512x1024_40k_cityscapes"


class SleepyModel(nn.Module):
    """Stands in for the segmentor: ``inference`` takes a known time (slow for the warm-up)."""

    def __init__(self, warmup: int, slow: float, fast: float, num_classes: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[tuple[int, ...], tuple[int, int], bool]] = []
        self.warmup, self.slow, self.fast, self.num_classes = warmup, slow, fast, num_classes

    def inference(self, img: torch.Tensor, ori_shape, flip: bool = False) -> torch.Tensor:
        self.calls.append((tuple(img.shape), tuple(ori_shape), flip))
        time.sleep(self.slow if len(self.calls) <= self.warmup else self.fast)
        return torch.zeros(1, self.num_classes, *ori_shape).softmax(dim=1)


def test_fps_excludes_warmup_and_counts_only_timed_images():
    cfg = load_config(CONFIG, "smoke")
    model = SleepyModel(warmup=2, slow=0.6, fast=0.05).train()
    res = benchmark_inference(model, cfg, "cpu", num_images=6, warmup=2)
    assert len(model.calls) == 6 and model.training, "all images run; train mode is restored"
    # Batch 1, single scale, unflipped, test-resized input, probabilities at the original size.
    h, w = random_image_shape(cfg)
    assert (h, w) == (64, 128)  # smoke test scale (128, 64) as (H, W) = (short, long)
    assert {c for c in model.calls} == {((1, 3, h, w), (h, w), False)}
    # 4 timed images sleep >= 0.2 s in total; either 0.6 s warm-up image would push it past 0.6.
    assert 4 * 0.05 <= res["timed_seconds"] < 0.6
    assert res["fps"] == pytest.approx(4 / res["timed_seconds"], abs=0.05)
    assert res["ms_per_image"] == round(1000 / res["fps"], 2)  # metafile ms/im convention
    assert (res["num_images"], res["warmup"], res["input"]) == (6, 2, "random")


def test_warmup_must_leave_images_to_time():
    cfg = load_config(CONFIG, "smoke")
    with pytest.raises(ValueError, match="warmup"):
        benchmark_inference(SleepyModel(0, 0, 0), cfg, "cpu", num_images=5, warmup=5)


def test_random_image_shape_follows_the_test_scale():
    ade = load_config("dnl_r50-d8_512x512_80k_ade20k", "paper")
    assert random_image_shape(ade) == (512, 683)  # 4:3 with the 512 short side
    cs = load_config("dnl_r50-d8_769x769_40k_cityscapes", "paper")
    assert random_image_shape(cs) == (1025, 2049)


def test_ours_and_mmseg_comparable_attention_are_both_timed(monkeypatch):
    """§5.6: top level = our SDPA path, ``mmseg_comparable`` = mmseg's explicit attention."""
    from dnlrepro.models import dnl_block

    seen = []
    real = dnl_block.DisentangledNonLocal2d.pairwise

    def spy(self, query, key, value):
        seen.append(self.attention)
        return real(self, query, key, value)

    monkeypatch.setattr(dnl_block.DisentangledNonLocal2d, "pairwise", spy)
    res = benchmark(load_config(CONFIG, "smoke"), device="cpu", num_images=3, warmup=1)
    assert seen == ["sdpa"] * 3 + ["naive"] * 3  # every image once per path, ours first
    assert res["attention"] == "sdpa" and res["fps"] > 0
    comp = res["mmseg_comparable"]
    assert comp["attention"] == "naive" and comp["fps"] > 0
    assert comp["ms_per_image"] == round(1000 / comp["fps"], 2)
    assert comp["mem_gb"] is None and "§5.6" in comp["notes"][0]  # Mem: CUDA only
    assert res["precision"] == {"amp": "none", "allow_tf32": False, "tf32_in_effect": False}


def test_cli_benchmark_on_cpu_writes_json_with_null_memory(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli_main(["benchmark", "--config", CONFIG, "--profile", "smoke", "--device", "cpu",
                   "--num-images", "3", "--warmup", "1", "--out", str(out),
                   "--no-mmseg-comparable"])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["fps"] > 0 and data["mem_gb"] is None
    assert data["mmseg_comparable"] is None and data["attention"] == "sdpa"
    assert data["mem_mb"] is None and data["cudnn_benchmark"] is False
    assert data["num_images"] == 3 and data["warmup"] == 1 and data["input"] == "random"
    assert data["image_shapes"] == [[64, 128]]
    notes = " ".join(data["notes"])
    assert "CUDA" in notes and "random" in notes
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mem_gb"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Mem (GB) is defined on CUDA (§5.5)")
def test_training_memory_on_cuda():
    cfg = load_config(CONFIG, "smoke")
    res = benchmark(cfg, device="cuda", num_images=3, warmup=1, train_iters=2)
    assert res["mem_mb"] > 0 and res["mem_gb"] == round(res["mem_mb"] / 1024, 2)
    assert res["train"]["batch"] == cfg.data.samples_per_gpu
    comp = res["mmseg_comparable"]
    assert comp["mem_mb"] > 0 and comp["mem_gb"] == round(comp["mem_mb"] / 1024, 2)
    assert res["precision"]["allow_tf32"] is False and res["precision"]["tf32_in_effect"] is False
