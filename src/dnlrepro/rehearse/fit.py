"""Which layouts of each row fit a GPU: the peak training memory per GPU, per layout.

A row's protocol fixes its global batch ``B`` (8 Cityscapes, 16 ADE20K; core/layout.py); a layout
of ``g`` GPUs puts ``B / g`` images on each. Peak training memory per GPU is close to linear in
that per-GPU batch ``b``: a fixed part (weights, gradients, SGD momentum, the CUDA allocator's
workspace) plus activations per image. So:

* **CUDA (measured):** the training step at the real crop on this GPU at two per-GPU batches --
  the ``--gpus`` layout's and the next smaller one (or 2 when it is 1) -- read with
  ``torch.cuda.max_memory_allocated`` (the quantity of the Mem column, docs/reference.md §5.5).
  The line through the two gives the other layouts (marked as extrapolated). A layout fits when
  its peak stays under 95 % of the GPU's memory: the CUDA context and fragmentation take the rest.
  A measurement that runs out of memory says so (the layout does not fit).
* **No GPU (an estimate, labelled so):** the published Mem (GB) of the row -- 4 GPUs x the
  published per-GPU batch -- scaled by ``b / b_published``; for an 80k/160k row, whose README cell
  is '-', that of the 40k/80k row with the same backbone and crop (same model, same memory).
  Proportional scaling also scales the fixed part, so it overstates layouts with more images per
  GPU than published (1 x 8 or 2 x 4: the question "does it fit" errs on the safe side) and
  understates those with fewer. It is judged against ``--gpu-memory`` (default 80 GB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dnlrepro.core.config import Config
from dnlrepro.core.layout import valid_counts
from dnlrepro.core.registry import Published

OOM = "out of memory"
HEADROOM = 0.95  # share of the GPU's memory a run may fill
DEFAULT_GPU_GB = 80.0  # the judged capacity without a GPU (A100 / H100 80 GB)


@dataclass
class Fit:
    config: str
    source: str  # "cuda-measured" | "estimate"
    capacity_gb: float
    layouts: list[dict[str, Any]] = field(default_factory=list)  # gpus, per_gpu_batch, peak_gb..
    note: str = ""
    device: str = "no GPU"  # the GPU measured on

    def fitting(self) -> list[str]:
        return [f"{x['gpus']}x{x['per_gpu_batch']}" for x in self.layouts if x["fits"]]


def _layouts(cfg: Config, peak: Any, capacity_gb: float, measured: set[int]) -> list[dict]:
    out = []
    for gpus in valid_counts(cfg.global_batch):
        b = cfg.global_batch // gpus
        gb = peak(b)
        kind = "measured" if b in measured else "extrapolated" if measured else "estimate"
        if gb == OOM:  # this batch, or a smaller one, ran out of memory
            gb, fits, kind = None, False, "out of memory"
        else:
            fits = None if gb is None else gb <= HEADROOM * capacity_gb
        out.append({"gpus": gpus, "per_gpu_batch": b, "peak_gb": gb, "fits": fits, "how": kind})
    return out


def estimate(cfg: Config, published: Published, capacity_gb: float = DEFAULT_GPU_GB) -> Fit:
    """The CPU estimate from the published Mem (GB); see the module docstring."""
    source_name, mem = cfg.name, published.entry(cfg.name).metrics.get("mem_gb")
    if mem is None:  # an 80k / 160k row: its shorter sibling has the same model and crop
        for name in published.configs:
            entry = published.entry(name)
            same = name.split("_")[:3] == cfg.name.split("_")[:3]  # dnl, backbone, crop
            if same and entry.dataset == cfg.data.dataset and entry.metrics.get("mem_gb"):
                source_name, mem = name, entry.metrics["mem_gb"]
                break
    b_published = published.entry(cfg.name).protocol.get("samples_per_gpu")
    if mem is None or not isinstance(b_published, int):
        note = "no published Mem (GB) for this backbone and crop: no estimate"
        return Fit(cfg.name, "estimate", capacity_gb, _layouts(cfg, lambda b: None, 0, set()), note)
    fit = Fit(cfg.name, "estimate", capacity_gb)
    fit.layouts = _layouts(cfg, lambda b: round(mem * b / b_published, 1), capacity_gb, set())
    of = "" if source_name == cfg.name else f" of {source_name}"
    fit.note = f"published Mem {mem} GB{of} at {b_published} per GPU, x b / {b_published}"
    return fit


def measure(cfg: Config, gpus: int, device: str = "cuda") -> Fit:
    """Peak memory at the ``gpus`` layout's per-GPU batch and one other, on this GPU."""
    import torch

    from dnlrepro.rehearse.cost import time_train

    capacity = torch.cuda.get_device_properties(device).total_memory / 2**30
    b = cfg.global_batch // gpus
    smaller = [x for x in (cfg.global_batch // g for g in valid_counts(cfg.global_batch)) if x < b]
    points: dict[int, float | None] = {}
    for batch in (b, max(smaller) if smaller else 2):
        try:
            points[batch] = time_train(cfg, device, iters=1, per_gpu_batch=batch)[1]
        except torch.cuda.OutOfMemoryError:
            points[batch] = None  # does not fit: neither does anything larger
        torch.cuda.empty_cache()
    ok = {k: v for k, v in points.items() if v is not None}
    failed = [k for k, v in points.items() if v is None]

    def peak(x: int) -> float | str | None:
        if x in ok:
            return round(ok[x], 1)
        if len(ok) == 2:  # the line through the two measurements
            (b1, m1), (b2, m2) = sorted(ok.items())
            return round(m1 + (m2 - m1) / (b2 - b1) * (x - b1), 1)
        return OOM if failed and x >= min(failed) else None

    fit = Fit(cfg.name, "cuda-measured", round(capacity, 1))
    fit.device = torch.cuda.get_device_name(device)
    fit.layouts = _layouts(cfg, peak, capacity, set(points))
    fit.note = f"measured at {', '.join(f'{k} per GPU' for k in sorted(points))}"
    return fit


def render(fits: list[Fit]) -> list[str]:
    """The printed section: per row, each layout's peak per GPU and whether it fits."""
    if not fits:
        return []
    src = fits[0]
    head = (
        f"Layouts that fit ({src.device}, {src.capacity_gb:.0f} GB; a layout fits under "
        f"{HEADROOM:.0%} of it):"
        if src.source == "cuda-measured"
        else f"Layouts that fit: an ESTIMATE without a GPU (published Mem x per-GPU batch, "
        f"judged against {src.capacity_gb:.0f} GB, --gpu-memory; --device cuda measures):"
    )
    lines = ["", head]
    for fit in fits:
        cells = ", ".join(
            f"{x['gpus']}x{x['per_gpu_batch']} "
            + ("OOM" if x["how"] == OOM else "?" if x["peak_gb"] is None
               else f"{x['peak_gb']:.1f} GB{'*' if x['how'] == 'extrapolated' else ''}")
            for x in fit.layouts
        )  # fmt: skip
        fitting = ", ".join(fit.fitting()) or "none"
        lines.append(f"  {fit.config}: {cells} -> fits: {fitting} ({fit.note})")
    if any(x["how"] == "extrapolated" for f in fits for x in f.layouts):
        lines.append("  * extrapolated linearly from the two measured per-GPU batches")
    return lines
