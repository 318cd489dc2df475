"""Decode heads: FCNHead (auxiliary, §1.5) and DNLHead (§1.2), mmseg 0.x layout and keys.

§ numbers refer to docs/reference.md.

Both heads take the list of backbone stage outputs, pick ``in_index`` and return logits at
stride 8: [N, num_classes, H/8, W/8]. The loss is computed by the segmentor (§1.6).
"""

from __future__ import annotations

import torch
from torch import nn

from dnlrepro.models.dnl_block import DisentangledNonLocal2d
from dnlrepro.models.layers import ConvModule, normal_init


class BaseDecodeHead(nn.Module):
    """``cls_seg`` part shared by all mmseg heads: Dropout2d then a 1x1 ``conv_seg`` (bias)."""

    def __init__(
        self, channels: int, num_classes: int, *, in_index: int, dropout_ratio: float
    ) -> None:
        super().__init__()
        self.in_index = in_index
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        normal_init(self.conv_seg, std=0.01)  # §1.4

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class FCNHead(BaseDecodeHead):
    """``num_convs`` 3x3 ConvModules (+ optional concat with the input), then ``cls_seg``."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        in_index: int,
        num_convs: int = 1,
        concat_input: bool = False,
        dropout_ratio: float = 0.1,
        norm: str = "BN",
    ) -> None:
        super().__init__(channels, num_classes, in_index=in_index, dropout_ratio=dropout_ratio)
        if num_convs < 1:
            raise ValueError(f"FCNHead needs num_convs >= 1, got {num_convs}")
        self.concat_input = concat_input
        convs = [ConvModule(in_channels, channels, 3, padding=1, norm=norm)]
        for _ in range(1, num_convs):
            convs.append(ConvModule(channels, channels, 3, padding=1, norm=norm))
        self.convs = nn.Sequential(*convs)
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, 3, padding=1, norm=norm)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = inputs[self.in_index]  # aux: layer3 [N, 1024, H/8, W/8]
        out = self.convs(x)  # [N, channels, H/8, W/8]
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)  # [N, num_classes, H/8, W/8]


class DNLHead(FCNHead):
    """FCNHead with ``num_convs=2``, ``concat_input=True`` and a DNL block between the convs.

    Forward (§1.2), x = layer4 [N, 2048, H/8, W/8]:
    convs.0 (2048->512) -> dnl_block -> convs.1 (512->512) -> conv_cat(cat[x, out]) (2560->512)
    -> Dropout2d -> conv_seg.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        in_index: int,
        dropout_ratio: float = 0.1,
        reduction: int = 2,
        use_scale: bool = True,
        temperature: float = 0.05,
        mode: str = "embedded_gaussian",
        norm: str = "BN",
        attention: str = "sdpa",
    ) -> None:
        super().__init__(
            in_channels,
            channels,
            num_classes,
            in_index=in_index,
            num_convs=2,
            concat_input=True,
            dropout_ratio=dropout_ratio,
            norm=norm,
        )
        self.dnl_block = DisentangledNonLocal2d(
            channels,
            reduction=reduction,
            use_scale=use_scale,
            temperature=temperature,
            norm=norm,
            mode=mode,
            attention=attention,
        )

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = inputs[self.in_index]  # [N, 2048, H/8, W/8]
        out = self.convs[0](x)  # [N, 512, H/8, W/8]
        out = self.dnl_block(out)  # [N, 512, H/8, W/8]
        out = self.convs[1](out)  # [N, 512, H/8, W/8]
        out = self.conv_cat(torch.cat([x, out], dim=1))  # [N, 2560 -> 512, H/8, W/8]
        return self.cls_seg(out)  # [N, num_classes, H/8, W/8]
