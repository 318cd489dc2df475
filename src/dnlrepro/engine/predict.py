"""``dnlrepro predict``: label maps (and colour overlays) for arbitrary images.

§ numbers refer to docs/reference.md.

Each image goes through the config's test pipeline (docs/reference.md §3.4: cv2 BGR decode,
keep-ratio resize to the test scale with mmcv's rounding and cv2 bilinear, BGR->RGB, normalise), the
model's ``inference`` (whole or slide per ``cfg.test``, logits resized to the original size,
softmax; §5.2 / §1.1), optionally ms+flip (§5.3), and argmax. Output per image:

* ``<stem>.png``: uint8 label ids at the original size, Pillow mode ``'L'``;
* ``<stem>_overlay.png`` (``--overlay``): mmseg ``show_result`` blend, 0.5 image + 0.5 palette.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dnlrepro.config import Config
from dnlrepro.engine.inference import infer_image, load_model

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_OPACITY = 0.5  # mmseg show_result default


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand directories (non-recursive, sorted, known image suffixes) and keep files as given.

    Raises:
        FileNotFoundError: an input does not exist, or a directory holds no images.
        ValueError: two inputs share a stem, so their outputs would overwrite each other.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in directory {p}; pass image files "
                    "or a folder that holds them"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"image {p} does not exist")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            raise ValueError(
                f"images {seen[f.stem]} and {f} share the stem {f.stem!r}; both would be written "
                f"to {f.stem}.png -- predict them into different --out folders"
            )
        seen[f.stem] = f
    return list(dict.fromkeys(files))


def read_image(path: Path) -> np.ndarray:
    """cv2 BGR uint8 decode, like mmcv ``imread(flag='color')`` (§3.3 step 1).

    Raises:
        dnlrepro.data.datasets.DataError: the file is not a decodable image (names the file).
    """
    from dnlrepro.data.datasets import load_image

    return load_image(path)


def overlay(img_bgr: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """mmseg ``show_result``: ``img * 0.5 + colour * 0.5`` in BGR, truncated to uint8.

    Args:
        img_bgr: HxWx3 uint8 BGR image.
        label: HxW class ids (ids without a palette entry are drawn black).
        palette: RGB colours per class id.

    Returns:
        HxWx3 uint8 BGR image.
    """
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    color_bgr = pal[label][..., ::-1]  # palette is RGB; cv2 writes BGR
    blended = img_bgr * (1 - OVERLAY_OPACITY) + color_bgr * OVERLAY_OPACITY
    return blended.astype(np.uint8)


def predict(
    cfg: Config,
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    ms_flip: bool = False,
    device: torch.device | str | None = None,
    with_overlay: bool = False,
) -> list[Path]:
    """Write one label PNG (and optionally one overlay) per image.

    Args:
        cfg: the resolved config (test pipeline, classes, palette).
        checkpoint: ``.pth`` file or URL; keys and shapes must match ``cfg``.
        images: image files and/or directories.
        out_dir: output folder (created).
        ms_flip: average the softmax of 6 ratios x flip (§5.3).
        device: default: CUDA when available.
        with_overlay: also write ``<stem>_overlay.png``.

    Returns:
        The label PNG paths, in input order.

    Raises:
        FileNotFoundError: missing inputs or checkpoint. DataError (a ValueError): an image cannot
        be decoded (checked for every image before the model is built). ValueError / RuntimeError:
        a checkpoint that does not match the config (from the model's ``load_checkpoint``).
    """
    from dnlrepro.data import classes

    files = collect_images(images)
    # Decode everything first so a bad file fails fast, before minutes of model loading.
    for f in files:
        read_image(f)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, _ = load_model(cfg, checkpoint, device)
    palette = classes.PALETTE[cfg.data.dataset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with torch.no_grad():
        for f in tqdm(files, desc="predict", unit="img", disable=not sys.stderr.isatty()):
            img = read_image(f)
            probs_ss, probs_ms = infer_image(model, img, cfg, ms_flip, device)
            probs = probs_ms if probs_ms is not None else probs_ss
            # argmax of the softmax at original size (§1.1 step 3); ids < 256 fit uint8.
            label = probs.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
            dest = out / f"{f.stem}.png"
            Image.fromarray(label, mode="L").save(dest)
            written.append(dest)
            if with_overlay:
                cv2.imwrite(str(out / f"{f.stem}_overlay.png"), overlay(img, label, palette))
            logger.debug("%s -> %s (%dx%d)", f, dest, label.shape[1], label.shape[0])
    logger.info("wrote %d label map(s) to %s", len(written), out)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dnlrepro.profile import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help=".pth file or published URL")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--ms-flip", action="store_true", help="6 ratios x flip (§5.3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")


def main(args: argparse.Namespace) -> int:
    from dnlrepro.profile import config_from_args

    cfg, _ = config_from_args(args)
    written = predict(
        cfg,
        args.checkpoint,
        args.images,
        args.out,
        ms_flip=args.ms_flip,
        device=args.device,
        with_overlay=args.overlay,
    )
    print(f"wrote {len(written)} label map(s) to {args.out}")
    return 0
