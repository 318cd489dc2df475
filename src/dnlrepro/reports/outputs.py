"""The reports are written as a set: all of a command's files are replaced, or none is.

``dnlrepro tables`` (``cityscapes.md``, ``ade20k.md``, ``published_vs_reproduced.csv``),
``dnlrepro diff`` (``diff.md``, ``diff.json``) and ``dnlrepro report`` (``index.html``) render
everything first, then hand it to :func:`write_all`: each file goes to a temporary next to its
target, then every temporary is renamed onto its target. A failure while writing the
temporaries leaves every target as it was; a failure while renaming puts back the targets
already replaced. Either way the temporaries are removed and the previous set stays intact, so
no reader sees a new ``diff.md`` beside an old ``diff.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dnlrepro.core.files import write_bytes_atomic

logger = logging.getLogger(__name__)


class ReportWriteError(RuntimeError):
    """A report set could not be written; the previous files are left as they were."""


def json_bytes(payload: Any) -> bytes:
    """``payload`` as :func:`dnlrepro.core.files.write_json` writes it (indented, no NaN)."""
    return (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_all(files: Mapping[Path, bytes]) -> list[Path]:
    """Write every ``path: bytes`` of ``files``, or leave all of them as they were.

    Raises:
        ReportWriteError: naming the file that failed and why.
    """
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temps[path] = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps[path].write_bytes(data)
        _replace_all(temps)
    except OSError as e:
        failed = e.filename2 or e.filename  # os.replace names the target second
        failed = {str(t): p for p, t in temps.items()}.get(str(failed), failed)
        raise ReportWriteError(
            f"could not write {failed} ({e.strerror or e}); none of "
            f"{', '.join(map(str, files))} was changed. Fix the cause (e.g. a folder or a "
            "read-only file where a report goes, a full disk) and run the command again"
        ) from e
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):  # renamed already, or never ours to remove
                tmp.unlink(missing_ok=True)
    return list(files)


def _replace_all(temps: Mapping[Path, Path]) -> None:
    """Rename each temporary onto its target; on a failure, restore the ones already replaced."""
    previous = {p: p.read_bytes() if p.is_file() else None for p in temps}
    done: list[Path] = []
    try:
        for path, tmp in temps.items():
            os.replace(tmp, path)
            done.append(path)
    except OSError:
        for path in done:
            if previous[path] is None:
                path.unlink(missing_ok=True)
            else:
                write_bytes_atomic(path, previous[path])
            logger.warning("put back the previous %s after a failed write", path)
        raise
