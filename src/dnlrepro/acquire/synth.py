"""Synthetic Cityscapes / ADE20K archives in the real layouts (docs/reference.md §3.1, §3.2).

``dnlrepro synth`` writes ``gtFine_trainvaltest.zip`` + ``leftImg8bit_trainvaltest.zip`` or
``ADEChallengeData2016.zip`` with the real member paths, so ``prepare`` and the datasets cannot
tell them from the real downloads:

* Cityscapes: ``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/..._gtFine_polygons.json`` (``imgHeight``, ``imgWidth``,
  ``objects[{label, polygon}]`` with real Cityscapes label names, drawn in order so later objects
  overwrite earlier ones, as ``json2labelImg`` does) plus ``_gtFine_labelIds.png`` and
  ``_gtFine_color.png`` rendered from the polygons by cityscapesscripts itself.
* ADE20K: ``ADEChallengeData2016/images/{training,validation}/ADE_*.jpg`` and
  ``annotations/.../ADE_*.png`` with raw labels 0..150 (0 = "other").

Pixels come from the label map: each class has its own colour (its palette entry) and its own
stripe texture (frequency and angle), plus noise, so a segmentation model can learn them. Every
image is a pure function of (seed, split, index); zip timestamps are fixed, so the same seed gives
byte-identical archives.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from dnlrepro.core.files import file_digest
from dnlrepro.data.classes import ADE20K_CLASSES, ADE20K_PALETTE

if TYPE_CHECKING:
    from dnlrepro.core.miniature import Synthetic

logger = logging.getLogger(__name__)
# {archive name: sha256} of a folder of synthetic archives: the format of $DNLREPRO_EXPECTED_SHA256
EXPECTED_SHA256 = "expected_sha256.json"

CITYSCAPES_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum", "bremen"),
    "val": ("frankfurt", "lindau", "munster"),
}
ADE20K_SPLITS: dict[str, str] = {"train": "training", "val": "validation"}
_ZIP_TIME = (2016, 1, 1, 0, 0, 0)

# Foreground objects of a street scene: (label, min width, max width, min h/w, max h/w) as
# fractions of the image width. Real Cityscapes label names (cityscapesscripts labels.py).
_CS_OBJECTS: tuple[tuple[str, float, float, float, float], ...] = (
    ("car", 0.08, 0.22, 0.4, 0.7),
    ("truck", 0.12, 0.25, 0.6, 0.9),
    ("bus", 0.15, 0.3, 0.5, 0.8),
    ("train", 0.2, 0.35, 0.3, 0.5),
    ("person", 0.02, 0.05, 2.0, 3.5),
    ("rider", 0.03, 0.05, 1.8, 2.5),
    ("motorcycle", 0.04, 0.07, 0.6, 0.9),
    ("bicycle", 0.04, 0.07, 0.6, 0.9),
    ("pole", 0.006, 0.012, 8.0, 20.0),
    ("traffic light", 0.015, 0.025, 2.0, 3.0),
    ("traffic sign", 0.03, 0.05, 0.8, 1.0),
    ("fence", 0.1, 0.3, 0.15, 0.3),
    ("wall", 0.1, 0.3, 0.2, 0.4),
    ("dynamic", 0.02, 0.05, 0.5, 1.0),  # trainId 255: exercises the ignore label
    ("static", 0.02, 0.05, 0.5, 1.0),  # trainId 255
)


def _texture_params(n: int, seed: int) -> np.ndarray:
    """Per-class (frequency, angle, phase) for stripe textures, fixed for a dataset."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.05, 0.6, n)
    angle = rng.uniform(0, np.pi, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    return np.stack([freq, angle, phase], axis=1)


def paint(
    label: np.ndarray, colors_bgr: np.ndarray, tex: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """BGR uint8 image whose pixels are the class colour + class stripe texture + noise.

    Args:
        label: HxW integer class map (index into ``colors_bgr`` / ``tex``).
        colors_bgr: [num_classes, 3] base colours.
        tex: [num_classes, 3] (frequency, angle, phase) per class.
        rng: noise generator.
    """
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), dtype=np.float32)
    for c in np.unique(label):
        m = label == c
        f, a, p = tex[c]
        stripes = np.sin(f * (xx[m] * np.cos(a) + yy[m] * np.sin(a)) + p) * 28.0  # [n]
        img[m] = colors_bgr[c][None, :] + stripes[:, None]
    img += rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)
    img *= np.float32(rng.uniform(0.85, 1.15))  # per-image exposure
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------


def cityscapes_objects(rng: np.random.Generator, width: int, height: int) -> list[dict[str, Any]]:
    """Polygons of one street scene, background first; later objects overwrite earlier ones."""
    w, h = width, height
    horizon = int(h * rng.uniform(0.35, 0.5))
    objs: list[dict[str, Any]] = [{"label": "sky", "polygon": _rect(0, 0, w - 1, horizon)}]
    x = 0
    while x < w:  # a row of buildings / vegetation along the horizon
        bw = int(w * rng.uniform(0.1, 0.3))
        top = int(horizon * rng.uniform(0.1, 0.8))
        label = "building" if rng.random() < 0.7 else "vegetation"
        objs.append({"label": label, "polygon": _rect(x, top, min(x + bw, w - 1), horizon + 2)})
        x += bw
    ground = _rect(0, horizon, w - 1, h - 1)
    objs.append({"label": "terrain" if rng.random() < 0.5 else "sidewalk", "polygon": ground})
    cx = w * rng.uniform(0.35, 0.65)
    road = [
        [int(cx - w * 0.05), horizon],
        [int(cx + w * 0.05), horizon],
        [w - 1, h - 1],
        [0, h - 1],
    ]
    objs.append({"label": "road", "polygon": road})
    for _ in range(int(rng.integers(4, 10))):
        label, wmin, wmax, rmin, rmax = _CS_OBJECTS[int(rng.integers(len(_CS_OBJECTS)))]
        ow = max(2, int(w * rng.uniform(wmin, wmax)))
        oh = max(2, min(h - 1, int(ow * rng.uniform(rmin, rmax))))
        bottom = int(rng.uniform(horizon + 0.1 * (h - horizon), h - 1))
        x0 = int(rng.uniform(0, max(1, w - ow)))
        top = max(0, bottom - oh)
        if label in ("person", "rider", "traffic sign"):  # non-rectangular silhouettes
            poly = [
                [x0 + ow // 2, top],
                [x0 + ow, top + oh // 3],
                [x0 + ow, bottom],
                [x0, bottom],
                [x0, top + oh // 3],
            ]
        else:
            poly = _rect(x0, top, x0 + ow, bottom)
        objs.append({"label": label, "polygon": poly})
    if rng.random() < 0.5:  # ego vehicle bonnet at the bottom (trainId 255)
        eh = int(h * rng.uniform(0.05, 0.12))
        objs.append({"label": "ego vehicle", "polygon": _rect(0, h - eh, w - 1, h - 1)})
    return objs


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A rectangle's corners clockwise from the top left, as the objects' other polygons run."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def render_cityscapes_labels(annotation_json: dict[str, Any]) -> tuple[np.ndarray, Image.Image]:
    """``labelIds`` array and ``color`` image rendered by cityscapesscripts from the polygons."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    ann = Annotation()
    ann.fromJsonText(json.dumps(annotation_json))
    return np.array(createLabelImage(ann, "ids"), dtype=np.uint8), createLabelImage(ann, "color")


def _png_bytes(img: np.ndarray | Image.Image) -> bytes:
    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    ok, enc = cv2.imencode(".png", img)
    assert ok
    return enc.tobytes()


def _zip_add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16
    zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)


@contextlib.contextmanager
def _zip_writer(path: Path) -> Iterator[zipfile.ZipFile]:
    """A zip written as ``<path>.part`` and renamed to ``path`` once complete."""
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w") as zf:
        yield zf
    os.replace(tmp, path)


def write_cityscapes(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    width: int,
    height: int,
    seed: int,
) -> list[Path]:
    """Write ``gtFine_trainvaltest.zip`` and ``leftImg8bit_trainvaltest.zip`` into ``out_dir``."""
    from cityscapesscripts.helpers.labels import labels as cs_labels

    if min(width, height) < 16 or n_train < 1 or n_val < 1:
        raise ValueError(
            f"need >= 1 image per split and sides >= 16 px, got {n_train}/{n_val} "
            f"images of {width}x{height}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = np.zeros((256, 3), np.float32)
    for lab in cs_labels:
        if lab.id >= 0:
            colors[lab.id] = lab.color[::-1]  # RGB -> BGR
    tex = _texture_params(256, seed=12345)
    paths = [out / "gtFine_trainvaltest.zip", out / "leftImg8bit_trainvaltest.zip"]
    with _zip_writer(paths[0]) as gt_zip, _zip_writer(paths[1]) as img_zip:
        for zf in (gt_zip, img_zip):
            _zip_add(zf, "README", b"Synthetic stand-in written by `dnlrepro synth`.\n")
            _zip_add(zf, "license.txt", b"Synthetic data, no license restrictions.\n")
        for s, (split, n) in enumerate((("train", n_train), ("val", n_val))):
            cities = CITYSCAPES_CITIES[split]
            for i in tqdm(range(n), desc=f"synth cityscapes {split}", leave=False, disable=None):
                rng = np.random.default_rng([seed, s, i])
                city = cities[i % len(cities)]
                stem = f"{city}_{i // len(cities):06d}_{19 + i:06d}"
                ann = {
                    "imgHeight": height,
                    "imgWidth": width,
                    "objects": cityscapes_objects(rng, width, height),
                }
                ids, color = render_cityscapes_labels(ann)
                gt = f"gtFine/{split}/{city}/{stem}_gtFine"
                _zip_add(gt_zip, f"{gt}_polygons.json", json.dumps(ann, indent=4).encode())
                _zip_add(gt_zip, f"{gt}_labelIds.png", _png_bytes(ids))
                _zip_add(gt_zip, f"{gt}_color.png", _png_bytes(color))
                img = paint(ids, colors, tex, rng)
                _zip_add(
                    img_zip, f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", _png_bytes(img)
                )
    logger.info(
        "wrote synthetic Cityscapes (%d train, %d val, %dx%d) to %s",
        n_train,
        n_val,
        width,
        height,
        out,
    )
    return paths


# ---------------------------------------------------------------------------------------------
# ADE20K
# ---------------------------------------------------------------------------------------------


# A scene draws its classes from frequent ADE20K classes (raw ids, objectInfo150 order) whose
# palette colours are far apart -- backgrounds wall / sky / floor, objects tree, bed, sidewalk,
# person, table -- so train and val share classes and a model can learn them in minutes on a
# CPU (grey wall vs grey road or green tree vs green grass would not separate that fast). A few
# polygons take any other class, so all 150 stay possible.
_ADE_BACKGROUNDS = np.array([1, 3, 4])
_ADE_FREQUENT = np.array([5, 8, 12, 13, 16])


def ade20k_label(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Raw ADE20K label map (0 = other, 1..150 = classes) drawn from random polygons."""
    background = int(rng.choice(_ADE_BACKGROUNDS))
    pool = rng.choice(_ADE_FREQUENT, size=int(rng.integers(2, 5)), replace=False)
    im = Image.new("L", (width, height), background)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 8))):
        u = rng.random()
        c = int(rng.choice(pool)) if u > 0.15 else (0 if u < 0.05 else int(rng.integers(17, 151)))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.15, 0.4) * min(width, height)
        k = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = r * rng.uniform(0.6, 1.0, k)
        poly = [
            (float(cx + a * np.cos(t)), float(cy + a * np.sin(t)))
            for t, a in zip(ang, rad, strict=True)
        ]
        draw.polygon(poly, fill=c)
    return np.array(im, dtype=np.uint8)


def write_ade20k(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    min_size: int,
    max_size: int,
    seed: int,
) -> list[Path]:
    """Write ``ADEChallengeData2016.zip`` into ``out_dir`` (image sides in [min, max])."""
    if min_size < 16 or max_size < min_size or n_train < 1 or n_val < 1:
        raise ValueError(
            f"need >= 1 image per split and 16 <= min_size <= max_size, got "
            f"{n_train}/{n_val} images, sizes {min_size}..{max_size}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = np.zeros((151, 3), np.float32)
    colors[0] = (90, 90, 90)
    colors[1:] = np.asarray(ADE20K_PALETTE, np.float32)[:, ::-1]  # RGB -> BGR
    tex = _texture_params(151, seed=54321)
    path = out / "ADEChallengeData2016.zip"
    # For objectInfo150.txt: pixels per raw label, and images containing it per split.
    pixels = np.zeros(151, np.int64)
    present = {"train": np.zeros(151, np.int64), "val": np.zeros(151, np.int64)}
    scenes = []
    with _zip_writer(path) as zf:
        for s, (split, n) in enumerate((("train", n_train), ("val", n_val))):
            folder = ADE20K_SPLITS[split]
            for i in tqdm(range(n), desc=f"synth ade20k {split}", leave=False, disable=None):
                rng = np.random.default_rng([seed, 100 + s, i])
                w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
                label = ade20k_label(rng, w, h)
                counts = np.bincount(label.ravel(), minlength=151)
                pixels += counts
                present[split] += counts > 0
                img = paint(label, colors, tex, rng)
                ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
                assert ok
                stem = f"ADE_{split}_{i + 1:08d}"
                _zip_add(zf, f"ADEChallengeData2016/images/{folder}/{stem}.jpg", jpg.tobytes())
                _zip_add(
                    zf, f"ADEChallengeData2016/annotations/{folder}/{stem}.png", _png_bytes(label)
                )
                scenes.append(f"{stem} synthetic\n")
        # The two text files of the real archive (same names and columns).
        ratio = pixels[1:] / max(int(pixels.sum()), 1)
        rows = ["Idx\tRatio\tTrain\tVal\tName\n"] + [
            f"{c}\t{ratio[c - 1]:.4f}\t{present['train'][c]}\t{present['val'][c]}\t"
            f"{ADE20K_CLASSES[c - 1]}\n"
            for c in range(1, 151)
        ]
        _zip_add(zf, "ADEChallengeData2016/objectInfo150.txt", "".join(rows).encode())
        _zip_add(zf, "ADEChallengeData2016/sceneCategories.txt", "".join(scenes).encode())
    logger.info("wrote synthetic ADE20K (%d train, %d val) to %s", n_train, n_val, path)
    return [path]


# ---------------------------------------------------------------------------------------------
# CLI: dnlrepro synth
# ---------------------------------------------------------------------------------------------


def write(dataset: str, out_dir: str | Path, synthetic: Synthetic) -> list[Path]:
    """The archives of ``dataset`` at the counts, sizes and seed of a profile's ``synthetic``."""
    if dataset == "cityscapes":
        c = synthetic.cityscapes
        return write_cityscapes(out_dir, c.train, c.val, c.width, c.height, synthetic.seed)
    a = synthetic.ade20k
    return write_ade20k(out_dir, a.train, a.val, a.min_size, a.max_size, synthetic.seed)


def local_source(folder: Path, dataset: str, synthetic: Synthetic) -> Path:
    """The synthetic archives of ``dataset`` in ``folder``, written once per size and seed.

    The download stage then fetches from this folder exactly as from a user's
    ``DNLREPRO_LOCAL_DATA`` (link, verify, receipt), checking each archive against the
    ``expected_sha256.json`` written here, the format of ``$DNLREPRO_EXPECTED_SHA256``.
    """
    spec = {"dataset": dataset, "seed": synthetic.seed}
    spec.update(dataclasses.asdict(getattr(synthetic, dataset)))
    stamp = folder / "synthetic.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == spec:
        return folder
    tmp = folder.with_name(folder.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    written = write(dataset, tmp, synthetic)
    hashes = {p.name: file_digest(p) for p in written}
    (tmp / EXPECTED_SHA256).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    (tmp / "synthetic.json").write_text(json.dumps(spec, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # the same paths as before: links into the old folder stay valid
    logger.info("synthetic %s archives (%s) written to %s", dataset, spec, folder)
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=("cityscapes", "ade20k"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the archives")
    default = " (default: the smoke profile's, params/profiles.yaml)"
    parser.add_argument("--seed", type=int, default=None, help="random seed" + default)
    parser.add_argument("--train", type=int, default=None, help="training images" + default)
    parser.add_argument("--val", type=int, default=None, help="validation images" + default)
    parser.add_argument("--width", type=int, default=None, help="Cityscapes image width" + default)
    parser.add_argument("--height", type=int, default=None, help="Cityscapes height" + default)
    parser.add_argument("--min-size", type=int, default=None, help="ADE20K smallest side" + default)
    parser.add_argument("--max-size", type=int, default=None, help="ADE20K largest side" + default)


def main(args: argparse.Namespace) -> int:
    from dnlrepro.core.profile import load_profile

    miniature = load_profile("smoke").miniature
    if miniature is None:
        raise ValueError("params/profiles.yaml: profile 'smoke' has no 'miniature' block")
    smoke = miniature.synthetic()
    sizes = getattr(smoke, args.dataset)
    given = {k: v for k, v in vars(args).items() if v is not None and hasattr(sizes, k)}
    seed = smoke.seed if args.seed is None else args.seed
    sizes = dataclasses.replace(sizes, **given)
    write(args.dataset, args.out, dataclasses.replace(smoke, seed=seed, **{args.dataset: sizes}))
    return 0
