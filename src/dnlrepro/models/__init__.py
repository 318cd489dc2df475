"""DNLNet in plain PyTorch: ResNetV1c-D8 + DNLHead + FCN auxiliary head (mmseg 0.x layout).

§ numbers refer to docs/reference.md.

Public API (docs/architecture.md, "Models"):

* :func:`build_segmentor` -- the random-initialised :class:`EncoderDecoder` for a config (§1.4);
* :func:`load_checkpoint`, :func:`save_checkpoint`, :func:`read_checkpoint` -- mmseg-format I/O
  of local files, never running code (:class:`CheckpointError` refuses unsafe files);
* :func:`load_pretrained_backbone` -- ImageNet ``resnet*_v1c`` (§2.2);
* :func:`convert_sync_batchnorm`, :func:`revert_sync_batchnorm`;
* :func:`attention_impl` -- run the DNL blocks with SDPA or mmseg's explicit attention (§5.6).
"""

from __future__ import annotations

import logging

from dnlrepro.core.config import Config
from dnlrepro.models.checkpoint import (
    CheckpointError,
    convert_sync_batchnorm,
    load_checkpoint,
    load_pretrained_backbone,
    read_checkpoint,
    revert_sync_batchnorm,
    save_checkpoint,
)
from dnlrepro.models.dnl_block import MMSEG_ATTENTION, DisentangledNonLocal2d, attention_impl
from dnlrepro.models.heads import DNLHead, FCNHead
from dnlrepro.models.resnet import ResNetV1c
from dnlrepro.models.segmentor import EncoderDecoder

logger = logging.getLogger(__name__)

__all__ = [
    "MMSEG_ATTENTION",
    "CheckpointError",
    "DNLHead",
    "DisentangledNonLocal2d",
    "EncoderDecoder",
    "FCNHead",
    "ResNetV1c",
    "attention_impl",
    "build_segmentor",
    "convert_sync_batchnorm",
    "load_checkpoint",
    "load_pretrained_backbone",
    "read_checkpoint",
    "revert_sync_batchnorm",
    "save_checkpoint",
]


def build_segmentor(cfg: Config, *, attention: str = "sdpa") -> EncoderDecoder:
    """The DNLNet EncoderDecoder for ``cfg`` with mmseg's random init (no download).

    Args:
        cfg: a loaded :class:`dnlrepro.core.config.Config` (``cfg.model`` and ``cfg.test``
            are used).
        attention: DNL pairwise implementation, "sdpa" (default, bounded memory) or "naive".

    The ImageNet backbone is NOT loaded here; call :func:`load_pretrained_backbone` with the
    local file of ``cfg.model.backbone.pretrained`` (the trainer does), or :func:`load_checkpoint`.
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"build_segmentor expects a dnlrepro Config, got {type(cfg).__name__}")
    model = EncoderDecoder(cfg, attention=attention)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "built %s: ResNetV1c-%d D8 + DNLHead, %d classes, %s parameters",
        cfg.name,
        cfg.model.backbone.depth,
        cfg.model.num_classes,
        f"{n_params:,}",
    )
    return model
