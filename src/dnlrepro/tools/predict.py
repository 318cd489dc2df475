"""``dnlrepro predict``: label maps (and colour overlays) for arbitrary images.

§ numbers refer to docs/reference.md.

Each image goes through the config's test pipeline (docs/reference.md §3.4: cv2 BGR decode,
keep-ratio resize to the test scale with mmcv's rounding and cv2 bilinear, BGR->RGB, normalise), the
model's ``inference`` (whole or slide per ``cfg.test``, logits resized to the original size,
softmax; §5.2 / §1.1), optionally ms+flip (§5.3), and argmax. Output per image, at the image's path
relative to the folder it was found in (``--images leftImg8bit/val`` -> ``<out>/<city>/<stem>.png``;
a file given directly -> ``<out>/<stem>.png``):

* ``<stem>.png``: uint8 label map at the original size, Pillow mode ``'L'``, in the convention
  ``labels`` picks (:data:`LABEL_VALUES`): ``train_ids`` (default; Cityscapes trainIds 0..18,
  ADE20K 0..149 = annotation - 1) or ``dataset`` (Cityscapes ``labelIds`` as in
  ``*_gtFine_labelIds.png``; ADE20K annotation values 1..150);
* ``<stem>_overlay.png`` (``--overlay``): mmseg ``show_result`` blend, 0.5 image + 0.5 palette
  colour of the predicted class (independent of ``labels``);
* ``predict.json`` in the output folder: the manifest of every file predict wrote there, with its
  sha256 and label convention.

Nothing is written unless every output path is free (:mod:`~dnlrepro.tools.predict_outputs`):
an output may replace only a file that the manifest lists with the same sha256 (predict's own
earlier output); an input image or any other existing file is refused before the model is loaded.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dnlrepro.core.config import Config, add_config_arguments
from dnlrepro.data import classes
from dnlrepro.data.datasets import load_image
from dnlrepro.engine.inference import infer_image, load_model
from dnlrepro.tools.checkpoints import config_for, fetched
from dnlrepro.tools.predict_outputs import (
    IMAGE_SUFFIXES,
    MANIFEST,
    Manifest,
    check_outputs,
    plan_outputs,
)

logger = logging.getLogger(__name__)

OVERLAY_OPACITY = 0.5  # mmseg show_result default
LABEL_CONVENTIONS = ("train_ids", "dataset")
# (dataset, convention) -> what the pixel values of a label PNG mean.
LABEL_VALUES = {
    ("cityscapes", "train_ids"): "Cityscapes trainIds 0..18 (road 0 ... bicycle 18)",
    ("cityscapes", "dataset"): "Cityscapes labelIds (cityscapesscripts `id`, as in "
    "*_gtFine_labelIds.png: road 7 ... bicycle 33)",
    ("ade20k", "train_ids"): "ADE20K train ids 0..149 (annotation value - 1, reduce_zero_label)",
    ("ade20k", "dataset"): "ADE20K annotation values 1..150 (train id + 1; 0 = other is never "
    "predicted)",
}
OVERLAY_VALUES = "mmseg show_result: 0.5 image + 0.5 palette colour of the predicted class, BGR PNG"


def label_lut(dataset: str, convention: str) -> np.ndarray:
    """256-entry uint8 table from a train id to the pixel value written in ``convention``.

    ``dataset``: Cityscapes trainId -> ``labelId`` via cityscapesscripts ``trainId2label`` (road 0
    -> 7); ADE20K train id -> train id + 1 (the annotation value, 0 = other). Values outside the
    dataset's train ids (never predicted) map to 0.

    Raises:
        ValueError: unknown convention, or a dataset without a ``dataset`` convention.
    """
    if convention not in LABEL_CONVENTIONS:
        choices = ", ".join(LABEL_CONVENTIONS)
        raise ValueError(f"unknown label convention {convention!r}; choose one of {choices}")
    if convention == "train_ids":
        return np.arange(256, dtype=np.uint8)
    lut = np.zeros(256, dtype=np.uint8)
    if dataset == "cityscapes":
        from cityscapesscripts.helpers.labels import trainId2label

        for train_id in range(19):
            lut[train_id] = trainId2label[train_id].id
    elif dataset == "ade20k":
        lut[:150] = np.arange(1, 151)
    else:
        raise ValueError(
            f"--labels dataset: no dataset convention known for {dataset!r}; use --labels train_ids"
        )
    return lut


def overlay(img_bgr: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """mmseg ``show_result``: ``img * 0.5 + colour * 0.5`` in BGR, truncated to uint8.

    ``img_bgr``: HxWx3 uint8; ``label``: HxW class ids (ids without a palette entry are drawn
    black); ``palette``: RGB colours per class id. Returns HxWx3 uint8 BGR.
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
    labels: str = "train_ids",
) -> list[Path]:
    """Write one label PNG (and with ``with_overlay`` a ``<stem>_overlay.png``) per image and
    the manifest; returns the label PNG paths, in input order.

    ``images``: files and/or folders (searched recursively; the sub-folder structure is kept
    below ``out_dir``, which may be an input folder or inside one as long as no output path is an
    input or a file predict did not write). ``ms_flip``: 6 ratios x flip (§5.3). ``labels``: the
    convention of :data:`LABEL_VALUES`. ``device``: default CUDA when available.

    Raises:
        FileNotFoundError: missing inputs or checkpoint. ValueError: an output path is an input
        image or an existing file predict did not write, or lies behind a symbolic link that
        leads outside ``out_dir`` (:func:`check_outputs`; nothing is written); two images map to
        one output path. DataError (a ValueError): an image cannot be
        decoded (checked for every image before the model is built). ValueError / RuntimeError:
        a checkpoint that does not match the config (from the model's ``load_checkpoint``).
    """
    dataset = cfg.data.dataset
    lut = label_lut(dataset, labels)
    values = LABEL_VALUES.get((dataset, labels), f"{dataset} {labels}")
    out = Path(out_dir).expanduser()
    plan = plan_outputs(images, out, with_overlay)
    check_outputs(plan, out)
    # Decode everything first (cv2 BGR, like mmcv ``imread``, §3.3 step 1) so a bad file fails
    # fast, before minutes of model loading.
    for item in plan:
        load_image(item.source)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with fetched(checkpoint) as local:  # a URL is downloaded; nothing runs code
        model, _, _ = load_model(cfg, local, device)
    palette = classes.PALETTE[dataset]
    out.mkdir(parents=True, exist_ok=True)
    header = {"config": cfg.name, "profile": cfg.profile, "dataset": dataset}
    header |= {"checkpoint": str(checkpoint), "ms_flip": bool(ms_flip), "labels": labels}
    manifest = Manifest.start(out, {**header, "label_values": values, "overlay": OVERLAY_VALUES})
    logger.info("label maps: --labels %s = %s", labels, values)
    written: list[Path] = []
    try:
        with torch.no_grad():
            for item in tqdm(plan, desc="predict", unit="img", disable=not sys.stderr.isatty()):
                img = load_image(item.source)
                probs_ss, probs_ms = infer_image(model, img, cfg, ms_flip, device)
                probs = probs_ms if probs_ms is not None else probs_ss
                # argmax of the softmax at original size (§1.1 step 3); ids < 256 fit uint8.
                label = probs.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
                source = {"dataset": dataset, "source": str(item.source)}
                buf = io.BytesIO()
                Image.fromarray(lut[label], mode="L").save(buf, format="PNG")
                manifest.write(item.label, buf.getvalue(), kind="label", labels=labels, **source)
                written.append(item.label)
                if item.overlay is not None:  # colours of the train ids, whatever --labels says
                    ok, data = cv2.imencode(".png", overlay(img, label, palette))
                    if not ok:  # pragma: no cover - cv2 encodes any uint8 HxWx3 array
                        raise RuntimeError(f"cv2 could not encode the overlay of {item.source}")
                    manifest.write(item.overlay, data.tobytes(), kind="overlay", **source)
    finally:
        if written:  # also after an error or Ctrl-C: what was written stays predict's own
            manifest.save()
    logger.info("wrote %d label map(s) (%s) to %s", len(written), labels, out)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        help=".pth file or published URL; without --profile, the profile our training recorded "
        "in the file applies (else the configuration's own values)",
    )
    parser.add_argument(
        "--images",
        required=True,
        nargs="+",
        help="image files and/or folders; folders are searched recursively (sorted) for "
        f"{', '.join(IMAGE_SUFFIXES)} and the sub-folder structure is kept under --out",
    )
    parser.add_argument(
        "--out",
        required=True,
        help=f"output folder; {MANIFEST} there lists what predict wrote (with sha256). Refused, "
        "with nothing written, when an output would overwrite an input image or an existing file "
        "predict did not write; re-running into the same folder overwrites predict's own outputs",
    )
    parser.add_argument("--ms-flip", action="store_true", help="6 ratios x flip (§5.3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument(
        "--overlay",
        action="store_true",
        help="also write <stem>_overlay.png: 0.5 image + 0.5 palette colour of the predicted class "
        "(mmseg show_result), the same for either --labels",
    )
    parser.add_argument(
        "--labels",
        choices=LABEL_CONVENTIONS,
        default="train_ids",
        help="pixel values of <stem>.png (recorded in predict.json). train_ids (default): "
        "Cityscapes trainIds 0..18, ADE20K 0..149 (annotation - 1). dataset: the dataset's own "
        "annotation values: Cityscapes labelIds as in *_gtFine_labelIds.png (road 7 ... bicycle "
        "33), ADE20K 1..150 (0 = other is never predicted)",
    )


def main(args: argparse.Namespace) -> int:
    # a local checkpoint of ours records its profile (a URL is a published mmseg checkpoint)
    cfg = config_for(args, args.checkpoint)
    written = predict(
        cfg,
        args.checkpoint,
        args.images,
        args.out,
        ms_flip=args.ms_flip,
        device=args.device,
        with_overlay=args.overlay,
        labels=args.labels,
    )
    values = LABEL_VALUES.get((cfg.data.dataset, args.labels), args.labels)
    print(
        f"wrote {len(written)} label map(s) to {args.out} ({values}); list: {args.out}/{MANIFEST}"
    )
    return 0
