"""Deep Layer Aggregation for CIFAR, ported from kuangliu/pytorch-cifar ``models/dla.py`` (MIT licence).

``dla`` is kuangliu's ``DLA()``: 16,291,386 parameters and 260 state-dict entries for 10 classes
(zoo-reference.md). Module names and registration order follow upstream (root, level_k.., prev_root,
left_node, right_node), so state-dict keys match; inside a Tree the modules *run* in a different order
(prev_root, levels, left_node, right_node, root), which is why follow_data_flow uses execution order.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, with a 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Root(nn.Module):
    """Aggregation node: concatenate its inputs, then 1x1 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, xs: list[torch.Tensor]):
        return F.relu(self.bn(self.conv(torch.cat(xs, 1))))


class Tree(nn.Module):
    """A tree of ``level`` levels. Level 1 is two blocks and a root; a deeper tree adds a prev_root block
    on its input and the subtrees level_{level-1}..level_1, and its root joins all their outputs."""

    def __init__(self, c_in: int, c_out: int, level: int = 1, stride: int = 1):
        super().__init__()
        self.level = level
        if level == 1:
            self.root = Root(2 * c_out, c_out)
            self.left_node = BasicBlock(c_in, c_out, stride=stride)
            self.right_node = BasicBlock(c_out, c_out)
        else:
            self.root = Root((level + 2) * c_out, c_out)  # registered first, runs last
            for i in reversed(range(1, level)):
                self.add_module(f"level_{i}", Tree(c_in, c_out, level=i, stride=stride))
            self.prev_root = BasicBlock(c_in, c_out, stride=stride)
            self.left_node = BasicBlock(c_out, c_out)
            self.right_node = BasicBlock(c_out, c_out)

    def forward(self, x):
        xs = [self.prev_root(x)] if self.level > 1 else []
        for i in reversed(range(1, self.level)):
            x = getattr(self, f"level_{i}")(x)
            xs.append(x)
        x = self.left_node(x)
        xs.append(x)
        x = self.right_node(x)
        xs.append(x)
        return self.root(xs)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class DLA(nn.Module):
    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.base = _conv_bn_relu(in_channels, 16)
        self.layer1 = _conv_bn_relu(16, 16)
        self.layer2 = _conv_bn_relu(16, 32)
        self.layer3 = Tree(32, 64, level=1, stride=1)
        self.layer4 = Tree(64, 128, level=2, stride=2)
        self.layer5 = Tree(128, 256, level=2, stride=2)
        self.layer6 = Tree(256, 512, level=1, stride=2)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.base(x)))
        x = self.layer6(self.layer5(self.layer4(self.layer3(x))))  # 32x32 -> (512, 4, 4)
        # upstream: avg_pool2d(x, 4); a global average is the same on 32x32 and works on any size
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


@register_model
def dla(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    model = DLA(num_classes, in_channels)
    model.input_shape = (in_channels, image_size, image_size)
    return model
