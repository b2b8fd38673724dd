"""DenseNet-121 for CIFAR: 6,956,298 parameters (10 classes, zoo-reference.md).

Port of ``DenseNet121()`` from kuangliu/pytorch-cifar (MIT licence): growth rate 32, dense blocks of
6/12/24/16 bottlenecks, compression 0.5, a 3x3 stem to 2*growth channels, and a final BN-ReLU,
4x4 average pool and linear head.
"""
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1 (4*growth) then BN-ReLU-conv3x3 (growth); the new maps go before the input."""

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 then a 2x2 average pool."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, nblocks: Sequence[int], growth_rate: int, reduction: float,
                 num_classes: int, in_channels: int):
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, padding=1, bias=False)
        for i, n in enumerate(nblocks, start=1):
            self.add_module(f"dense{i}", nn.Sequential(
                *(Bottleneck(planes + j * growth_rate, growth_rate) for j in range(n))))
            planes += n * growth_rate
            if i < len(nblocks):
                out_planes = int(math.floor(planes * reduction))
                self.add_module(f"trans{i}", Transition(planes, out_planes))
                planes = out_planes
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.trans3(self.dense3(out))
        out = self.dense4(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(out.flatten(1))


def _densenet(name: str, *, nblocks: Sequence[int], growth_rate: int, num_classes: int,
              in_channels: int, image_size: int) -> nn.Module:
    if image_size != 32:  # three transitions leave 4x4, which the final 4x4 pool turns into 1x1
        raise ValueError(f"{name} needs 32x32 images, got {image_size}x{image_size}")
    model = DenseNet(nblocks, growth_rate, 0.5, num_classes, in_channels)
    model.input_shape = (in_channels, image_size, image_size)
    return model


@register_model
def densenet121(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """DenseNet-121 (growth 32, blocks 6/12/24/16) as kuangliu/pytorch-cifar builds it."""
    return _densenet("densenet121", nblocks=(6, 12, 24, 16), growth_rate=32,
                     num_classes=num_classes, in_channels=in_channels, image_size=image_size)
