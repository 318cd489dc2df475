"""Downloads against a real HTTP server on 127.0.0.1 started by the test (no internet)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import logging
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnlrepro.acquire import download as dl
from dnlrepro.core.registry import config_names, load_published


class Server:
    """Tiny file server with Range support, scripted failures and a Cityscapes-like login."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate_next: set[str] = set()  # serve half the body once, then hang up
        self.fail_next: dict[str, int] = {}  # path -> number of 503 answers before success
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
                        body = hashlib.md5(outer.files[key]).hexdigest().encode() + b"  x.zip\n"
                        self._send(200, body)
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
    paths = dl.download_cityscapes(tmp_path, base_url=server.url, backoff=0)
    assert [p.name for p in paths] == ["gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"]
    assert paths[1].read_bytes() == server.files["/package/3"]
    assert server.password not in caplog.text
    assert all(server.password not in p.read_text() for p in tmp_path.glob("*.json"))

    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong")
    with pytest.raises(dl.CredentialsError, match="rejected"):
        dl.download_cityscapes(tmp_path / "other", base_url=server.url, backoff=0)


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_local_mode_links_archives_and_extracted_folders(tmp_path: Path) -> None:
    have = tmp_path / "have"
    have.mkdir()
    _write(have / "ADEChallengeData2016.zip", _zip_bytes({"ADEChallengeData2016/x": b"1"}))
    out = dl.link_local("ade20k", have, tmp_path / "dl", dl.ADE20K_ARCHIVES)
    assert out[0].is_symlink() and out[0].resolve() == (have / "ADEChallengeData2016.zip")
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
