"""The rehearsal's download mirror: miniatures under the real names, served on 127.0.0.1.

The mirror's folder holds every file the pipeline downloads, at ``<host>/<path>`` of its real
URL, so ``$DNLREPRO_MIRROR`` (:func:`dnlrepro.acquire.download.mirrored`) maps each URL onto it:

* Cityscapes: ``gtFine_trainvaltest.zip`` (polygon JSON, converted by cityscapesscripts in the
  prepare stage as the real one is) and ``leftImg8bit_trainvaltest.zip``, written by
  :mod:`dnlrepro.acquire.synth`, served only after the login handshake of cityscapes-dataset.com
  (``GET /login``, ``POST /login`` with ``username``/``password``/``submit=Login`` answered by a
  302 and a session cookie, then ``/file-handling/?packageID=N`` and ``/md5-sum/?packageID=N``);
* ADE20K: ``ADEChallengeData2016.zip`` (:mod:`dnlrepro.acquire.synth`);
* profile paper: ``resnet{50,101}_v1c-<hash>.pth``, ``{"state_dict": stem.*, layer1-4.*, fc.*}``
  (the open-mmlab key layout, docs/reference.md §2.2) with the real shapes and random weights;
* profile published: the twelve ``<config>_<date>-<hash>.pth`` in the mmseg layout
  (``{"meta", "state_dict"}``, §1.7), random weights;
* both: the twelve training logs ``<config>-<date>.log.json`` in miniature
  (:func:`reference_logs`): the published log's format (docs/reference.md §6.4: metadata line, a
  train line every ``log_interval`` iterations, a val line at every evaluation, fractions, 5
  decimals) and the lr that the rehearsed profile's schedule gives at each logged iteration, so
  the while-training comparison (:mod:`dnlrepro.engine.trajectory`) runs in full and passes its
  lr check. Its losses and mIoU are placeholders (loss 1.0, mIoU 0): the loss band may warn, the
  mIoU never.

A miniature cannot have the hash in its published name, so :func:`build` also writes
``expected_sha256.json`` ({file name: sha256}); the rehearsal hands it to the download code
through ``$DNLREPRO_EXPECTED_SHA256`` and the same verification runs. A file changed after that
(:func:`corrupt`) therefore fails the download, as a bad real file would.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import re
import secrets
import shutil
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dnlrepro.acquire import download, synth
from dnlrepro.core.config import load_config
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.core.miniature import Synthetic
from dnlrepro.core.profile import read_params
from dnlrepro.core.registry import load_published
from dnlrepro.core.workspace import Workspace
from dnlrepro.engine import reflog
from dnlrepro.engine.schedule import lr_at

logger = logging.getLogger(__name__)

HASHES = synth.EXPECTED_SHA256
CITYSCAPES_HOST = urllib.parse.urlsplit(download.CITYSCAPES_URL).netloc
LOGIN_PATH = f"/{CITYSCAPES_HOST}/login"  # no trailing slash, as cityscapesscripts
CHUNK = 1 << 20
LOG_META = {
    "env_info": "sys.platform: linux\nGPU 0,1: rehearsal miniature\nPyTorch: 1.5.0\nMMCV: 1.1.1",
    "seed": None,
}


@dataclass(frozen=True)
class MirrorFile:
    name: str  # the file name the pipeline stores it under
    url: str  # the real URL the pipeline asks for
    path: Path  # the miniature in the mirror's folder
    sha256: str


def local_path(root: Path, url: str) -> Path:
    """Where the mirror keeps the file of ``url``: ``<root>/<host>/<path>``."""
    parts = urllib.parse.urlsplit(url)
    return root / parts.netloc / parts.path.lstrip("/")


def package_path(root: Path, package_id: int, name: str) -> Path:
    return root / CITYSCAPES_HOST / "packages" / str(package_id) / name


# ---------------------------------------------------------------------------------------------
# Building the miniatures
# ---------------------------------------------------------------------------------------------


def build(root: Path, ws: Workspace, train: bool, sizes: Synthetic) -> list[MirrorFile]:
    """Write the miniatures a profile downloads (``train``: backbones, else the checkpoints)
    and ``<root>/expected_sha256.json``; returns the files."""
    root.mkdir(parents=True, exist_ok=True)
    files = _datasets(root, sizes)
    files += _backbones(root, ws) if train else _checkpoints(root, ws)
    files += reference_logs(root, ws)
    write_json(root / HASHES, {f.name: f.sha256 for f in files}, sort_keys=True)
    logger.info("mirror: %d miniature files in %s", len(files), root)
    return files


def _datasets(root: Path, sizes: Synthetic) -> list[MirrorFile]:
    tmp = root / "_synth"
    files = []
    written = synth.write_cityscapes(
        tmp, sizes.cityscapes.train, sizes.cityscapes.val, sizes.cityscapes.width,
        sizes.cityscapes.height, sizes.seed,
    )  # fmt: skip
    for src in written:
        package_id = download.CITYSCAPES_PACKAGES[src.name]
        dest = package_path(root, package_id, src.name)
        url = f"{download.CITYSCAPES_URL}/file-handling/?packageID={package_id}"
        files.append(_place(src, dest, src.name, url))
    a = sizes.ade20k
    (src,) = synth.write_ade20k(tmp, a.train, a.val, a.min_size, a.max_size, sizes.seed)
    files.append(_place(src, local_path(root, download.ADE20K_URL), src.name, download.ADE20K_URL))
    shutil.rmtree(tmp)
    return files


def _place(src: Path, dest: Path, name: str, url: str) -> MirrorFile:
    dest.parent.mkdir(parents=True, exist_ok=True)
    src.replace(dest)
    return MirrorFile(name, url, dest, file_digest(dest))


def _model(ws: Workspace, name: str, cache: dict) -> torch.nn.Module:
    """A randomly initialised segmentor of row ``name`` (shared by rows of the same shapes)."""
    from dnlrepro.models import build_segmentor

    cfg = load_config(name, "paper", ws=ws)
    key = (cfg.model.backbone.depth, cfg.model.num_classes)
    if key not in cache:
        torch.manual_seed(0)
        cache[key] = build_segmentor(cfg)
    return cache[key]


def _backbones(root: Path, ws: Workspace) -> list[MirrorFile]:
    files, cache, done = [], {}, set()
    for name in load_published(ws.registry_file).configs:
        pretrained = load_config(name, "paper", ws=ws).model.backbone.pretrained
        if not pretrained or pretrained in done:
            continue
        done.add(pretrained)
        url = download.PRETRAINED_URLS[pretrained]
        state = dict(_model(ws, name, cache).backbone.state_dict())
        width = state["layer4.2.conv3.weight"].shape[0]
        state["fc.weight"] = torch.randn(1000, width) * 0.01  # the ImageNet classifier
        state["fc.bias"] = torch.zeros(1000)
        dest = local_path(root, url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": state}, dest)
        files.append(MirrorFile(dest.name, url, dest, file_digest(dest)))
    return files


def _checkpoints(root: Path, ws: Workspace) -> list[MirrorFile]:
    from dnlrepro.engine.resume import config_meta
    from dnlrepro.models import save_checkpoint

    files, cache = [], {}
    for name, entry in load_published(ws.registry_file).configs.items():
        cfg = load_config(name, "paper", ws=ws)
        dest = local_path(root, entry.checkpoint)
        save_checkpoint(dest, _model(ws, name, cache), meta=config_meta(cfg, 0))
        files.append(MirrorFile(dest.name, entry.checkpoint, dest, file_digest(dest)))
    return files


def _log_lines(name: str, ws: Workspace, profile: str) -> list[dict[str, Any]]:
    """The miniature log of row ``name`` under ``profile`` (its resolved schedule)."""
    sched = load_config(name, profile, ws=ws).schedule
    out: list[dict[str, Any]] = [{**LOG_META, "exp_name": f"{name}.py"}]
    for done in range(1, sched.max_iters + 1):
        lr = reflog.mmcv_round(lr_at(done - 1, sched))
        if done % sched.log_interval == 0 or done == sched.max_iters:
            out.append({"mode": "train", "epoch": 1, "iter": done, "lr": lr, "loss": 1.0})
        if done % sched.eval_interval == 0 or done == sched.max_iters:
            out.append({"mode": "val", "epoch": 1, "iter": done, "lr": lr, "mIoU": 0.0})
    return out


def reference_logs(root: Path, ws: Workspace) -> list[MirrorFile]:
    """Write every row's miniature training log where the mirror serves its real URL."""
    try:
        profile = read_params(ws).name
    except (OSError, ValueError):  # no params.yaml yet: the configuration files' own values
        profile = "paper"
    files = []
    for name, entry in load_published(ws.registry_file).configs.items():
        dest = local_path(root, entry.log)
        dest.parent.mkdir(parents=True, exist_ok=True)
        reflog.write(dest, _log_lines(name, ws, profile))
        files.append(MirrorFile(dest.name, entry.log, dest, file_digest(dest)))
    logger.info("mirror: %d miniature training logs (profile %s)", len(files), profile)
    return files


def corrupt(file: MirrorFile) -> None:
    """Flip one byte in the middle of a mirror file after its hash was recorded."""
    with open(file.path, "r+b") as f:
        f.seek(file.path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    logger.warning("mirror: corrupted %s on purpose (one byte flipped)", file.path)


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------


@dataclass
class Mirror:
    """The HTTP server's state: its URL, the Cityscapes account, and what it served."""

    root: Path
    url: str = ""
    user: str = field(default_factory=lambda: "rehearsal-" + secrets.token_hex(4))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    sessions: set[str] = field(default_factory=set)
    logins: int = 0
    served: dict[str, int] = field(default_factory=dict)  # file name -> bytes sent
    refused: list[str] = field(default_factory=list)  # "<code> <path>"


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Mirror]:
    """Serve ``root`` on 127.0.0.1 (a free port) while the block runs."""
    mirror = Mirror(root)
    handler = type("MirrorHandler", (_Handler,), {"mirror": mirror})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    logger.info("mirror: serving %s at %s", root, mirror.url)
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET/POST of the mirror; ``mirror`` is set on a subclass per server (:func:`serve`)."""

    protocol_version = "HTTP/1.1"
    mirror: Mirror

    def log_message(self, fmt: str, *args: object) -> None:
        logger.debug("mirror: " + fmt, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == LOGIN_PATH:  # the login form: only sets the csrf cookie
            self._reply(200, b"<form>login</form>", [("Set-Cookie", "csrftoken=x; Path=/")])
            return
        site = url.path.removeprefix(f"/{CITYSCAPES_HOST}")
        if site in ("/file-handling/", "/md5-sum/"):
            self._cityscapes(site, url.query)
            return
        self._file(self.mirror.root / urllib.parse.unquote(url.path).lstrip("/"))

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(size).decode())
        ok = form.get("username") == [self.mirror.user] and form.get("password") == [
            self.mirror.password
        ]
        if self.path == LOGIN_PATH and ok and form.get("submit") == ["Login"]:
            token = secrets.token_hex(16)
            self.mirror.sessions.add(token)
            self.mirror.logins += 1
            cookie = [("Set-Cookie", f"sessionid={token}; Path=/"), ("Location", "/")]
            self._reply(302, b"", cookie)
        else:  # the site answers a failed login with the form again
            self._reply(200, b"<html>login failed</html>")

    def _cityscapes(self, site: str, query: str) -> None:
        cookies = self.headers.get("Cookie") or ""
        if not any(f"sessionid={t}" in cookies for t in self.mirror.sessions):
            self._reply(302, b"", [("Location", LOGIN_PATH)])
            return
        try:
            package_id = int(urllib.parse.parse_qs(query)["packageID"][0])
            name = next(n for n, i in download.CITYSCAPES_PACKAGES.items() if i == package_id)
        except (KeyError, ValueError, StopIteration):
            self._reply(404, b"unknown packageID")
            return
        path = package_path(self.mirror.root, package_id, name)
        if site == "/md5-sum/":
            self._reply(200, f"{file_digest(path, 'md5')}  {name}\n".encode())
            return
        self._file(path, [("Content-Disposition", f"attachment; filename={name}")])

    def _file(self, path: Path, headers: Sequence[tuple[str, str]] = ()) -> None:
        root = self.mirror.root.resolve()
        if not path.is_file() or root not in path.resolve().parents:
            self._reply(404, b"not in the mirror")
            return
        size = path.stat().st_size
        # The first byte of ``Range: bytes=N-`` (the only form the downloader sends).
        m = re.fullmatch(r"bytes=(\d+)(-.*)?", self.headers.get("Range") or "")
        start = int(m.group(1)) if m else 0
        if m and start >= size:
            self._reply(416, b"", [("Content-Range", f"bytes */{size}")])
            return
        if m:
            headers = [*headers, ("Content-Range", f"bytes {start}-{size - 1}/{size}")]
        self._head(206 if m else 200, headers, size - start)
        served = self.mirror.served
        with open(path, "rb") as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                # counted before it is sent: a client that has read every byte sees the count
                served[path.name] = served.get(path.name, 0) + len(chunk)
                self.wfile.write(chunk)

    def _reply(self, code: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        if code >= 400:
            self.mirror.refused.append(f"{code} {self.path}")
        self._head(code, headers, len(body))
        self.wfile.write(body)

    def _head(self, code: int, headers: Sequence[tuple[str, str]], length: int) -> None:
        self.send_response(code)
        for key, value in [*headers, ("Content-Length", str(length))]:
            self.send_header(key, value)
        self.end_headers()
