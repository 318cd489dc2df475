"""Decoding and layouts shared by ``datasets`` and ``prepare`` (no torch import here).

§ numbers refer to docs/reference.md.

Images: cv2 BGR uint8 (mmcv ``imread`` 'color', docs/reference.md §3.3 step 1). Labels: Pillow
'unchanged', squeezed, uint8 (mmseg ``LoadAnnotations``, §3.3 step 2), with ADE20K's
``reduce_zero_label`` (§3.2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import cv2
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# A label map as the data pipeline (numpy) or the metrics (torch) hold it.
LabelMap = TypeVar("LabelMap", np.ndarray, "torch.Tensor")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where a dataset keeps its images and labels under the data root (§3.1, §3.2)."""

    img_dir: str
    ann_dir: str
    img_suffix: str
    ann_suffix: str
    reduce_zero_label: bool


LAYOUTS: dict[str, Layout] = {
    "cityscapes": Layout(
        "leftImg8bit", "gtFine", "_leftImg8bit.png", "_gtFine_labelTrainIds.png", False
    ),
    "ade20k": Layout("images", "annotations", ".jpg", ".png", True),
}


class DataError(ValueError):
    """A dataset file or folder is missing or unreadable; the message names it."""


def load_image(path: str | Path) -> np.ndarray:
    """cv2 decode to an HxWx3 uint8 BGR array (mmcv ``imread``, flag 'color')."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        raise DataError(
            f"image {path} could not be decoded (corrupt or not an image); re-run prepare"
        )
    return img


def reduce_zero_label(label: LabelMap, ignore_index: int = 255) -> LabelMap:
    """ADE20K: 0 ('other') -> ignore, 1..150 -> 0..149 (§3.2); a new array or tensor.

    mmseg does ``0 -> 255; -1; 254 -> 255`` on uint8 to avoid underflow; marking the ignored
    pixels first gives the same result for any integer dtype, numpy or torch.
    """
    ignored = (label == 0) | (label == ignore_index)
    out = label - 1
    out[ignored] = ignore_index
    return out


def load_label(path: str | Path, reduce_zero_label: bool) -> np.ndarray:
    """Pillow decode, 'unchanged', squeezed, as uint8 HxW (mmseg ``LoadAnnotations``)."""
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"label {path} does not exist") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"label {path} could not be decoded ({e}); re-run prepare") from e
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = arr.copy()
        arr[:, :, :3] = arr[:, :, 2::-1]  # mmcv's pillow backend: RGB(A) -> BGR(A)
    arr = np.ascontiguousarray(arr.squeeze()).astype(np.uint8)
    if arr.ndim != 2:
        raise DataError(f"label {path} has shape {arr.shape}; expected a single-channel image")
    return _reduce_zero(arr) if reduce_zero_label else arr


_reduce_zero = reduce_zero_label  # the parameter of load_label shadows the function name


def files_by_stem(folder: Path, suffix: str) -> dict[str, Path]:
    """Files under ``folder`` ending in ``suffix``, keyed by their relative path minus suffix
    (``aachen/aachen_000000_000019``), so images and labels of one sample share a key."""
    return {str(p.relative_to(folder))[: -len(suffix)]: p for p in folder.rglob(f"*{suffix}")}


def pair_split(
    root: Path, layout: Layout, split: str
) -> tuple[list[tuple[Path, Path]], int, list[str]]:
    """The (image, label) pairs of a split, sorted by image path; the image count; problems.

    Problems name each missing folder, each image without a label and each label without an
    image. Keys are paths relative to the split folder without the suffix, so Cityscapes' city
    sub-folders pair up as ADE20K's flat folders do.
    """
    img_dir, ann_dir = root / layout.img_dir / split, root / layout.ann_dir / split
    problems = [f"missing folder {d}" for d in (img_dir, ann_dir) if not d.is_dir()]
    if problems:
        return [], 0, problems
    imgs, anns = (
        files_by_stem(img_dir, layout.img_suffix),
        files_by_stem(ann_dir, layout.ann_suffix),
    )
    for key in sorted(imgs.keys() - anns.keys()):
        problems.append(f"{imgs[key]}: no label {ann_dir / (key + layout.ann_suffix)}")
    for key in sorted(anns.keys() - imgs.keys()):
        problems.append(f"{anns[key]}: no image {img_dir / (key + layout.img_suffix)}")
    pairs = sorted((imgs[k], anns[k]) for k in imgs.keys() & anns.keys())
    return pairs, len(imgs), problems
