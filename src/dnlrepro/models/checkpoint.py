"""Checkpoint I/O in mmseg's layout, pretrained-backbone loading and SyncBN conversion.

§ numbers refer to docs/reference.md.

* mmseg checkpoints are ``{'meta': {...}, 'state_dict': {...}}`` (docs/reference.md §1.7); bare
  state dicts and DDP keys (``module.`` prefix) are accepted too.
* The ImageNet ``resnet{50,101}_v1c`` files are loaded into ``model.backbone`` with
  strict=False, as mmcv does (§2.2); only ``fc.*`` is expected to be unexpected (§9 item 3).
* Files are local: URLs and pretrained names are fetched by the commands that take them
  (:mod:`dnlrepro.tools.checkpoints`; training looks in ``downloads/``), never here.
* Loading never runs code: ``torch.load(weights_only=True)`` only, with no fallback. Its default
  allow-list already covers everything a checkpoint of ours or of mmseg 0.x holds (tensors,
  (Ordered)dicts, lists, tuples, str, int, float, bool, None): mmcv 1.x ``save_checkpoint`` writes
  ``meta`` = ``mmcv_version``, ``time``, ``CLASSES``, plus the runner's and mmseg's ``config`` text,
  ``PALETTE``, ``env_info``, ``seed``, ``exp_name``, ``epoch``, ``iter``, ``hook_msgs``;
  ours add the resume state (optimizer, torch RNG bytes, GradScaler and history dicts). A file
  holding any other global is refused (:class:`CheckpointError`), naming it.
"""

from __future__ import annotations

import logging
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dnlrepro.models.sync_bn import CPUSyncBatchNorm, swap_batchnorm, to_cpu_sync_bn

logger = logging.getLogger(__name__)

_MAX_LISTED = 10
# torch's weights-only refusals name the global: "GLOBAL posix.system", "GLOBAL numpy.dtype".
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointError(ValueError):
    """A file is not a checkpoint that can be read safely; the message names it and says why."""


def local_file(path: str | os.PathLike) -> Path:
    """``path`` as an existing local file (the model package never downloads).

    Raises:
        FileNotFoundError: no such file; for a URL the message names the commands that fetch it.
    """
    p = Path(path)
    if p.is_file():
        return p
    if str(path).startswith(("http://", "https://", "open-mmlab://")):
        raise FileNotFoundError(
            f"checkpoint {path} is not a local file; `dnlrepro evaluate`, `predict` and "
            "`benchmark` fetch URLs and pretrained names, `dnlrepro download --what checkpoints` "
            "or `--what pretrained` fetches them into downloads/"
        )
    raise FileNotFoundError(f"checkpoint {p} does not exist; pass an existing .pth file")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict (state dict, meta, optimizer, ...) loaded onto the CPU.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a PyTorch checkpoint, or it holds objects other than
            tensors and plain data (a pickle that could run code): refused, never loaded.
    """
    path = local_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
        raise CheckpointError(_refusal(path, str(e))) from None
    except Exception as e:  # torch.load on arbitrary bytes: KeyError, RuntimeError, EOFError ...
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (torch.load: {type(e).__name__}: {e}); pass a "
            ".pth file written by torch.save (mmseg / mmcv or dnlrepro)"
        ) from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return dict(ckpt)


def _refusal(path: Path, torch_message: str) -> str:
    found = _GLOBAL_RE.search(torch_message)
    names = [found.group(1)] if found else _pickled_globals(path)
    what = (
        f"the global {', '.join(dict.fromkeys(names))}"
        if names
        else f"pickle content the safe loader cannot read ({_last_reason(torch_message)})"
    )
    return (
        f"{path}: refused: the file holds {what}, which is neither tensor data nor checkpoint "
        "metadata, and loading it could run code. It is not a checkpoint we can trust: do not "
        "load it elsewhere with weights_only=False; delete it and fetch the checkpoint again "
        "from its source (published ones: `dnlrepro download --what checkpoints`)"
    )


def _pickled_globals(path: Path) -> list[str]:
    """The globals a plain pickle file names (torch stops at its protocol-4 framing first),
    found by parsing its opcodes with :mod:`pickletools`, which never executes anything."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not (or not only) a pickle stream: keep what was seen before
        pass
    return names


def _last_reason(torch_message: str) -> str:
    """torch's one-line reason ("Unsupported operand 149") inside its long message."""
    lines = [ln.strip() for ln in torch_message.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if ln.lower().startswith(("unsupported", "trying"))]
    return reasons[0] if reasons else lines[-1] if lines else "no detail"


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
    model: nn.Module, path: str | os.PathLike, *, strict: bool = True
) -> dict[str, Any]:
    """Load an mmseg-format (or bare / DDP) checkpoint into ``model``.

    Args:
        model: the segmentor (a DDP wrapper is unwrapped).
        path: a local ``.pth`` file (URLs are fetched by the commands, :func:`local_file`).
        strict: raise on any missing / unexpected key or shape mismatch.

    Returns:
        The checkpoint's ``meta`` dict ({} for bare state dicts).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable or unsafe file (:func:`read_checkpoint`).
        ValueError: a mismatch in strict mode; the message names the file and lists the first
            missing / unexpected keys and shape mismatches.
    """
    path = local_file(path)
    ckpt = read_checkpoint(path)
    file_sd = _state_dict_of(ckpt, path)
    _load_into(_unwrap(model), file_sd, path, strict)
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    logger.info("loaded checkpoint %s (%d tensors)", path, len(file_sd))
    return dict(meta or {})


def load_pretrained_backbone(
    model: nn.Module, path: str | os.PathLike
) -> tuple[list[str], list[str]]:
    """Load ImageNet weights into ``model.backbone`` with strict=False (§2.2, §9 item 3).

    ``path`` is a local file, e.g. ``downloads/resnet50_v1c-2cccc1ad.pth``. A full segmentor
    checkpoint also works (its ``backbone.*`` keys are used). Returns ``(missing, unexpected)`` key
    lists and logs them as a warning; shape mismatches are skipped with a warning. Raises
    ValueError when no key matches at all.
    """
    path = local_file(path)
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
    except (OSError, RuntimeError) as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(_write_failed(path, payload, err)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved checkpoint %s", path)
    return path


def _write_failed(path: Path, payload: Mapping[str, Any], err: BaseException) -> str:
    """The message of a failed checkpoint write, with the disk space it needed and had.

    A full disk reaches torch.save as ``[enforce fail at inline_container.cc] unexpected pos``
    (a short write inside its zip writer), which names neither the file nor the cause.
    """
    need = sum(t.numel() * t.element_size() for t in _tensors(payload))
    free = shutil.disk_usage(path.parent).free
    return (
        f"writing checkpoint {path} failed: {err}\n"
        f"  the file needs about {need / 2**20:,.0f} MB; {free / 2**20:,.0f} MB are free on the "
        f"disk of {path.parent}. Free space there (old work_dirs/, temporary folders) or make "
        "work_dirs/ a link to a larger disk, then run the same command again: training resumes "
        "from its last complete checkpoint (nothing half-written was kept)."
    )


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


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
