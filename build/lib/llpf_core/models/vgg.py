"""VGG-11 with BatchNorm for CIFAR: 9,231,114 parameters (10 classes, zoo-reference.md).

Port of ``VGG('VGG11')`` from kuangliu/pytorch-cifar (MIT licence): conv3x3 (with bias) + BN + ReLU
blocks and max-pools, a 1x1 average pool, and one Linear 512 -> classes as ``classifier``.
"""
from torch import nn

from ..registry import register_model

_CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


class VGG(nn.Module):
    def __init__(self, cfg, num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c_in = v
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))  # a no-op kept from upstream
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _vgg(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    if image_size != 32:  # five 2x2 pools must leave a 1x1 map for the 512-wide classifier
        raise ValueError(f"{name} needs 32x32 images, got {image_size}x{image_size}")
    model = VGG(_CFGS[name], num_classes, in_channels)
    model.input_shape = (in_channels, image_size, image_size)
    return model


@register_model
def vgg11(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """VGG-11 (BN) as kuangliu/pytorch-cifar builds it."""
    return _vgg("vgg11", num_classes=num_classes, in_channels=in_channels, image_size=image_size)
