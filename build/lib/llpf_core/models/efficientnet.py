"""EfficientNet-B0 for CIFAR: 3,599,686 parameters upstream, 3,598,598 here (10 classes).

Port of ``EfficientNetB0()`` from kuangliu/pytorch-cifar (MIT licence): a 3x3 stride-1 stem, MBConv
blocks (1x1 expansion, depthwise conv, squeeze-excitation with swish, 1x1 projection; residual when
stride 1 and widths match), global average pool, dropout 0.2 and a linear head.

Two deliberate differences from upstream, neither changing what the network computes:
- Upstream builds the 1x1 expansion conv+BN even in the expansion-1 first block, where its forward
  skips them: 1,088 parameters and 6 state-dict entries that never run. They are left out, so the
  model has 3,598,598 parameters (within 1% of zoo-reference.md's 3,599,686) and 354 state-dict
  entries instead of 360.
- Upstream configures drop-connect 0.2 with a linear per-block ramp, but its block counter never
  advances, so every block gets rate 0 and drop-connect never fires. ``efficientnet_b0`` keeps that
  behaviour (``drop_connect_rate=0.0``); the builder implements the intended ramp for a rate > 0.
"""
from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation, StochasticDepth

from ..registry import register_model


class MBConv(nn.Module):
    """Expansion + depthwise + squeeze-excitation + pointwise projection, swish activations."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, se_ratio: float, drop_rate: float):
        super().__init__()
        channels = expand_ratio * in_channels
        self.conv1 = self.bn1 = None  # no expansion conv when the ratio is 1
        if expand_ratio != 1:
            self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, stride=stride,
                               padding=(kernel_size - 1) // 2, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # upstream sizes the squeeze from the block's *input* width, not the expanded width
        self.se = SqueezeExcitation(channels, int(in_channels * se_ratio), activation=nn.SiLU)
        self.conv3 = nn.Conv2d(channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_connect = StochasticDepth(drop_rate, "row") if self.has_skip else None

    def forward(self, x):
        out = x if self.conv1 is None else F.silu(self.bn1(self.conv1(x)))
        out = F.silu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.se(out)))
        if self.has_skip:
            out = self.drop_connect(out) + x
        return out


class EfficientNet(nn.Module):
    def __init__(self, stages: Sequence[tuple[int, int, int, int, int]], num_classes: int,
                 in_channels: int, dropout: float, drop_connect_rate: float, stem: int = 32):
        super().__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        total = sum(stage[2] for stage in stages)
        blocks, c_in = [], stem
        for expansion, c_out, n, kernel_size, stride in stages:
            for i in range(n):
                rate = drop_connect_rate * len(blocks) / total
                blocks.append(MBConv(c_in, c_out, kernel_size, stride if i == 0 else 1, expansion,
                                     se_ratio=0.25, drop_rate=rate))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = F.silu(self.bn1(self.conv1(x)))
        out = F.adaptive_avg_pool2d(self.layers(out), 1).flatten(1)
        out = F.dropout(out, p=self.dropout, training=self.training)
        return self.linear(out)


def _efficientnet(stages, *, dropout: float, drop_connect_rate: float, num_classes: int,
                  in_channels: int, image_size: int) -> nn.Module:
    model = EfficientNet(stages, num_classes, in_channels, dropout, drop_connect_rate)
    model.input_shape = (in_channels, image_size, image_size)
    return model


@register_model
def efficientnet_b0(*, num_classes: int = 10, in_channels: int = 3,
                    image_size: int = 32) -> nn.Module:
    """EfficientNet-B0 as kuangliu/pytorch-cifar builds it (drop-connect effectively off)."""
    # (expansion, out_channels, num_blocks, kernel_size, stride) per stage
    stages = [(1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
              (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1)]
    return _efficientnet(stages, dropout=0.2, drop_connect_rate=0.0, num_classes=num_classes,
                         in_channels=in_channels, image_size=image_size)
