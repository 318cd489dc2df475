"""``dnlrepro benchmark``: the README's "Inf time (fps)" and "Mem (GB)" columns on your hardware.

§ numbers refer to docs/reference.md.

* **fps** (docs/reference.md §5.4, mmseg v0.6 ``tools/benchmark.py``): batch 1, ``num_images``
  images (200), the first ``warmup`` (5) excluded, ``cudnn.benchmark = False``. Each timed region is
  bracketed by ``torch.cuda.synchronize()`` + ``perf_counter`` and covers what mmseg's
  ``model(return_loss=False, rescale=True)`` does after data loading: moving the image to the
  device, the forward pass (whole or slide), the resize to the original size, softmax, argmax and
  ``.cpu().numpy()``. Reading and preprocessing images is outside the timed region.
  ``fps = (num_images - warmup) / total_time``; metafiles show ``round(1000 / fps, 2)`` ms/im.
* **Mem (GB)** (§5.5): ``torch.cuda.max_memory_allocated()`` over a few training iterations (the
  train loop's own step) at the config's crop and per-GPU batch (SyncBN reverted to BN: one
  process), in MB as mmcv logs it
  (``int(bytes / 2**20)``), divided by 1024. Only defined on CUDA: on CPU it is ``null`` with a
  note. mmseg's docs say ``cudnn.benchmark=False`` while its runtime config sets True (§5.5
  caveat); we use False, as the docs define it.

Both are measured twice (§5.6). mmseg's DNL head materialises the [N, P, P] attention matrix;
our default SDPA path never does, so its Mem and fps are ours, not comparable with the published
columns. The JSON keeps ours at the top level (``fps``, ``ms_per_image``, ``mem_gb``, ``mem_mb``,
``attention: "sdpa"``) and adds ``mmseg_comparable``: the same measurements with the explicit
attention of mmseg (``attention: "naive"``), the numbers to set beside the published ones.
``precision`` records the TF32 setting in force (``runtime.allow_tf32``, §5.7).

Without ``--data-root`` the images are random uint8 images of the config's test size (said so in
the output); the weights do not change the timing, so ``--checkpoint`` is optional.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dnlrepro import models
from dnlrepro.bench.measure import (
    benchmark_inference,
    benchmark_train_memory,
    random_image_shape,
)
from dnlrepro.core.config import Config
from dnlrepro.core.files import file_digest, write_json
from dnlrepro.engine.inference import checkpoint_label, load_model
from dnlrepro.engine.precision import precision_record, tf32_scope

logger = logging.getLogger(__name__)

OURS = "sdpa"  # the attention our training and evaluation use


@contextlib.contextmanager
def _cudnn_benchmark_off() -> Iterator[None]:
    """cudnn.benchmark False for the block (§5.4 / §5.5), the previous value afterwards."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def benchmark(
    cfg: Config,
    checkpoint: str | Path | None = None,
    device: torch.device | str | None = None,
    num_images: int = 200,
    warmup: int = 5,
    data_root: str | Path | None = None,
    split: str | None = None,
    train_iters: int = 5,
    out: str | Path | None = None,
    mmseg_comparable: bool = True,
) -> dict[str, Any]:
    """fps (§5.4) and training memory (§5.5) with our attention and mmseg's (§5.6); writes ``out``.

    Args:
        mmseg_comparable: also measure with mmseg's explicit attention (``False``: the
            ``mmseg_comparable`` key is null).

    Returns:
        ``{"config", "profile", "fps", "ms_per_image", "mem_gb", "mem_mb", "attention",
        "mmseg_comparable": {"attention", "fps", "ms_per_image", "mem_gb", "mem_mb",
        "timed_seconds", "notes"} | None, "precision", "device", ..., "notes": [...]}``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available; use --device cpu")
    notes: list[str] = []
    timing = (cfg, device, num_images, warmup, data_root, split)
    alt_inf: dict[str, Any] = {}
    alt_mem: dict[str, Any] = {}
    with tf32_scope(cfg), _cudnn_benchmark_off():
        model, sha = _timing_model(cfg, checkpoint, device, notes)
        inf = benchmark_inference(model, *timing)
        if mmseg_comparable:
            with models.attention_impl(model, models.MMSEG_ATTENTION):
                alt_inf = _guarded(benchmark_inference, model, *timing)
        del model
        mem = benchmark_train_memory(cfg, device, train_iters, attention=OURS)
        if mmseg_comparable:
            alt_mem = _guarded(
                benchmark_train_memory, cfg, device, train_iters, attention=models.MMSEG_ATTENTION
            )
        precision = precision_record(cfg, device)
    if inf["input"] == "random":
        shape = "x".join(map(str, random_image_shape(cfg)))
        notes.append(
            f"no --data-root: random uint8 images of shape {shape} (HxW), not the "
            f"{cfg.data.dataset} val images"
        )
    notes.append(mem.pop("note"))
    if device.type == "cpu":
        notes.append("CPU run: the published fps were measured on one V100 (§5.4)")
    comparable = _comparable(alt_inf, alt_mem) if mmseg_comparable else None
    result = _result(cfg, device, checkpoint, sha, inf, mem, comparable, precision, notes)
    logger.info(
        "%s on %s: ours (%s) %.2f fps, Mem %s GB; mmseg-comparable: %s",
        cfg.name, result["device_name"], OURS, result["fps"], result["mem_gb"],
        comparable and {k: comparable[k] for k in ("fps", "mem_gb")},
    )  # fmt: skip
    if out is not None:
        logger.info("wrote %s", write_json(out, result))
    return result


def _guarded(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn(...)``, or ``{"error": ...}`` when the explicit attention does not fit the GPU."""
    try:
        return fn(*args, **kwargs)
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        logger.warning("mmseg-comparable measurement ran out of GPU memory: %s", e)
        return {"error": f"CUDA out of memory ({str(e).splitlines()[0]})"}


def _comparable(inf: dict[str, Any], mem: dict[str, Any]) -> dict[str, Any]:
    """The ``mmseg_comparable`` block: the explicit-attention numbers (None where not measured)."""
    notes = [
        f"attention {models.MMSEG_ATTENTION!r}: the explicit [N, P, P] matrix of mmseg's DNL head "
        "(docs/reference.md §5.6); these are the numbers to compare with the published columns"
    ]
    notes += [f"{what}: {b['error']}" for what, b in (("fps", inf), ("Mem", mem)) if "error" in b]
    if "note" in mem:
        notes.append(mem["note"])
    return {
        "attention": models.MMSEG_ATTENTION,
        "fps": inf.get("fps"),
        "ms_per_image": inf.get("ms_per_image"),
        "timed_seconds": inf.get("timed_seconds"),
        "mem_gb": mem.get("mem_gb"),
        "mem_mb": mem.get("mem_mb"),
        "notes": notes,
    }


def _timing_model(
    cfg: Config, checkpoint: str | Path | None, device: torch.device, notes: list[str]
) -> tuple[torch.nn.Module, str | None]:
    """The checkpoint's model and sha256, or random weights (the timing does not depend on them)."""
    if checkpoint is not None:  # a local file: `dnlrepro benchmark` downloads a URL first
        model, _, local = load_model(cfg, checkpoint, device)
        return model, file_digest(local)
    torch.manual_seed(0)
    model = models.build_segmentor(cfg)
    notes.append("no checkpoint: random weights (the timing does not depend on them)")
    return models.revert_sync_batchnorm(model).to(device).eval(), None


def _result(
    cfg: Config,
    device: torch.device,
    checkpoint: str | Path | None,
    sha: str | None,
    inf: dict[str, Any],
    mem: dict[str, Any],
    comparable: dict[str, Any] | None,
    precision: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """The benchmark JSON: the README columns first (ours, then mmseg's), then how."""
    cpu = platform.processor() or platform.machine()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {
        "config": cfg.name,
        "profile": cfg.profile,
        "fps": inf.pop("fps"),
        "ms_per_image": inf.pop("ms_per_image"),
        "mem_gb": mem.pop("mem_gb"),
        "mem_mb": mem.pop("mem_mb"),
        "attention": OURS,
        "mmseg_comparable": comparable,
        "precision": precision,
        "device": device.type,
        "device_name": device_name,
        "torch": torch.__version__,
        "cudnn_benchmark": False,
        "checkpoint": checkpoint_label(checkpoint) if checkpoint is not None else None,
        "checkpoint_sha256": sha,
        "test_mode": cfg.test.mode,
        "test_img_scale": list(cfg.test.img_scale),
        **inf,
        "train": mem,
        "notes": notes,
    }
