"""RegNetX-200MF for CIFAR: 2,321,946 parameters (10 classes, zoo-reference.md).

Port of ``RegNetX_200MF()`` from kuangliu/pytorch-cifar (MIT licence): a 3x3 stride-1 stem to 64
channels, four stages of residual bottleneck blocks (1x1, grouped 3x3, 1x1, each with BN; projection
shortcut when the shape changes), global average pool and a linear head.
"""
from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation

from ..registry import register_model


class Block(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int,
                 bottleneck_ratio: float, se_ratio: float):
        super().__init__()
        w_b = int(round(w_out * bottleneck_ratio))
        self.conv1 = nn.Conv2d(w_in, w_b, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w_b)
        self.conv2 = nn.Conv2d(w_b, w_b, kernel_size=3, stride=stride, padding=1,
                               groups=w_b // group_width, bias=False)
        self.bn2 = nn.BatchNorm2d(w_b)
        self.se = SqueezeExcitation(w_b, int(round(w_in * se_ratio))) if se_ratio > 0 else None
        self.conv3 = nn.Conv2d(w_b, w_out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or w_in != w_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(w_in, w_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(w_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        if self.se is not None:
            out = self.se(out)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class RegNet(nn.Module):
    def __init__(self, depths: Sequence[int], widths: Sequence[int], strides: Sequence[int],
                 group_width: int, bottleneck_ratio: float, se_ratio: float, num_classes: int,
                 in_channels: int, stem: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        c_in = stem
        for i, (depth, width, stride) in enumerate(zip(depths, widths, strides), start=1):
            blocks = []
            for j in range(depth):
                blocks.append(Block(c_in, width, stride if j == 0 else 1, group_width,
                                    bottleneck_ratio, se_ratio))
                c_in = width
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _regnet(*, num_classes: int, in_channels: int, image_size: int, **cfg) -> nn.Module:
    model = RegNet(**cfg, num_classes=num_classes, in_channels=in_channels)
    model.input_shape = (in_channels, image_size, image_size)
    return model


@register_model
def regnet_x_200mf(*, num_classes: int = 10, in_channels: int = 3,
                   image_size: int = 32) -> nn.Module:
    """RegNetX-200MF as kuangliu/pytorch-cifar builds it."""
    model_args = dict(depths=(1, 1, 4, 7), widths=(24, 56, 152, 368), strides=(1, 1, 2, 2),
                      group_width=8, bottleneck_ratio=1, se_ratio=0)
    return _regnet(**model_args, num_classes=num_classes, in_channels=in_channels,
                   image_size=image_size)
