"""ms+flip (docs/reference.md §5.3) equals an explicit mean of the 12 per-view softmax maps.

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dnlrepro.core.config import load_config
from dnlrepro.engine.inference import infer_image, infer_image_modes
from dnlrepro.models import build_segmentor


def _tiny_cfg(name: str, **extra):
    overrides = {"test.img_scale": [48, 24], "model.num_classes": 5, **extra}
    return load_config(name, "smoke", overrides=overrides)


def _model(cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = build_segmentor(cfg).eval()
    # Random BN statistics and a non-zero DNL output BN so every layer shapes the output.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model


def _manual_view_probs(model, cfg, img_bgr, ratio, flip):
    """One view written out from docs/reference.md, independent of data.transforms (§3.4, §5.2)."""
    h, w = img_bgr.shape[:2]
    long_s, short_s = (int(s * ratio) for s in cfg.test.img_scale)
    f = min(long_s / max(h, w), short_s / min(h, w))
    size = (int(w * f + 0.5), int(h * f + 0.5))  # mmcv _scale_size rounding
    img = cv2.resize(img_bgr, size, interpolation=cv2.INTER_LINEAR)
    if flip:
        img = img[:, ::-1]
    # mmcv 1.x imnormalize, written out: float32 image, BGR->RGB, then cv2 subtract / multiply
    # with float64 mean and 1/std of the float32 config values (rounds unlike a plain divide).
    x = np.ascontiguousarray(img).astype(np.float32)
    mean = np.float64(np.asarray(cfg.data.mean, np.float32).reshape(1, -1))
    stdinv = 1 / np.float64(np.asarray(cfg.data.std, np.float32).reshape(1, -1))
    cv2.cvtColor(x, cv2.COLOR_BGR2RGB, x)
    cv2.subtract(x, mean, x)
    cv2.multiply(x, stdinv, x)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        logits = model.encode_decode(x)  # [1, C, h_r, w_r], already at the input size
        logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=model.align_corners)
        probs = logits.softmax(dim=1)
    return probs.flip(dims=(3,)) if flip else probs


def test_ms_flip_is_mean_of_twelve_softmax_views_whole_mode():
    cfg = _tiny_cfg("dnl_r50-d8_512x1024_40k_cityscapes")
    model = _model(cfg)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(24, 36, 3), dtype=np.uint8)
    probs_ss, probs_ms = infer_image(model, img, cfg, ms_flip=True, device="cpu")
    assert probs_ss.shape == probs_ms.shape == (1, 5, 24, 36)
    views = [
        _manual_view_probs(model, cfg, img, r, flip)
        for r in cfg.test.ms_ratios
        for flip in (False, True)
    ]
    assert len(views) == 12
    expected = torch.stack(views).mean(dim=0)
    torch.testing.assert_close(probs_ms, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs_ss, _manual_view_probs(model, cfg, img, 1.0, False))
    # Not the mean of logits, and not the single scale: the test can tell them apart.
    assert not torch.allclose(probs_ms, probs_ss, atol=1e-4)
    torch.testing.assert_close(probs_ms.sum(dim=1), torch.ones(1, 24, 36))


def test_ms_flip_matches_model_aug_test_in_slide_mode():
    cfg = _tiny_cfg(
        "dnl_r50-d8_769x769_40k_cityscapes",
        # Two ratios keep this CPU test short: at r=0.5 the window is larger than the image
        # (fed unpadded, §5.2); r=1.0 is the reused single-scale view.
        **{"test.crop_size": [33, 33], "test.stride": [22, 22], "test.ms_ratios": [0.5, 1.0]},
    )
    assert cfg.test.mode == "slide" and cfg.model.align_corners
    model = _model(cfg, seed=1)
    from dnlrepro.data import transforms

    img = np.random.default_rng(1).integers(0, 256, size=(24, 48, 3), dtype=np.uint8)
    _, probs_ms = infer_image(model, img, cfg, ms_flip=True, device="cpu")
    views = transforms.test_views(img, cfg.test.img_scale, cfg.test.ms_ratios, True, cfg.data)
    ref = model.aug_test([v[None] for v, _ in views], [f for _, f in views], img.shape[:2])
    torch.testing.assert_close(probs_ms, ref, rtol=1e-5, atol=1e-6)


def test_single_scale_only_when_ms_flip_off():
    cfg = _tiny_cfg("dnl_r50-d8_512x512_80k_ade20k")
    model = _model(cfg)
    img = np.random.default_rng(2).integers(0, 256, size=(30, 20, 3), dtype=np.uint8)
    probs_ss, probs_ms = infer_image(model, img, cfg, ms_flip=False)
    assert probs_ms is None and probs_ss.shape == (1, 5, 30, 20)


def test_ms_flip_under_both_small_window_modes_in_one_pass(monkeypatch):
    """§5.2: only the views with windows smaller than the crop (r=0.5 here) run per mode."""
    cfg = _tiny_cfg(
        "dnl_r50-d8_769x769_40k_cityscapes",
        # One 24x48 window per view keeps it cheap; the r=0.5 view (12x24) is smaller than it.
        **{"test.crop_size": [24, 48], "test.stride": [16, 32], "test.ms_ratios": [0.5, 1.0]},
    )
    assert cfg.test.small_window == "unpadded"
    model = _model(cfg, seed=2)
    img = np.random.default_rng(3).integers(0, 256, size=(24, 48, 3), dtype=np.uint8)
    from dnlrepro.data import transforms

    views = transforms.test_views(img, cfg.test.img_scale, cfg.test.ms_ratios, True, cfg.data)
    model.cfg = cfg.replace({"test.small_window": "pad"})  # the model's default mode
    padded = model.aug_test([v[None] for v, _ in views], [f for _, f in views], (24, 48))
    model.cfg = cfg
    calls = []
    real = model.inference

    def spy(x, ori_shape, flip=False, small_window=None):
        calls.append((tuple(x.shape[-2:]), flip, small_window))
        return real(x, ori_shape, flip, small_window)

    monkeypatch.setattr(model, "inference", spy)
    probs_ss, by_mode = infer_image_modes(model, img, cfg, True, "cpu", ("unpadded", "pad"))
    # r=1.0 (24x48, the crop): the single-scale view, reused, and its flip, run once for both;
    # r=0.5 (12x24, smaller than the crop): unflipped and flipped, each in both modes.
    assert sorted(calls, key=str) == sorted(
        [((24, 48), False, None), ((24, 48), True, None), ((12, 24), False, None),
         ((12, 24), True, None), ((12, 24), False, "pad"), ((12, 24), True, "pad")], key=str,
    )  # fmt: skip
    # The own mode is infer_image's result (test_ms_flip_matches_model_aug_test_in_slide_mode).
    torch.testing.assert_close(by_mode["pad"], padded, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(by_mode["pad"], by_mode["unpadded"], atol=1e-5)
    assert probs_ss.shape == (1, 5, 24, 48)
