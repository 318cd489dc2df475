"""Safe extraction (``dnlrepro.acquire.archives``): hostile, corrupt, oversized and clashing
archives are refused, and a failure leaves nothing behind (docs/reference.md §3)."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from dnlrepro.acquire import archives
from dnlrepro.acquire.archives import (
    ArchiveLimitError,
    BadArchiveError,
    Limits,
    UnsafeArchiveError,
    safe_extract,
)


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tree(root: Path) -> list[str]:
    """Everything under ``root`` (hidden entries included), as sorted relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_hostile_zip_is_refused_before_writing(tmp_path: Path) -> None:
    for bad in ("../escape.txt", "/abs/path.txt", "ok/../../escape.txt"):
        archive = _zip(tmp_path / "bad.zip", {"fine.txt": b"a", bad: b"evil"})
        target = tmp_path / "out"
        with pytest.raises(UnsafeArchiveError, match=r"refusing|outside"):
            safe_extract(archive, target)
        assert not (target / "fine.txt").exists()
        assert not (tmp_path / "escape.txt").exists()
    # a symbolic link member is refused too
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16) | 0
        zf.writestr(info, "/etc/passwd")
    (tmp_path / "link.zip").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(tmp_path / "link.zip", tmp_path / "out2")
    assert _tree(tmp_path) == ["bad.zip", "link.zip"]


def test_truncated_archive_is_reported(tmp_path: Path) -> None:
    good = _zip(tmp_path / "g.zip", {"a/b.txt": b"x" * 1000})
    (tmp_path / "t.zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BadArchiveError, match=r"t\.zip"):
        safe_extract(tmp_path / "t.zip", tmp_path / "out")
    assert safe_extract(good, tmp_path / "g", strip_components=1) == 1
    assert (tmp_path / "g" / "b.txt").read_bytes() == b"x" * 1000


def test_bad_crc_leaves_nothing_behind(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"first.txt": b"complete", "second.txt": b"S" * 4000})
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"S" * 4000) + 2000] ^= 0xFF  # corrupt the second member's (stored) data
    archive.write_bytes(bytes(raw))
    # a target under folders that do not exist yet: none of them stays
    with pytest.raises(BadArchiveError, match=r"a\.zip"):
        safe_extract(archive, tmp_path / "new" / "root")
    assert _tree(tmp_path) == ["a.zip"]
    # an existing target keeps exactly what it held: no first member, no .extracting file
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "mine.txt").write_text("mine")
    with pytest.raises(BadArchiveError):
        safe_extract(archive, tmp_path / "root")
    assert _tree(tmp_path) == ["a.zip", "root", "root/mine.txt"]


def test_extraction_merges_into_an_existing_target(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "x").mkdir(parents=True)
    (root / "keep.txt").write_text("kept")
    (root / "x" / "old.txt").write_text("old")
    (root / "x" / "same.txt").write_text("stale")
    archive = _zip(tmp_path / "m.zip", {"x/": b"", "x/same.txt": b"new", "x/y/z.txt": b"z"})
    assert safe_extract(archive, root) == 2
    assert _tree(tmp_path) == [
        "m.zip", "root", "root/keep.txt", "root/x", "root/x/old.txt", "root/x/same.txt",
        "root/x/y", "root/x/y/z.txt",
    ]  # fmt: skip
    assert (root / "x" / "same.txt").read_text() == "new"
    # The target holds a file where the archive has a folder: refused before any move.
    (root / "w").write_text("a file")
    with pytest.raises(UnsafeArchiveError, match=r"exists as a file"):
        safe_extract(_zip(tmp_path / "c.zip", {"a.txt": b"a", "w/v.txt": b"v"}), root)
    assert not (root / "a.txt").exists() and (root / "w").read_text() == "a file"


@pytest.mark.parametrize(
    "members",
    [
        {"a": b"file", "a/b": b"inside"},  # file, then a member needing a folder of its name
        {"a/b": b"inside", "a": b"file"},  # the other order
        {"a": b"file", "a/": b""},  # file, then a folder entry of the same name
    ],
)
def test_name_clash_is_a_clear_error(tmp_path: Path, members: dict[str, bytes]) -> None:
    archive = _zip(tmp_path / "clash.zip", members)
    with pytest.raises(UnsafeArchiveError) as e:
        safe_extract(archive, tmp_path / "out")
    msg = str(e.value)
    assert str(archive) in msg and "malformed" in msg and "Traceback" not in msg
    assert all(repr(name) in msg for name in members), msg
    assert _tree(tmp_path) == ["clash.zip"]


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d.txt", b"one")
        zf.writestr("d.txt", b"two")
    with pytest.raises(UnsafeArchiveError, match=r"'d\.txt' and 'd\.txt' are files of the same"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_oversized_member_is_refused_from_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small zip of the real ADE20K name holding one huge member: refused before a byte is
    written (the issue: a 300 KB zip with a 300 MB member was extracted in full)."""
    big = archives.LIMITS["ADEChallengeData2016.zip"].member_bytes + 1
    members = {"ADEChallengeData2016/images/training/a.jpg": bytes(big)}
    archive = _zip(tmp_path / "ADEChallengeData2016.zip", members, zipfile.ZIP_DEFLATED)
    assert archive.stat().st_size < big // 100

    def never(*a: object, **k: object) -> int:
        raise AssertionError("a member was written")

    monkeypatch.setattr(archives, "copy_bounded", never)
    with pytest.raises(ArchiveLimitError, match=rf"a\.jpg' declares {big} bytes"):
        safe_extract(archive, tmp_path / "ade", strip_components=1)
    assert _tree(tmp_path) == ["ADEChallengeData2016.zip"]


def test_member_count_and_total_size_bounds(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "n.zip", {"a": b"12345678", "b": b"12345678", "c/": b""})
    with pytest.raises(ArchiveLimitError, match="3 members, more than 2"):
        safe_extract(archive, tmp_path / "o", limits=Limits(2, 100, 100))
    with pytest.raises(ArchiveLimitError, match="16 bytes in all, more than 15"):
        safe_extract(archive, tmp_path / "o", limits=Limits(3, 15, 100))
    assert _tree(tmp_path) == ["n.zip"]
    assert safe_extract(archive, tmp_path / "o", limits=Limits(3, 16, 8)) == 2
    # the real archives' bounds: known names, the loosest for any other name
    assert archives.limits_for(Path("x/leftImg8bit_trainvaltest.zip")).members == 6_000
    assert archives.limits_for("other.zip") == archives.DEFAULT_LIMITS


def test_sizes_are_enforced_while_streaming(tmp_path: Path) -> None:
    """A zip whose directory understates a member's size is refused and leaves nothing; the copy
    itself stops at the bound whatever the stream yields."""
    archive = _zip(tmp_path / "lie.zip", {"small.txt": b"L" * 5000}, zipfile.ZIP_DEFLATED)
    raw = bytearray(archive.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local + central header
        at = raw.index(sig) + offset
        raw[at : at + 4] = struct.pack("<I", 10)  # declares 10 bytes instead of 5000
    archive.write_bytes(bytes(raw))
    with pytest.raises((ArchiveLimitError, BadArchiveError), match=r"lie\.zip"):
        safe_extract(archive, tmp_path / "out", limits=Limits(10, 100, 100))
    assert _tree(tmp_path) == ["lie.zip"]
    out = io.BytesIO()
    with pytest.raises(ArchiveLimitError, match="more than its allowed 10 bytes"):
        archives.copy_bounded(archive, "m", io.BytesIO(b"x" * 11), out, 10, 100)
    with pytest.raises(ArchiveLimitError, match="more bytes than the archive's bound"):
        archives.copy_bounded(archive, "m", io.BytesIO(b"x" * 11), io.BytesIO(), 100, 10)
