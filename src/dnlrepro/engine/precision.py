"""Floating-point precision of training and evaluation: TF32 as the config says (§5.7).

§ numbers refer to docs/reference.md.

PyTorch lets cuDNN convolutions use TF32 on Ampere and newer GPUs by default
(``torch.backends.cudnn.allow_tf32`` is True; ``torch.backends.cuda.matmul.allow_tf32`` has
been False since 1.12). The published runs were fp32 on V100s, which have no TF32, so the paper
configurations set ``runtime.allow_tf32: false`` and both flags are set from it before a model
runs: by the trainer (:func:`dnlrepro.engine.train_setup.set_determinism`) and by every
inference entry point (:func:`dnlrepro.engine.inference.load_model`, the benchmark).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from dnlrepro.core.config import Config

logger = logging.getLogger(__name__)


def tf32_flags() -> tuple[bool, bool]:
    """The process-wide ``(cuda.matmul.allow_tf32, cudnn.allow_tf32)`` now in force."""
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def set_tf32_flags(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def apply_tf32(cfg: Config) -> None:
    """Set both TF32 flags from ``runtime.allow_tf32`` (process-wide, like mmseg's own flags)."""
    allow = cfg.runtime.allow_tf32
    set_tf32_flags(allow, allow)
    logger.info(
        "TF32 %s for CUDA matmuls and cuDNN convolutions (runtime.allow_tf32: %s)",
        "allowed" if allow else "off", str(allow).lower(),
    )  # fmt: skip


@contextlib.contextmanager
def tf32_scope(cfg: Config) -> Iterator[None]:
    """:func:`apply_tf32` for the duration of the block, then the previous flags again."""
    previous = tf32_flags()
    apply_tf32(cfg)
    try:
        yield
    finally:
        set_tf32_flags(*previous)


def tf32_capable(device: torch.device | str) -> bool:
    """True on a CUDA device of compute capability >= 8.0 (Ampere and newer)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def precision_record(cfg: Config, device: torch.device | str, amp: str = "none") -> dict[str, Any]:
    """The ``precision`` block of the metrics files.

    Args:
        cfg: the resolved config (``runtime.allow_tf32``).
        device: where the model ran.
        amp: the autocast mode that ran: ``cfg.runtime.amp`` for training; evaluation and the
            benchmark never autocast, so ``"none"`` there.

    Returns:
        ``{"amp", "allow_tf32", "tf32_in_effect"}``; ``tf32_in_effect`` is True only when TF32
        was allowed by the flags in force and the device has TF32 units.
    """
    matmul, cudnn = tf32_flags()
    return {
        "amp": amp,
        "allow_tf32": cfg.runtime.allow_tf32,
        "tf32_in_effect": (matmul or cudnn) and tf32_capable(device),
    }
