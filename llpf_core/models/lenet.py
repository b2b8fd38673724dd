"""LeNet-5 as the LLPF paper built it: 61,706 parameters on 28x28x1.

See docs/algorithm.md, Models and data as the paper built them.
"""
from torch import nn

from ..registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        side = (image_size // 2 - 4) // 2  # 28 -> pool 14 -> conv 10 -> pool 5
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.pool = nn.MaxPool2d(2)
        for m in self.modules():  # the paper's init: Xavier-uniform weights, zero biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.pool(self.conv1(x).relu())
        x = self.pool(self.conv2(x).relu())
        x = self.fc1(x.flatten(1)).relu()
        x = self.fc2(x).relu()
        return self.fc3(x)


@register_model
def lenet5(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    if image_size < 12:
        raise ValueError(f"lenet5 needs images of at least 12x12 pixels, got {image_size}")
    model = LeNet5(num_classes, in_channels, image_size)
    model.input_shape = (in_channels, image_size, image_size)
    return model
