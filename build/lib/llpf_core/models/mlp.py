"""A small fully connected network: the fast model for the embedded digits data."""
from collections.abc import Sequence

from torch import nn

from ..registry import register_model


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        super().__init__()
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x).relu()
        return self.head(x)


@register_model
def mlp(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
        hidden: Sequence[int] = (64, 64)) -> nn.Module:
    """ReLU MLP; 3,466 parameters on 8x8 digits with the default widths."""
    model = MLP(in_channels * image_size * image_size, hidden, num_classes)
    model.input_shape = (in_channels, image_size, image_size)
    return model
