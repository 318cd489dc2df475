"""Verified, resumable downloads of datasets, pretrained backbones and published checkpoints.

§ numbers refer to docs/reference.md.

Sources (docs/reference.md §2.2, §3.1, §3.2, §6.1):

* ADE20K: ``ADEChallengeData2016.zip`` from MIT's public server.
* Cityscapes: ``gtFine_trainvaltest.zip`` (packageID 1) and ``leftImg8bit_trainvaltest.zip``
  (packageID 3) after logging in with ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD``.
* ``resnet{50,101}_v1c`` (mmcv's ``open-mmlab://`` names) and the twelve DNLNet checkpoints; the
  8 hex characters at the end of each file name are the start of its sha256 and are verified.
* the twelve training logs (``<config>-<timestamp>.log.json``, §6.4): pinned on first use.

Every file is checked against a hash before it is used (:mod:`dnlrepro.acquire.verify`: the hash
in its name, a published one, ``$DNLREPRO_EXPECTED_SHA256``, else the sha256 pinned on first use).

HTTP is ``requests``: a session retries connection errors and 408/429/5xx answers with exponential
backoff (urllib3 ``Retry``). Our own code keeps only what no library does: the Cityscapes login
form, and resuming ``<name>.part`` with a Range request after a transfer broke off. A file is
renamed to its final name only once verified; one that fails is deleted, never used. Redirects
are followed for public files only: a Cityscapes package answers a redirect with an error (its
session cookie never leaves the site), and requests drops credentials on a redirect to another
host. Credentials travel only in the login form; they are never logged or written.

Two environment variables redirect every download without changing a stage command (``dnlrepro
rehearse`` sets both for its local mirror; ``DNLREPRO_MIRROR`` also suits a lab-wide mirror):

* ``DNLREPRO_MIRROR=http://host:port/prefix``: ``scheme://HOST/PATH?QUERY`` is fetched from
  ``$DNLREPRO_MIRROR/HOST/PATH?QUERY`` (:func:`mirrored`); the Cityscapes login goes there too.
* ``DNLREPRO_EXPECTED_SHA256=/path/hashes.json``: ``{file name: sha256}``; a listed file is
  verified against that full sha256 instead of any other hash (:func:`verify.expected_sha256`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from dnlrepro.acquire.verify import (  # "X as X": re-exported, callers import them from here
    EXPECTED_SHA256_ENV,
    KNOWN,
    ChecksumError,
    DownloadError,
    Expected,
    expected_for,
    expected_sha256,
    verify_or_pin,
)
from dnlrepro.acquire.verify import sha256_prefix_from_name as sha256_prefix_from_name
from dnlrepro.core import workspace
from dnlrepro.core.files import file_digest as file_digest
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


WHAT = ("ade20k", "cityscapes", "pretrained", "checkpoints", "logs")  # what `fetch` fetches
REFERENCE_LOGS = "reference_logs"  # downloads/<this>: the published training logs (§6.4)
MIRROR_ENV = "DNLREPRO_MIRROR"
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
TIMEOUT = 60.0  # socket timeout (s)


class CredentialsError(DownloadError):
    """Cityscapes credentials are missing or were rejected."""


class _TransientError(Exception):
    """A transfer broke off mid-body (connection reset, timeout, truncated body): resume it."""


# ---------------------------------------------------------------------------------------------
# HTTP (requests)
# ---------------------------------------------------------------------------------------------


def mirrored(url: str) -> str:
    """``url`` as fetched: ``$DNLREPRO_MIRROR/HOST/PATH?QUERY`` when the variable is set."""
    base = os.environ.get(MIRROR_ENV, "").rstrip("/")
    if not base or url.startswith(base + "/"):
        return url
    parts = urllib.parse.urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{base}/{parts.netloc}{parts.path}{query}"


def new_session(retries: int = 5, backoff: float = 2.0) -> requests.Session:
    """A session retrying connection errors and 408/429/5xx answers with exponential backoff."""
    retry = Retry(
        total=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUS,
        raise_on_status=False,  # the last answer is reported with its status
    )
    session = requests.Session()
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(max_retries=retry))
    session.headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself
    return session


def _fetch_once(url: str, part: Path, session: requests.Session, follow: bool) -> None:
    """Append the rest of ``url`` to ``part`` (Range from its size); raise on short bodies."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = session.get(
            url, headers=headers, stream=True, timeout=TIMEOUT, allow_redirects=follow
        )
    except requests.RequestException as e:  # the session's retries are spent
        raise DownloadError(f"{url}: {e}") from e
    with resp:
        if resp.status_code == 416 and offset:  # the part is already complete (or bogus)
            logger.info("%s: server says %s is already complete", url, part.name)
            return
        if resp.is_redirect:
            raise DownloadError(
                f"{url}: redirected to {resp.headers.get('Location')} (HTTP {resp.status_code}); "
                f"the login session expired or was refused: run again"
            )
        if resp.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}")
        start = offset if resp.status_code == 206 else 0
        if start:
            logger.info("resuming %s at byte %d", part.name, start)
        elif offset:
            logger.info("server ignored the Range request; restarting %s", part.name)
        length = resp.headers.get("Content-Length")
        expected = start + int(length) if length is not None else None
        received = _write_body(resp, part, start, expected)
    if expected is not None and received < expected:
        raise _TransientError(f"transfer interrupted at {received} of {expected} bytes")


def _write_body(resp: requests.Response, part: Path, start: int, expected: int | None) -> int:
    """Stream the body into ``part`` (appending from ``start``) with a progress bar."""
    received = start
    name = part.name.removesuffix(".part")
    bar = tqdm(
        total=expected,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        leave=False,
        disable=None,
    )
    with open(part, "ab" if start else "wb") as out, bar:
        try:  # read1: what has arrived, so a broken transfer keeps every byte received
            while block := resp.raw.read1(CHUNK):
                out.write(block)
                received += len(block)
                bar.update(len(block))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _TransientError(f"connection lost after {received} bytes: {e}") from e
    return received


def download_url(
    url: str,
    dest_dir: Path | None = None,
    *,
    sha256_prefix: str | None = None,
    size: int | None = None,
    md5: str | None = None,
    filename: str | None = None,
    session: requests.Session | None = None,
    follow_redirects: bool = True,
    retries: int = 5,
    backoff: float = 2.0,
) -> Path:
    """Download ``url`` into ``dest_dir`` (default ``<workspace>/downloads``); the verified path.

    The expected hash is the first of the module docstring's list that applies
    (:func:`expected_for`); with none, the first verified copy is pinned. ``$DNLREPRO_MIRROR``
    redirects the URL. An existing file is verified the same way and reused; a file that fails
    is deleted and fetched again.

    Args:
        sha256_prefix / md5 / size: expectations (md5: what Cityscapes publishes).
        filename: local name (default: the URL's last path component).
        session: requests session (e.g. holding the Cityscapes login cookie).
        follow_redirects: False for a login-protected URL (a redirect means "log in again").
        retries: retries after a transient failure or a checksum mismatch.
        backoff: first retry delay in seconds, doubled each time.

    Raises:
        DownloadError: HTTP error or retries exhausted. ChecksumError: verification failed.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else workspace.find().downloads
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot derive a file name from {url!r}; pass filename=")
    expect = expected_for(name, dest_dir, sha256_prefix=sha256_prefix, md5=md5, size=size)
    dest = dest_dir / name
    if dest.exists():
        problems = verify_or_pin(dest, name, expect, url)
        if not problems:
            logger.info("%s already present and verified", dest)
            return dest
        logger.warning("%s failed verification (%s); deleting and fetching again", dest, problems)
        dest.unlink()
    own = session is None
    session = session or new_session(retries, backoff)
    try:
        _fetch_verified(mirrored(url), dest, expect, session, retries, backoff, follow_redirects)
    finally:
        if own:
            session.close()
    logger.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest


def _fetch_verified(
    url: str,
    dest: Path,
    expect: Expected,
    session: requests.Session,
    retries: int,
    backoff: float,
    follow: bool,
) -> None:
    """Fetch into ``<dest>.part`` (resuming after a break), verify, then rename to ``dest``."""
    part = dest.with_name(dest.name + ".part")
    last, bad_content = "", False  # last failure, and whether it was a verification failure
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            how = f"attempt {attempt}/{retries + 1} failed ({last}); retrying in {delay:.1f}s"
            logger.warning("%s: %s", dest.name, how)
            time.sleep(delay)
        try:
            _fetch_once(url, part, session, follow)
        except _TransientError as e:
            last, bad_content = str(e), False
            continue
        problems = verify_or_pin(part, dest.name, expect, url)
        if problems:  # a complete-but-wrong file is never used: the retry starts fresh
            last, bad_content = "; ".join(problems), True
            logger.warning("%s failed verification: %s", dest.name, last)
            part.unlink(missing_ok=True)
            continue
        os.replace(part, dest)
        return
    if bad_content:
        raise ChecksumError(
            f"{url}: downloaded file failed verification {retries + 1} times ({last}; expected "
            f"hash from {expect.source}); the server copy may have changed -- check the URL and "
            f"the expected hash"
        )
    raise DownloadError(f"{url}: giving up after {retries + 1} attempts ({last})")


# ---------------------------------------------------------------------------------------------
# Cityscapes (login required)
# ---------------------------------------------------------------------------------------------


def cityscapes_credentials() -> tuple[str, str]:
    """``(username, password)`` from the environment, or a :class:`CredentialsError`."""
    user, password = (os.environ.get(n, "") for n in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"))
    missing = [
        n for n, v in (("CITYSCAPES_USERNAME", user), ("CITYSCAPES_PASSWORD", password)) if not v
    ]
    if missing:
        raise CredentialsError(
            f"Cityscapes needs a login: set {' and '.join(missing)} in the environment (register "
            f"at {CITYSCAPES_REGISTER_URL}), or point DNLREPRO_LOCAL_DATA (pipeline) or "
            f"`dnlrepro download --what cityscapes --local PATH` at archives you already have"
        )
    return user, password


def cityscapes_login(session: requests.Session, base: str, user: str, password: str) -> None:
    """Log in (form POST, success = 302): ``session`` then holds the login cookie.

    The credentials only travel in the POST body; they are never logged or written.
    """
    login = f"{base}/login"  # no trailing slash, as cityscapesscripts
    form = {"username": user, "password": password, "submit": "Login"}
    try:
        resp = session.get(login, timeout=TIMEOUT, allow_redirects=False)  # the csrf cookie
        if resp.status_code >= 400:
            raise DownloadError(f"{login}: HTTP {resp.status_code} {resp.reason}")
        resp = session.post(login, data=form, timeout=TIMEOUT, allow_redirects=False)
    except requests.RequestException as e:
        raise DownloadError(f"{login}: cannot reach the Cityscapes server ({e})") from None
    if resp.status_code != 302:
        raise CredentialsError(
            f"Cityscapes rejected the login (HTTP {resp.status_code}); check CITYSCAPES_USERNAME "
            f"/ CITYSCAPES_PASSWORD (account from {CITYSCAPES_REGISTER_URL})"
        )
    logger.info("logged in to %s", base)


def download_cityscapes(
    dest_dir: Path | None = None,
    base_url: str = CITYSCAPES_URL,
    *,
    retries: int = 5,
    backoff: float = 2.0,
) -> list[Path]:
    """Both Cityscapes packages (gtFine, leftImg8bit), md5-verified (§3.1 'Archive hashes')."""
    user, password = cityscapes_credentials()
    base = mirrored(base_url.rstrip("/"))
    out = []
    with new_session(retries, backoff) as session:
        cityscapes_login(session, base, user, password)
        for name, package_id in CITYSCAPES_PACKAGES.items():
            md5 = _cityscapes_md5(session, base, name, package_id)
            url = f"{base}/file-handling/?packageID={package_id}"
            # follow_redirects=False: a redirect means "log in again", never another host
            opts = {"md5": md5, "session": session, "retries": retries, "backoff": backoff}
            out.append(download_url(url, dest_dir, filename=name, follow_redirects=False, **opts))
    return out


def _cityscapes_md5(session: requests.Session, base: str, name: str, package_id: int) -> str | None:
    """The md5 to pass on: None for the known one (verify.KNOWN), which the site's own must agree
    with; for a stand-in named in ``$DNLREPRO_EXPECTED_SHA256``, the site's (next to that)."""
    site = None
    try:
        resp = session.get(
            f"{base}/md5-sum/?packageID={package_id}", timeout=TIMEOUT, allow_redirects=False
        )
        if resp.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", resp.text.split()[0]):
            site = resp.text.split()[0]
    except (requests.RequestException, IndexError) as e:
        logger.warning("no md5 sum from the Cityscapes site for %s (%s)", name, e)
    if expected_sha256(name) is not None:
        return site
    known = str(KNOWN[name]["md5"])
    if site is not None and site != known:
        raise ChecksumError(
            f"{name}: the Cityscapes site now publishes md5 {site}, but the project knows "
            f"{known} (docs/reference.md §3.1): the package changed. Check it, then update "
            f"verify.KNOWN, or name its sha256 in ${EXPECTED_SHA256_ENV}"
        )
    return None  # the known md5 (verify.KNOWN)


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
    ``ADEChallengeData2016/`` or being it). Files are checked as downloads are
    (:func:`verify.expected_for`: their name hash, a published hash, else the pin).
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
            expect = expected_for(name, dest_dir)
            problems = verify_or_pin(cand, name, expect, str(cand.resolve()))
            if problems:
                raise ChecksumError(
                    f"{cand}: {'; '.join(problems)} (expected hash from {expect.source}); it "
                    f"cannot be used"
                )
            found.append(_link(cand, dest_dir / name))
    if len(found) == len(names):
        return found
    if what in EXTRACTED:
        if what == "ade20k" and (local / "images").is_dir() and (local / "annotations").is_dir():
            return [_link(local, dest_dir / "ADEChallengeData2016")]
        if all((local / d).is_dir() for d in EXTRACTED[what]):
            return [_link(local / d, dest_dir / d) for d in EXTRACTED[what]]
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
    return _registry_urls(names, "checkpoint")


def log_urls(names: Iterable[str] | None = None) -> dict[str, str]:
    """Published training log URL per configuration (registry ``log``; default: every row).

    No hash is published for them: the first download is pinned (``params/download_pins.json``)
    and every later one must match it (:mod:`dnlrepro.acquire.verify`).
    """
    return _registry_urls(names, "log")


def _registry_urls(names: Iterable[str] | None, field: str) -> dict[str, str]:
    from dnlrepro.core.registry import load_published

    rows = load_published().configs
    names = list(names) if names else list(rows)
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise ValueError(f"unknown config(s) {unknown}; choose from {', '.join(rows)}")
    return {n: getattr(rows[n], field) for n in names}


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
        "--what",
        required=True,
        choices=WHAT,
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
    configs use), ``checkpoints`` (the published weights of ``configs``; default: every row) or
    ``logs`` (their published training logs, the reference trajectories).
    """
    names: list[str] = []
    if what == "ade20k":
        names, urls = list(ADE20K_ARCHIVES), [ADE20K_URL]
    elif what == "cityscapes":
        names, urls = list(CITYSCAPES_ARCHIVES), []
    elif what == "pretrained":  # the registry rows' (validated; default: all) backbones
        urls = [PRETRAINED_URLS[n] for n in pretrained_for(checkpoint_urls(configs))]
    elif what in ("checkpoints", "logs"):
        urls = list((checkpoint_urls if what == "checkpoints" else log_urls)(configs).values())
    else:
        raise ValueError(f"unknown download {what!r}; choose one of {', '.join(WHAT)}")
    names = names or [Path(u).name for u in urls]
    if local is not None:
        return link_local(what, local, dest, names)
    if what == "cityscapes":
        return download_cityscapes(dest, retries=retries)
    return [download_url(u, dest, retries=retries) for u in urls]


def default_dest(what: str, ws: workspace.Workspace | None = None) -> Path:
    """Where the pipeline's stages keep ``what``: ``downloads/<dataset>`` (the real archives of
    ``download@<dataset>``), ``downloads/`` (backbones), ``downloads/checkpoints``,
    ``downloads/reference_logs``."""
    downloads = (ws or workspace.find()).downloads
    if what in ("cityscapes", "ade20k"):
        return downloads / what
    if what == "logs":
        return downloads / REFERENCE_LOGS
    return downloads / "checkpoints" if what == "checkpoints" else downloads


def archive_folder(dataset: str, ws: workspace.Workspace, synthetic: bool) -> Path:
    """``downloads/<dataset>``, or its ``synthetic/`` subfolder for synthetic archives (so that
    switching profiles never mixes them with real archives of the same names)."""
    folder = default_dest(dataset, ws)
    return folder / "synthetic" if synthetic else folder


def main(args: argparse.Namespace) -> int:
    dest = args.dest if args.dest is not None else default_dest(args.what)
    for p in fetch(args.what, dest, args.config, args.local, args.retries):
        logger.info("ready: %s", p)
    return 0
