"""ShuffleNet V1 and V2 for CIFAR.

``shufflenet`` is chenhang98/shuffleNet-cifar10's ``ShuffleNet(10, g=1, scale_factor=1)``: ShuffleNet **V1**
(grouped 1x1 convs and a channel shuffle), though the LLPF paper's code calls it "shufflenet_v2";
960,706 parameters and 296 state-dict entries for 10 classes. That repository carries no licence file, so
this is a re-implementation of its design with its module names, not a copy. As upstream, ``fc`` is
registered before the stages but runs last.

``shufflenet_v2`` is kuangliu/pytorch-cifar's ``ShuffleNetV2(net_size=1)`` (MIT licence), the real V2:
1,263,854 parameters and 338 state-dict entries for 10 classes (zoo-reference.md for both).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*n, H, W) -> (N, n*g, H, W): interleave the channels of the ``groups`` groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ---- ShuffleNet V1 (chenhang98) ------------------------------------------------------------------------

class ShuffleUnit(nn.Module):
    """V1 unit: 1x1 group conv -> shuffle -> 3x3 depthwise -> 1x1 group conv.

    Identity unit (``pool=False``): c_in == c_out and the input is added. Pool unit (the first of a stage):
    the branch makes c_out - c_in channels and the input, average-pooled when the stride is 2, is
    concatenated to it.
    """

    def __init__(self, c_in: int, c_out: int, groups: int, pool: bool = False, stride: int = 1,
                 first_group: bool = True):
        super().__init__()
        self.pool, self.stride, self.groups = pool, stride, groups
        neck = c_out // 4  # bottleneck width: a quarter of the output, as the paper
        assert neck % groups == 0, f"bottleneck width {neck} does not split into {groups} groups"
        branch_out = c_out - c_in if pool else c_out
        self.gconv1 = nn.Conv2d(c_in, neck, 1, groups=groups if first_group else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(neck)
        self.dwconv = nn.Conv2d(neck, neck, 3, stride=stride, padding=1, groups=neck, bias=False)
        self.bn = nn.BatchNorm2d(neck)
        self.gconv2 = nn.Conv2d(neck, branch_out, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(branch_out)

    def forward(self, x):
        out = F.relu(self.bn1(self.gconv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn(self.dwconv(out))
        out = self.bn2(self.gconv2(out))
        if not self.pool:
            return F.relu(out + x)
        # upstream: avg_pool2d(x, 2); ceil_mode only differs on odd sizes, where it keeps shapes matching
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride == 2 else x
        return F.relu(torch.cat((out, shortcut), 1))


class ShuffleNetV1(nn.Module):
    _STAGE2_WIDTH = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}  # by group count, as upstream

    def __init__(self, num_classes: int, in_channels: int, groups: int = 1, scale: float = 1.0):
        super().__init__()
        c2 = int(scale * self._STAGE2_WIDTH[groups])
        c3, c4 = 2 * c2, 4 * c2
        self.conv1 = nn.Conv2d(in_channels, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(c4, num_classes)  # registered here, runs last (upstream order)
        self.stage2 = self._stage(24, c2, groups, repeat=3, stride=1, first_group=False)
        self.stage3 = self._stage(c2, c3, groups, repeat=7)
        self.stage4 = self._stage(c3, c4, groups, repeat=3)
        for m in self.modules():  # upstream init: He-normal convs (fan-out); BatchNorm keeps 1 and 0
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(c_in: int, c_out: int, groups: int, repeat: int, stride: int = 2,
               first_group: bool = True) -> nn.Sequential:
        units = [ShuffleUnit(c_in, c_out, groups, pool=True, stride=stride, first_group=first_group)]
        units += [ShuffleUnit(c_out, c_out, groups) for _ in range(repeat)]
        return nn.Sequential(*units)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stage4(self.stage3(self.stage2(x)))  # 32x32 -> (576, 8, 8) for g=1
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register_model
def shufflenet(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    model = ShuffleNetV1(num_classes, in_channels, groups=1, scale=1.0)
    model.input_shape = (in_channels, image_size, image_size)
    return model


# ---- ShuffleNet V2 (kuangliu) --------------------------------------------------------------------------

class V2Block(nn.Module):
    """V2 basic unit: split the channels in half, run one half through 1x1 -> 3x3 dw -> 1x1, concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class V2DownBlock(nn.Module):
    """V2 stride-2 unit: two branches on the whole input, each giving half the output channels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        # left: 3x3 dw stride 2 -> 1x1
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right: 1x1 -> 3x3 dw stride 2 -> 1x1
        self.conv3 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


_V2_CONFIGS = {  # net_size: (stage widths + final width, blocks after each stage's down block)
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, net_size: float = 1):
        super().__init__()
        widths, blocks = _V2_CONFIGS[net_size]
        self.conv1 = nn.Conv2d(in_channels, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        c_in = 24
        for i, (c_out, n) in enumerate(zip(widths[:3], blocks), start=1):
            layer = nn.Sequential(V2DownBlock(c_in, c_out), *(V2Block(c_out) for _ in range(n)))
            self.add_module(f"layer{i}", layer)
            c_in = c_out
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))  # no stem max-pool on CIFAR
        x = self.layer3(self.layer2(self.layer1(x)))  # 32x32 -> (464, 4, 4)
        x = F.relu(self.bn2(self.conv2(x)))
        # upstream: avg_pool2d(x, 4); a global average is the same on 32x32 and works on any size
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


@register_model
def shufflenet_v2(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    model = ShuffleNetV2(num_classes, in_channels, net_size=1)
    model.input_shape = (in_channels, image_size, image_size)
    return model
