"""Which hash a downloaded file must match; checking it; pinning a file no hash is known for.

§ numbers refer to docs/reference.md.

Every file is checked against the first of these that applies (:func:`expected_for`):

1. the sha256 that ``$DNLREPRO_EXPECTED_SHA256`` (a JSON file ``{file name: sha256}``) lists for
   its name: the rehearsal names its miniatures' hashes this way, a lab its own mirror's files;
2. a hash the caller gives (e.g. the md5 Cityscapes publishes for a package);
3. the sha256 prefix in its name (``resnet50_v1c-2cccc1ad.pth``, every published checkpoint);
4. a published hash of the dataset archives (:data:`KNOWN`, §3.1 and §3.2 "Archive hashes");
5. else the sha256 **pinned on first use** in the pin file (:func:`pins_path`): the first verified
   copy records it, with a warning naming the file; every later download or ``--local`` link of
   that name must match it.

The pin file is ``params/download_pins.json`` of the workspace: outside every stage's output
folder, so neither ``dvc repro`` of a download stage nor a rebuilt ``downloads/`` loses it.
Commit it, and clones check against the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dnlrepro.core import workspace
from dnlrepro.core.files import file_digest, write_json

logger = logging.getLogger(__name__)

EXPECTED_SHA256_ENV = "DNLREPRO_EXPECTED_SHA256"
PINS_ENV = "DNLREPRO_PINS"  # another pin file than <workspace>/params/download_pins.json
PINS_FILE = "params/download_pins.json"

# Published hashes of the dataset archives (docs/reference.md §3.1, §3.2 "Archive hashes").
KNOWN: dict[str, dict[str, str | int]] = {
    "ADEChallengeData2016.zip": {
        "sha256": "7ff1be44964418441f542a7cc1e1a650e7dc0fc275f5d23252bc9bbdbc977b29",
        "size": 967_382_037,
    },
    "gtFine_trainvaltest.zip": {"md5": "4237c19de34c8a376e9ba46b495d6f66"},
    "leftImg8bit_trainvaltest.zip": {"md5": "0a6e97e94b616a514066c9e2adb0c97f"},
}

_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


class DownloadError(RuntimeError):
    """A download failed for good (HTTP error, retries exhausted); the message names the URL."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its expected size or checksum."""


def sha256_prefix_from_name(name: str) -> str | None:
    """The hex hash at the end of an OpenMMLab/torch-hub file name (``x-53d4ea93.pth``)."""
    m = _NAME_HASH.search(name.split("?")[0])
    return m.group(1) if m else None


def verify_file(
    path: Path,
    *,
    sha256_prefix: str | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
) -> list[str]:
    """Problems with ``path`` against the expectations (empty list = verified)."""
    problems = []
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"size {actual_size} bytes, expected {size}")
    if sha256 or sha256_prefix:
        digest = file_digest(path, "sha256")
        if sha256 and digest != sha256.lower():
            problems.append(f"sha256 {digest}, expected {sha256}")
        if sha256_prefix and not digest.startswith(sha256_prefix.lower()):
            problems.append(f"sha256 starts with {digest[:8]}, expected {sha256_prefix}")
    if md5:
        digest = file_digest(path, "md5")
        if digest != md5.lower():
            problems.append(f"md5 {digest}, expected {md5}")
    if path.suffix == ".zip" and not problems and not zipfile.is_zipfile(path):
        problems.append("not a readable zip archive (truncated or corrupt)")
    return problems


def expected_sha256(name: str) -> str | None:
    """The sha256 that ``$DNLREPRO_EXPECTED_SHA256`` lists for file ``name`` (None: not listed).

    Raises:
        DownloadError: the variable names a file that is missing or not a JSON mapping.
    """
    path = os.environ.get(EXPECTED_SHA256_ENV)
    if not path:
        return None
    table = _read_json(Path(path), f"{EXPECTED_SHA256_ENV}={path}", "or unset the variable")
    return table.get(name)


def pins_path(dest_dir: Path) -> Path:
    """The pin file: ``$DNLREPRO_PINS``, else ``<workspace>/params/download_pins.json`` (outside
    every stage's output folder, so ``dvc repro`` never deletes it; commit it so that clones check
    against it), else, outside a workspace, ``<dest_dir>/download_pins.json``."""
    if os.environ.get(PINS_ENV):
        return Path(os.environ[PINS_ENV])
    try:
        return workspace.find().path(PINS_FILE)
    except workspace.WorkspaceError:
        return dest_dir / Path(PINS_FILE).name


def _read_json(path: Path, what: str, fix: str) -> dict:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DownloadError(
            f"{what}: cannot read it ({e}); it must be a JSON file {{file name: ...}}, {fix}"
        ) from e
    if not isinstance(table, dict):
        raise DownloadError(f"{what}: expected a mapping file name -> hash, {fix}")
    return table


@dataclass
class Expected:
    """What a file must match, where that came from, and the pin file to record it in (set
    when no hash is known: the first verified copy is pinned)."""

    hashes: dict[str, str | int | None]
    source: str
    pin_to: Path | None = None


def expected_for(
    name: str,
    dest_dir: Path,
    *,
    sha256_prefix: str | None = None,
    md5: str | None = None,
    size: int | None = None,
) -> Expected:
    """The hashes file ``name`` must match (module docstring: the first source that applies)."""
    override = expected_sha256(name)
    if override is not None:
        return Expected({"sha256": override, "md5": md5, "size": size}, f"${EXPECTED_SHA256_ENV}")
    from_name = sha256_prefix_from_name(name)
    hashes = {"sha256_prefix": sha256_prefix or from_name, "md5": md5, "size": size}
    if sha256_prefix or md5 or from_name:
        return Expected(hashes, "the caller" if sha256_prefix or md5 else "its name")
    if name in KNOWN:
        known = {**hashes, **KNOWN[name], "size": size or KNOWN[name].get("size")}
        return Expected(known, "verify.KNOWN (docs/reference.md §3)")
    pins = pins_path(dest_dir)
    pinned = _read_json(pins, str(pins), f"or delete {pins}").get(name) if pins.is_file() else None
    if pinned is None:
        return Expected(hashes, "nothing: no hash is known, it is pinned on first use", pins)
    if not isinstance(pinned, dict) or not pinned.get("sha256"):
        raise DownloadError(f"{pins}: the entry {name!r} has no sha256; fix or delete it")
    fix = f"if the new file is right, delete the entry {name!r} there"
    return Expected(
        {**hashes, "sha256": pinned["sha256"]}, f"the sha256 pinned on first use in {pins} ({fix})"
    )


def verify_or_pin(path: Path, name: str, expect: Expected, url: str = "") -> list[str]:
    """:func:`verify_file` against ``expect``; a verified file with no known hash is pinned."""
    problems = verify_file(path, **expect.hashes)
    if problems or expect.pin_to is None:
        return problems
    pins = expect.pin_to
    table = _read_json(pins, str(pins), f"or delete {pins}") if pins.is_file() else {}
    sha = file_digest(path)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    table[name] = {"sha256": sha, "bytes": path.stat().st_size, "url": url, "pinned": when}
    write_json(pins, table, sort_keys=True)
    logger.warning(
        "%s has no published hash: pinned its sha256 %s in %s on first use; later uses must "
        "match it (commit that file so that clones check against it too)",
        name,
        sha,
        pins,
    )
    return []
