"""Small building blocks shared by the backbone, the heads and the DNL block.

§ numbers refer to docs/reference.md.

``ConvModule`` mirrors the parts of mmcv's ``ConvModule`` that DNLNet uses (conv -> norm -> act)
with the same child names (``conv``, ``bn``), so the published mmseg state dicts load unchanged
(docs/reference.md §1.7: "A ConvModule's norm sub-module is called ``bn``").
"""

from __future__ import annotations

import torch
from torch import nn

NORMS: dict[str, type[nn.Module]] = {
    # SyncBN is built as BatchNorm2d and converted with ``convert_sync_batchnorm`` only once a
    # process group exists (§8: SyncBN without a process group raises).
    "SyncBN": nn.BatchNorm2d,
    "BN": nn.BatchNorm2d,
}


def build_norm(norm: str, num_features: int) -> nn.Module:
    """BatchNorm2d for ``norm`` in ``NORMS``; a clear error for anything else."""
    if norm not in NORMS:
        raise ValueError(
            f"unknown norm {norm!r} (config key model.norm); choose one of {', '.join(NORMS)}"
        )
    return NORMS[norm](num_features)


def kaiming_init(conv: nn.Conv2d) -> None:
    """mmcv ``kaiming_init`` defaults: normal, mode='fan_out', relu gain, bias 0 (§1.4)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def normal_init(conv: nn.Conv2d, std: float = 0.01) -> None:
    """mmcv ``normal_init``: weight ~ N(0, std), bias 0 (§1.4)."""
    nn.init.normal_(conv.weight, mean=0.0, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvModule(nn.Module):
    """conv (-> BN) (-> ReLU), named like mmcv's ConvModule.

    ``bias`` follows mmcv's ``bias='auto'``: a conv followed by a norm has no bias. The weights
    are initialised as mmcv's ``ConvModule.init_weights`` does (kaiming fan_out, BN 1/0, §1.4);
    callers re-initialise where mmseg does (g/theta/phi, the conv_out BN).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        dilation: int = 1,
        norm: str | None = None,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            bias=norm is None,
        )
        # Only create the attributes that hold state so the state_dict keys are exactly mmcv's.
        if norm is not None:
            self.bn = build_norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True) if act else None
        kaiming_init(self.conv)
        if norm is not None:
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    @property
    def with_norm(self) -> bool:
        return hasattr(self, "bn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x
