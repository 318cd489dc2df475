"""Safe extraction of zip / tar archives (downloads and synthetic stand-ins).

§ numbers refer to docs/reference.md.

1. **Check the directory** before anything is written: absolute paths, ``..`` components that
   escape the target folder, links and device files, two members that clash (a file ``a`` and a
   member ``a/b``; two files of one name) and the bounds of :data:`LIMITS` (member count, total
   and per-member size, from what the dataset holds, §3.1, §3.2) are refused with an error naming
   the archive and the member(s).
2. **Extract into a temporary folder** next to the target (``.<target>.extracting-XXXX``, same
   file system), enforcing the same bounds on the bytes actually written: a zip's declared sizes
   can lie.
3. **Move into place** only when every member is complete (one rename when the target does not
   exist yet, else a merge that replaces files of the same name).

Any failure (bad CRC, a member escaping the folder, too large, a name clash, Ctrl-C) removes the
temporary folder: nothing is left behind, not even an empty parent folder this call created.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

logger = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB


class UnsafeArchiveError(ValueError):
    """A member would be written outside the target, is a link/device, or clashes with another."""


class ArchiveLimitError(UnsafeArchiveError):
    """An archive holds more members or bytes than the dataset it claims to be (:data:`LIMITS`)."""


class BadArchiveError(ValueError):
    """An archive is unreadable, truncated or not an archive at all."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one archive may extract (members and folders count alike)."""

    members: int
    total_bytes: int
    member_bytes: int


# What each real archive holds (docs/reference.md §3.1, §3.2: "Archive bounds"), with a margin:
# member counts +13-25 %, total size 1.5x (leftImg8bit), 2x (ADE20K), ~3x (gtFine, whose extracted
# size is the least certain estimate), and any one member at most 64 MiB (the largest real member
# is a few MB: an image or a polygon file). The synthetic and rehearsal archives carry the same
# names and are far smaller.
LIMITS: dict[str, Limits] = {
    # 5000 frames x 4 files (color, instanceIds, labelIds png + polygons json) + README, license
    "gtFine_trainvaltest.zip": Limits(members=25_000, total_bytes=4 * GiB, member_bytes=64 * MiB),
    # 5000 png of 2048x1024 (~2.3 MB each, stored as they are: ~11.6 GB) + README, license
    "leftImg8bit_trainvaltest.zip": Limits(
        members=6_000, total_bytes=16 * GiB, member_bytes=64 * MiB
    ),
    # 22210 jpg + 22210 png + objectInfo150.txt, sceneCategories.txt (zip of 967,382,037 bytes)
    "ADEChallengeData2016.zip": Limits(members=50_000, total_bytes=2 * GiB, member_bytes=64 * MiB),
}
# Any other archive: the loosest bound of the known ones.
DEFAULT_LIMITS = Limits(
    members=max(b.members for b in LIMITS.values()),
    total_bytes=max(b.total_bytes for b in LIMITS.values()),
    member_bytes=max(b.member_bytes for b in LIMITS.values()),
)


def limits_for(archive: str | Path) -> Limits:
    """The bounds for an archive of this file name (:data:`DEFAULT_LIMITS` when unknown)."""
    return LIMITS.get(Path(archive).name, DEFAULT_LIMITS)


@dataclass(frozen=True)
class _Member:
    """One member to write: its name in the archive, its path under the target, its size."""

    name: str
    rel: PurePosixPath
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]]


def safe_extract(
    archive: str | Path,
    target: str | Path,
    strip_components: int = 0,
    limits: Limits | None = None,
) -> int:
    """Extract ``archive`` (zip or tar) into ``target`` after checking every member.

    Args:
        archive: path of the archive.
        target: destination folder (created when complete).
        strip_components: leading path components to drop (like ``tar --strip-components``).
        limits: bounds on members and bytes (default: :func:`limits_for` the archive's name).

    Returns:
        The number of files written.

    Raises:
        UnsafeArchiveError: a member escapes ``target``, is absolute, is a link/device, or clashes
            with another member or with what ``target`` holds. ArchiveLimitError: more members
            or bytes than ``limits``. BadArchiveError: the archive is corrupt or truncated.
    """
    archive, target = Path(archive), Path(target).resolve()
    limits = limits or limits_for(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    missing = [p for p in target.parents if not p.exists()]  # to remove after a failure
    target.parent.mkdir(parents=True, exist_ok=True)
    created = missing[-1] if missing else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        n = _extract(archive, target, tmp, strip_components, limits)
    except BaseException:
        shutil.rmtree(created or tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # left: the emptied folders of a merge
    logger.info("extracted %d files from %s into %s", n, archive, target)
    return n


def _extract(archive: Path, target: Path, tmp: Path, strip: int, limits: Limits) -> int:
    try:
        with contextlib.ExitStack() as stack:
            if zipfile.is_zipfile(archive):
                plan = _plan_zip(archive, stack.enter_context(zipfile.ZipFile(archive)), strip)
            elif tarfile.is_tarfile(archive):
                plan = _plan_tar(archive, stack.enter_context(tarfile.open(archive)), strip)
            else:
                raise BadArchiveError(
                    f"{archive}: not a zip or tar archive; delete it and fetch again"
                )
            _check_limits(archive, plan, limits)
            _check_clashes(archive, plan)
            for m in plan:
                dest = (target / m.rel).resolve()
                if dest != target and target not in dest.parents:  # e.g. through a link in target
                    raise _refuse(archive, m.name, f"would be written outside {target} (to {dest})")
            n = _write_members(archive, plan, tmp, limits)
            _move_into_place(archive, tmp, target)
            return n
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise BadArchiveError(
            f"{archive}: corrupt or truncated archive ({e}); delete it and fetch again"
        ) from e


# ---------------------------------------------------------------------------------------------
# 1. The directory
# ---------------------------------------------------------------------------------------------


def _relative(archive: Path, name: str, strip: int) -> PurePosixPath | None:
    """``name`` as a safe relative path, ``strip`` components dropped (None: nothing left)."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(archive, name, "has an absolute or Windows path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, name, "contains '..' and would escape the target folder")
    parts = parts[strip:]
    return PurePosixPath(*parts) if parts else None


def _refuse(archive: Path, name: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{archive}: member {name!r} {why}; refusing to extract anything from this archive"
    )


def _plan_zip(archive: Path, zf: zipfile.ZipFile, strip: int) -> list[_Member]:
    plan = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            raise _refuse(archive, info.filename, "is a symbolic link or device")
        rel = _relative(archive, info.filename, strip)
        if rel is not None:
            opener = functools.partial(zf.open, info)
            plan.append(_Member(info.filename, rel, info.is_dir(), info.file_size, opener))
    return plan


def _plan_tar(archive: Path, tf: tarfile.TarFile, strip: int) -> list[_Member]:
    plan = []
    for m in tf.getmembers():
        if not (m.isfile() or m.isdir()):
            raise _refuse(archive, m.name, "is a link or special file")
        rel = _relative(archive, m.name, strip)
        if rel is not None:  # extractfile returns a stream for regular files
            opener = functools.partial(tf.extractfile, m)
            plan.append(_Member(m.name, rel, m.isdir(), m.size if m.isfile() else 0, opener))
    return plan


def _check_limits(archive: Path, plan: list[_Member], limits: Limits) -> None:
    """The declared count and sizes against ``limits``, before anything is written."""
    how = (
        f"{archive.name} should hold less (archives.LIMITS, docs/reference.md §3 'Archive "
        f"bounds'); refusing to extract anything: delete the archive and fetch it again"
    )
    if len(plan) > limits.members:
        raise ArchiveLimitError(
            f"{archive}: {len(plan)} members, more than {limits.members}; {how}"
        )
    files = [m for m in plan if not m.is_dir]
    big = max(files, key=lambda m: m.size, default=None)
    if big is not None and big.size > limits.member_bytes:
        raise ArchiveLimitError(
            f"{archive}: member {big.name!r} declares {big.size} bytes, more than "
            f"{limits.member_bytes}; {how}"
        )
    total = sum(m.size for m in files)
    if total > limits.total_bytes:
        raise ArchiveLimitError(
            f"{archive}: members declare {total} bytes in all, more than {limits.total_bytes}; "
            f"{how}"
        )


def _check_clashes(archive: Path, plan: list[_Member]) -> None:
    """No file where another member needs a folder, and no two files of one name."""
    files: dict[PurePosixPath, str] = {}
    folders: dict[PurePosixPath, str] = {}  # folder -> first member that needs it
    for m in plan:
        needed = [p for p in m.rel.parents if p != PurePosixPath(".")]
        for p in [*needed, m.rel] if m.is_dir else needed:
            if p in files:
                raise _clash(archive, file=files[p], other=m.name)
            folders.setdefault(p, m.name)
        if m.is_dir:
            continue
        if m.rel in folders:
            raise _clash(archive, file=m.name, other=folders[m.rel])
        if m.rel in files:
            raise _clash(archive, file=m.name, other=files[m.rel], same=True)
        files[m.rel] = m.name


def _clash(archive: Path, file: str, other: str, same: bool = False) -> UnsafeArchiveError:
    what = (
        f"members {other!r} and {file!r} are files of the same name"
        if same
        else f"member {file!r} is a file, but member {other!r} needs a folder of that name"
    )
    return UnsafeArchiveError(
        f"{archive}: {what}; the archive is malformed: refusing to extract anything from it, "
        f"delete it and fetch it again"
    )


# ---------------------------------------------------------------------------------------------
# 2. Writing into the temporary folder, 3. moving into place
# ---------------------------------------------------------------------------------------------


def _write_members(archive: Path, plan: list[_Member], tmp: Path, limits: Limits) -> int:
    """Write every member under ``tmp``, counting the bytes actually written against limits."""
    n, total = 0, 0
    for m in tqdm(plan, desc=f"extract {archive.name}", unit="file", leave=False, disable=None):
        dest = tmp / m.rel
        if m.is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with m.open() as src, open(dest, "wb") as out:
            member_max = min(m.size, limits.member_bytes)
            total += copy_bounded(archive, m.name, src, out, member_max, limits.total_bytes - total)
        n += 1
    return n


def copy_bounded(
    archive: Path, name: str, src: IO[bytes], out: IO[bytes], member_max: int, total_left: int
) -> int:
    """Copy ``src`` to ``out``; raise :class:`ArchiveLimitError` past ``member_max`` bytes (the
    member's declared size, itself bounded) or ``total_left`` (what the archive may still write).
    """
    written = 0
    while block := src.read(CHUNK):
        written += len(block)
        if written > member_max:
            raise ArchiveLimitError(
                f"{archive}: member {name!r} holds more than its allowed {member_max} bytes (its "
                f"declared size lies, or is over the bound); refusing the whole archive: delete "
                f"it and fetch it again"
            )
        if written > total_left:
            raise ArchiveLimitError(
                f"{archive}: the members hold more bytes than the archive's bound allows "
                f"(reached at {name!r}); refusing the whole archive: delete it and fetch it again"
            )
        out.write(block)
    return written


def _move_into_place(archive: Path, tmp: Path, target: Path) -> None:
    if not target.exists() and not target.is_symlink():
        os.replace(tmp, target)
        return
    if not target.is_dir():
        raise UnsafeArchiveError(f"{archive}: {target} exists and is not a folder; remove it")
    for src in tmp.rglob("*"):  # every conflict before the first move
        dst = target / src.relative_to(tmp)
        if (dst.exists() or dst.is_symlink()) and dst.is_dir() != src.is_dir():
            kind = "a folder" if dst.is_dir() else "a file"
            raise UnsafeArchiveError(
                f"{archive}: {dst} exists as {kind}, but the archive has "
                f"{'a file' if kind == 'a folder' else 'a folder'} there; remove {dst} and run "
                f"again"
            )
    _merge(tmp, target)


def _merge(src_dir: Path, dst_dir: Path) -> None:
    dst_dir.mkdir(exist_ok=True)
    for src in src_dir.iterdir():
        dst = dst_dir / src.name
        if src.is_dir() and dst.is_dir():
            _merge(src, dst)
        else:
            os.replace(src, dst)
