"""Safe extraction of zip / tar archives (downloads and synthetic stand-ins).

Every member is checked *before* anything is written: absolute paths, ``..`` components that
escape the target folder, links and device files are refused with an error naming the archive
and the member, so a hostile archive never writes a single file.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

logger = logging.getLogger(__name__)


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder (or is a link/device)."""


class BadArchiveError(ValueError):
    """An archive is unreadable, truncated or not an archive at all."""


def _check_member(archive: Path, name: str, target: Path, strip: int) -> Path | None:
    """Destination of ``name`` under ``target`` or None when stripping leaves nothing."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has an absolute or Windows path; refusing to extract "
            f"anything from this archive"
        )
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} contains '..' and would escape {target}; refusing to "
            f"extract anything from this archive"
        )
    parts = parts[strip:]
    if not parts:
        return None
    dest = (target / Path(*parts)).resolve()
    if dest != target and target not in dest.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {target}")
    return dest


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def list_members(archive: Path) -> list[str]:
    """Member names of a zip or tar archive (raises :class:`BadArchiveError` if unreadable)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return zf.namelist()
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                return tf.getnames()
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise BadArchiveError(
            f"{archive}: unreadable archive ({e}); delete it and fetch again"
        ) from e
    raise BadArchiveError(f"{archive}: not a zip or tar archive; delete it and fetch again")


def safe_extract(archive: str | Path, target: str | Path, strip_components: int = 0) -> int:
    """Extract ``archive`` (zip or tar) into ``target`` after checking every member.

    Args:
        archive: path of the archive.
        target: destination folder (created).
        strip_components: leading path components to drop (like ``tar --strip-components``).

    Returns:
        The number of files written.

    Raises:
        UnsafeArchiveError: a member escapes ``target``, is absolute, or is a link/device.
        BadArchiveError: the archive is corrupt or truncated.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, target, strip_components)
        if tarfile.is_tarfile(archive):
            return _extract_tar(archive, target, strip_components)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise BadArchiveError(
            f"{archive}: corrupt or truncated archive ({e}); delete it and fetch again"
        ) from e
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    raise BadArchiveError(f"{archive}: not a zip or tar archive; delete it and fetch again")


# A member to write: (destination, is a folder, opener of its bytes).
_Member = tuple[Path, bool, Callable[[], IO[bytes]]]


def _extract_zip(archive: Path, target: Path, strip: int) -> int:
    with zipfile.ZipFile(archive) as zf:
        plan: list[_Member] = []
        for info in zf.infolist():  # validate everything before writing anything
            if _zip_is_link(info):
                raise UnsafeArchiveError(
                    f"{archive}: member {info.filename!r} is a symbolic link or device; refusing "
                    f"to extract anything from this archive"
                )
            dest = _check_member(archive, info.filename, target, strip)
            if dest is not None:
                plan.append((dest, info.is_dir(), functools.partial(zf.open, info)))
        return _write_members(archive, target, plan)


def _extract_tar(archive: Path, target: Path, strip: int) -> int:
    with tarfile.open(archive) as tf:
        plan: list[_Member] = []
        for m in tf.getmembers():  # validate everything before writing anything
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(
                    f"{archive}: member {m.name!r} is a link or special file; refusing to extract "
                    f"anything from this archive"
                )
            dest = _check_member(archive, m.name, target, strip)
            if dest is not None:
                # extractfile returns a stream for regular files (the only kind left here).
                plan.append((dest, m.isdir(), functools.partial(tf.extractfile, m)))
        return _write_members(archive, target, plan)


def _write_members(archive: Path, target: Path, plan: list[_Member]) -> int:
    """Write the validated members; each file appears under its name only once complete."""
    n = 0
    for dest, is_dir, open_member in tqdm(
        plan, desc=f"extract {archive.name}", unit="file", leave=False, disable=None
    ):
        if is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".extracting")
        with open_member() as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
        n += 1
    logger.info("extracted %d files from %s into %s", n, archive, target)
    return n
