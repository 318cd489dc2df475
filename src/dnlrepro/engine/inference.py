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
* slide windows larger than a view (the 769 configs at ratios 0.5 / 0.75): ``test.small_window``
  picks mmseg's ``unpadded`` (>= PR #133) or ``pad`` (v0.5.0) behaviour (§5.2).
  :func:`infer_image_modes` computes the ms+flip result under both in one pass: only the views
  that have such windows run twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnlrepro.core.config import Config

# 1.0 is the single-scale view inside the ms+flip set (§3.4).
SINGLE_SCALE = (1.0,)
# test.small_window values (§5.2): mmseg >= PR #133 / v0.5.0.
SMALL_WINDOW_MODES = ("unpadded", "pad")


def other_small_window(mode: str) -> str:
    """The small-window mode that is not ``mode``."""
    if mode not in SMALL_WINDOW_MODES:
        raise ValueError(f"test.small_window must be one of {SMALL_WINDOW_MODES}, got {mode!r}")
    return SMALL_WINDOW_MODES[1 - SMALL_WINDOW_MODES.index(mode)]


def has_small_windows(cfg: Config, view_hw: Sequence[int]) -> bool:
    """True when slide inference on a view of ``view_hw`` = (h, w) meets windows smaller than
    ``test.crop_size``, i.e. when ``test.small_window`` changes its result (§5.2)."""
    crop = cfg.test.crop_size
    if cfg.test.mode != "slide" or crop is None:
        return False
    return int(view_hw[0]) < crop[0] or int(view_hw[1]) < crop[1]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside a DDP / DataParallel wrapper (``inference`` lives there)."""
    return model.module if hasattr(model, "module") else model


def load_model(
    cfg: Config, checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """Build the segmentor, load a local checkpoint strictly, move it to ``device`` in eval mode.

    URLs are fetched by the commands before they get here (:mod:`dnlrepro.tools.checkpoints`).

    Returns:
        ``(model, meta, local_checkpoint_path)``.

    Raises:
        FileNotFoundError: missing checkpoint. ``CheckpointError``: an unreadable or unsafe file.
        ``ValueError``/``RuntimeError`` from :func:`dnlrepro.models.load_checkpoint` when keys or
        shapes do not match the config.
    """
    from dnlrepro import models
    from dnlrepro.engine.precision import apply_tf32

    # Every inference entry point (evaluate, predict, benchmark) loads here: the config's TF32
    # setting is in force before the model runs (§5.7).
    apply_tf32(cfg)
    model = models.build_segmentor(cfg)
    meta = models.load_checkpoint(model, checkpoint)
    # Evaluation never needs BN statistics synchronised; plain BN avoids any collective.
    model = models.revert_sync_batchnorm(model)
    model.to(device).eval()
    return model, meta, Path(checkpoint)


def checkpoint_label(checkpoint: str | Path) -> str:
    """How output JSONs name a checkpoint: a local file relative to the workspace root when it
    lies inside (results are committed; a machine's absolute path must not end up in them), else
    as given (a URL, or a file elsewhere: absolute)."""
    from dnlrepro.core import workspace

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
        cfg: the resolved config (test scale, ratios, flip, normalisation, small-window mode).
        ms_flip: also compute the mean softmax of the ms+flip views (§5.3).
        device: where the network runs; default: the model's device.

    Returns:
        ``(probs_ss, probs_ms)``: [1, C, H0, W0] tensors on ``device``; ``probs_ms`` is None
        unless ``ms_flip``.
    """
    mode = cfg.test.small_window
    probs_ss, probs_ms = infer_image_modes(model, img_bgr, cfg, ms_flip, device, (mode,))
    return probs_ss, probs_ms.get(mode)


def infer_image_modes(
    model: torch.nn.Module,
    img_bgr: np.ndarray,
    cfg: Config,
    ms_flip: bool,
    device: torch.device | str | None,
    small_windows: Sequence[str],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Like :func:`infer_image`, with the ms+flip result under each of ``small_windows``.

    The single-scale result uses ``cfg.test.small_window``. A view without windows smaller than
    the crop (:func:`has_small_windows`) gives the same probabilities in every mode and runs
    once; the others run once per mode.

    Returns:
        ``(probs_ss, {mode: probs_ms})``; the dict is empty unless ``ms_flip``.
    """
    from dnlrepro.data import transforms

    net = unwrap(model)
    if device is None:
        device = next(net.parameters()).device
    ori_shape = tuple(img_bgr.shape[:2])  # (H0, W0)
    own = cfg.test.small_window

    def run(view: torch.Tensor, flipped: bool, mode: str) -> torch.Tensor:
        # [3, h, w] -> [1, C, H0, W0] softmax; the model flips a flipped view's output back.
        img = view.unsqueeze(0).to(device)
        if mode == own:  # the config's own mode: the model's plain call (its cfg.test)
            return net.inference(img, ori_shape, flip=flipped)
        return net.inference(img, ori_shape, flip=flipped, small_window=mode)

    ((ss_view, _),) = transforms.test_views(
        img_bgr, cfg.test.img_scale, SINGLE_SCALE, False, cfg.data
    )
    probs_ss = run(ss_view, False, own)
    if not ms_flip:
        return probs_ss, {}
    views = transforms.test_views(
        img_bgr, cfg.test.img_scale, cfg.test.ms_ratios, cfg.test.ms_flip, cfg.data
    )
    totals: dict[str, torch.Tensor] = {}
    for view, flipped in views:
        same_as_ss = not flipped and view.shape == ss_view.shape and torch.equal(view, ss_view)
        if has_small_windows(cfg, view.shape[-2:]):
            reuse = same_as_ss  # the single-scale view: its own-mode result is probs_ss
            per_mode = {
                m: probs_ss if reuse and m == own else run(view, flipped, m) for m in small_windows
            }
        else:
            shared = probs_ss if same_as_ss else run(view, flipped, own)
            per_mode = dict.fromkeys(small_windows, shared)
        for m, probs in per_mode.items():
            totals[m] = probs.clone() if m not in totals else totals[m].add_(probs)
    return probs_ss, {m: total / len(views) for m, total in totals.items()}
