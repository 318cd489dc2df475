"""Decoding and layouts shared by ``datasets`` and ``prepare`` (no torch import here).

Images: cv2 BGR uint8 (mmcv ``imread`` 'color', fact sheet §3.3 step 1). Labels: Pillow
'unchanged', squeezed, uint8 (mmseg ``LoadAnnotations``, §3.3 step 2), with ADE20K's
``reduce_zero_label`` (§3.2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

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


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """ADE20K: 0 -> 255 (ignore), 1..150 -> 0..149, without uint8 underflow (§3.2).

    mmseg's order: set 0 to 255, subtract 1 (255 becomes 254), set 254 back to 255.
    """
    out = label.copy()
    out[out == 0] = 255
    out = out - 1
    out[out == 254] = 255
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
