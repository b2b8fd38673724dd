"""A small BatchNorm CNN: the cheap stand-in for CIFAR-size BN networks (tests and benchmarks)."""
from torch import nn

from ..registry import register_model


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


@register_model
def cnn(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
        width: int = 16) -> nn.Module:
    """conv-BN-ReLU x3 with two max-pools, global average pool, linear head."""
    model = nn.Sequential(
        _block(in_channels, width), nn.MaxPool2d(2),
        _block(width, 2 * width), nn.MaxPool2d(2),
        _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )
    model.input_shape = (in_channels, image_size, image_size)
    return model
