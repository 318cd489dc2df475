"""mmseg/mmcv-exact transforms: sizes, alignment, crop rule, photometric.

§ numbers refer to docs/reference.md (transforms: §3.3, §3.4).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from dnlrepro.core.config import load_config
from dnlrepro.data import transforms as T
from dnlrepro.data.io import reduce_zero_label

# Colours that survive cv2's uint8 BGR->HSV->BGR round trip exactly (pure primaries etc.), so a
# pixel's class can be read back from the image after any photometric-free pipeline.
COLORS = np.array(
    [[0, 0, 0], [255, 255, 255], [0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 255, 0]], np.uint8
)


def _cfg(dataset: str = "cityscapes"):
    name = (
        "dnl_r50-d8_512x1024_40k_cityscapes"
        if dataset == "cityscapes"
        else "dnl_r50-d8_512x512_80k_ade20k"
    )
    return load_config(name, profile="paper").data


def _block_scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A label of coarse random blocks and the image painted from it (colour = class)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(COLORS), size=(max(h // 12, 1), max(w // 12, 1)), dtype=np.uint8)
    label = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_NEAREST)
    return COLORS[label], label


def _interior(label: np.ndarray, r: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood has one label: bilinear cannot blend classes there.

    Pixels within r of the border are excluded: the crop's neighbours outside it are unknown.
    """
    pad = np.pad(label, r, constant_values=253)
    h, w = label.shape
    out = np.ones_like(label, bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= pad[dy : dy + h, dx : dx + w] == label
    return out


def test_rescale_size_matches_mmcv_formula_on_odd_sizes() -> None:
    # Hand-computed: factor = min(L/long, S/short); side = int(side * factor + 0.5).
    assert T.rescale_size(2048, 1024, (2049, 1025)) == (2049, 1025)  # 1024.5 rounds up (§3.4)
    assert T.rescale_size(2048, 1024, (2048, 1024)) == (2048, 1024)
    assert T.rescale_size(333, 257, (1536, 384)) == (498, 384)
    assert T.rescale_size(683, 512, (2048, 512)) == (683, 512)
    assert T.rescale_size(3001, 511, (2048, 512)) == (2048, 349)  # long side binds
    assert T.rescale_size(2048, 1024, (int(2049 * 0.75), int(1025 * 0.75))) == (1536, 768)
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(3, 900, size=2) | 1)  # odd sizes
        scale = (int(rng.integers(50, 2100)), int(rng.integers(20, 1100)))
        f = min(max(scale) / max(w, h), min(scale) / min(w, h))
        expect = (int(w * f + 0.5), int(h * f + 0.5))
        assert T.rescale_size(w, h, scale) == expect
        img = np.zeros((h, w, 3), np.uint8)
        if min(expect) > 0:
            assert T.resize_keep_ratio(img, scale).shape[:2] == (expect[1], expect[0])
    with pytest.raises(ValueError, match="scale"):
        T.rescale_size(10, 10, (0, 5))


def test_resize_crop_flip_keep_image_and_label_aligned() -> None:
    img, label = _block_scene(61, 97, seed=1)  # odd sizes on purpose
    for seed in range(8):
        rng = np.random.default_rng(seed)
        scale = T.random_scale((120, 60), (0.5, 2.0), rng)
        size = T.rescale_size(97, 61, scale)
        im2, lb2 = T.imresize(img, size, "bilinear"), T.imresize(label, size, "nearest")
        im2, lb2 = T.random_crop(im2, lb2, (40, 50), rng, 0.75)
        if seed % 2:
            im2, lb2 = T.hflip(im2), T.hflip(lb2)
        assert im2.shape[:2] == lb2.shape
        # Away from class boundaries bilinear = nearest = the class colour, exactly.
        uniform = _interior(lb2)
        assert uniform.mean() > 0.1  # the check is not vacuous
        np.testing.assert_array_equal(im2[uniform], COLORS[lb2[uniform]])


def test_train_pipeline_alignment_padding_and_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Photometric distortion changes colours (tested on its own below); switch it off here so
    # the class can be read back from every pixel.
    monkeypatch.setattr(T, "photometric_distortion", lambda img, rng, **kw: img)
    cfg = _cfg()
    no_pm = dataclasses.replace(cfg, img_scale=(120, 60), crop_size=(48, 100))
    pipe = T.TrainPipeline(no_pm)
    img, label = _block_scene(61, 97, seed=2)
    mean, std = np.array(cfg.mean, np.float32), np.array(cfg.std, np.float32)
    saw_pad = False
    for seed in range(10):
        out = pipe(img, label, np.random.default_rng(seed))
        x, gt = out["img"], out["gt"]
        assert x.dtype == torch.float32 and x.shape == (3, 48, 100)
        assert gt.dtype == torch.int64 and gt.shape == (48, 100)
        gt_np, x_np = gt.numpy(), x.numpy()
        padded = gt_np == 255  # every label value here is a class 0..5, so 255 = padding
        if padded.any():
            saw_pad = True
            assert np.all(x_np[:, padded] == 0.0)  # image padded with 0 after normalising
        rgb = np.rint(x_np.transpose(1, 2, 0) * std + mean).astype(np.int64)  # undo normalise
        inner = ~padded & _interior(np.where(padded, 254, gt_np))
        assert inner.sum() > 100  # the check is not vacuous
        np.testing.assert_array_equal(rgb[inner], COLORS[gt_np[inner]][:, ::-1])  # BGR->RGB
    assert saw_pad  # ratio < 1 makes images smaller than the crop for some seeds


class ScriptedRng:
    """Stands in for numpy's Generator: returns scripted values in call order."""

    def __init__(self, ints: list[int], floats: list[float] = ()) -> None:
        self.ints, self.floats = list(ints), list(floats)

    def integers(self, low: int, high: int | None = None) -> int:
        v = self.ints.pop(0)
        lo, hi = (0, low) if high is None else (low, high)
        assert lo <= v < hi, (v, lo, hi)
        return v

    def uniform(self, low: float, high: float) -> float:
        return self.floats.pop(0)

    def random(self) -> float:
        return self.floats.pop(0)


def test_cat_max_ratio_rejects_crops_dominated_by_one_class() -> None:
    ok = T.crop_is_acceptable
    assert not ok(np.zeros((10, 10), np.uint8), 0.75, 255)  # one class
    eighty = np.zeros((10, 10), np.uint8)
    eighty[:2] = 1
    assert not ok(eighty, 0.75, 255)  # largest class 80% >= 75%
    sixty = np.zeros((10, 10), np.uint8)
    sixty[:4] = 1
    assert ok(sixty, 0.75, 255)
    ignored = np.full((10, 10), 255, np.uint8)
    ignored[0, :5], ignored[1, :5] = 3, 4
    assert ok(ignored, 0.75, 255)  # ignore pixels do not count
    ignored[1, :5] = 3
    assert not ok(ignored, 0.75, 255)  # one class + ignore
    # RandomCrop: the first box (all class 0) is rejected, the second (mixed) is taken.
    label = np.zeros((20, 20), np.uint8)
    label[10:, 10:] = np.arange(100).reshape(10, 10) % 2
    img = np.dstack([label] * 3)
    rng = ScriptedRng([0, 0, 10, 10])  # (offset_h, offset_w) per try
    im, lb = T.random_crop(img, label, (10, 10), rng, 0.75)  # type: ignore[arg-type]
    np.testing.assert_array_equal(lb, label[10:, 10:])
    np.testing.assert_array_equal(im[..., 0], lb)
    # After 10 rejections the 11th box is used unchecked.
    rng = ScriptedRng([0, 0] * 11)
    _, lb = T.random_crop(img, label, (10, 10), rng, 0.75)  # type: ignore[arg-type]
    assert not rng.ints and lb.max() == 0


def test_photometric_distortion_follows_the_code_order_and_leaves_labels() -> None:
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    # brightness on (beta=20.7), mode 0, saturation off, hue off, contrast last on (alpha 1.3)
    rng = ScriptedRng([1, 0, 0, 0, 1], [20.7, 1.3])
    out = T.photometric_distortion(img, rng)  # type: ignore[arg-type]
    step1 = np.clip(img.astype(np.float32) + np.float32(20.7), 0, 255).astype(np.uint8)
    expect = np.clip(step1.astype(np.float32) * np.float32(1.3), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expect)
    # mode 1: contrast comes before saturation/hue; hue shift -18 wraps modulo 180.
    rng = ScriptedRng([0, 1, 1, 0, 1, -18], [0.5])
    out = T.photometric_distortion(img, rng)  # type: ignore[arg-type]
    c = np.clip(img.astype(np.float32) * np.float32(0.5), 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(c, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) - 18) % 180
    np.testing.assert_array_equal(out, cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))
    # The full pipeline: labels equal those of a photometric-free replay with the same seed.
    cfg = dataclasses.replace(_cfg(), img_scale=(120, 60), crop_size=(40, 60))
    scene, label = _block_scene(61, 97, seed=3)
    for seed in range(6):
        out = T.TrainPipeline(cfg)(scene, label, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        size = T.rescale_size(97, 61, T.random_scale(cfg.img_scale, cfg.ratio_range, rng))
        lb = T.imresize(label, size, "nearest")
        im = T.imresize(scene, size, "bilinear")
        _, lb = T.random_crop(im, lb, cfg.crop_size, rng, cfg.cat_max_ratio)
        if rng.random() < cfg.flip_prob:
            lb = T.hflip(lb)
        lb = T.pad_to(np.ascontiguousarray(lb), cfg.crop_size, 255)
        np.testing.assert_array_equal(out["gt"].numpy(), lb)


def test_normalize_bgr_to_rgb_and_values() -> None:
    cfg = _cfg()
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 200  # blue in BGR
    x = T.normalize(img, cfg.mean, cfg.std, to_rgb=True)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expect_rgb = (np.array([0, 0, 200]) - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expect_rgb, rtol=1e-6)
    x_bgr = T.normalize(img, cfg.mean, cfg.std, to_rgb=False)
    assert x_bgr[0, 0, 0] > 0 > x_bgr[2, 0, 0]


def _mmcv_imnormalize(img: np.ndarray, mean, std, to_rgb: bool) -> np.ndarray:
    """mmseg Normalize -> mmcv imnormalize, as written there (float32 mean/std, cv2 ops)."""
    mean = np.float64(np.array(mean, dtype=np.float32).reshape(1, -1))
    stdinv = 1 / np.float64(np.array(std, dtype=np.float32).reshape(1, -1))
    img = img.copy().astype(np.float32)
    if to_rgb:
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    return img


def test_normalize_is_bit_exact_with_mmcv() -> None:
    cfg = _cfg()
    every = np.stack([np.arange(256, dtype=np.uint8)] * 3, -1)[None]  # all values, all channels
    noise = np.random.default_rng(3).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for img in (every, noise):
        for to_rgb in (True, False):
            ours = T.normalize(img, cfg.mean, cfg.std, to_rgb).numpy()
            ref = _mmcv_imnormalize(img, cfg.mean, cfg.std, to_rgb).transpose(2, 0, 1)
            np.testing.assert_array_equal(ours, ref)


def test_test_views_single_and_ms_flip_order() -> None:
    cfg = _cfg()
    img = np.random.default_rng(1).integers(0, 256, (37, 91, 3), dtype=np.uint8)
    single = T.test_views(img, (128, 64), data_cfg=cfg)
    assert len(single) == 1 and single[0][1] is False
    assert tuple(single[0][0].shape[1:]) == T.rescale_size(91, 37, (128, 64))[::-1]
    ratios = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    views = T.test_views(img, (128, 64), ratios, flip=True, data_cfg=cfg)
    assert [f for _, f in views] == [False, True] * 6
    for k, r in enumerate(ratios):
        w, h = T.rescale_size(91, 37, (int(128 * r), int(64 * r)))
        plain, flipped = views[2 * k][0], views[2 * k + 1][0]
        assert tuple(plain.shape) == (3, h, w)
        torch.testing.assert_close(flipped, plain.flip(-1))


def test_ade20k_reduce_zero_label_without_underflow() -> None:
    raw = np.array([[0, 1, 2], [75, 150, 0]], np.uint8)
    out = reduce_zero_label(raw)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[255, 0, 1], [74, 149, 255]])
    np.testing.assert_array_equal(raw, [[0, 1, 2], [75, 150, 0]])  # input untouched


def test_pad_to() -> None:
    lb = np.ones((3, 4), np.uint8)
    out = T.pad_to(lb, (5, 6), 255)
    assert out.shape == (5, 6) and (out[:3, :4] == 1).all() and (out[3:] == 255).all()
    with pytest.raises(ValueError, match="smaller"):
        T.pad_to(lb, (2, 6), 255)
