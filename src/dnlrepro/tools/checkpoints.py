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

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from dnlrepro.acquire.download import download_url, sha256_prefix_from_name
from dnlrepro.core.config import Config, config_from_args, config_path, load_config, parse_overrides
from dnlrepro.core.profile import PROFILES
from dnlrepro.core.registry import PRETRAINED_URLS
from dnlrepro.core.schema import read_yaml
from dnlrepro.models.checkpoint import CheckpointError, read_checkpoint

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


def recorded_profile(checkpoint: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """(profile, config digest) our training recorded in a local checkpoint's ``meta``;
    (None, None) for a URL, an mmseg checkpoint (no profile) or a file the loader will refuse
    (it then says why itself)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return None, None
    try:
        meta = read_checkpoint(checkpoint).get("meta")
    except (CheckpointError, OSError):
        return None, None
    if not isinstance(meta, dict) or meta.get("profile") not in PROFILES:
        return None, None
    digest = meta.get("config_digest")
    return str(meta["profile"]), digest if isinstance(digest, str) else None


def config_for(args: argparse.Namespace, checkpoint: str | os.PathLike | None) -> Config:
    """The configuration to run ``checkpoint`` with. Without ``--profile`` (and unless
    ``--config`` is a resolved file, which records its own) the profile our training recorded
    in the checkpoint applies, so a smoke checkpoint is evaluated as it was trained; else the
    configuration's own values. The first log line says which, and why."""
    if args.profile is None and "profile" not in (read_yaml(config_path(args.config)) or {}):
        profile, digest = recorded_profile(checkpoint)
        if profile is not None:
            logger.info(
                "profile: %s (recorded in the checkpoint %s; --profile chooses another)",
                profile,
                checkpoint,
            )
            cfg = load_config(args.config, profile, parse_overrides(getattr(args, "overrides", [])))
            if digest is not None and digest != cfg.digest():
                logger.warning(
                    "the checkpoint was trained with a configuration that differs from %s under "
                    "profile %s (config digest %s, here %s), e.g. by --set: the test protocol is "
                    "this configuration's",
                    args.config,
                    profile,
                    digest[:12],
                    cfg.digest()[:12],
                )
            return cfg
    cfg, _ = config_from_args(args)
    return cfg
