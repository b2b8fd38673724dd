"""ResNet-18 for CIFAR-size images: 11,173,962 parameters (10 classes, zoo-reference.md).

torchvision's ``resnet18`` (BSD-3-Clause) with the usual CIFAR stem: ``conv1`` becomes a 3x3 conv,
stride 1, padding 1, no bias, and ``maxpool`` becomes ``nn.Identity``, so a 32x32 input reaches
``layer1`` at full resolution.
"""
from collections.abc import Callable

from torch import nn
from torchvision.models import ResNet
from torchvision.models import resnet18 as _tv_resnet18

from ..registry import register_model


def _cifar_resnet(tv_builder: Callable[..., ResNet], *, num_classes: int, in_channels: int,
                  image_size: int) -> nn.Module:
    model = tv_builder(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, kernel_size=3, stride=1,
                            padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.input_shape = (in_channels, image_size, image_size)
    return model


@register_model
def resnet18(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool."""
    return _cifar_resnet(_tv_resnet18, num_classes=num_classes, in_channels=in_channels,
                         image_size=image_size)
