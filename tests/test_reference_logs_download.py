"""The published training logs: URL next to each checkpoint, fetched from 127.0.0.1 and pinned."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnlrepro.acquire import download as dl
from dnlrepro.acquire import verify
from dnlrepro.core import registry
from dnlrepro.core.registry import load_published


@pytest.fixture
def served() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A file server on 127.0.0.1: ``files[path] = bytes``."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()


def test_every_row_has_its_log_next_to_its_checkpoint() -> None:
    rows = load_published().configs
    assert len(rows) == 12
    for name, row in rows.items():
        stamp = row.checkpoint.rsplit("_", 2)[-2:]  # ..._<YYYYMMDD>_<HHMMSS>-<hash>.pth
        assert row.log.endswith(f"/{name}/{name}-{stamp[0]}_{stamp[1].split('-')[0]}.log.json")
    assert dl.log_urls() == {n: r.log for n, r in rows.items()}


def test_registry_refuses_a_log_of_another_timestamp(tmp_path: Path) -> None:
    text = load_published().path.read_text()
    name = next(iter(load_published().configs))
    good = load_published().configs[name].log
    bad = tmp_path / "published.yaml"
    bad.write_text(text.replace(good, good.replace("-2020", "_2020")))
    with pytest.raises(registry.PublishedError, match=rf"'configs\.{name}\.log'.*hyphen"):
        load_published(bad)


def test_logs_are_pinned_on_first_download_then_verified(
    served: tuple[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, files = served
    pins = tmp_path / "params" / "download_pins.json"
    monkeypatch.setenv(verify.PINS_ENV, str(pins))
    monkeypatch.delenv(dl.EXPECTED_SHA256_ENV, raising=False)
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    real = load_published()
    name = next(iter(real.configs))
    file = real.configs[name].log.rsplit("/", 1)[1]
    row = dataclasses.replace(real.configs[name], log=f"{url}/{name}/{file}")
    local = dataclasses.replace(real, configs={**real.configs, name: row})
    monkeypatch.setattr("dnlrepro.core.registry.load_published", lambda path=None: local)
    first = b'{"env_info": "GPU 0,1,2,3: Tesla V100"}\n'
    files[f"/{name}/{file}"] = first
    (got,) = dl.fetch("logs", tmp_path / "a", [name], retries=0)
    assert got.name == file and got.read_bytes() == first
    assert json.loads(pins.read_text())[file]["sha256"] == hashlib.sha256(first).hexdigest()
    assert dl.fetch("logs", tmp_path / "b", [name], retries=0)[0].read_bytes() == first
    files[f"/{name}/{file}"] = b'{"env_info": "changed"}\n'
    with pytest.raises(dl.ChecksumError) as err:
        dl.fetch("logs", tmp_path / "c", [name], retries=0)
    message = str(err.value)
    assert hashlib.sha256(first).hexdigest() in message  # expected
    assert hashlib.sha256(files[f"/{name}/{file}"]).hexdigest() in message  # actual
    assert f"delete the entry {file!r}" in message and str(pins) in message  # how to re-pin
    assert not (tmp_path / "c" / file).exists()
    assert dl.default_dest("logs").name == dl.REFERENCE_LOGS
