"""Where the commands (evaluate, predict, benchmark) get a checkpoint: a local file, or a download.

The model and engine packages load local files only and never fetch anything
(:mod:`dnlrepro.models.checkpoint`). A command's ``--checkpoint`` may also be an http(s) URL or a
pretrained backbone name (``resnet50_v1c``, ``open-mmlab://resnet50_v1c``): it is downloaded
here (``<workspace>/downloads``, sha256-prefix verified by
:func:`dnlrepro.acquire.download.download_url`) before the engine loads it. A downloaded file
that the loader refuses (unsafe or unreadable) is deleted with its verification record, so it is
neither kept nor reused.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from dnlrepro.acquire.download import download_url, sha256_prefix_from_name
from dnlrepro.core.registry import PRETRAINED_URLS
from dnlrepro.models.checkpoint import CheckpointError

logger = logging.getLogger(__name__)

# download_url's record of a verified download, next to the file.
VERIFIED_SUFFIX = ".verified.json"


@contextlib.contextmanager
def fetched(path_or_url: str | os.PathLike, download_dir: Path | None = None) -> Iterator[Path]:
    """The local file of a path, an http(s) URL (downloaded, cached) or a pretrained name.

    Use it around the load: a :class:`~dnlrepro.models.checkpoint.CheckpointError` raised inside
    deletes a downloaded file and its ``.verified.json`` before it propagates.

    Raises:
        FileNotFoundError: a local path that does not exist.
        DownloadError: the download failed (the message names the URL).
    """
    s = str(path_or_url).removeprefix("open-mmlab://")
    s = PRETRAINED_URLS.get(s, s)
    if not s.startswith(("http://", "https://")):
        if not Path(s).is_file():
            raise FileNotFoundError(
                f"checkpoint {s} does not exist; pass an existing .pth file, an http(s) URL or "
                f"one of {', '.join(PRETRAINED_URLS)}"
            )
        yield Path(s)
        return
    local = download_url(s, download_dir, sha256_prefix=sha256_prefix_from_name(s))
    try:
        yield local
    except CheckpointError as e:
        local.unlink(missing_ok=True)
        local.with_name(local.name + VERIFIED_SUFFIX).unlink(missing_ok=True)
        raise CheckpointError(f"{e} [downloaded from {s}; the download was deleted]") from None
