"""Downloads against a real HTTP server on 127.0.0.1 started by the test (no internet)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import logging
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnlrepro.acquire import download as dl
from dnlrepro.acquire import verify
from dnlrepro.core.registry import config_names, load_published


class Server:
    """Tiny file server with Range support, scripted failures and a Cityscapes-like login."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate_next: set[str] = set()  # serve half the body once, then hang up
        self.fail_next: dict[str, int] = {}  # path -> number of 503 answers before success
        self.md5: dict[str, str] = {}  # packageID -> md5 the site publishes (default: the file's)
        self.redirect: dict[str, str] = {}  # path -> Location of a 302
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.user, self.password = "alice", "s3cret-pw"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path, self.headers.get("Range")))
                url = urllib.parse.urlparse(self.path)
                if url.path == "/login":
                    self.send_response(200)
                    self.send_header("Set-Cookie", "csrftoken=abc; Path=/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                key = self.path
                if url.path in ("/file-handling/", "/md5-sum/"):
                    if "session=ok" not in (self.headers.get("Cookie") or ""):
                        self.send_response(302)
                        self.send_header("Location", "/login")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    pid = urllib.parse.parse_qs(url.query)["packageID"][0]
                    key = f"/package/{pid}"
                    if url.path == "/md5-sum/":
                        md5 = outer.md5.get(pid) or hashlib.md5(outer.files[key]).hexdigest()
                        self._send(200, md5.encode() + b"  x.zip\n")
                        return
                if key in outer.redirect:
                    self.send_response(302)
                    self.send_header("Location", outer.redirect[key])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if key not in outer.files:
                    self._send(404, b"not found")
                    return
                if outer.fail_next.get(key, 0) > 0:
                    outer.fail_next[key] -= 1
                    self._send(503, b"busy")
                    return
                data = outer.files[key]
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self._send(416, b"")
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if key in outer.truncate_next:
                    outer.truncate_next.discard(key)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_POST(self) -> None:
                outer.requests.append(("POST", self.path, None))
                n = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(n).decode())
                ok = form.get("username") == [outer.user] and form.get("password") == [
                    outer.password
                ]
                if self.path == "/login" and ok and form.get("submit") == ["Login"]:
                    self.send_response(302)
                    self.send_header("Set-Cookie", "session=ok; Path=/")
                    self.send_header("Location", "/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(200, b"<html>login failed</html>")

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def gets(self, path: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and r[1] == path]


@pytest.fixture(autouse=True)
def _own_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pins go to the test's folder, never to the checkout's params/; no ambient hash table."""
    monkeypatch.setenv(verify.PINS_ENV, str(tmp_path / "pins" / "download_pins.json"))
    monkeypatch.delenv(dl.EXPECTED_SHA256_ENV, raising=False)
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    return tmp_path / "pins" / "download_pins.json"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


def _named(data: bytes, stem: str = "model") -> str:
    return f"/{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def test_download_verifies_name_hash_and_reuses(server: Server, tmp_path: Path) -> None:
    data = _payload()
    path = _named(data)
    server.files[path] = data
    out = dl.download_url(server.url + path, tmp_path, backoff=0)
    assert out == tmp_path / path[1:]
    assert out.read_bytes() == data
    assert not (tmp_path / (out.name + ".part")).exists()
    dl.download_url(server.url + path, tmp_path, backoff=0)  # verified copy: no second GET
    assert len(server.gets(path)) == 1


def test_download_resumes_after_interrupted_transfer(server: Server, tmp_path: Path) -> None:
    data = _payload(400_000, seed=1)
    path = _named(data)
    server.files[path] = data
    server.truncate_next.add(path)
    out = dl.download_url(server.url + path, tmp_path, backoff=0, retries=2)
    assert out.read_bytes() == data
    ranges = [r[2] for r in server.gets(path)]
    assert ranges[0] is None  # first attempt: whole file, cut off half way
    assert ranges[1] == f"bytes={len(data) // 2}-"  # second: only the missing tail


def test_server_errors_are_retried_then_reported(server: Server, tmp_path: Path) -> None:
    data = _payload(5_000, seed=5)
    path = _named(data)
    server.files[path] = data
    server.fail_next[path] = 2
    assert dl.download_url(server.url + path, tmp_path, backoff=0, retries=2).read_bytes() == data
    server.fail_next[path] = 5
    with pytest.raises(dl.DownloadError, match="503"):
        dl.download_url(server.url + path, tmp_path / "b", backoff=0, retries=1)


def test_download_checksum_mismatch_is_refused(server: Server, tmp_path: Path) -> None:
    data = _payload(50_000, seed=2)
    path = "/model-deadbeef.pth"  # name hash does not match the content
    server.files[path] = data
    with pytest.raises(dl.ChecksumError, match="deadbeef"):
        dl.download_url(server.url + path, tmp_path, backoff=0, retries=1)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a .part survive
    assert len(server.gets(path)) == 2  # refetched once, never used


def test_corrupt_existing_file_is_fetched_again(server: Server, tmp_path: Path) -> None:
    data = _payload(60_000, seed=3)
    path = _named(data)
    server.files[path] = data
    (tmp_path / path[1:]).write_bytes(data[:1000])  # truncated leftover from elsewhere
    out = dl.download_url(server.url + path, tmp_path, backoff=0)
    assert out.read_bytes() == data
    assert len(server.gets(path)) == 1


def test_truncated_download_with_known_size(server: Server, tmp_path: Path) -> None:
    data = _payload(10_000, seed=4)
    server.files["/a.bin"] = data
    with pytest.raises(dl.ChecksumError, match="size"):
        dl.download_url(server.url + "/a.bin", tmp_path, size=len(data) + 1, backoff=0, retries=0)


def test_http_404_fails_without_retrying(server: Server, tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError, match="404"):
        dl.download_url(server.url + "/missing-12345678.pth", tmp_path, backoff=0, retries=3)
    assert len(server.gets("/missing-12345678.pth")) == 1


def test_cityscapes_missing_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "x")
    with pytest.raises(dl.CredentialsError) as e:
        dl.download_cityscapes(tmp_path, base_url="http://127.0.0.1:9")
    assert "CITYSCAPES_USERNAME" in str(e.value)
    assert "cityscapes-dataset.com/register" in str(e.value)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _expect_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **files: bytes) -> None:
    """Name stand-ins' sha256 in $DNLREPRO_EXPECTED_SHA256, as the rehearsal does (keyword:
    the file name, ``.zip`` implied when missing)."""
    table = tmp_path / "expected_sha256.json"
    named = {
        (n if "." in n else n + ".zip"): hashlib.sha256(d).hexdigest() for n, d in files.items()
    }
    table.write_text(json.dumps(named))
    monkeypatch.setenv(dl.EXPECTED_SHA256_ENV, str(table))


def test_cityscapes_login_and_md5_verified_download(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.files["/package/1"] = _zip_bytes({"gtFine/train/a.json": b"{}"})
    server.files["/package/3"] = _zip_bytes({"leftImg8bit/train/a.png": b"png"})
    monkeypatch.setenv("CITYSCAPES_USERNAME", server.user)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", server.password)
    caplog.set_level(logging.DEBUG)
    # Stand-ins under the real names, their sha256 named as the rehearsal names its miniatures.
    names = {"gtFine_trainvaltest.zip": "/package/1", "leftImg8bit_trainvaltest.zip": "/package/3"}
    _expect_sha256(tmp_path, monkeypatch, **{n: server.files[k] for n, k in names.items()})
    paths = dl.download_cityscapes(tmp_path / "dl", base_url=server.url, backoff=0)
    assert [p.name for p in paths] == list(names)
    assert paths[1].read_bytes() == server.files["/package/3"]
    assert server.password not in caplog.text
    assert not list((tmp_path / "dl").glob("*.json"))  # no sidecar, no credentials anywhere

    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong")
    with pytest.raises(dl.CredentialsError, match="rejected"):
        dl.download_cityscapes(tmp_path / "other", base_url=server.url, backoff=0)


def test_cityscapes_packages_must_match_the_known_md5(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong archive under the real name is refused: by the site's md5 disagreeing with the
    published one, or (the site agreeing) by the file's own md5."""
    server.files["/package/1"] = _zip_bytes({"gtFine/train/a.json": b"{}"})
    monkeypatch.setenv("CITYSCAPES_USERNAME", server.user)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", server.password)
    with pytest.raises(dl.ChecksumError, match=r"site now publishes md5 .* project knows 4237c1"):
        dl.download_cityscapes(tmp_path / "a", base_url=server.url, backoff=0, retries=0)
    assert not server.gets("/file-handling/?packageID=1")  # refused before the download
    server.md5["1"] = str(dl.KNOWN["gtFine_trainvaltest.zip"]["md5"])
    with pytest.raises(dl.ChecksumError, match=r"md5 .* expected 4237c1.*verify\.KNOWN"):
        dl.download_cityscapes(tmp_path / "b", base_url=server.url, backoff=0, retries=0)
    assert list((tmp_path / "b").iterdir()) == []  # nothing kept


def test_cityscapes_redirect_is_not_followed(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session cookie never follows a redirect (e.g. to another host): it is an error."""
    other = Server()
    try:
        other.files["/elsewhere"] = b"x"
        server.files["/package/1"] = _zip_bytes({"gtFine/a": b"1"})
        server.redirect["/package/1"] = other.url + "/elsewhere"
        _expect_sha256(tmp_path, monkeypatch, gtFine_trainvaltest=server.files["/package/1"])
        monkeypatch.setenv("CITYSCAPES_USERNAME", server.user)
        monkeypatch.setenv("CITYSCAPES_PASSWORD", server.password)
        with pytest.raises(dl.DownloadError, match=r"redirected to .*/elsewhere"):
            dl.download_cityscapes(tmp_path / "dl", base_url=server.url, backoff=0, retries=0)
        assert other.requests == []
    finally:
        other.httpd.shutdown()
        other.httpd.server_close()
    # A public file follows a redirect (a CDN, a moved file).
    server.files["/moved.bin"] = b"moved"
    server.redirect["/old.bin"] = "/moved.bin"
    out = dl.download_url(server.url + "/old.bin", tmp_path / "pub", backoff=0)
    assert out.read_bytes() == b"moved"


def test_ade20k_archive_must_match_the_published_sha256(server: Server, tmp_path: Path) -> None:
    """A wrong archive served under the real name is refused (it used to pass the zip check)."""
    server.files["/ADEChallengeData2016.zip"] = _zip_bytes({"ADEChallengeData2016/x": b"1"})
    url = server.url + "/ADEChallengeData2016.zip"
    with pytest.raises(dl.ChecksumError, match=r"expected 7ff1be44.*verify\.KNOWN"):
        dl.download_url(url, tmp_path / "dl", backoff=0, retries=0)
    assert list((tmp_path / "dl").iterdir()) == []


def test_file_without_a_known_hash_is_pinned_on_first_use(
    server: Server, tmp_path: Path, _own_pins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.files["/ckpt/model.pth"] = first = b"first weights" * 1000
    url = server.url + "/ckpt/model.pth"
    with caplog.at_level(logging.WARNING):
        out = dl.download_url(url, tmp_path / "a", backoff=0)
    assert out.read_bytes() == first
    pins = json.loads(_own_pins.read_text())
    assert pins["model.pth"]["sha256"] == hashlib.sha256(first).hexdigest()
    assert pins["model.pth"]["url"] == url
    assert "pinned" in caplog.text and str(_own_pins) in caplog.text
    assert not list((tmp_path / "a").glob("*.json"))  # no .verified.json sidecar any more
    # Later uses verify against the pin: the same bytes pass, a changed file keeps nothing.
    assert dl.download_url(url, tmp_path / "b", backoff=0).read_bytes() == first
    server.files["/ckpt/model.pth"] = b"other weights" * 1000
    with pytest.raises(dl.ChecksumError, match=r"pinned on first use in .*download_pins\.json"):
        dl.download_url(url, tmp_path / "c", backoff=0, retries=1)
    assert list((tmp_path / "c").iterdir()) == []
    # An existing copy changed on disk is deleted, fetched again, and refused again.
    (tmp_path / "a" / "model.pth").write_bytes(b"tampered")
    with pytest.raises(dl.ChecksumError):
        dl.download_url(url, tmp_path / "a", backoff=0, retries=0)
    assert list((tmp_path / "a").iterdir()) == []
    # Linking a local copy is checked against the same pin.
    (tmp_path / "mine").mkdir()
    _write(tmp_path / "mine" / "model.pth", first)
    assert dl.link_local("checkpoints", tmp_path / "mine", tmp_path / "l", ["model.pth"])
    _write(tmp_path / "mine" / "model.pth", b"not the pinned file")
    with pytest.raises(dl.ChecksumError, match="pinned on first use"):
        dl.link_local("checkpoints", tmp_path / "mine", tmp_path / "l2", ["model.pth"])


def test_pin_file_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """params/download_pins.json of the workspace: outside downloads/<dataset>, the download
    stage's output folder, which `dvc repro` may rebuild."""
    monkeypatch.delenv(verify.PINS_ENV)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DNLREPRO_WORKSPACE", str(tmp_path / "ws"))
    pins = verify.pins_path(tmp_path / "ws" / "downloads" / "ade20k")
    assert pins == tmp_path / "ws" / "params" / "download_pins.json"
    monkeypatch.delenv("DNLREPRO_WORKSPACE")
    monkeypatch.chdir(tmp_path)  # no workspace: next to the downloads
    assert verify.pins_path(tmp_path / "d") == tmp_path / "d" / "download_pins.json"


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_local_mode_links_archives_and_extracted_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    have = tmp_path / "have"
    have.mkdir()
    fake = _write(have / "ADEChallengeData2016.zip", _zip_bytes({"ADEChallengeData2016/x": b"1"}))
    with pytest.raises(dl.ChecksumError, match=r"7ff1be44.*verify\.KNOWN"):  # not the real one
        dl.link_local("ade20k", have, tmp_path / "dl", dl.ADE20K_ARCHIVES)
    _expect_sha256(tmp_path, monkeypatch, **{fake.name: fake.read_bytes()})
    out = dl.link_local("ade20k", have, tmp_path / "dl", dl.ADE20K_ARCHIVES)
    assert out[0].is_symlink() and out[0].resolve() == fake
    city = tmp_path / "city"
    (city / "leftImg8bit").mkdir(parents=True)
    (city / "gtFine").mkdir()
    out = dl.link_local("cityscapes", city, tmp_path / "dl2", dl.CITYSCAPES_ARCHIVES)
    assert sorted(p.name for p in out) == ["gtFine", "leftImg8bit"]
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit_trainvaltest\.zip"):
        dl.link_local("cityscapes", have, tmp_path / "dl3", dl.CITYSCAPES_ARCHIVES)
    (tmp_path / "w").mkdir()
    bad = _write(tmp_path / "w" / "m-00000000.pth", b"weights")  # name hash does not match
    with pytest.raises(dl.ChecksumError, match="00000000"):
        dl.link_local("checkpoints", bad, tmp_path / "dl4", [bad.name])


def test_url_tables_cover_all_configs() -> None:
    urls = dl.checkpoint_urls()
    assert list(urls) == list(config_names())  # derived from the registry, every row
    base = "https://download.openmmlab.com/mmsegmentation/v0.5/dnlnet"
    for name, url in urls.items():
        assert url.startswith(f"{base}/{name}/{name}_20200")
        assert len(dl.sha256_prefix_from_name(url) or "") == 8
    assert dl.sha256_prefix_from_name(dl.PRETRAINED_URLS["resnet50_v1c"]) == "2cccc1ad"
    assert dl.sha256_prefix_from_name(dl.PRETRAINED_URLS["resnet101_v1c"]) == "e67eebb6"


def test_cli_download_checkpoints_and_missing_credentials(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dnlrepro import cli

    data = _payload(20_000, seed=9)
    name = config_names()[0]
    path = _named(data, stem=name)
    server.files[path] = data
    # The registry row points at the local server (unknown names still fail through it).
    real = load_published()
    row = dataclasses.replace(real.configs[name], checkpoint=server.url + path)
    local = dataclasses.replace(real, configs={**real.configs, name: row})
    monkeypatch.setattr("dnlrepro.core.registry.load_published", lambda path=None: local)
    argv = ["download", "--what", "checkpoints", "--config", name, "--dest", str(tmp_path)]
    assert cli.main(argv) == 0
    assert (tmp_path / path[1:]).read_bytes() == data
    assert cli.main(["download", "--what", "checkpoints", "--config", "nope"]) == 1
    assert "unknown config" in capsys.readouterr().err
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    assert cli.main(["download", "--what", "cityscapes", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD" in err and len(err.splitlines()) == 1


def test_cli_default_destination_is_where_the_pipeline_looks(tmp_path: Path) -> None:
    from dnlrepro.core import workspace

    ws = workspace.Workspace(tmp_path)
    assert dl.default_dest("ade20k", ws) == tmp_path / "downloads" / "ade20k"
    assert dl.default_dest("cityscapes", ws) == tmp_path / "downloads" / "cityscapes"
    assert dl.default_dest("pretrained", ws) == tmp_path / "downloads"
    assert dl.default_dest("checkpoints", ws) == tmp_path / "downloads" / "checkpoints"
