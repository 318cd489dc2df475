"""Cityscapes and ADE20K datasets with mmseg 0.x loading semantics (docs/reference.md §3.1-§3.4).

§ numbers refer to docs/reference.md.

Layouts (``data_root`` is relative to the workspace root unless absolute):

* Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (written by ``dnlrepro prepare``).
* ADE20K: ``images/<split>/*.jpg`` and ``annotations/<split>/*.png`` (raw labels 0..150).

Images are decoded with cv2 as BGR uint8, labels with Pillow "unchanged" as uint8 (§3.3 steps
1-2); ADE20K labels get ``reduce_zero_label`` on load (§3.2).

Randomness: ``dataset[i]`` uses ``default_rng((seed, i))``; ``dataset[(i, s)]`` uses
``default_rng(s)``. The engine's sampler yields ``(index, seed)`` pairs so a batch depends only on
the base seed and the stream position, not on worker count or resume point.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnlrepro.data.io import (  # re-exported: datasets.load_label is the evaluation API
    LAYOUTS,
    DataError,
    Layout,
    files_by_stem,
    load_image,
    load_label,
    reduce_zero_label,
)
from dnlrepro.data.transforms import TrainPipeline

logger = logging.getLogger(__name__)


def resolve_data_root(data_root: str | Path) -> Path:
    """``data_root`` relative to the workspace root unless absolute (docs/architecture.md)."""
    from dnlrepro.core import workspace

    return workspace.find().path(data_root)


def scan_pairs(root: Path, layout: Layout, split: str) -> tuple[list[Path], list[Path]]:
    """Sorted image paths under ``<img_dir>/<split>`` and their label paths (suffix swap)."""
    img_dir = root / layout.img_dir / split
    ann_dir = root / layout.ann_dir / split
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise FileNotFoundError(
                f"dataset folder {d} does not exist; run `dnlrepro prepare` (or `dvc repro "
                f"prepare`) to create it, or fix data.data_root in the config"
            )
    # Sorted by image path; a label that does not exist is reported when the dataset is built.
    imgs = sorted(files_by_stem(img_dir, layout.img_suffix).items(), key=lambda kv: kv[1])
    if not imgs:
        raise FileNotFoundError(
            f"no *{layout.img_suffix} images under {img_dir}; run `dnlrepro prepare` first"
        )
    return [p for _, p in imgs], [ann_dir / (key + layout.ann_suffix) for key, _ in imgs]


class SegDataset(torch.utils.data.Dataset):
    """One split of Cityscapes or ADE20K.

    Args:
        cfg_data: ``Config.data``.
        split: real folder name (``train``/``val`` or ``training``/``validation``).
        mode: ``"train"`` (augmented crops) or ``"test"`` (raw image + paths).
        max_images: keep only the first N images (sorted by path).
        seed: dataset seed for integer keys.

    Items: train ``{"img": float32 [3, h, w], "gt": int64 [h, w]}``; test ``{"img_path",
    "ann_path", "ori_shape": (H, W), "img_bgr": uint8 [H, W, 3]}``.
    """

    def __init__(
        self,
        cfg_data: Any,
        split: str,
        mode: str = "train",
        max_images: int | None = None,
        seed: int = 0,
    ) -> None:
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if cfg_data.dataset not in LAYOUTS:
            raise ValueError(
                f"unknown dataset {cfg_data.dataset!r}; choose one of {', '.join(LAYOUTS)}"
            )
        self.cfg_data = cfg_data
        self.layout = LAYOUTS[cfg_data.dataset]
        self.reduce_zero_label = bool(cfg_data.reduce_zero_label)
        if self.reduce_zero_label != self.layout.reduce_zero_label:
            raise ValueError(
                f"data.reduce_zero_label is {self.reduce_zero_label} but {cfg_data.dataset} "
                f"requires {self.layout.reduce_zero_label} (docs/reference.md §3.2); fix the config"
            )
        self.root = resolve_data_root(cfg_data.data_root)
        self.split, self.mode, self.seed = split, mode, seed
        imgs, anns = scan_pairs(self.root, self.layout, split)
        missing = [str(a) for a in anns if not a.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} label file(s) missing for the images of split {split!r} in "
                f"{self.root}, e.g. {missing[0]}; run `dnlrepro prepare` to convert and validate"
            )
        if max_images is not None:
            imgs, anns = imgs[:max_images], anns[:max_images]
        self.img_paths, self.ann_paths = imgs, anns
        self.pipeline = TrainPipeline(cfg_data) if mode == "train" else None
        logger.info(
            "%s %s (%s): %d images from %s", cfg_data.dataset, split, mode, len(imgs), self.root
        )

    def __len__(self) -> int:
        return len(self.img_paths)

    def rng_for(self, key: int | tuple[int, int]) -> tuple[int, np.random.Generator]:
        """(index, generator) for an int key or an ``(index, seed)`` tuple."""
        if isinstance(key, tuple | list):
            index, seed = int(key[0]), int(key[1])
            return index, np.random.default_rng(seed)
        index = int(key)
        return index, np.random.default_rng((self.seed, index))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = self.rng_for(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        img_path, ann_path = self.img_paths[index], self.ann_paths[index]
        img = load_image(img_path)
        if self.mode == "test":
            return {
                "img_path": str(img_path),
                "ann_path": str(ann_path),
                "ori_shape": (int(img.shape[0]), int(img.shape[1])),
                "img_bgr": img,
            }
        label = load_label(ann_path, self.reduce_zero_label)
        if label.shape != img.shape[:2]:
            raise DataError(
                f"label {ann_path} is {label.shape[1]}x{label.shape[0]} but image {img_path} is "
                f"{img.shape[1]}x{img.shape[0]} (w x h); re-run prepare"
            )
        assert self.pipeline is not None
        return self.pipeline(img, label, rng)


def build_dataset(
    cfg_data: Any, split: str, mode: str = "train", max_images: int | None = None
) -> SegDataset:
    """Build the dataset of ``cfg_data`` for ``split`` (``cfg.data.train_split``/``val_split``)."""
    return SegDataset(cfg_data, split, mode=mode, max_images=max_images)


__all__ = [
    "LAYOUTS",
    "DataError",
    "Layout",
    "SegDataset",
    "build_dataset",
    "load_image",
    "load_label",
    "reduce_zero_label",
    "resolve_data_root",
    "scan_pairs",
]
