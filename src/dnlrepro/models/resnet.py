"""ResNetV1c with dilated stages (output stride 8), as mmseg 0.x builds it for the D8 models.

§ numbers refer to docs/reference.md.

docs/reference.md §2.1 (mmseg v0.6 ``models/backbones/resnet.py`` and
``models/utils/res_layer.py``):

* deep stem 3x3 convs 3->32 (stride 2) -> 32 -> 64, each + BN + ReLU, as one ``nn.Sequential``
  called ``stem`` (indices 0..8, ReLUs at 2/5/8 hold no keys, §1.7), then maxpool 3x3/2;
* "pytorch"-style Bottlenecks (stride on the 3x3 conv2, padding = dilation), expansion 4;
* D8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4) with ``contract_dilation`` (the first block of
  a dilated stage uses dilation / 2), so layer3 dilations are [1, 2, 2, ...], layer4 [2, 4, 4].

The four stage outputs are returned: [N,256,H/4,W/4], [N,512,H/8,W/8], [N,1024,H/8,W/8],
[N,2048,H/8,W/8] (each stride-2 op maps s to floor((s - 1) / 2) + 1, e.g. 769 -> 97).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from dnlrepro.core.config import BackboneConfig
from dnlrepro.models.layers import build_norm, kaiming_init

logger = logging.getLogger(__name__)

# Blocks per stage (§2.1).
ARCH_SETTINGS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1, + identity; keys conv1/bn1/.../downsample.{0,1}."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = build_norm(norm, width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = build_norm(norm, width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = build_norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_res_layer(
    inplanes: int,
    planes: int,
    num_blocks: int,
    *,
    stride: int,
    dilation: int,
    contract_dilation: bool,
    norm: str,
) -> nn.Sequential:
    """One stage, as mmseg's ``ResLayer`` (multi_grid=None, avg_down=False)."""
    out_planes = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        # Every stage's first block changes the width, so every stage has a downsample (§2.1).
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out_planes, 1, stride=stride, bias=False),
            build_norm(norm, out_planes),
        )
    first_dilation = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
    blocks = [
        Bottleneck(
            inplanes,
            planes,
            stride=stride,
            dilation=first_dilation,
            downsample=downsample,
            norm=norm,
        )
    ]
    blocks += [
        Bottleneck(out_planes, planes, stride=1, dilation=dilation, norm=norm)
        for _ in range(1, num_blocks)
    ]
    return nn.Sequential(*blocks)


class ResNetV1c(nn.Module):
    """ResNetV1c backbone (deep stem, no avg-down); returns the four stage outputs."""

    def __init__(
        self,
        depth: int = 50,
        *,
        strides: tuple[int, ...] = (1, 2, 1, 1),
        dilations: tuple[int, ...] = (1, 1, 2, 4),
        contract_dilation: bool = True,
        norm: str = "BN",
        stem_channels: int = 64,
        base_channels: int = 64,
    ) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(
                f"unsupported ResNet depth {depth} (config key model.backbone.depth); "
                f"choose one of {sorted(ARCH_SETTINGS)}"
            )
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError(
                f"model.backbone.strides and .dilations need 4 values each, got {strides} and "
                f"{dilations}"
            )
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),  # [N,32,H/2,W/2]
            build_norm(norm, half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride=1, padding=1, bias=False),
            build_norm(norm, half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, stride=1, padding=1, bias=False),  # [N,64,H/2,W/2]
            build_norm(norm, stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # [N,64,H/4,W/4]
        inplanes = stem_channels
        self.stage_names: list[str] = []
        for i, num_blocks in enumerate(ARCH_SETTINGS[depth]):
            planes = base_channels * 2**i
            layer = make_res_layer(
                inplanes,
                planes,
                num_blocks,
                stride=strides[i],
                dilation=dilations[i],
                contract_dilation=contract_dilation,
                norm=norm,
            )
            name = f"layer{i + 1}"
            self.add_module(name, layer)
            self.stage_names.append(name)
            inplanes = planes * Bottleneck.expansion
        self.init_weights()

    def init_weights(self) -> None:
        """Random init as mmseg's ``ResNet.init_weights(pretrained=None)``.

        kaiming fan_out for every conv, BN weight 1 / bias 0, then ``zero_init_residual`` (mmseg's
        default True, §2.1): each Bottleneck's last BN starts at 0. Real runs overwrite all of this
        with the ImageNet ``resnet*_v1c`` weights (``load_pretrained_backbone``, §2.2).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kaiming_init(m)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
                nn.init.zeros_(m.bn3.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs  # strides 4, 8, 8, 8; channels 256, 512, 1024, 2048


def build_backbone(cfg_backbone: BackboneConfig, norm: str) -> ResNetV1c:
    """ResNetV1c from ``cfg.model.backbone`` (``depth``, ``strides``, ``dilations``, ...)."""
    return ResNetV1c(
        cfg_backbone.depth,
        strides=tuple(cfg_backbone.strides),
        dilations=tuple(cfg_backbone.dilations),
        contract_dilation=cfg_backbone.contract_dilation,
        norm=norm,
    )
