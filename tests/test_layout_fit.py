"""`dnlrepro rehearse --gpus N`: which layouts of each row fit a GPU (rehearse/fit.py)."""

from __future__ import annotations

import pytest
import torch

from dnlrepro.core.config import load_config
from dnlrepro.core.registry import load_published
from dnlrepro.rehearse import cost, fit

R50_512 = "dnl_r50-d8_512x1024_40k_cityscapes"  # published Mem 7.3 GB at 4 x 2


def test_the_estimate_scales_the_published_memory_and_says_so() -> None:
    est = fit.estimate(load_config(R50_512, "paper"), load_published(), capacity_gb=12)
    by_layout = {f"{x['gpus']}x{x['per_gpu_batch']}": x for x in est.layouts}
    assert list(by_layout) == ["1x8", "2x4", "4x2", "8x1"]  # every divisor of the batch of 8
    assert by_layout["4x2"]["peak_gb"] == 7.3  # the published layout: the published figure
    assert by_layout["1x8"]["peak_gb"] == pytest.approx(4 * 7.3, abs=0.05)
    assert est.fitting() == ["4x2", "8x1"]  # 2 x 4: 14.6 GB, over 95 % of 12 GB
    lines = fit.render([est])
    assert "ESTIMATE without a GPU" in lines[1] and "judged against 12 GB" in lines[1]
    assert "fits: 4x2, 8x1" in lines[2]


def test_an_80k_row_borrows_the_memory_of_its_40k_sibling() -> None:
    name = "dnl_r101-d8_769x769_80k_cityscapes"  # README Mem '-'; the 40k row says 12.6
    est = fit.estimate(load_config(name, "paper"), load_published())
    assert "dnl_r101-d8_769x769_40k_cityscapes" in est.note
    assert {x["per_gpu_batch"]: x["peak_gb"] for x in est.layouts}[2] == 12.6


def test_measured_layouts_interpolate_and_out_of_memory_does_not_fit(monkeypatch) -> None:
    """The CUDA path with the GPU calls replaced: 2 GB fixed + 3 GB per image, 24 GB card."""
    cfg = load_config(R50_512, "paper")

    def fake_train(cfg, device, iters, per_gpu_batch):
        if per_gpu_batch > 6:
            raise torch.cuda.OutOfMemoryError("fake")
        return 1.0, 2.0 + 3.0 * per_gpu_batch

    class Props:
        total_memory = 24 * 2**30

    monkeypatch.setattr(cost, "time_train", fake_train)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    two = {x["per_gpu_batch"]: x for x in fit.measure(cfg, 2).layouts}  # measures 4 and 2
    assert (two[4]["peak_gb"], two[4]["how"]) == (14.0, "measured")
    assert (two[1]["peak_gb"], two[1]["how"]) == (5.0, "extrapolated")
    assert two[8]["peak_gb"] == 26.0 and two[8]["fits"] is False  # over 24 GB
    one = {x["per_gpu_batch"]: x for x in fit.measure(cfg, 1).layouts}  # 8: OOM, then 4
    assert (one[8]["how"], one[8]["fits"]) == ("out of memory", False)
    assert one[4]["fits"] is True and one[2]["peak_gb"] is None  # one point: no line
    assert "Fake GPU" in fit.render([fit.measure(cfg, 2)])[1]
