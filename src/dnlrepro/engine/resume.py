"""Resume state of a training run: ``iter_N.pth`` / ``latest.pth``, the digest check, ``final.pth``.

§ numbers refer to docs/reference.md.

Layout (docs/reference.md §1.7): ``{"meta": ..., "state_dict": ...}`` written by
:func:`dnlrepro.models.save_checkpoint`, so the weights load into mmseg 0.x unchanged. Resume
files add ``optimizer``, ``iter``, ``config`` (the resolved config dict), ``config_digest``,
``rng`` (every rank's torch RNG state, for dropout), ``scaler`` (fp16) and ``history`` (the curves
logged so far). ``final.pth`` is the published layout: no optimizer, ``meta`` with the config text,
``CLASSES`` and ``PALETTE``.

A checkpoint is resumed only by the config that wrote it (same ``Config.digest()``); anything else
is refused with :class:`ResumeError` instead of silently continuing another experiment.

Reading and writing the mmseg file format itself is :mod:`dnlrepro.models.checkpoint`'s job; this
module decides which files a training run keeps and which one it resumes.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from dnlrepro.core.config import Config

LATEST = "latest.pth"
FINAL = "final.pth"
MAX_KEEP = 2  # iter_*.pth kept (newest first); mmcv's default keeps all
_ITER_RE = re.compile(r"^iter_(\d+)\.pth$")


class ResumeError(RuntimeError):
    """A checkpoint in the work dir cannot be resumed by this run."""


def config_meta(cfg: Config, iteration: int) -> dict[str, Any]:
    """The ``meta`` block of mmseg's checkpoints (§1.7): config text, classes, palette, iter."""
    from dnlrepro.data.classes import CLASSES, PALETTE

    return {
        "config": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
        "config_name": cfg.name,
        "config_digest": cfg.digest(),
        "profile": cfg.profile,
        "CLASSES": tuple(CLASSES[cfg.data.dataset]),
        "PALETTE": [list(c) for c in PALETTE[cfg.data.dataset]],
        "iter": iteration,
        "time": time.asctime(),
        "dnlrepro_version": _version(),
    }


def save_train_checkpoint(
    work_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    cfg: Config,
    *,
    rng: list[Any],
    scaler: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
    mlflow_run_id: str | None = None,
) -> Path:
    """Write ``iter_<iteration>.pth`` atomically, point ``latest.pth`` at it, prune old ones.

    Args:
        model: the bare model (not the DDP wrapper).
        rng: one RNG state per rank (``torch.get_rng_state()``), restored on resume.
        mlflow_run_id: the run a resumed training goes on logging to (None: not tracked).

    Returns:
        The path of the new checkpoint.
    """
    from dnlrepro.models import save_checkpoint

    path = work_dir / f"iter_{iteration}.pth"
    # save_checkpoint writes a temp file and renames it: a kill mid-write keeps the old files.
    save_checkpoint(
        path,
        model,
        meta=config_meta(cfg, iteration),
        optimizer=optimizer.state_dict(),
        iter=iteration,
        config=cfg.to_dict(),
        config_digest=cfg.digest(),
        rng=rng,
        scaler=scaler,
        history=history or {},
        mlflow_run_id=mlflow_run_id,
    )
    _point_latest(work_dir, path)
    for _, old in sorted(_iter_checkpoints(work_dir))[:-MAX_KEEP]:
        old.unlink(missing_ok=True)
    return path


def save_final(path: Path, model: nn.Module, cfg: Config, iteration: int) -> Path:
    """mmseg's released layout: ``{"meta", "state_dict"}`` without optimizer (§1.7).

    Without a timestamp (``meta.time`` is None): the same run on the same machine writes the
    same bytes, so dvc.lock and the recorded sha256 do not change when nothing else did.
    """
    from dnlrepro.models import save_checkpoint

    save_checkpoint(path, model, meta={**config_meta(cfg, iteration), "time": None})
    return path


def find_resume(work_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``latest.pth``'s target, else the highest ``iter_N.pth``."""
    latest = work_dir / LATEST
    if latest.exists():
        return latest.resolve()
    found = sorted(_iter_checkpoints(work_dir))
    return found[-1][1] if found else None


def load_resume(path: Path, cfg: Config) -> dict[str, Any]:
    """Load a resume checkpoint and check that ``cfg`` wrote it.

    Raises:
        ResumeError: the file is unreadable, not a training checkpoint, or from another config.
    """
    from dnlrepro.models import CheckpointError, read_checkpoint

    try:
        ckpt = read_checkpoint(path)  # weights only: a file that could run code is refused
    except (OSError, CheckpointError) as e:
        raise ResumeError(
            f"cannot resume from {path}: {e}; delete it, pass a new --work-dir, or --resume never"
        ) from None
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "iter" not in ckpt:
        raise ResumeError(
            f"{path} is not a training checkpoint (no optimizer/iter); pass a new --work-dir or "
            "--resume never"
        )
    digest = ckpt.get("config_digest")
    if digest != cfg.digest():
        theirs = ckpt.get("meta", {}).get("config_name", "?")
        their_profile = ckpt.get("meta", {}).get("profile", "?")
        raise ResumeError(
            f"{path} was written by a different configuration ({theirs}, profile "
            f"{their_profile}, digest {str(digest)[:12]}) than this run ({cfg.name}, profile "
            f"{cfg.profile}, digest {cfg.digest()[:12]}); refusing to resume it. Pass a new "
            "--work-dir, or --resume never to start from scratch in this one"
        )
    return ckpt


def _iter_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    found = ((_ITER_RE.match(p.name), p) for p in work_dir.glob("iter_*.pth"))
    return [(int(m.group(1)), p) for m, p in found if m]


def _point_latest(work_dir: Path, target: Path) -> None:
    """Atomically make ``latest.pth`` a relative symlink to ``target`` (copy where links fail)."""
    latest = work_dir / LATEST
    tmp = work_dir / (LATEST + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(target.name)
    except OSError:  # e.g. filesystems without symlinks: fall back to a hard link
        os.link(target, tmp)
    os.replace(tmp, latest)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dnlrepro")
    except Exception:
        return "unknown"
