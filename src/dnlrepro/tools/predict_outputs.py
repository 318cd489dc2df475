"""Where ``dnlrepro predict`` writes, and what it may overwrite (nothing it did not write).

The output folder holds a manifest, ``predict.json``, listing every file predict wrote there with
its sha256. Before anything is written, every planned output path is checked: it may replace only
a file the manifest lists with its current sha256 (predict's own earlier output), never an input
image or any other existing file, and never through a symlinked sub-folder leading outside the
output folder. Folder scans skip the output folder and files a manifest lists, so predicting into
(a sub-folder of) the input folder never turns earlier label maps into inputs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dnlrepro.core.files import file_digest, write_bytes_atomic, write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST = "predict.json"
MANIFEST_FORMAT = "dnlrepro-predict/1"
MANIFEST_FLUSH_S = 10.0  # rewrite the manifest at most this often while predicting (and at the end)
_HOW = "choose another --out folder"


def load_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/predict.json`` when it is a manifest predict wrote, else ``None``."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ours = isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
    return data if ours and isinstance(data.get("files"), dict) else None


def owned_files(folder: Path, manifest: dict[str, Any] | None) -> set[Path]:
    """Resolved paths of files the manifest lists that still hold the content predict wrote."""
    owned: set[Path] = set()
    if manifest is None:
        return owned
    root = folder.resolve()
    for rel, entry in manifest["files"].items():
        p = folder / rel
        path = p.resolve()
        if not isinstance(entry, dict) or not path.is_relative_to(root):
            continue
        if not p.is_symlink() and p.is_file() and file_digest(p) == entry.get("sha256"):
            owned.add(path)
    return owned


def scan(
    inputs: Iterable[str | Path], out_dir: Path | None = None
) -> list[tuple[Path, PurePosixPath]]:
    """``(image, output name without suffix)`` per input image, deduplicated, in input order.

    Folders are searched recursively (sorted); the output name keeps the path below the folder.
    Skipped: the output folder when it lies inside a searched folder, and files a ``predict.json``
    lists with unchanged content (predict's own earlier outputs).

    Raises:
        FileNotFoundError: an input does not exist, or a directory holds no images.
        ValueError: two inputs map to the same output name, so one would overwrite the other.
    """
    out_res = out_dir.resolve() if out_dir is not None else None
    # predict's own outputs: those the output folder's manifest lists, plus (below) those listed
    # by a manifest in any scanned folder (it lists files in its sub-folders too).
    owned = owned_files(out_dir, load_manifest(out_dir)) if out_dir is not None else set()
    found: list[tuple[Path, PurePosixPath]] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            in_dir: list[tuple[Path, PurePosixPath]] = []
            for dirpath, dirnames, filenames in os.walk(p):
                d = Path(dirpath)
                dirnames[:] = sorted(
                    n for n in dirnames if out_res is None or (d / n).resolve() != out_res
                )
                owned |= owned_files(d, load_manifest(d))
                for f in (d / name for name in sorted(filenames)):
                    image = f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                    if image and f.resolve() not in owned:
                        rel = f.relative_to(p).with_suffix("")  # the stem, below the folder
                        in_dir.append((f, PurePosixPath(rel.as_posix())))
            if not in_dir:
                raise FileNotFoundError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in directory {p} or its sub-folders"
                    "; pass image files or a folder that holds them"
                )
            found.extend(sorted(in_dir, key=lambda x: x[0].relative_to(p).parts))
        elif p.is_file():
            found.append((p, PurePosixPath(p.stem)))
        else:
            raise FileNotFoundError(f"image {p} does not exist")
    unique: dict[Path, tuple[Path, PurePosixPath]] = {}
    for f, rel in found:
        unique.setdefault(f.resolve(), (f, rel))
    seen: dict[PurePosixPath, Path] = {}
    for f, rel in unique.values():
        if rel in seen:
            raise ValueError(
                f"images {seen[rel]} and {f} share the stem {str(rel)!r}; both would be written "
                f"to {rel}.png -- predict them into different --out folders"
            )
        seen[rel] = f
    return list(unique.values())


def collect_images(inputs: Iterable[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """The image files of :func:`scan` (folders expanded, files kept as given)."""
    return [f for f, _ in scan(inputs, Path(out_dir) if out_dir is not None else None)]


@dataclass(frozen=True)
class Planned:
    """One input image and the files predict writes for it."""

    source: Path
    label: Path
    overlay: Path | None


def plan_outputs(
    images: Sequence[str | Path], out_dir: str | Path, with_overlay: bool = False
) -> list[Planned]:
    """Every output path, checked before anything is written (see :func:`check_outputs`)."""
    out = Path(out_dir).expanduser()
    return [
        Planned(f, out / f"{name}.png", out / f"{name}_overlay.png" if with_overlay else None)
        for f, name in scan(images, out)
    ]


def check_outputs(plan: Sequence[Planned], out_dir: str | Path) -> None:
    """Refuse (``ValueError``, nothing written) when any planned output would replace an input
    image or an existing file predict did not write, or two outputs share a path.

    An existing file may be replaced only when ``<out>/predict.json`` lists it with its current
    sha256 (predict's own earlier output: re-running into the same folder works).
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder -- {_HOW}")
    sources = {p.source.resolve(): p.source for p in plan}
    targets: dict[Path, tuple[Path, str]] = {}
    for p in plan:
        outputs = [(p.label, "label map")] + ([(p.overlay, "overlay")] if p.overlay else [])
        for dest, kind in outputs:
            _refuse_escaping_link(dest, out)
            res = dest.resolve()
            if res in sources:
                raise ValueError(
                    f"refusing to write the {kind} of {p.source} to {dest}: that is the input "
                    f"image {sources[res]}, which would be overwritten -- {_HOW} (one outside the "
                    "input folders, or a sub-folder of them)"
                )
            if res in targets:
                other, other_kind = targets[res]
                raise ValueError(
                    f"the {other_kind} of {other} and the {kind} of {p.source} would both be "
                    f"written to {dest} -- rename one image or predict them into different --out "
                    "folders"
                )
            targets[res] = (p.source, kind)
    _check_existing(plan, out, set(sources))


def _refuse_escaping_link(dest: Path, out: Path) -> None:
    """Refuse a sub-folder of ``out`` that is a symbolic link leading outside ``out``: writing
    through it would put outputs (and replace files) where --out does not point."""
    root = out.resolve()
    for parent in reversed(dest.relative_to(out).parents[:-1]):  # out/a, out/a/b, ...
        link = out / parent
        if link.is_symlink() and not link.resolve().is_relative_to(root):
            raise ValueError(
                f"refusing to write {dest}: {link} is a symbolic link to {link.resolve()}, "
                f"outside --out {out} -- {_HOW} or remove the link"
            )


def _check_existing(plan: Sequence[Planned], out: Path, sources: set[Path]) -> None:
    """Refuse a foreign manifest, a file where a folder must go, and any foreign output file."""
    manifest_path = out / MANIFEST
    manifest = load_manifest(out)
    if (manifest_path.exists() or manifest_path.is_symlink()) and manifest is None:
        raise ValueError(
            f"refusing to overwrite {manifest_path}: it is not a manifest written by dnlrepro "
            f"predict -- {_HOW} or delete the file"
        )
    if manifest_path.resolve() in sources:  # an input file given by name, e.g. predict.json
        raise ValueError(f"refusing to overwrite the input {manifest_path} -- {_HOW}")
    owned = owned_files(out, manifest)
    foreign: list[Path] = []
    for p in plan:
        for dest in (p.label, p.overlay):
            if dest is None:
                continue
            for parent in dest.relative_to(out).parents:
                d = out / parent
                if d.exists() and not d.is_dir():
                    raise ValueError(
                        f"cannot write {dest}: {d} exists and is not a folder -- {_HOW} or delete "
                        f"{d}"
                    )
            if dest.is_dir():
                raise ValueError(f"cannot write {dest}: a folder has that name -- {_HOW}")
            if dest.is_symlink() or (dest.exists() and dest.resolve() not in owned):
                foreign.append(dest)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ValueError(
            f"refusing to overwrite {foreign[0]}{more}: the file exists and was not written by "
            f"dnlrepro predict (not listed with its current sha256 in {manifest_path}) -- {_HOW} "
            "or delete the file"
        )


@dataclass
class Manifest:
    """``<out>/predict.json`` being written: a header, and the files written so far."""

    out: Path
    header: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)
    _flushed: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, out: Path, header: dict[str, Any]) -> Manifest:
        """Keep the entries of earlier runs whose files are still there."""
        previous = load_manifest(out)
        files = {}
        if previous is not None:
            files = {k: v for k, v in previous["files"].items() if (out / k).is_file()}
        return cls(out, header, files)

    def write(self, dest: Path, data: bytes, **entry: Any) -> None:
        """Write one output atomically and list it; the manifest is saved every few seconds."""
        digest = write_bytes_atomic(dest, data)
        self.files[dest.relative_to(self.out).as_posix()] = {**entry, "sha256": digest}
        if time.monotonic() - self._flushed > MANIFEST_FLUSH_S:
            self.save()

    def save(self) -> None:
        payload = {
            "format": MANIFEST_FORMAT,
            "written_by": "dnlrepro predict",
            "note": "files predict wrote here, with their sha256; predict overwrites only these",
            **self.header,
            "files": self.files,
        }
        write_json(self.out / MANIFEST, payload)
        self._flushed = time.monotonic()
