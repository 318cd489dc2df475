"""Disentangled Non-Local block (DNL), exactly as merged into mmseg 0.x.

§ numbers refer to docs/reference.md.

Paper: Minghao Yin, Zhuliang Yao, Yue Cao, Xiu Li, Zheng Zhang, Stephen Lin, Han Hu,
"Disentangled Non-Local Neural Networks", ECCV 2020, arXiv:2006.06668.
Reference code consulted (described in docs/reference.md, not copied): mmseg PR #37
(``mmseg/models/decode_heads/dnl_head.py``, merged 2020-09-07) on top of mmcv's ``NonLocal2d``.

docs/reference.md §1.3. With x: [N, C, H, W], P = H*W, C' = C / reduction:

* pairwise (whitened) term: softmax_j(((q_i - mu_q) . (k_j - mu_k)) / (sqrt(C') * T)) v_j, where
  q = theta(x), k = phi(x), v = g(x), mu_* the per-channel spatial means (key whitening cancels in
  the softmax over j but is kept for fidelity);
* unary term: sum_j softmax_j(conv_mask(x)_j) v_j, one C'-vector per image broadcast over P;
* output: x + conv_out(pairwise + unary) with conv_out = 1x1 conv (no bias) + BN.

The merged formula ``conv_out(y + unary)`` is used, not the PR-branch ``conv_out(y) +
conv_out(unary)`` variant (§1.8 item 7, §9 item 1).

Two numerically equivalent implementations of the pairwise term are kept:

* ``attention="sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention``, which never
  materialises the [N, P, P] matrix with the fused kernels, so whole-image Cityscapes inference
  (P = 32768, §5.3: 4 GiB per fp32 copy of the matrix) stays within a few GB;
* ``attention="naive"``: mmcv's explicit matmul -> scale -> softmax -> matmul, the reference.
  It holds the [N, P, P] matrix like mmseg's head (512 MiB per fp32 copy for a 2 x 512x1024
  training batch, P = 8192 per image), so its memory and speed are the ones comparable with
  mmseg's published Mem and fps columns (§5.6); ``dnlrepro benchmark`` measures both paths.

The implementation is picked at run time: ``block.attention = ...``, ``model.attention = ...``
on the segmentor, or :func:`attention_impl` for any module tree (DDP-wrapped included).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dnlrepro.models.layers import ConvModule, normal_init

ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "naive")
# The path whose memory and speed match mmseg's explicit attention (§5.6).
MMSEG_ATTENTION = "naive"


class DisentangledNonLocal2d(nn.Module):
    """DNL block; state-dict keys ``g/theta/phi.conv.*``, ``conv_out.{conv,bn}.*``, ``conv_mask.*``.

    Args:
        in_channels: C (512 in DNLHead).
        reduction: C' = C // reduction (2 -> 256).
        use_scale: divide the pairwise logits by sqrt(C').
        temperature: further divide them by T (0.05, the class default, §1.1).
        norm: norm of ``conv_out`` ("SyncBN" / "BN").
        attention: "sdpa" or "naive" (see the module docstring); can be changed later through
            the ``attention`` attribute.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        reduction: int = 2,
        use_scale: bool = True,
        temperature: float = 0.05,
        norm: str = "BN",
        mode: str = "embedded_gaussian",
        attention: str = "sdpa",
    ) -> None:
        super().__init__()
        if mode != "embedded_gaussian":
            raise ValueError(
                f"DNL mode {mode!r} (config key model.decode_head.mode) is not implemented; "
                "mmseg's DNLNet configs use 'embedded_gaussian'"
            )
        if temperature <= 0:
            raise ValueError(
                f"model.decode_head.temperature must be > 0, got {temperature} (mmseg uses 0.05)"
            )
        self.in_channels = in_channels
        self.inter_channels = in_channels // reduction
        self.use_scale = use_scale
        self.temperature = float(temperature)
        self.attention = attention
        c, ci = in_channels, self.inter_channels
        # mmcv NonLocal2d: g/theta/phi are ConvModules without norm or activation (bias=True).
        self.g = ConvModule(c, ci, 1, act=False)
        self.theta = ConvModule(c, ci, 1, act=False)
        self.phi = ConvModule(c, ci, 1, act=False)
        self.conv_out = ConvModule(ci, c, 1, norm=norm, act=False)
        self.conv_mask = nn.Conv2d(c, 1, kernel_size=1)  # PyTorch default init, never re-init
        self.init_weights()

    @property
    def attention(self) -> str:
        return self._attention

    @attention.setter
    def attention(self, value: str) -> None:
        if value not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {value!r}")
        self._attention = value

    @property
    def scale(self) -> float:
        """Factor applied to the pairwise logits: 1 / (sqrt(C') * T) = 1.25 for C'=256, T=0.05."""
        s = 1.0 / self.temperature
        if self.use_scale:
            s /= math.sqrt(self.inter_channels)
        return s

    def init_weights(self, std: float = 0.01) -> None:
        """mmcv ``NonLocal2d.init_weights(std=0.01, zeros_init=True)`` (§1.4).

        g/theta/phi ~ N(0, 0.01) with bias 0; conv_out keeps ConvModule's kaiming conv but its BN
        starts at weight 0 / bias 0, so the block is an identity at the start of training.
        """
        for m in (self.g, self.theta, self.phi):
            normal_init(m.conv, std)
        nn.init.zeros_(self.conv_out.bn.weight)
        nn.init.zeros_(self.conv_out.bn.bias)

    def pairwise(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) v for whitened q, k: [N, P, C'] each -> [N, P, C']."""
        if self.attention == "naive":
            # mmcv order: matmul, / sqrt(C'), / T, softmax over keys, matmul. [N, P, P] in memory.
            # In place like mmcv (matmul saves its inputs, not its output, so autograd allows it).
            weight = torch.matmul(query, key.transpose(1, 2))  # [N, P, P]
            if self.use_scale:
                weight /= self.inter_channels**0.5
            weight /= self.temperature
            weight = weight.softmax(dim=-1)
            return torch.matmul(weight, value)
        # SDPA wants a heads axis: [N, 1, P, C']. The fused (flash) kernels need a unit stride on
        # the channel axis; the transposed conv outputs would silently fall back to the math
        # kernel, which materialises [N, P, P] like the naive path.
        q, k, v = (t.contiguous().unsqueeze(1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return out.squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ci = self.inter_channels
        value = self.g(x).view(n, ci, h * w).transpose(1, 2)  # [N, P, C']
        query = self.theta(x).view(n, ci, h * w).transpose(1, 2)  # [N, P, C']
        key = self.phi(x).view(n, ci, h * w).transpose(1, 2)  # [N, P, C']
        # Whitening: subtract each channel's spatial mean (mu_q, mu_k in the paper).
        query = query - query.mean(dim=1, keepdim=True)
        key = key - key.mean(dim=1, keepdim=True)
        y = self.pairwise(query, key, value)  # [N, P, C']
        y = y.transpose(1, 2).reshape(n, ci, h, w)  # [N, C', H, W]
        # Unary term: one softmax over all positions of a 1-channel map (its bias cancels, §1.3).
        mask = self.conv_mask(x).view(n, 1, h * w).softmax(dim=-1)  # [N, 1, P]
        unary = torch.matmul(mask, value)  # [N, 1, C']
        unary = unary.transpose(1, 2).reshape(n, ci, 1, 1)  # broadcast over H, W
        return x + self.conv_out(y + unary)


@contextlib.contextmanager
def attention_impl(model: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Run every DNL block inside ``model`` with ``impl`` for the duration of the block.

    Raises:
        ValueError: ``impl`` is not one of :data:`ATTENTION_IMPLS`, or ``model`` holds no DNL block.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
    blocks = [m for m in model.modules() if isinstance(m, DisentangledNonLocal2d)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} holds no DisentangledNonLocal2d block")
    previous = [b.attention for b in blocks]
    for b in blocks:
        b.attention = impl
    try:
        yield model
    finally:
        for b, old in zip(blocks, previous, strict=True):
            b.attention = old
