"""mmseg 0.x / mmcv 1.x image transforms, reproduced numerically (docs/reference.md §3.3, §3.4).

§ numbers refer to docs/reference.md.

Conventions: images are HxWx3 ``uint8`` **BGR** arrays (cv2 decode, §3.3 step 1) until
:func:`normalize`; labels are HxW ``uint8`` arrays with 255 = ignore. Sizes passed to cv2 are
``(w, h)``; crop sizes from the config are ``(h, w)``; mmcv scales are ``(long, short)``.

Randomness never touches a global RNG: every random step takes a ``numpy.random.Generator`` so a
sample is a pure function of (image, label, seed) (see ``datasets.SegDataset.__getitem__``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from dnlrepro.core.geometry import rescale_size

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255

# mmcv's interpolation names -> cv2 flags (mmcv ``image/geometric.py``).
INTERPOLATION: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


# ---------------------------------------------------------------------------------------------
# Geometry (§3.3 step 3, §3.4)
# ---------------------------------------------------------------------------------------------


def imresize(
    img: np.ndarray, size: tuple[int, int], interpolation: str | int = "bilinear"
) -> np.ndarray:
    """cv2 resize to ``size=(w, h)`` (mmcv ``imresize``, cv2 backend).

    ``interpolation`` is an mmcv name (``"bilinear"``, ``"nearest"``, ...) or a cv2 flag.
    """
    if isinstance(interpolation, str):
        if interpolation not in INTERPOLATION:
            raise ValueError(
                f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATION)}"
            )
        interpolation = INTERPOLATION[interpolation]
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"target size must be positive (w, h), got {size}")
    return cv2.resize(img, tuple(int(v) for v in size), interpolation=interpolation)


def resize_keep_ratio(
    img: np.ndarray, scale: Sequence[float], interpolation: str | int = "bilinear"
) -> np.ndarray:
    """mmcv ``imrescale``: resize keeping the aspect ratio to fit the ``(long, short)`` scale."""
    h, w = img.shape[:2]
    return imresize(img, rescale_size(w, h, scale), interpolation)


def test_resize(img_bgr: np.ndarray, img_scale: Sequence[float]) -> np.ndarray:
    """Single-scale test resize (§3.4): keep-ratio bilinear rescale to ``img_scale``."""
    return resize_keep_ratio(img_bgr, img_scale, "bilinear")


def random_scale(
    img_scale: Sequence[int], ratio_range: Sequence[float], rng: np.random.Generator
) -> tuple[int, int]:
    """mmseg ``Resize._random_sample_ratio``: r ~ U[lo, hi), scale = (int(L*r), int(S*r))."""
    lo, hi = ratio_range
    ratio = rng.random() * (hi - lo) + lo
    return int(img_scale[0] * ratio), int(img_scale[1] * ratio)


def crop_bbox(
    shape: tuple[int, ...], crop_size: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """mmseg ``RandomCrop.get_crop_bbox``: offsets ~ randint(0, margin + 1), height first.

    Returns ``(y1, y2, x1, x2)``; the box may extend past a small image (numpy slicing then
    yields the smaller crop, padded later, §3.3 step 4).
    """
    margin_h = max(shape[0] - crop_size[0], 0)
    margin_w = max(shape[1] - crop_size[1], 0)
    offset_h = int(rng.integers(0, margin_h + 1))
    offset_w = int(rng.integers(0, margin_w + 1))
    return offset_h, offset_h + crop_size[0], offset_w, offset_w + crop_size[1]


def crop_is_acceptable(label_crop: np.ndarray, cat_max_ratio: float, ignore_index: int) -> bool:
    """cat_max_ratio test: more than one non-ignored class and the largest covers < ratio.

    ``np.bincount`` over the 256 uint8 values gives the same counts as mmseg's ``np.unique``
    at a fraction of the cost (no sort of the 0.5 MPixel crop).
    """
    counts = np.bincount(label_crop.ravel(), minlength=256)
    counts[ignore_index] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def random_crop(
    img: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop`` (§3.3 step 4): up to 10 boxes checked, the 11th used unchecked."""
    y1, y2, x1, x2 = crop_bbox(img.shape, crop_size, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            if crop_is_acceptable(label[y1:y2, x1:x2], cat_max_ratio, ignore_index):
                break
            y1, y2, x1, x2 = crop_bbox(img.shape, crop_size, rng)
    return img[y1:y2, x1:x2], label[y1:y2, x1:x2]


def hflip(img: np.ndarray) -> np.ndarray:
    """Horizontal flip (mmcv ``imflip``); cv2.flip returns a contiguous array for later cv2 ops."""
    return cv2.flip(img, 1)


# ---------------------------------------------------------------------------------------------
# PhotoMetricDistortion (§3.3 step 6) -- the code's order, not the docstring's
# ---------------------------------------------------------------------------------------------


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # float32 * alpha + beta, clip, then the uint8 cast truncates (mmseg ``convert``).
    out = img.astype(np.float32)
    if alpha != 1.0:
        out *= np.float32(alpha)
    if beta != 0.0:
        out += np.float32(beta)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def photometric_distortion(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on a uint8 BGR image; labels are never touched.

    Order (code, not docstring): brightness; mode = randint(2); contrast if mode == 1;
    saturation; hue; contrast if mode == 0. Each step fires with probability 0.5.
    """
    if rng.integers(2):  # brightness: beta ~ U(-delta, delta)
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):  # contrast first
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):  # saturation, in cv2's uint8 HSV (H in [0, 180))
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):  # hue: numpy randint(-d, d) excludes +d, so the shift is in [-d, d-1]
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + shift) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and rng.integers(2):  # contrast last
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


# ---------------------------------------------------------------------------------------------
# Normalise and pad (§3.3 steps 7-8)
# ---------------------------------------------------------------------------------------------


def _normalize_into(
    out: np.ndarray, img_bgr: np.ndarray, mean: Sequence[float], std: Sequence[float], to_rgb: bool
) -> None:
    # mmcv imnormalize_ on a float32 image: BGR->RGB, cv2.subtract(img, float64 mean),
    # cv2.multiply(img, float64 1/std). mmseg's Normalize first stores mean/std as float32, and
    # cv2 does each scalar op in float64 and rounds the result to float32. Replicated bit for
    # bit: the subtraction is exact in float32 (uint8 minus a float32 value), the multiplication
    # runs in float64 (a float64 operand) and is rounded into the float32 output. Written
    # channel by channel straight into the CHW output to avoid an HWC float copy.
    h, w = img_bgr.shape[:2]
    mean32 = np.asarray(mean, dtype=np.float32)
    stdinv64 = 1.0 / np.asarray(std, dtype=np.float32).astype(np.float64)
    for c in range(3):
        src = 2 - c if to_rgb else c
        dst = out[c, :h, :w]
        np.subtract(img_bgr[:, :, src], mean32[c], out=dst, dtype=np.float32)
        np.multiply(dst, stdinv64[c], out=dst, casting="same_kind")


def normalize(
    img_bgr: np.ndarray, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True
) -> torch.Tensor:
    """mmcv ``imnormalize`` then ``ImageToTensor``: a float32 CHW tensor [3, H, W]."""
    if img_bgr.ndim != 3 or img_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img_bgr.shape}")
    h, w = img_bgr.shape[:2]
    out = np.empty((3, h, w), dtype=np.float32)
    _normalize_into(out, img_bgr, mean, std, to_rgb)
    return torch.from_numpy(out)


def pad_to(arr: np.ndarray, size: tuple[int, int], value: float) -> np.ndarray:
    """mmcv ``impad`` to ``size=(h, w)`` at the bottom/right; ``arr`` is HxW or HxWxC."""
    h, w = arr.shape[:2]
    if h > size[0] or w > size[1]:
        raise ValueError(f"cannot pad an array of size {(h, w)} to the smaller size {size}")
    out = np.full((size[0], size[1], *arr.shape[2:]), value, dtype=arr.dtype)
    out[:h, :w] = arr
    return out


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


class TrainPipeline:
    """mmseg 0.x train pipeline after loading (§3.3 steps 3-9), in order.

    Resize (ratio in [0.5, 2.0), keep ratio) -> RandomCrop (cat_max_ratio) -> RandomFlip ->
    PhotoMetricDistortion -> Normalize (BGR->RGB) -> Pad (image 0 after normalising, label 255).

    Args:
        cfg_data: ``Config.data`` (a ``DataConfig``).

    Call ``pipeline(img_bgr, label, rng)`` with an HxWx3 uint8 BGR image, an HxW uint8 label
    (already ``reduce_zero_label``-ed for ADE20K) and a ``numpy.random.Generator``; returns
    ``{"img": float32 [3, h, w], "gt": int64 [h, w]}`` with (h, w) = ``cfg_data.crop_size``.
    """

    def __init__(self, cfg_data: Any) -> None:
        self.img_scale = tuple(cfg_data.img_scale)
        self.ratio_range = tuple(cfg_data.ratio_range)
        self.crop_size = tuple(cfg_data.crop_size)
        self.cat_max_ratio = float(cfg_data.cat_max_ratio)
        self.flip_prob = float(cfg_data.flip_prob)
        pm = cfg_data.photometric
        self.photometric = {
            "brightness_delta": pm.brightness_delta,
            "contrast_range": tuple(pm.contrast_range),
            "saturation_range": tuple(pm.saturation_range),
            "hue_delta": pm.hue_delta,
        }
        self.mean = tuple(cfg_data.mean)
        self.std = tuple(cfg_data.std)
        self.to_rgb = bool(cfg_data.to_rgb)

    def __call__(
        self, img_bgr: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        if img_bgr.shape[:2] != label.shape[:2]:
            raise ValueError(
                f"image size {img_bgr.shape[:2]} and label size {label.shape[:2]} differ"
            )
        # 3. Resize: image bilinear, label nearest, both to the same keep-ratio size.
        scale = random_scale(self.img_scale, self.ratio_range, rng)
        h, w = img_bgr.shape[:2]
        new_size = rescale_size(w, h, scale)
        img = imresize(img_bgr, new_size, "bilinear")  # [h', w', 3]
        seg = imresize(label, new_size, "nearest")  # [h', w']
        # 4. RandomCrop with cat_max_ratio.
        img, seg = random_crop(img, seg, self.crop_size, rng, self.cat_max_ratio, IGNORE_INDEX)
        # 5. RandomFlip (horizontal).
        if rng.random() < self.flip_prob:
            img, seg = hflip(img), hflip(seg)
        # 6. PhotoMetricDistortion on uint8 BGR.
        img = photometric_distortion(img, rng, **self.photometric)
        # 7-8. Normalise into a zero canvas of the crop size = pad with 0 after normalising.
        ch, cw = self.crop_size
        out = np.zeros((3, ch, cw), dtype=np.float32)
        _normalize_into(out, img, self.mean, self.std, self.to_rgb)
        gt = pad_to(np.ascontiguousarray(seg), self.crop_size, IGNORE_INDEX)
        # 9. Tensors: image [3, h, w] float32, label [h, w] int64.
        return {"img": torch.from_numpy(out), "gt": torch.from_numpy(gt.astype(np.int64))}


def test_views(
    img_bgr: np.ndarray,
    img_scale: Sequence[int],
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    data_cfg: Any = None,
) -> list[tuple[torch.Tensor, bool]]:
    """The test-time views of one image (§3.4, MultiScaleFlipAug order).

    For each ratio r (in order): the image is keep-ratio rescaled to ``(int(L*r), int(S*r))``,
    then the unflipped view and, if ``flip``, the horizontally flipped view are normalised.
    Single scale is ``ratios=(1.0,), flip=False``; ms+flip is the six ratios with ``flip=True``.

    Args:
        img_bgr: HxWx3 uint8 BGR image at original resolution.
        img_scale: mmcv ``(long, short)`` test scale.
        ratios: scale ratios.
        flip: add a flipped view after each scale.
        data_cfg: ``Config.data`` (mean, std, to_rgb).

    Returns:
        A list of ``(tensor [3, h_r, w_r], flipped)``; un-flipping predictions is the model's job.
    """
    if data_cfg is None:
        raise ValueError("test_views needs data_cfg (mean, std, to_rgb) from Config.data")
    views: list[tuple[torch.Tensor, bool]] = []
    for r in ratios:
        scale = (int(img_scale[0] * r), int(img_scale[1] * r))
        img = resize_keep_ratio(img_bgr, scale, "bilinear")
        for flipped in (False, True) if flip else (False,):
            view = hflip(img) if flipped else img
            views.append((normalize(view, data_cfg.mean, data_cfg.std, data_cfg.to_rgb), flipped))
    return views
