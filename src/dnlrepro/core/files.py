"""Small file helpers every part of the project shares: one JSON writer, one file hash."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def write_json(path: str | Path, payload: Any, *, sort_keys: bool = False) -> Path:
    """Write ``payload`` as indented JSON, atomically (a reader never sees half a file).

    ``allow_nan=False``: a NaN must already be ``None`` (JSON null); a bare NaN is not JSON.
    """
    text = json.dumps(payload, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> str:
    """Write ``data`` through a temporary file and ``os.replace``; returns its sha256.

    A reader never sees half a file, and a symlink at ``path`` is replaced, never followed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
