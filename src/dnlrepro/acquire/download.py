"""Verified, resumable downloads of datasets, pretrained backbones and published checkpoints.

§ numbers refer to docs/reference.md.

Sources (docs/reference.md §2.2, §3.1, §3.2, §6.1):

* ADE20K: ``ADEChallengeData2016.zip`` from MIT's public server.
* Cityscapes: ``gtFine_trainvaltest.zip`` (packageID 1) and ``leftImg8bit_trainvaltest.zip``
  (packageID 3) after logging in with ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD``.
* ``resnet{50,101}_v1c`` (mmcv's ``open-mmlab://`` names) and the twelve DNLNet checkpoints; the
  8 hex characters at the end of each file name are the start of its sha256 and are verified.

Every transfer goes to ``<name>.part`` (resumed with an HTTP Range request after an interruption),
is retried with exponential backoff, is checked for size and checksum, and only then is renamed
atomically to its final name. A file that fails verification is deleted and fetched again; it is
never used. Only the standard library speaks HTTP (urllib).

Two environment variables redirect every download without changing a stage command (``dnlrepro
rehearse`` sets both for its local mirror; ``DNLREPRO_MIRROR`` also suits a lab-wide mirror):

* ``DNLREPRO_MIRROR=http://host:port/prefix``: ``scheme://HOST/PATH?QUERY`` is fetched from
  ``$DNLREPRO_MIRROR/HOST/PATH?QUERY`` (:func:`mirrored`); the Cityscapes login goes there too.
* ``DNLREPRO_EXPECTED_SHA256=/path/hashes.json``: ``{file name: sha256}``; a listed file is
  verified against that full sha256 instead of the hash in its name (or, for a file with no
  published hash, instead of the zip check alone) (:func:`expected_sha256`).
"""

from __future__ import annotations

import argparse
import http.client
import http.cookiejar
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from dnlrepro.core import workspace
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.core.registry import PRETRAINED_URLS  # §2.2, shared with training

logger = logging.getLogger(__name__)

CHUNK = 1 << 20

ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_ARCHIVES: tuple[str, ...] = ("ADEChallengeData2016.zip",)

CITYSCAPES_URL = "https://www.cityscapes-dataset.com"
CITYSCAPES_REGISTER_URL = "https://www.cityscapes-dataset.com/register/"
CITYSCAPES_PACKAGES: dict[str, int] = {  # archive name -> packageID (§3.1)
    "gtFine_trainvaltest.zip": 1,
    "leftImg8bit_trainvaltest.zip": 3,
}
CITYSCAPES_ARCHIVES: tuple[str, ...] = tuple(CITYSCAPES_PACKAGES)


_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")

MIRROR_ENV = "DNLREPRO_MIRROR"
EXPECTED_SHA256_ENV = "DNLREPRO_EXPECTED_SHA256"


class DownloadError(RuntimeError):
    """A download failed for good (HTTP error, retries exhausted); the message names the URL."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its expected size or checksum."""


class CredentialsError(DownloadError):
    """Cityscapes credentials are missing or were rejected."""


class _TransientError(Exception):
    """Network trouble worth retrying (connection reset, timeout, truncated body, 5xx)."""


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


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


def mirrored(url: str) -> str:
    """``url`` as fetched: ``$DNLREPRO_MIRROR/HOST/PATH?QUERY`` when the variable is set."""
    base = os.environ.get(MIRROR_ENV, "").rstrip("/")
    if not base or url.startswith(base + "/"):
        return url
    parts = urllib.parse.urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{base}/{parts.netloc}{parts.path}{query}"


def expected_sha256(name: str) -> str | None:
    """The sha256 that ``$DNLREPRO_EXPECTED_SHA256`` lists for file ``name`` (None: not listed).

    Raises:
        DownloadError: the variable names a file that is missing or not a JSON mapping.
    """
    path = os.environ.get(EXPECTED_SHA256_ENV)
    if not path:
        return None
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DownloadError(
            f"{EXPECTED_SHA256_ENV}={path}: cannot read it ({e}); it must be a JSON file "
            "{file name: sha256}, or unset the variable"
        ) from e
    if not isinstance(table, dict):
        raise DownloadError(f"{EXPECTED_SHA256_ENV}={path}: expected a mapping file name -> sha256")
    return table.get(name)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Surface redirects as HTTPError (the Cityscapes login answers 302 on success)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _open(
    opener: urllib.request.OpenerDirector, req: urllib.request.Request, timeout: float
) -> http.client.HTTPResponse:
    try:
        return opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code in (408, 429) or e.code >= 500:
            raise _TransientError(f"HTTP {e.code} {e.reason}") from e
        if e.code == 416:
            raise
        raise DownloadError(f"{req.full_url}: HTTP {e.code} {e.reason}") from e
    except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as e:
        raise _TransientError(str(e)) from e


def _fetch_once(
    url: str,
    part: Path,
    opener: urllib.request.OpenerDirector,
    timeout: float,
    headers: dict[str, str],
) -> None:
    """Append the rest of ``url`` to ``part`` (Range from its size); raise on short bodies."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers=dict(headers))
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = _open(opener, req, timeout)
    except urllib.error.HTTPError as e:  # 416: the part is already complete (or bogus)
        if e.code == 416 and offset:
            logger.info("%s: server says %s is already complete", url, part.name)
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        if offset and status == 206:
            logger.info("resuming %s at byte %d", part.name, offset)
            mode, start = "ab", offset
        else:
            if offset:
                logger.info("server ignored the Range request; restarting %s", part.name)
            mode, start = "wb", 0
        expected = start + int(length) if length is not None else None
        received = start
        with (
            open(part, mode) as out,
            tqdm(
                total=expected,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[: -len(".part")],
                leave=False,
                disable=None,
            ) as bar,
        ):
            while True:
                try:
                    block = resp.read(CHUNK)
                except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
                    raise _TransientError(f"connection lost after {received} bytes: {e}") from e
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if expected is not None and received < expected:
        raise _TransientError(f"transfer interrupted at {received} of {expected} bytes")


def download_url(
    url: str,
    dest_dir: Path | None = None,
    *,
    sha256_prefix: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    md5: str | None = None,
    filename: str | None = None,
    opener: urllib.request.OpenerDirector | None = None,
    headers: dict[str, str] | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` into ``dest_dir`` (default ``<workspace>/downloads``), verified.

    A file name ending in ``-<hex>.pth`` implies ``sha256_prefix=<hex>`` unless one is given.
    ``$DNLREPRO_MIRROR`` redirects the URL, and a sha256 listed in ``$DNLREPRO_EXPECTED_SHA256``
    replaces every other expected hash of the file (module docstring).
    An existing file is verified (against the given checksums, or the record written after its
    own verified download) and reused; a file that fails is deleted and fetched again.

    Args:
        url: http(s) URL.
        dest_dir: target folder (created).
        sha256_prefix: expected start of the sha256 (OpenMMLab file-name hash).
        sha256: expected full sha256.
        size: expected size in bytes.
        md5: expected md5 (Cityscapes publishes md5 sums).
        filename: local name (default: the URL's last path component).
        opener: urllib opener (e.g. with the Cityscapes session cookie).
        headers: extra request headers.
        retries: retries after a transient failure or a checksum mismatch.
        backoff: first retry delay in seconds, doubled each time.
        timeout: socket timeout in seconds.

    Returns:
        The verified file's path.

    Raises:
        DownloadError: HTTP error or retries exhausted. ChecksumError: verification failed.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else workspace.find().downloads
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot derive a file name from {url!r}; pass filename=")
    url = mirrored(url)
    override = expected_sha256(name)
    if override is not None:
        sha256_prefix, sha256 = None, override
    elif sha256_prefix is None and sha256 is None:
        sha256_prefix = sha256_prefix_from_name(name)
    expect = {"sha256_prefix": sha256_prefix, "sha256": sha256, "size": size, "md5": md5}
    dest, part = dest_dir / name, dest_dir / (name + ".part")
    if dest.exists():
        problems = _verify_existing(dest, expect)
        if not problems:
            logger.info("%s already present and verified", dest)
            return dest
        logger.warning("%s failed verification (%s); deleting and fetching again", dest, problems)
        dest.unlink()
        _sidecar(dest).unlink(missing_ok=True)
    opener = opener or urllib.request.build_opener()
    last, bad_content = "", False  # last failure, and whether it was a verification failure
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            logger.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1fs",
                name,
                attempt,
                retries + 1,
                last,
                delay,
            )
            time.sleep(delay)
        try:
            _fetch_once(url, part, opener, timeout, headers or {})
        except _TransientError as e:
            last, bad_content = str(e), False
            continue
        problems = verify_file(part, **expect)
        if problems:
            # A complete-but-wrong file is never used: delete it so the retry starts fresh.
            last, bad_content = "; ".join(problems), True
            logger.warning("%s failed verification: %s", name, last)
            part.unlink(missing_ok=True)
            continue
        os.replace(part, dest)
        _write_sidecar(dest, url)
        logger.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
        return dest
    if bad_content:
        raise ChecksumError(
            f"{url}: downloaded file failed verification {retries + 1} times ({last}); the "
            f"server copy may have changed -- check the URL and expected hash"
        )
    raise DownloadError(f"{url}: giving up after {retries + 1} attempts ({last})")


def _write_sidecar(dest: Path, url: str) -> None:
    st = dest.stat()
    record = {"url": url, "size": st.st_size, "mtime": st.st_mtime, "sha256": file_digest(dest)}
    write_json(_sidecar(dest), record)


def _verify_existing(dest: Path, expect: dict) -> list[str]:
    if any(v is not None for v in expect.values()):
        return verify_file(dest, **expect)
    side = _sidecar(dest)
    if side.is_file():  # our own record of the verified download
        rec = json.loads(side.read_text())
        st = dest.stat()
        if st.st_size == rec.get("size") and st.st_mtime == rec.get("mtime"):
            return []  # untouched since its verified download: skip re-hashing gigabytes
        return verify_file(dest, sha256=rec.get("sha256"), size=rec.get("size"))
    return verify_file(dest)  # at least the zip structure


# ---------------------------------------------------------------------------------------------
# Cityscapes (login required)
# ---------------------------------------------------------------------------------------------


def cityscapes_credentials() -> tuple[str, str]:
    """``(username, password)`` from the environment, or a :class:`CredentialsError`."""
    user = os.environ.get("CITYSCAPES_USERNAME", "")
    password = os.environ.get("CITYSCAPES_PASSWORD", "")
    if not user or not password:
        missing = [
            n
            for n, v in (("CITYSCAPES_USERNAME", user), ("CITYSCAPES_PASSWORD", password))
            if not v
        ]
        raise CredentialsError(
            f"Cityscapes needs a login: set {' and '.join(missing)} in the environment (register "
            f"at {CITYSCAPES_REGISTER_URL}), or point DNLREPRO_LOCAL_DATA (pipeline) or "
            f"`dnlrepro download --what cityscapes --local PATH` at archives you already have"
        )
    return user, password


def cityscapes_login(
    user: str, password: str, base_url: str = CITYSCAPES_URL, timeout: float = 60.0
) -> urllib.request.OpenerDirector:
    """Log in (form POST, success = 302) and return an opener holding the session cookie.

    The credentials only travel in the POST body; they are never logged or written.
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
    login = f"{base_url.rstrip('/')}/login"  # no trailing slash, as cityscapesscripts
    try:
        opener.open(login, timeout=timeout).close()  # sets the csrf/session cookie
    except urllib.error.HTTPError as e:
        if e.code not in (301, 302, 303):
            raise DownloadError(f"{login}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{login}: cannot reach the Cityscapes server ({e.reason})") from None
    body = urllib.parse.urlencode({"username": user, "password": password, "submit": "Login"})
    try:
        resp = opener.open(login, data=body.encode(), timeout=timeout)
        resp.close()
        status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except urllib.error.URLError as e:
        raise DownloadError(f"{login}: cannot reach the Cityscapes server ({e.reason})") from None
    if status != 302:
        raise CredentialsError(
            f"Cityscapes rejected the login (HTTP {status}); check CITYSCAPES_USERNAME / "
            f"CITYSCAPES_PASSWORD (account from {CITYSCAPES_REGISTER_URL})"
        )
    logger.info("logged in to %s", base_url)
    return opener


def download_cityscapes(
    dest_dir: Path | None = None, base_url: str = CITYSCAPES_URL, **kwargs: object
) -> list[Path]:
    """Both Cityscapes packages (gtFine, leftImg8bit), md5-verified against the site's sums."""
    user, password = cityscapes_credentials()
    base = mirrored(base_url.rstrip("/"))
    opener = cityscapes_login(user, password, base)
    out = []
    for name, package_id in CITYSCAPES_PACKAGES.items():
        md5 = None
        try:
            with opener.open(f"{base}/md5-sum/?packageID={package_id}", timeout=60) as r:
                md5 = r.read().decode().split()[0]
        except (urllib.error.URLError, IndexError, UnicodeDecodeError) as e:
            logger.warning("no md5 sum for %s (%s); verifying the zip structure only", name, e)
        url = f"{base}/file-handling/?packageID={package_id}"
        out.append(download_url(url, dest_dir, filename=name, md5=md5, opener=opener, **kwargs))
    return out


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------

# Extracted layouts the local mode recognises: dataset -> folders that must sit under PATH.
EXTRACTED: dict[str, tuple[str, ...]] = {
    "cityscapes": ("leftImg8bit", "gtFine"),
    "ade20k": ("ADEChallengeData2016",),
}


def _link(src: Path, dst: Path) -> Path:
    src = src.resolve()
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src:
            return dst
        raise FileExistsError(f"{dst} already exists and is not a link to {src}; remove it first")
    dst.symlink_to(src, target_is_directory=src.is_dir())
    logger.info("linked %s -> %s", dst, src)
    return dst


def link_local(what: str, local: Path, dest_dir: Path, names: Iterable[str] = ()) -> list[Path]:
    """Use files the user already has: link archives / extracted folders / weights into dest.

    ``local`` may be one archive or weight file, a folder holding them, or (datasets) an
    extracted folder (Cityscapes: holding ``leftImg8bit/`` and ``gtFine/``; ADE20K: holding
    ``ADEChallengeData2016/`` or being it). Weight files are checked against their name hash.
    """
    local = Path(local).expanduser()
    if not local.exists():
        raise FileNotFoundError(f"--local {local} does not exist")
    dest_dir.mkdir(parents=True, exist_ok=True)
    names = list(names)
    found = []
    for name in names:
        cand = local if local.is_file() and local.name == name else local / name
        if cand.is_file():
            if what in ("pretrained", "checkpoints"):
                problems = verify_file(cand, sha256_prefix=sha256_prefix_from_name(name))
            else:
                problems = verify_file(cand)
            if problems:
                raise ChecksumError(f"{cand}: {'; '.join(problems)}; it cannot be used")
            found.append(_link(cand, dest_dir / name))
    if len(found) == len(names):
        return found
    if what in EXTRACTED:
        root = local
        if what == "ade20k" and (local / "images").is_dir() and (local / "annotations").is_dir():
            return [_link(local, dest_dir / "ADEChallengeData2016")]
        if all((root / d).is_dir() for d in EXTRACTED[what]):
            return [_link(root / d, dest_dir / d) for d in EXTRACTED[what]]
    missing = [n for n in names if not any(p.name == n for p in found)]
    layout = f" or the extracted folders {', '.join(EXTRACTED[what])}" if what in EXTRACTED else ""
    raise FileNotFoundError(f"--local {local}: missing {', '.join(missing)}{layout}")


# ---------------------------------------------------------------------------------------------
# CLI: dnlrepro download
# ---------------------------------------------------------------------------------------------


def checkpoint_urls(names: Iterable[str] | None = None) -> dict[str, str]:
    """Published checkpoint URL per configuration, from the registry (default: every row).

    The file names end in ``-<first 8 hex of sha256>.pth`` (docs/reference.md §6.1), which
    :func:`download_url` verifies.
    """
    from dnlrepro.core.registry import load_published

    rows = load_published().configs
    names = list(names) if names else list(rows)
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise ValueError(f"unknown config(s) {unknown}; choose from {', '.join(rows)}")
    return {n: rows[n].checkpoint for n in names}


def pretrained_for(configs: Iterable[str]) -> list[str]:
    """Backbone names needed by the configs (from their ``model.backbone.pretrained``)."""
    from dnlrepro.core.config import load_config

    out = []
    for name in configs:
        p = load_config(name).model.backbone.pretrained
        if p and p not in out:
            out.append(p)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--what", required=True, choices=("ade20k", "cityscapes", "pretrained", "checkpoints")
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="target folder (default: where the pipeline looks: downloads/<dataset>, downloads/ "
        "for backbones, downloads/checkpoints)",
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=None,
        metavar="NAME",
        help="configs whose checkpoints/backbones to fetch (default: all twelve)",
    )
    parser.add_argument(
        "--local",
        type=Path,
        default=None,
        metavar="PATH",
        help="use archives/folders/weights you already have instead of the network",
    )
    parser.add_argument("--retries", type=int, default=5)


def fetch(
    what: str,
    dest: Path,
    configs: list[str] | None = None,
    local: Path | None = None,
    retries: int = 5,
) -> list[Path]:
    """Fetch (or link from ``local``) the files of ``what`` into ``dest``; verified paths.

    ``what``: ``ade20k`` / ``cityscapes`` (archives), ``pretrained`` (the ImageNet backbones the
    configs use) or ``checkpoints`` (the published weights of ``configs``; default: every row).
    """
    if what == "ade20k":
        names, urls = list(ADE20K_ARCHIVES), [ADE20K_URL]
    elif what == "cityscapes":
        names, urls = list(CITYSCAPES_ARCHIVES), []
    elif what == "pretrained":
        rows = list(checkpoint_urls(configs))  # the registry rows (validated; default: all)
        urls = [PRETRAINED_URLS[n] for n in pretrained_for(rows)]
        names = [Path(u).name for u in urls]
    elif what == "checkpoints":
        urls = list(checkpoint_urls(configs).values())
        names = [Path(u).name for u in urls]
    else:
        choices = "ade20k, cityscapes, pretrained, checkpoints"
        raise ValueError(f"unknown download {what!r}; choose one of {choices}")
    if local is not None:
        return link_local(what, local, dest, names)
    if what == "cityscapes":
        return download_cityscapes(dest, retries=retries)
    return [download_url(u, dest, retries=retries) for u in urls]


def default_dest(what: str, ws: workspace.Workspace | None = None) -> Path:
    """Where the pipeline's stages keep ``what``: ``downloads/<dataset>`` (the real archives of
    ``download@<dataset>``), ``downloads/`` (backbones), ``downloads/checkpoints``."""
    downloads = (ws or workspace.find()).downloads
    if what in ("cityscapes", "ade20k"):
        return downloads / what
    return downloads / "checkpoints" if what == "checkpoints" else downloads


def main(args: argparse.Namespace) -> int:
    dest = args.dest if args.dest is not None else default_dest(args.what)
    for p in fetch(args.what, dest, args.config, args.local, args.retries):
        logger.info("ready: %s", p)
    return 0
