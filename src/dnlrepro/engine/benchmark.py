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

Without ``--data-root`` the images are random uint8 images of the config's test size (said so in
the output); the weights do not change the timing, so ``--checkpoint`` is optional.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnlrepro.config import Config
from dnlrepro.engine import schedule
from dnlrepro.engine.evaluate import resolve_split
from dnlrepro.engine.inference import SINGLE_SCALE, checkpoint_label, load_model, unwrap
from dnlrepro.engine.step import train_step
from dnlrepro.files import file_digest, write_json

logger = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
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


def _images(cfg: Config, data_root: str | Path | None, split: str | None, n: int):
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
    _sync(device)
    start = time.perf_counter()
    probs = net.inference(view.unsqueeze(0).to(device), tuple(img.shape[:2]), flip=False)
    _ = probs.argmax(dim=1).cpu().numpy()
    _sync(device)
    return time.perf_counter() - start


def benchmark_train_memory(
    cfg: Config, device: torch.device | str, iters: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Peak CUDA memory of ``iters`` training iterations at the config's crop and batch (§5.5).

    Each iteration is the train loop's :func:`~dnlrepro.engine.step.train_step` on random inputs
    (10% of the label pixels ignored), fp32, one process, BN instead of SyncBN.

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
    torch.manual_seed(seed)
    model = models.revert_sync_batchnorm(models.build_segmentor(cfg)).to(device).train()
    opt = schedule.build_optimizer(model, cfg.schedule)
    gen = torch.Generator().manual_seed(seed)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    for it in range(iters):
        img = torch.randn(batch, 3, h, w, generator=gen).to(device)
        gt = torch.randint(0, cfg.model.num_classes, (batch, h, w), generator=gen)
        gt[torch.rand(batch, h, w, generator=gen) < 0.1] = cfg.model.ignore_index
        train_step(model, img, gt.to(device), opt, iteration=it, max_iters=iters)
    _sync(device)
    # mmcv TextLoggerHook: int(max_memory_allocated / 1024 / 1024) MB; README GB = MB / 1024.
    mem_mb = int(torch.cuda.max_memory_allocated(device) / (1024 * 1024))
    del model, opt
    torch.cuda.empty_cache()
    return {
        **info,
        "mem_mb": mem_mb,
        "mem_gb": round(mem_mb / 1024, 2),
        "note": "max_memory_allocated over the iterations, one process, BN instead of SyncBN, "
        "fp32, cudnn.benchmark False",
    }


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
) -> dict[str, Any]:
    """fps (§5.4) and training memory (§5.5); writes ``out`` JSON when given.

    Returns:
        ``{"config", "profile", "fps", "ms_per_image", "mem_gb", "mem_mb", "device", ...,
        "notes": [...]}``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available; use --device cpu")
    notes: list[str] = []
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # §5.4 / §5.5
    try:
        model, sha = _timing_model(cfg, checkpoint, device, notes)
        inf = benchmark_inference(model, cfg, device, num_images, warmup, data_root, split)
        del model
        if inf["input"] == "random":
            shape = "x".join(map(str, random_image_shape(cfg)))
            notes.append(
                f"no --data-root: random uint8 images of shape {shape} (HxW), not the "
                f"{cfg.data.dataset} val images"
            )
        mem = benchmark_train_memory(cfg, device, train_iters)
        notes.append(mem.pop("note"))
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    if device.type == "cpu":
        notes.append("CPU run: the published fps were measured on one V100 (§5.4)")
    result = _result(cfg, device, checkpoint, sha, inf, mem, notes)
    logger.info(
        "%s on %s: %.2f fps (%.2f ms/im), Mem %s GB",
        cfg.name, result["device_name"], result["fps"], result["ms_per_image"],
        "-" if result["mem_gb"] is None else result["mem_gb"],
    )  # fmt: skip
    if out is not None:
        logger.info("wrote %s", write_json(out, result))
    return result


def _timing_model(
    cfg: Config, checkpoint: str | Path | None, device: torch.device, notes: list[str]
) -> tuple[torch.nn.Module, str | None]:
    """The checkpoint's model and sha256, or random weights (the timing does not depend on them)."""
    from dnlrepro import models

    if checkpoint is not None:
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
    notes: list[str],
) -> dict[str, Any]:
    """The benchmark JSON: the README columns first, then how they were measured."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "config": cfg.name,
        "profile": cfg.profile,
        "fps": inf.pop("fps"),
        "ms_per_image": inf.pop("ms_per_image"),
        "mem_gb": mem.pop("mem_gb"),
        "mem_mb": mem.pop("mem_mb"),
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dnlrepro.profile import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--checkpoint", default=None, help=".pth or URL (default: random init)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--num-images", type=int, default=200, help="images timed (mmseg: 200)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up images excluded (5)")
    parser.add_argument("--data-root", default=None, help="time real images (default: random)")
    parser.add_argument("--split", default="val", help="split for --data-root (default val)")
    parser.add_argument(
        "--train-iters", type=int, default=5, help="training iterations for Mem (0: skip)"
    )
    parser.add_argument("--out", default=None, help="JSON path")


def main(args: argparse.Namespace) -> int:
    from dnlrepro.profile import config_from_args

    cfg, _ = config_from_args(args)
    result = benchmark(
        cfg,
        checkpoint=args.checkpoint,
        device=args.device,
        num_images=args.num_images,
        warmup=args.warmup,
        data_root=args.data_root,
        split=args.split,
        train_iters=args.train_iters,
        out=args.out,
    )
    print(json.dumps({k: result[k] for k in ("config", "device", "fps", "mem_gb")}))
    return 0
