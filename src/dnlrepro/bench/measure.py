"""The two measurements behind ``dnlrepro benchmark``: inference fps (§5.4), training Mem (§5.5).

§ numbers refer to docs/reference.md.

:mod:`dnlrepro.bench.benchmark` runs each of them twice, with our SDPA attention and with
mmseg's explicit attention (§5.6), and writes the JSON.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnlrepro.core.config import Config
from dnlrepro.engine import schedule
from dnlrepro.engine.evaluate import resolve_split
from dnlrepro.engine.inference import SINGLE_SCALE, unwrap
from dnlrepro.engine.step import train_step

logger = logging.getLogger(__name__)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_image_shape(cfg: Config) -> tuple[int, int]:
    """(H, W) of the synthetic benchmark image: a landscape image the test resize leaves as is.

    Cityscapes: (short, long) of ``test.img_scale`` (1024x2048, the real frame size). ADE20K has
    no fixed size; a 4:3 image with the short side at the test short side (512x683) is typical.
    """
    long_side, short_side = max(cfg.test.img_scale), min(cfg.test.img_scale)
    if cfg.data.dataset == "ade20k":
        return short_side, min(long_side, int(short_side * 4 / 3 + 0.5))
    return short_side, long_side


def _images(
    cfg: Config, data_root: str | Path | None, split: str | None, n: int
) -> Iterator[np.ndarray]:
    """Yield ``n`` BGR uint8 images: the dataset's (cycled) or random ones."""
    if data_root is not None:
        from dnlrepro.data import datasets

        c = cfg.replace({"data.data_root": str(data_root)})
        ds = datasets.build_dataset(c.data, resolve_split(c, split), mode="test")
        if len(ds) == 0:
            raise FileNotFoundError(f"no images in {data_root} split {resolve_split(c, split)}")
        for i in range(n):
            yield ds[i % len(ds)]["img_bgr"]
        return
    rng = np.random.default_rng(0)
    h, w = random_image_shape(cfg)
    pool = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(min(n, 4))]
    for i in range(n):
        yield pool[i % len(pool)]


def benchmark_inference(
    model: torch.nn.Module,
    cfg: Config,
    device: torch.device | str,
    num_images: int = 200,
    warmup: int = 5,
    data_root: str | Path | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Time single-scale inference per mmseg's ``tools/benchmark.py`` (§5.4).

    Returns:
        ``{"fps", "ms_per_image", "num_images", "warmup", "timed_seconds", "input",
        "image_shapes"}``.

    Raises:
        ValueError: ``warmup`` is not smaller than ``num_images``.
    """
    if num_images <= 0 or not 0 <= warmup < num_images:
        raise ValueError(
            f"need 0 <= warmup < num_images, got warmup={warmup}, num_images={num_images}; "
            "mmseg times 200 images with 5 warm-up images"
        )
    device = torch.device(device)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    total = 0.0
    shapes: set[tuple[int, int]] = set()
    log_every = max(1, num_images // 10)
    try:
        with torch.no_grad():
            for i, img in enumerate(_images(cfg, data_root, split, num_images)):
                shapes.add(tuple(img.shape[:2]))
                elapsed = _time_one_image(net, img, cfg, device)
                if i >= warmup:
                    total += elapsed
                if (i + 1) % log_every == 0:
                    done = i + 1 - warmup
                    logger.info(
                        "benchmark %d/%d images, %.2f fps so far",
                        i + 1, num_images, done / total if done > 0 and total > 0 else 0.0,
                    )  # fmt: skip
    finally:
        net.train(was_training)
    if total <= 0:  # perf_counter cannot resolve the timed work: no meaningful fps
        raise RuntimeError(f"timed {num_images - warmup} images in {total} s; raise --num-images")
    fps = round((num_images - warmup) / total, 2)
    return {
        "fps": fps,
        # .dev/md2yml.py derives the metafiles' ms/im from the README's 2-decimal fps.
        "ms_per_image": round(1000 / fps, 2),
        "num_images": num_images,
        "warmup": warmup,
        "timed_seconds": round(total, 4),
        "input": "dataset" if data_root is not None else "random",
        "image_shapes": sorted([list(s) for s in shapes]),
    }


def _time_one_image(
    net: torch.nn.Module, img: np.ndarray, cfg: Config, device: torch.device
) -> float:
    """Seconds of what mmseg's ``model(return_loss=False, rescale=True)`` does for one image.

    Preprocessing is outside the timed region (§5.4); inside: the copy to the device, forward
    (whole or slide), resize to the original size, softmax, argmax and ``.cpu().numpy()``.
    """
    from dnlrepro.data import transforms

    ((view, _),) = transforms.test_views(img, cfg.test.img_scale, SINGLE_SCALE, False, cfg.data)
    sync(device)
    start = time.perf_counter()
    probs = net.inference(view.unsqueeze(0).to(device), tuple(img.shape[:2]), flip=False)
    _ = probs.argmax(dim=1).cpu().numpy()
    sync(device)
    return time.perf_counter() - start


def benchmark_train_memory(
    cfg: Config,
    device: torch.device | str,
    iters: int = 5,
    attention: str = "sdpa",
) -> dict[str, Any]:
    """Peak CUDA memory of ``iters`` training iterations at the config's crop and batch (§5.5).

    Each iteration is the train loop's :func:`~dnlrepro.engine.step.train_step` on random inputs
    (10% of the label pixels ignored), fp32, one process, BN instead of SyncBN, with the DNL
    ``attention`` implementation (§5.6).

    Returns:
        ``{"mem_gb", "mem_mb", "train_iters", "batch", "crop_size", "note"}``; ``mem_*`` are None
        on a non-CUDA device.
    """
    from dnlrepro import models

    device = torch.device(device)
    batch, (h, w) = cfg.data.samples_per_gpu, cfg.data.crop_size
    info: dict[str, Any] = {"train_iters": iters, "batch": batch, "crop_size": [h, w]}
    if device.type != "cuda":
        note = "Mem (GB) is torch.cuda.max_memory_allocated (docs/reference.md §5.5): CUDA only"
        return {**info, "mem_gb": None, "mem_mb": None, "note": note}
    if iters <= 0:
        return {**info, "mem_gb": None, "mem_mb": None, "note": "training memory not measured"}
    torch.manual_seed(0)
    model = models.build_segmentor(cfg, attention=attention)
    model = models.revert_sync_batchnorm(model).to(device).train()
    opt = schedule.build_optimizer(model, cfg.schedule)
    gen = torch.Generator().manual_seed(0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        for it in range(iters):
            img = torch.randn(batch, 3, h, w, generator=gen).to(device)
            gt = torch.randint(0, cfg.model.num_classes, (batch, h, w), generator=gen)
            gt[torch.rand(batch, h, w, generator=gen) < 0.1] = cfg.model.ignore_index
            train_step(model, img, gt.to(device), opt, iteration=it, max_iters=iters)
        sync(device)
        # mmcv TextLoggerHook: int(max_memory_allocated / 1024 / 1024) MB; README GB = MB / 1024.
        mem_mb = int(torch.cuda.max_memory_allocated(device) / (1024 * 1024))
    finally:
        del model, opt
        torch.cuda.empty_cache()
    return {
        **info,
        "mem_mb": mem_mb,
        "mem_gb": round(mem_mb / 1024, 2),
        "note": "max_memory_allocated over the iterations, one process, BN instead of SyncBN, "
        "fp32, cudnn.benchmark False",
    }
