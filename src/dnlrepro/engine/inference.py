"""A trained model and its predictions for one image: load a checkpoint, run the test views.

§ numbers refer to docs/reference.md.

Shared by evaluation (:mod:`dnlrepro.engine.evaluate`), ``dnlrepro predict`` and the benchmark.
The test pipeline is mmseg 0.x's (docs/reference.md §3.4): the config's test resize and
normalisation make the views, the model turns each view into softmax probabilities at the original
size (whole or slide per ``cfg.test``, §5.2).

* single scale: the ``(1.0,)``-ratio unflipped view;
* ms+flip (§5.3): 6 ratios x {unflipped, flipped}; the 12 softmax maps (flipped ones flipped
  back by the model) are summed in view order and divided by 12, then argmax. The ratio-1.0
  unflipped view is the single-scale view, so its probabilities are computed once and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnlrepro.config import Config

# 1.0 is the single-scale view inside the ms+flip set (§3.4).
SINGLE_SCALE = (1.0,)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside a DDP / DataParallel wrapper (``inference`` lives there)."""
    return model.module if hasattr(model, "module") else model


def load_model(
    cfg: Config, checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """Build the segmentor, load a checkpoint strictly, move it to ``device`` in eval mode.

    ``checkpoint`` is a local file or a URL, downloaded once; mmseg's published file names end in
    ``-<first 8 hex of sha256>.pth`` (§6.1) and that prefix is verified.

    Returns:
        ``(model, meta, local_checkpoint_path)``.

    Raises:
        FileNotFoundError: missing checkpoint. ``ValueError``/``RuntimeError`` from
        :func:`dnlrepro.models.load_checkpoint` when keys or shapes do not match the config.
    """
    from dnlrepro import models
    from dnlrepro.models.checkpoint import resolve_path

    local = resolve_path(checkpoint)
    model = models.build_segmentor(cfg)
    meta = models.load_checkpoint(model, local)
    # Evaluation never needs BN statistics synchronised; plain BN avoids any collective.
    model = models.revert_sync_batchnorm(model)
    model.to(device).eval()
    return model, meta, local


def checkpoint_label(checkpoint: str | Path) -> str:
    """How output JSONs name a checkpoint: a local file relative to the workspace root when it
    lies inside (results are committed; a machine's absolute path must not end up in them), else
    as given (a URL, or a file elsewhere: absolute)."""
    from dnlrepro import workspace

    if not Path(checkpoint).is_file():
        return str(checkpoint)
    return workspace.find().relative(checkpoint)


def infer_image(
    model: torch.nn.Module,
    img_bgr: np.ndarray,
    cfg: Config,
    ms_flip: bool = False,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities of one image at its original size: single scale, optionally ms+flip.

    Args:
        model: an ``EncoderDecoder`` in eval mode (``inference(img, ori_shape, flip)``).
        img_bgr: HxWx3 uint8 BGR image at original resolution (cv2 decode, §3.3 step 1).
        cfg: the resolved config (test scale, ratios, flip, normalisation).
        ms_flip: also compute the mean softmax of the ms+flip views (§5.3).
        device: where the network runs; default: the model's device.

    Returns:
        ``(probs_ss, probs_ms)``: [1, C, H0, W0] tensors on ``device``; ``probs_ms`` is None
        unless ``ms_flip``.
    """
    from dnlrepro.data import transforms

    net = unwrap(model)
    if device is None:
        device = next(net.parameters()).device
    ori_shape = tuple(img_bgr.shape[:2])  # (H0, W0)

    def run(view: torch.Tensor, flipped: bool) -> torch.Tensor:
        # [3, h, w] -> [1, C, H0, W0] softmax; the model flips a flipped view's output back.
        return net.inference(view.unsqueeze(0).to(device), ori_shape, flip=flipped)

    ((ss_view, _),) = transforms.test_views(
        img_bgr, cfg.test.img_scale, SINGLE_SCALE, False, cfg.data
    )
    probs_ss = run(ss_view, False)
    if not ms_flip:
        return probs_ss, None
    views = transforms.test_views(
        img_bgr, cfg.test.img_scale, cfg.test.ms_ratios, cfg.test.ms_flip, cfg.data
    )
    total: torch.Tensor | None = None
    for view, flipped in views:
        same_as_ss = not flipped and view.shape == ss_view.shape and torch.equal(view, ss_view)
        probs = probs_ss if same_as_ss else run(view, flipped)
        total = probs.clone() if total is None else total.add_(probs)
    assert total is not None  # test_views returns at least one view
    return probs_ss, total / len(views)
