"""EncoderDecoder: backbone -> DNLHead (+ FCN auxiliary head), mmseg 0.x train/test semantics.

§ numbers refer to docs/reference.md.

docs/reference.md §1.1 (structure, post-processing), §1.6 (loss), §5.2 (whole / slide inference),
§5.3 (ms+flip). Sizes are (h, w). All logits are resized with bilinear interpolation and the
config's ``align_corners`` (True only for the 769x769 configs, §4.3).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dnlrepro.core.config import Config
from dnlrepro.models.heads import DNLHead, FCNHead
from dnlrepro.models.resnet import ResNetV1c, build_backbone

logger = logging.getLogger(__name__)


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of [N, C, h, w] logits to ``size`` = (H, W), as mmseg's ``resize``."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x  # interpolate to the same size is the identity for both align_corners modes
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def seg_loss(
    logits: torch.Tensor, label: torch.Tensor, *, ignore_index: int, loss_weight: float
) -> torch.Tensor:
    """mmseg 0.x CrossEntropyLoss: per-pixel CE, then the MEAN OVER ALL N*H*W PIXELS (§1.6).

    Ignored pixels contribute 0 to the sum but still count in the denominator (mmseg's
    ``avg_non_ignore=False``, issue #886), so this is smaller than PyTorch's ``reduction='mean'``
    whenever labels contain ``ignore_index``. logits [N, C, H, W], label [N, H, W] -> scalar.
    """
    loss = F.cross_entropy(logits, label, reduction="none", ignore_index=ignore_index)
    return loss_weight * loss.mean()


def seg_accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent over ``label.numel()`` (ignored pixels included), v0.6 (§1.6)."""
    pred = logits.argmax(dim=1)  # [N, H, W]
    correct = (pred == label).sum().float()
    return correct * (100.0 / label.numel())


class EncoderDecoder(nn.Module):
    """The DNLNet segmentor. Build it with :func:`dnlrepro.models.build_segmentor`.

    Inference methods run under ``torch.no_grad``; call ``model.eval()`` first (BN statistics,
    dropout), as mmseg's test scripts do.
    """

    def __init__(self, cfg: Config, *, attention: str = "sdpa") -> None:
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.num_classes = m.num_classes
        self.align_corners = m.align_corners
        self.ignore_index = m.ignore_index
        self.norm = m.norm
        self.backbone: ResNetV1c = build_backbone(m.backbone, m.norm)
        d = m.decode_head
        self.decode_head = DNLHead(
            d.in_channels,
            d.channels,
            m.num_classes,
            in_index=d.in_index,
            dropout_ratio=d.dropout_ratio,
            reduction=d.reduction,
            use_scale=d.use_scale,
            temperature=d.temperature,
            mode=d.mode,
            norm=m.norm,
            attention=attention,
        )
        a = m.auxiliary_head
        self.auxiliary_head = FCNHead(
            a.in_channels,
            a.channels,
            m.num_classes,
            in_index=a.in_index,
            num_convs=a.num_convs,
            concat_input=a.concat_input,
            dropout_ratio=a.dropout_ratio,
            norm=m.norm,
        )
        self.loss_weights = {"decode": d.loss_weight, "aux": a.loss_weight}

    # -- shared -----------------------------------------------------------------------------
    @property
    def attention(self) -> str:
        """Pairwise-attention implementation of the DNL block: "sdpa" or "naive"."""
        return self.decode_head.dnl_block.attention

    @attention.setter
    def attention(self, value: str) -> None:
        self.decode_head.dnl_block.attention = value

    def _check_img(self, img: torch.Tensor) -> None:
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3:
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"expected a normalised image batch [N, 3, H, W], got {got}")
        if not img.is_floating_point():
            raise ValueError(f"expected a float image tensor, got dtype {img.dtype}; normalise it")

    def extract_feat(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The 4 backbone stage outputs (strides 4, 8, 8, 8)."""
        self._check_img(img)
        return self.backbone(img)

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """Decode-head logits resized to the input size: [N, 3, H, W] -> [N, C, H, W]."""
        logits = self.decode_head(self.extract_feat(img))  # [N, C, H/8, W/8]
        return resize(logits, img.shape[-2:], self.align_corners)

    def forward(
        self, img: torch.Tensor, gt: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """``forward_train(img, gt)`` when ``gt`` is given (so DDP hooks run), else logits."""
        if gt is not None:
            return self.forward_train(img, gt)
        return self.encode_decode(img)

    # -- training ---------------------------------------------------------------------------
    def forward_train(self, img: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of both heads (already multiplied by their loss weights) and accuracies.

        Args:
            img: [N, 3, H, W] normalised float images.
            gt: LongTensor labels [N, 1, H, W] or [N, H, W] with ``ignore_index`` (255).

        Returns:
            ``{'decode.loss_seg', 'decode.acc_seg', 'aux.loss_seg', 'aux.acc_seg'}``; the total
            loss is the sum of the ``*loss*`` entries (mmseg ``_parse_losses``).
        """
        if gt.dim() == 4:
            if gt.shape[1] != 1:
                raise ValueError(f"gt must be [N, 1, H, W] or [N, H, W], got {tuple(gt.shape)}")
            gt = gt[:, 0]
        if gt.dim() != 3 or gt.shape[0] != img.shape[0]:
            raise ValueError(
                f"gt must be [N, 1, H, W] or [N, H, W] with N = {img.shape[0]}, "
                f"got {tuple(gt.shape)}"
            )
        if gt.dtype != torch.long:
            gt = gt.long()
        feats = self.extract_feat(img)
        losses: dict[str, torch.Tensor] = {}
        for name, head in (("decode", self.decode_head), ("aux", self.auxiliary_head)):
            # Each head upsamples its stride-8 logits to the label size before the loss (§1.1).
            logits = resize(head(feats), gt.shape[-2:], self.align_corners)  # [N, C, H, W]
            losses[f"{name}.loss_seg"] = seg_loss(
                logits, gt, ignore_index=self.ignore_index, loss_weight=self.loss_weights[name]
            )
            with torch.no_grad():
                losses[f"{name}.acc_seg"] = seg_accuracy(logits, gt)
        return losses

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def whole_inference(
        self, img: torch.Tensor, ori_shape: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Logits of the whole image, resized to the input, then to ``ori_shape`` (§5.2)."""
        logits = self.encode_decode(img)  # [N, C, H, W]
        if ori_shape is not None:
            logits = resize(logits, ori_shape[:2], self.align_corners)  # [N, C, h0, w0]
        return logits

    @torch.no_grad()
    def slide_inference(
        self,
        img: torch.Tensor,
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        ori_shape: Sequence[int] | None = None,
        small_window: str | None = None,
    ) -> torch.Tensor:
        """Average of overlapping window logits (§5.2); (h, w) crop/stride default to cfg.test.

        Windows: ``h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1`` (same for w); the
        last window is pushed back to touch the border. A window larger than the image (ms+flip at
        ratios 0.5 / 0.75 of the 769 configs) is handled per ``small_window`` (default
        ``cfg.test.small_window``): ``"unpadded"`` feeds the smaller patch as it is (mmseg >= PR
        #133); ``"pad"`` zero-pads it at the bottom/right to the crop size (0 = the mean colour
        after normalisation) and keeps the patch's part of the logits (v0.5.0). Which of the two
        produced the published 769 ms+flip numbers is unknown (§5.2, §9 item 2).
        """
        crop_size = crop_size or self.cfg.test.crop_size
        stride = stride or self.cfg.test.stride
        small_window = small_window or self.cfg.test.small_window
        if small_window not in ("unpadded", "pad"):
            raise ValueError(f"test.small_window must be 'unpadded' or 'pad', got {small_window!r}")
        if crop_size is None or stride is None:
            raise ValueError(
                "slide inference needs test.crop_size and test.stride (h, w) in the config "
                f"{self.cfg.name!r}; set them or use test.mode: whole"
            )
        h_crop, w_crop = int(crop_size[0]), int(crop_size[1])
        h_stride, w_stride = int(stride[0]), int(stride[1])
        if min(h_crop, w_crop, h_stride, w_stride) <= 0:
            raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
        n, _, h_img, w_img = img.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = img.new_zeros((n, self.num_classes, h_img, w_img))
        count = img.new_zeros((n, 1, h_img, w_img))
        for hi in range(h_grids):
            for wi in range(w_grids):
                y2 = min(hi * h_stride + h_crop, h_img)
                x2 = min(wi * w_stride + w_crop, w_img)
                y1 = max(y2 - h_crop, 0)
                x1 = max(x2 - w_crop, 0)
                crop = img[:, :, y1:y2, x1:x2]
                if small_window == "pad" and (y2 - y1 < h_crop or x2 - x1 < w_crop):
                    padded = crop.new_zeros((n, crop.shape[1], h_crop, w_crop))
                    padded[:, :, : y2 - y1, : x2 - x1] = crop
                    crop_logits = self.encode_decode(padded)[:, :, : y2 - y1, : x2 - x1]
                else:
                    crop_logits = self.encode_decode(crop)  # [N, C, y2-y1, x2-x1]
                preds[:, :, y1:y2, x1:x2] += crop_logits
                count[:, :, y1:y2, x1:x2] += 1
        logger.debug("slide inference: %dx%d windows on %dx%d", h_grids, w_grids, h_img, w_img)
        preds = preds / count  # every pixel is covered at least once by construction
        if ori_shape is not None:
            preds = resize(preds, ori_shape[:2], self.align_corners)
        return preds

    @torch.no_grad()
    def inference(
        self,
        img: torch.Tensor,
        ori_shape: Sequence[int],
        flip: bool = False,
        small_window: str | None = None,
    ) -> torch.Tensor:
        """Softmax probabilities [N, C, h0, w0] at ``ori_shape`` with cfg.test.mode (§1.1, §5.2).

        ``img`` is the (already flipped, when ``flip``) network input; a flipped view's
        probabilities are flipped back horizontally so all views align with the original image.
        ``small_window`` overrides ``cfg.test.small_window`` for slide mode (see
        :meth:`slide_inference`).
        """
        mode = self.cfg.test.mode
        if mode == "slide":
            logits = self.slide_inference(img, ori_shape=ori_shape, small_window=small_window)
        elif mode == "whole":
            logits = self.whole_inference(img, ori_shape=ori_shape)
        else:  # the config loader restricts the choices; keep the message for hand-made configs
            raise ValueError(f"test.mode must be 'whole' or 'slide', got {mode!r}")
        probs = logits.softmax(dim=1)
        if flip:
            probs = probs.flip(dims=(3,))
        return probs

    @torch.no_grad()
    def aug_test(
        self, imgs: Sequence[torch.Tensor], flips: Sequence[bool], ori_shape: Sequence[int]
    ) -> torch.Tensor:
        """Mean of the views' softmax probabilities at ``ori_shape`` (ms+flip, §5.3)."""
        if len(imgs) == 0 or len(imgs) != len(flips):
            raise ValueError(
                f"aug_test needs one flip flag per view, got {len(imgs)} images and "
                f"{len(flips)} flags"
            )
        probs = self.inference(imgs[0], ori_shape, flips[0])
        for img, flip in zip(imgs[1:], flips[1:], strict=True):
            probs += self.inference(img, ori_shape, flip)
        return probs / len(imgs)

    @torch.no_grad()
    def simple_test(self, img: torch.Tensor, ori_shape: Sequence[int]) -> torch.Tensor:
        """Label map [N, h0, w0] (argmax of the single-scale probabilities)."""
        return self.inference(img, ori_shape).argmax(dim=1)
