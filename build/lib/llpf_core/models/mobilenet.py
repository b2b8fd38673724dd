"""MobileNetV2 for CIFAR, ported from chenhang98/mobileNet-v2_cifar10 ``network.py`` and ``blocks.py``.

``mobilenet_v2`` is that repository's ``MobileNetV2(10, alpha=1)``: 2,237,770 parameters and 320
state-dict entries for 10 classes (zoo-reference.md). The repository carries no licence file, so this is
a re-implementation of its design (the MobileNetV2 paper's table with CIFAR strides), not a copy.
Unlike the paper, a bottleneck is residual only when its input and output widths agree and its stride is 1,
and the stem and the first bottlenecks keep stride 1, downsampling only at the 32->64 and 96->160 blocks.
"""

import torch.nn.functional as F
from torch import nn

from ..registry import register_model

# (c_in, c_out, expansion t, stride) of the 17 bottlenecks
_BOTTLENECKS = (
    (32, 16, 1, 1),
    (16, 24, 6, 1), (24, 24, 6, 1),
    (24, 32, 6, 1), (32, 32, 6, 1), (32, 32, 6, 1),
    (32, 64, 6, 2), (64, 64, 6, 1), (64, 64, 6, 1), (64, 64, 6, 1),
    (64, 96, 6, 1), (96, 96, 6, 1), (96, 96, 6, 1),
    (96, 160, 6, 2), (160, 160, 6, 1), (160, 160, 6, 1),
    (160, 320, 6, 1),
)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection, ReLU6 after the first two."""

    def __init__(self, c_in: int, c_out: int, t: int = 6, stride: int = 1):
        super().__init__()
        self.residual = stride == 1 and c_in == c_out
        c = t * c_in
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32)
        self.bottlenecks = nn.Sequential(*(Bottleneck(*args) for args in _BOTTLENECKS))
        self.conv1 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(1280)
        self.fc = nn.Linear(1280, num_classes)
        for m in self.modules():  # upstream init: He-normal convs (fan-out); BatchNorm keeps 1 and 0
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu6(self.bn0(self.conv0(x)))
        x = self.bottlenecks(x)  # 32x32 -> (320, 8, 8)
        x = F.relu6(self.bn1(self.conv1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register_model
def mobilenet_v2(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    model = MobileNetV2(num_classes, in_channels)
    model.input_shape = (in_channels, image_size, image_size)
    return model
