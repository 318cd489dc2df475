"""Extract, convert and validate a dataset; write ``<data-root>/manifest.json``
(docs/reference.md §3).

§ numbers refer to docs/reference.md.

Steps (``dnlrepro prepare``):

1. **Extract** the archives (safely: :mod:`dnlrepro.acquire.archives` checks every member and the
   archive's bounds first, extracts into a temporary folder and moves it into place only when
   complete; a failure leaves nothing) into the data root. Cityscapes: ``gtFine_trainvaltest.zip``
   and ``leftImg8bit_trainvaltest.zip`` into the folder that then holds ``leftImg8bit/`` and
   ``gtFine/``. ADE20K: ``ADEChallengeData2016.zip`` with its top folder stripped into the data
   root (``.../ADEChallengeData2016``). Already-extracted folders (``dnlrepro download --local``)
   are linked instead.
2. **Convert** Cityscapes polygons to ``*_gtFine_labelTrainIds.png`` exactly as mmseg's
   ``tools/convert_datasets/cityscapes.py`` does: cityscapesscripts
   ``json2labelImg(json, out, 'trainIds')`` (trainIds 0..18, 255 ignore; §3.1).
3. **Validate**: image/label pairs complete, counts as expected (2975/500 and 20210/2000 for the
   real data), every image decodes, label size equals image size, label values allowed
   (Cityscapes trainIds 0..18 and 255; ADE20K raw 0..150). Every problem is collected with its
   file name and reported together in one error; nothing is skipped silently.
4. **Manifest**: archives (size, mtime, sha256), counts and every file (size, sha256).
   Re-running on a root whose manifest matches the archives (size+mtime, or sha256 when only the
   mtime changed) and the files on disk (present, same size) returns without extracting.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dnlrepro.acquire.archives import safe_extract
from dnlrepro.acquire.download import ADE20K_ARCHIVES, CITYSCAPES_ARCHIVES, EXTRACTED
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.core.miniature import REAL_COUNTS
from dnlrepro.data.io import LAYOUTS, load_image, load_label, pair_split

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPLITS: dict[str, tuple[str, str]] = {
    "cityscapes": ("train", "val"),
    "ade20k": ("training", "validation"),
}
ARCHIVES: dict[str, tuple[str, ...]] = {
    "cityscapes": CITYSCAPES_ARCHIVES,
    "ade20k": ADE20K_ARCHIVES,
}
STRIP: dict[str, int] = {"cityscapes": 0, "ade20k": 1}  # ADE20K zip: drop "ADEChallengeData2016/"
ALLOWED: dict[str, np.ndarray] = {  # allowed label values, as a 256-entry lookup
    "cityscapes": np.isin(np.arange(256), [*range(19), 255]),
    "ade20k": np.isin(np.arange(256), range(151)),
}
DEFAULT_ROOTS: dict[str, str] = {
    "cityscapes": "data/cityscapes",
    "ade20k": "data/ade/ADEChallengeData2016",
}
MAX_LISTED = 20  # in the exception; the log lists every problem


class PrepareError(ValueError):
    """Validation found problems; the message lists each one with its file."""


# ---------------------------------------------------------------------------------------------
# 1. Extraction
# ---------------------------------------------------------------------------------------------


def archive_fingerprint(dataset: str, archives_dir: Path) -> dict[str, dict[str, Any]]:
    """{archive name: {size, mtime}} of the archives present (links followed)."""
    out = {}
    for name in ARCHIVES[dataset]:
        p = archives_dir / name
        if p.is_file():
            st = p.stat()
            out[name] = {"size": st.st_size, "mtime": st.st_mtime}
    return out


def extract(dataset: str, archives_dir: Path, data_root: Path) -> None:
    """Extract the dataset's archives into ``data_root`` (or link extracted folders)."""
    missing = [n for n in ARCHIVES[dataset] if not (archives_dir / n).is_file()]
    if not missing:
        for name in ARCHIVES[dataset]:
            safe_extract(archives_dir / name, data_root, strip_components=STRIP[dataset])
        return
    # Local mode: extracted folders next to (or instead of) the archives.
    folders = EXTRACTED[dataset]
    if all((archives_dir / d).is_dir() for d in folders):
        if dataset == "ade20k":
            _link_dir(archives_dir / folders[0], data_root)
        else:
            data_root.mkdir(parents=True, exist_ok=True)
            for d in folders:
                _link_dir(archives_dir / d, data_root / d)
        return
    layout = LAYOUTS[dataset]
    if (data_root / layout.img_dir).is_dir() and (data_root / layout.ann_dir).is_dir():
        logger.info("no archives in %s; using the extracted dataset in %s", archives_dir, data_root)
        return
    how = (
        "`dnlrepro download --what cityscapes` (needs CITYSCAPES_USERNAME/PASSWORD)"
        if dataset == "cityscapes"
        else "`dnlrepro download --what ade20k`"
    )
    raise FileNotFoundError(
        f"{archives_dir}: missing {', '.join(missing)} (and no extracted "
        f"{'/'.join(folders)} there or in {data_root}); get them with {how}, point "
        f"`dnlrepro download --local PATH` at copies you have, or write synthetic stand-ins "
        f"with `dnlrepro synth --dataset {dataset} --out {archives_dir}`"
    )


def _link_dir(src: Path, dst: Path) -> None:
    src = src.resolve()
    if dst.resolve() == src:
        return
    if dst.is_dir() and not dst.is_symlink() and not any(dst.iterdir()):
        dst.rmdir()  # an empty placeholder (e.g. the data root prepare just created)
    if dst.is_symlink() or dst.exists():
        raise FileExistsError(f"{dst} exists and is not {src}; remove it or pick another root")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=True)
    logger.info("linked %s -> %s", dst, src)


# ---------------------------------------------------------------------------------------------
# 2. Cityscapes conversion (mmseg tools/convert_datasets/cityscapes.py)
# ---------------------------------------------------------------------------------------------


def _convert_one(json_path: str) -> str | None:
    """json2labelImg(json, *_labelTrainIds.png, 'trainIds'); a problem string or None."""
    from cityscapesscripts.helpers.labels import name2label
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    out = json_path.replace("_polygons.json", "_labelTrainIds.png")
    try:
        if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(json_path):
            return None  # converted before and the polygons have not changed since
        with open(json_path, encoding="utf-8") as f:
            ann = json.load(f)
        for key in ("imgHeight", "imgWidth", "objects"):
            if key not in ann:
                return f"{json_path}: missing key {key!r} (not a Cityscapes polygon file)"
        for obj in ann["objects"]:
            label = obj.get("label", "")
            if label not in name2label and label.endswith("group"):
                label = label[: -len("group")]
            if label not in name2label:  # json2labelImg would sys.exit() on it
                return f"{json_path}: unknown Cityscapes label {obj.get('label')!r}"
        tmp = out + ".tmp.png"
        json2labelImg(json_path, tmp, "trainIds")
        os.replace(tmp, out)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{json_path}: cannot convert ({type(e).__name__}: {e})"
    return None


def _pool_map(fn: Callable[[Any], Any], items: list[Any], nproc: int, desc: str) -> list[Any]:
    if nproc > 1 and len(items) > 1:
        # spawn, not fork: the caller may hold threads (torch, logging) whose locks fork copies.
        with multiprocessing.get_context("spawn").Pool(nproc) as pool:
            it = pool.imap(fn, items, chunksize=8)
            return list(tqdm(it, total=len(items), desc=desc, leave=False, disable=None))
    return [fn(x) for x in tqdm(items, desc=desc, leave=False, disable=None)]


def convert_cityscapes(data_root: Path, nproc: int = 1) -> list[str]:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_polygons.json``."""
    jsons = sorted(str(p) for p in (data_root / "gtFine").rglob("*_gtFine_polygons.json"))
    logger.info("converting %d Cityscapes polygon files to trainIds", len(jsons))
    return [p for p in _pool_map(_convert_one, jsons, nproc, "json2labelImg") if p]


# ---------------------------------------------------------------------------------------------
# 3. Validation
# ---------------------------------------------------------------------------------------------


def _check_pair(task: tuple[str, str, str, str]) -> tuple[dict[str, Any], list[str]]:
    """Decode one image/label pair; (manifest entries, problems)."""
    dataset, root, img_rel, ann_rel = task
    img_path, ann_path = Path(root) / img_rel, Path(root) / ann_rel
    problems: list[str] = []
    entries: dict[str, Any] = {}
    shape = None
    try:
        shape = load_image(img_path).shape[:2]
    except (OSError, ValueError) as e:
        problems.append(f"{img_path}: {e}")
    try:
        label = load_label(ann_path, reduce_zero_label=False)  # raw values are validated
        if shape is not None and label.shape != shape:
            problems.append(
                f"{ann_path}: label is {label.shape[1]}x{label.shape[0]} but the image "
                f"{img_path.name} is {shape[1]}x{shape[0]} (w x h)"
            )
        bad = np.flatnonzero(np.bincount(label.ravel(), minlength=256) * ~ALLOWED[dataset])
        if len(bad):
            problems.append(f"{ann_path}: label values {bad.tolist()} not allowed for {dataset}")
    except (OSError, ValueError) as e:
        problems.append(f"{ann_path}: {e}")
    for rel, p in ((img_rel, img_path), (ann_rel, ann_path)):
        if p.is_file():
            entries[rel] = {"size": p.stat().st_size, "sha256": file_digest(p)}
    return entries, problems


def validate_or_raise(
    dataset: str,
    data_root: Path,
    expect: tuple[int, int],
    nproc: int = 1,
    earlier: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """Check every pair of both splits: (file entries, counts), or one :class:`PrepareError`
    that lists every problem found (including ``earlier`` ones, e.g. from the Cityscapes
    conversion)."""
    layout = LAYOUTS[dataset]
    files: dict[str, Any] = {}
    counts: dict[str, int] = {}
    problems: list[str] = list(earlier or [])
    for split, n_expected in zip(SPLITS[dataset], expect, strict=True):
        found, n_images, missing = pair_split(data_root, layout, split)
        problems += missing
        counts[split] = n_images
        if n_images != n_expected:
            problems.append(
                f"{data_root / layout.img_dir / split}: {n_images} images, expected {n_expected} "
                f"(pass --expect-train/--expect-val for other counts, e.g. synthetic data)"
            )
        rel = [(str(i.relative_to(data_root)), str(a.relative_to(data_root))) for i, a in found]
        tasks = [(dataset, str(data_root), i, a) for i, a in rel]
        for entries, probs in _pool_map(_check_pair, tasks, nproc, f"validate {split}"):
            files.update(entries)
            problems += probs
    if not problems:
        return files, counts
    for p in problems:  # the log gets one line per problem ...
        logger.error("%s", p)
    # ... the exception one line in all (the CLI prints it as one line), the first few listed.
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise PrepareError(
        f"{data_root}: {len(problems)} problem(s) found; fix or re-fetch these files and run "
        f"prepare again: {listed}{more}"
    )


# ---------------------------------------------------------------------------------------------
# 4. Manifest and the whole step
# ---------------------------------------------------------------------------------------------


def read_manifest(data_root: Path) -> dict[str, Any] | None:
    p = data_root / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("%s is unreadable; preparing again", p)
        return None


def _manifest_current(
    man: dict[str, Any], fp: dict[str, Any], expect: Iterable[int], root: Path, archives: Path
) -> bool:
    """The files on disk are the manifest's (present, same size), and so are the archives:
    size+mtime equal, or (mtime changed, e.g. re-synthesised or copied) the same sha256. Refreshes
    the recorded mtimes after a hash match."""
    if man.get("expected") != list(expect):
        return False
    for rel, info in man.get("files", {}).items():
        p = root / rel
        if not p.is_file() or p.stat().st_size != info["size"]:
            return False
    recorded = man.get("archives") or {}
    if set(recorded) != set(fp):
        return False
    for name, now in fp.items():
        rec = recorded[name]
        if rec.get("size") != now["size"]:
            return False
        if rec.get("mtime") != now["mtime"]:
            if rec.get("sha256") != file_digest(archives / name):
                return False
            rec["mtime"] = now["mtime"]
    return True


def prepare(
    dataset: str,
    archives_dir: str | Path,
    data_root: str | Path,
    expect: tuple[int, int] | None = None,
    nproc: int = 1,
    force: bool = False,
) -> dict[str, Any]:
    """Extract, convert, validate and write the manifest; returns the manifest.

    Args:
        dataset: ``"cityscapes"`` or ``"ade20k"``.
        archives_dir: folder with the downloaded (or synthetic) archives.
        data_root: target folder (Cityscapes: holds leftImg8bit/ and gtFine/; ADE20K: holds
            images/ and annotations/).
        expect: (train, val) image counts; default the real counts.
        nproc: worker processes for conversion and validation.
        force: redo everything even if the manifest says the root is current.

    Raises:
        PrepareError: listing every problem found. FileNotFoundError: archives missing.
    """
    if dataset not in SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(SPLITS)}")
    archives_dir, data_root = Path(archives_dir), Path(data_root)
    expect = tuple(expect) if expect is not None else REAL_COUNTS[dataset]
    fp = archive_fingerprint(dataset, archives_dir)
    man = read_manifest(data_root)
    if not force and man is not None:
        before = json.dumps(man, sort_keys=True)
        if _manifest_current(man, fp, expect, data_root, archives_dir):
            if json.dumps(man, sort_keys=True) != before:
                write_json(data_root / MANIFEST, man, sort_keys=True)  # new mtimes: remember them
            logger.info("%s is already prepared (manifest matches the archives)", data_root)
            return man
    t0 = time.time()
    # not current: files may be missing or stale. extract() creates data_root only once an
    # archive is complete (or links it): a failure leaves nothing behind.
    extract(dataset, archives_dir, data_root)
    problems = convert_cityscapes(data_root, nproc) if dataset == "cityscapes" else []
    files, counts = validate_or_raise(dataset, data_root, expect, nproc, problems)
    if fp:
        logger.info("hashing %d archive(s) for the manifest", len(fp))
    manifest = {
        "dataset": dataset,
        "archives": {n: {**v, "sha256": file_digest(archives_dir / n)} for n, v in fp.items()},
        "expected": list(expect),
        "counts": counts,
        "files": files,
    }
    write_json(data_root / MANIFEST, manifest, sort_keys=True)
    logger.info("prepared %s in %s: %s (%.1fs)", dataset, data_root, counts, time.time() - t0)
    return manifest


# ---------------------------------------------------------------------------------------------
# CLI: dnlrepro prepare
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=tuple(SPLITS))
    parser.add_argument(
        "--archives",
        type=Path,
        default=None,
        help="archive folder (default: <workspace>/downloads)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="default: data/cityscapes or data/ade/ADEChallengeData2016",
    )
    parser.add_argument("--expect-train", type=int, default=None, help="default: real count")
    parser.add_argument("--expect-val", type=int, default=None, help="default: real count")
    parser.add_argument(
        "--nproc",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes for conversion/validation (default: min(8, CPUs))",
    )
    parser.add_argument("--force", action="store_true", help="ignore an up-to-date manifest")


def main(args: argparse.Namespace) -> int:
    from dnlrepro.core import workspace

    ws = workspace.find()
    root = args.data_root or ws.path(DEFAULT_ROOTS[args.dataset])
    archives = args.archives if args.archives is not None else ws.downloads
    given = (args.expect_train, args.expect_val)
    expect = tuple(
        r if g is None else g for g, r in zip(given, REAL_COUNTS[args.dataset], strict=True)
    )
    prepare(args.dataset, archives, root, expect, nproc=args.nproc, force=args.force)
    return 0
