"""Checkpoint I/O in mmseg's layout, pretrained-backbone loading and SyncBN conversion.

§ numbers refer to docs/reference.md.

* mmseg checkpoints are ``{'meta': {...}, 'state_dict': {...}}`` (docs/reference.md §1.7); bare
  state dicts and DDP keys (``module.`` prefix) are accepted too.
* The ImageNet ``resnet{50,101}_v1c`` files are loaded into ``model.backbone`` with
  strict=False, as mmcv does (§2.2); only ``fc.*`` is expected to be unexpected (§9 item 3).
* URLs are fetched through ``dnlrepro.acquire.download.download_url`` and verified against the
  sha256 prefix that OpenMMLab puts at the end of every file name (``...-2cccc1ad.pth``).
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# PRETRAINED_URLS (§2.2) is re-exported from here; names are also accepted as open-mmlab://NAME.
from dnlrepro.acquire.download import PRETRAINED_URLS, download_url, sha256_prefix_from_name
from dnlrepro.models.sync_bn import CPUSyncBatchNorm, swap_batchnorm, to_cpu_sync_bn

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


def resolve_path(path_or_url: str | os.PathLike, download_dir: Path | None = None) -> Path:
    """A local file for a path, an http(s) URL (downloaded, cached) or a pretrained name.

    URLs go to ``download_dir`` (default: ``download_url``'s, ``<repo>/downloads``).
    """
    s = str(path_or_url)
    if s.startswith("open-mmlab://"):
        s = s[len("open-mmlab://") :]
    if s in PRETRAINED_URLS:
        s = PRETRAINED_URLS[s]
    if s.startswith(("http://", "https://")):
        return Path(download_url(s, download_dir, sha256_prefix=sha256_prefix_from_name(s)))
    p = Path(s)
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint {p} does not exist; pass an existing .pth file, an http(s) URL or one "
            f"of {', '.join(PRETRAINED_URLS)}"
        )
    return p


def read_checkpoint(
    path_or_url: str | os.PathLike, *, download_dir: Path | None = None
) -> dict[str, Any]:
    """The raw checkpoint dict (state dict, meta, optimizer, ...) loaded onto the CPU."""
    path = resolve_path(path_or_url, download_dir)
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():
                raise
            # Training checkpoints may hold non-tensor objects (e.g. numpy RNG state); only
            # files the user points us at are loaded, so fall back to the full unpickler.
            logger.warning("%s: not loadable with weights_only=True; full unpickler used", path)
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return dict(ckpt)


def _state_dict_of(ckpt: Mapping[str, Any], path: Path | str) -> dict[str, torch.Tensor]:
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        sd = ckpt["state_dict"]
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt  # a bare state dict
    else:
        raise ValueError(
            f"{path}: no 'state_dict' entry and not a bare state dict (top-level keys: "
            f"{', '.join(list(ckpt)[:_MAX_LISTED])})"
        )
    # DDP-wrapped models save "module.xxx"; mmcv strips the prefix the same way.
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _compare(
    model_sd: Mapping[str, torch.Tensor], file_sd: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in model_sd if k not in file_sd]
    unexpected = [k for k in file_sd if k not in model_sd]
    mismatched = [
        f"{k}: file {tuple(file_sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in model_sd
        if k in file_sd and tuple(file_sd[k].shape) != tuple(model_sd[k].shape)
    ]
    return missing, unexpected, mismatched


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}"


def _load_into(
    module: nn.Module, file_sd: Mapping[str, torch.Tensor], path: Path | str, strict: bool
) -> tuple[list[str], list[str], list[str]]:
    model_sd = module.state_dict()
    missing, unexpected, mismatched = _compare(model_sd, file_sd)
    report = (
        _listing("missing keys", missing)
        + _listing("unexpected keys", unexpected)
        + _listing("shape mismatches", mismatched)
    )
    if strict and report:
        raise ValueError(
            f"{path}: checkpoint does not match the model{report}\n  Check that the checkpoint "
            "was trained with this config (depth, num_classes), or load with strict=False."
        )
    if report:
        logger.warning("%s: loaded with strict=False;%s", path, report)
    bad = {m.split(":")[0] for m in mismatched}
    # Shape-mismatched tensors are skipped (mmcv behaviour with strict=False).
    usable = {k: v for k, v in file_sd.items() if k in model_sd and k not in bad}
    module.load_state_dict(usable, strict=False)
    return missing, unexpected, mismatched


def load_checkpoint(
    model: nn.Module,
    path_or_url: str | os.PathLike,
    *,
    strict: bool = True,
    download_dir: Path | None = None,
) -> dict[str, Any]:
    """Load an mmseg-format (or bare / DDP) checkpoint into ``model``.

    Args:
        model: the segmentor (a DDP wrapper is unwrapped).
        path_or_url: a local ``.pth`` path or an http(s) URL (downloaded and sha256-checked).
        strict: raise on any missing / unexpected key or shape mismatch.
        download_dir: where URLs are cached (default ``<repo>/downloads``).

    Returns:
        The checkpoint's ``meta`` dict ({} for bare state dicts).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, or a mismatch in strict mode; the message names the file and
            lists the first missing / unexpected keys and shape mismatches.
    """
    path = resolve_path(path_or_url, download_dir)
    ckpt = read_checkpoint(path)
    file_sd = _state_dict_of(ckpt, path)
    _load_into(_unwrap(model), file_sd, path, strict)
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    logger.info("loaded checkpoint %s (%d tensors)", path, len(file_sd))
    return dict(meta or {})


def load_pretrained_backbone(
    model: nn.Module, path_or_url: str | os.PathLike, *, download_dir: Path | None = None
) -> tuple[list[str], list[str]]:
    """Load ImageNet weights into ``model.backbone`` with strict=False (§2.2, §9 item 3).

    ``path_or_url`` may be a file, a URL, ``resnet50_v1c`` / ``resnet101_v1c`` or
    ``open-mmlab://resnet50_v1c``. A full segmentor checkpoint also works (its ``backbone.*`` keys
    are used). Returns ``(missing, unexpected)`` key lists and logs them as a warning; shape
    mismatches are skipped with a warning. Raises ValueError when no key matches at all.
    """
    path = resolve_path(path_or_url, download_dir)
    file_sd = _state_dict_of(read_checkpoint(path), path)
    if any(k.startswith("backbone.") for k in file_sd):
        file_sd = {
            k[len("backbone.") :]: v for k, v in file_sd.items() if k.startswith("backbone.")
        }
    backbone = _unwrap(model).backbone
    if not set(file_sd) & set(backbone.state_dict()):
        raise ValueError(
            f"{path}: none of its {len(file_sd)} keys (e.g. {', '.join(list(file_sd)[:5])}) "
            "matches the ResNetV1c backbone (stem.*, layer1..4.*); is it a resnet*_v1c file?"
        )
    missing, unexpected, _ = _load_into(backbone, file_sd, path, strict=False)
    logger.info("loaded pretrained backbone %s", path)
    return missing, unexpected


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any] | None = None, **extra: Any
) -> Path:
    """Write ``{'meta': ..., 'state_dict': ..., **extra}`` atomically (temp file + rename).

    ``extra`` holds e.g. ``optimizer``, ``iter``, ``config``. Tensors are moved to the CPU so the
    file loads anywhere; a DDP wrapper is unwrapped so keys carry no ``module.`` prefix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    full_meta = {"time": time.asctime(), **dict(meta or {})}
    payload = {"meta": full_meta, "state_dict": state_dict, **extra}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)  # readers never see a half-written checkpoint
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved checkpoint %s", path)
    return path


_SYNC_DEVICES = ("cuda", "hpu", "xpu")


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm2d -> synchronised BN when the config asks for SyncBN in a multi-process run.

    Converts only when ``cfg.model.norm == "SyncBN"`` and a process group with more than one rank
    is initialised (otherwise BN statistics are per process, which differs from the published
    4-GPU SyncBN runs, §8 "SyncBN on one GPU"). On GPUs this is ``nn.SyncBatchNorm``; on CPU
    (gloo), where PyTorch's SyncBatchNorm refuses to train, it is :class:`CPUSyncBatchNorm`, which
    reduces the same statistics with an autograd-aware all_reduce. Call it after moving the model
    to its device and before wrapping it in DDP.
    """
    norm = getattr(_unwrap(model), "norm", "SyncBN")
    if norm != "SyncBN":
        return model
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        logger.info("SyncBN requested but not distributed: using plain BatchNorm2d")
        return model
    device = next(model.parameters()).device.type
    if device in _SYNC_DEVICES:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logger.info("SyncBN on %s: using CPUSyncBatchNorm (statistics reduced over gloo)", device)
    return to_cpu_sync_bn(model)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm / CPUSyncBatchNorm -> BatchNorm2d (same tensors), e.g. for CPU evaluation."""
    return swap_batchnorm(module, (nn.SyncBatchNorm, CPUSyncBatchNorm), nn.BatchNorm2d)
