"""mIoU / mAcc / aAcc exactly as mmseg 0.x computes them (docs/reference.md §5.1).

§ numbers refer to docs/reference.md.

mmseg (v0.6 ``core/evaluation/mean_iou.py``; >= v0.19 ``core/evaluation/metrics.py``) does *not*
average per-image IoUs. Per image it builds four class histograms over the non-ignored pixels --
intersection, prediction, label and union = pred + label - intersection -- sums them over the
whole dataset, and only then divides:

* ``IoU_c = I_c / U_c``, ``Acc_c = I_c / Label_c`` (0/0 gives NaN: the class is skipped),
* ``aAcc = sum(I) / sum(Label)``,
* ``mIoU = nanmean(IoU)``, ``mAcc = nanmean(Acc)``.

Only the label is masked (``label != ignore_index``); predictions are never masked, and values
outside ``[0, num_classes)`` (in either map) simply fall outside the histogram bins. Histograms
are int64 tensors so a whole dataset (500 x 2 M Cityscapes pixels) accumulates exactly and can be
summed across ranks with ``all_reduce``.

The README reports ``round(x * 100, 2)``; :func:`to_percent` does that and writes NaN as None.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dnlrepro.data import io as data_io

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


def _as_long_tensor(x: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{what} must hold integer class ids, got dtype {x.dtype}")
    return x.long()


def _hist(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    # Values outside [0, num_classes) are dropped, like torch.histc(min=0, max=C-1) in mmseg
    # >= v0.19 (§5.1: "predictions of classes outside [0, num_classes) fall outside the bins").
    values = values[(values >= 0) & (values < num_classes)]
    return torch.bincount(values, minlength=num_classes).to(torch.int64)


def intersect_and_union(
    pred: ArrayLike,
    label: ArrayLike,
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image class histograms (mmseg ``intersect_and_union``, §5.1).

    Args:
        pred: predicted class ids, shape (H, W), any integer dtype.
        label: ground-truth ids, shape (H, W); ``ignore_index`` pixels are skipped.
        num_classes: number of histogram bins.
        ignore_index: label value to skip (255).
        reduce_zero_label: apply the ADE20K reduction to ``label`` first (only when the label was
            loaded raw; :func:`dnlrepro.data.datasets.load_label` can do it at load time instead).

    Returns:
        ``(area_intersect, area_union, area_pred, area_label)``, each int64 of shape (C,).

    Raises:
        ValueError: when the two maps have different shapes.
    """
    pred_t = _as_long_tensor(pred, "pred")
    label_t = _as_long_tensor(label, "label")
    if pred_t.shape != label_t.shape:
        raise ValueError(
            f"prediction shape {tuple(pred_t.shape)} != label shape {tuple(label_t.shape)}; "
            "predictions must be resized to the original label resolution before scoring"
        )
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if reduce_zero_label:
        label_t = data_io.reduce_zero_label(label_t, ignore_index)
    mask = label_t != ignore_index
    pred_t = pred_t[mask]
    label_t = label_t[mask]
    intersect = pred_t[pred_t == label_t]
    area_intersect = _hist(intersect, num_classes)
    area_pred = _hist(pred_t, num_classes)
    area_label = _hist(label_t, num_classes)
    area_union = area_pred + area_label - area_intersect
    return area_intersect, area_union, area_pred, area_label


def summarize(
    total_intersect: ArrayLike,
    total_union: ArrayLike,
    total_pred: ArrayLike,
    total_label: ArrayLike,
) -> dict[str, Any]:
    """Dataset-level metrics from summed histograms, as fractions (mmseg ``total_area_to_metrics``).

    ``total_pred`` is not needed by mIoU/mAcc/aAcc (it is folded into the union) but is accepted
    so the four histograms travel together.

    Returns:
        ``{"aAcc": float, "mIoU": float, "mAcc": float, "IoU": ndarray (C,), "Acc": ndarray (C,)}``
        in [0, 1]; classes with 0/0 are NaN and skipped by the means (NaN when all are).
    """
    del total_pred
    inter = torch.as_tensor(total_intersect).double().cpu().numpy()
    union = torch.as_tensor(total_union).double().cpu().numpy()
    lab = torch.as_tensor(total_label).double().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0/0 -> NaN (class absent from both maps / no ground truth), like mmseg.
        iou = inter / union
        acc = inter / lab
        a_acc = float(inter.sum() / lab.sum()) if lab.sum() > 0 else math.nan
    return {
        "aAcc": a_acc,
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "IoU": iou,
        "Acc": acc,
    }


def _nanmean(x: np.ndarray) -> float:
    # np.nanmean warns and returns NaN on an all-NaN slice; keep the NaN, drop the warning.
    if np.isnan(x).all():
        return math.nan
    return float(np.nanmean(x))


def _pct(x: float) -> float | None:
    # README convention (§5.1, .dev/gather_*): round(metric * 100, 2); NaN -> JSON null.
    x = float(x)
    return None if math.isnan(x) else round(x * 100, 2)


def to_percent(summary: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Turn :func:`summarize` output into the JSON layout, in percent with two decimals.

    Returns:
        ``{"mIoU", "mAcc", "aAcc", "IoU": {class: pct|None}, "Acc": {class: pct|None}}``.

    Raises:
        ValueError: when ``class_names`` does not have one name per class.
    """
    n = len(summary["IoU"])
    if len(class_names) != n:
        raise ValueError(
            f"got {len(class_names)} class names for {n} classes; the dataset's CLASSES must "
            "match model.num_classes"
        )
    return {
        "mIoU": _pct(summary["mIoU"]),
        "mAcc": _pct(summary["mAcc"]),
        "aAcc": _pct(summary["aAcc"]),
        "IoU": {name: _pct(v) for name, v in zip(class_names, summary["IoU"], strict=True)},
        "Acc": {name: _pct(v) for name, v in zip(class_names, summary["Acc"], strict=True)},
    }


def majority_baseline(total_label: ArrayLike, class_names: Sequence[str]) -> dict[str, Any]:
    """What predicting one class everywhere scores: the bar a trained model has to clear.

    The constant prediction of the class ``c`` with the most labelled pixels gives IoU_c =
    label_c / all labelled pixels (no false negatives), IoU 0 for every other class present and
    NaN for absent ones, so mIoU = IoU_c / (classes present), mAcc = 1 / (classes present) and
    aAcc = IoU_c. It is the best score any constant prediction reaches on these labels.

    Returns:
        ``{"class", "mIoU", "mAcc", "aAcc"}`` in percent (two decimals); values ``None`` when
        no pixel is labelled.
    """
    lab = torch.as_tensor(total_label).double().cpu().numpy()
    total, present = lab.sum(), int((lab > 0).sum())
    if total == 0:
        return {"class": None, "mIoU": None, "mAcc": None, "aAcc": None}
    c = int(lab.argmax())
    share = lab[c] / total
    return {
        "class": class_names[c],
        "mIoU": _pct(share / present),
        "mAcc": _pct(1.0 / present),
        "aAcc": _pct(share),
    }


@dataclass
class IoUAccumulator:
    """Dataset-level histograms; ``update`` per image, ``all_reduce`` across ranks, ``summarize``.

    Memory is O(num_classes): predictions are scored and dropped one image at a time.
    """

    num_classes: int
    ignore_index: int = 255
    reduce_zero_label: bool = False

    def __post_init__(self) -> None:
        # Rows: intersect, union, pred, label; int64 so sums over a dataset stay exact.
        self.hist = torch.zeros(4, self.num_classes, dtype=torch.int64)
        self.count = 0

    def update(self, pred: ArrayLike, label: ArrayLike) -> None:
        """Add one image (pred, label: (H, W) integer maps at the original resolution)."""
        areas = intersect_and_union(
            pred, label, self.num_classes, self.ignore_index, self.reduce_zero_label
        )
        self.hist += torch.stack([a.cpu() for a in areas])
        self.count += 1

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum histograms and image counts over all ranks (no-op without a process group).

        Args:
            device: where the collective runs; NCCL needs a CUDA tensor, gloo a CPU one. Default:
                CUDA when the backend is NCCL, else CPU.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        if device is None:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        buf = torch.cat([self.hist.flatten(), torch.tensor([self.count], dtype=torch.int64)])
        buf = buf.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        buf = buf.cpu()
        self.hist = buf[:-1].view(4, self.num_classes).clone()
        self.count = int(buf[-1])

    def summarize(self) -> dict[str, Any]:
        """Fractions per :func:`summarize`."""
        return summarize(*self.hist)

    def to_percent(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Percent layout per :func:`to_percent`, plus the ``majority_baseline`` of these labels."""
        return {
            **to_percent(self.summarize(), class_names),
            "majority_baseline": majority_baseline(self.hist[3], class_names),
        }
