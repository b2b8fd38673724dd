"""A small fully connected network: the fast model for the embedded digits data."""
from collections.abc import Sequence

import torch
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

    def forward_stacked(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """K parameter sets at once (``params[name]``: [K, *shape]) on x: [K, B, C, H, W], or [B, C, H, W]
        for all K with ``shared_input``; returns [K, B, classes]. Batched matrix products: cheaper than
        ``vmap`` over ``functional_call`` for these small layers (llpf_core/stackedforward.py)."""
        x = x.flatten(1) if shared_input else x.flatten(2)
        names = [f"layers.{i}" for i in range(len(self.layers))] + ["head"]
        for i, name in enumerate(names):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            if x.dim() == 2:  # the shared batch, before the first layer
                x = torch.matmul(x, weight.transpose(1, 2)) + bias.unsqueeze(1)
            else:
                x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if i < len(names) - 1:
                x = x.relu()
        return x


@register_model
def mlp(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
        hidden: Sequence[int] = (64, 64)) -> nn.Module:
    """ReLU MLP; 3,466 parameters on 8x8 digits with the default widths."""
    model = MLP(in_channels * image_size * image_size, hidden, num_classes)
    model.input_shape = (in_channels, image_size, image_size)
    return model
