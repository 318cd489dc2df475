"""mmcv's keep-ratio rescale formula, shared by the data pipeline and the miniature rules.

Torch-free on purpose: :mod:`dnlrepro.core.miniature` checks slide-window structure with it
without importing the training stack. Source: mmcv 1.x ``mmcv/image/geometric.py``
``rescale_size`` / ``_scale_size`` (docs/reference.md §3.4).
"""

from __future__ import annotations

from collections.abc import Sequence


def rescale_size(old_w: int, old_h: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv ``rescale_size`` for a ``(long, short)`` scale tuple: the keep-ratio target size.

    The factor is ``min(long / max(h, w), short / min(h, w))`` and each side is rounded as
    ``int(x * factor + 0.5)`` (mmcv ``_scale_size``), computed in Python floats (float64).

    Returns:
        ``(new_w, new_h)``.
    """
    if len(scale) != 2 or min(scale) <= 0:
        raise ValueError(f"scale must be a (long, short) pair of positive numbers, got {scale!r}")
    if old_w <= 0 or old_h <= 0:
        raise ValueError(f"image size must be positive, got w={old_w}, h={old_h}")
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(old_h, old_w), short_edge / min(old_h, old_w))
    return int(old_w * float(factor) + 0.5), int(old_h * float(factor) + 0.5)
