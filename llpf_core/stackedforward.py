"""Many parameter sets of one architecture through one forward pass.

``stacked_forward`` runs K parameter sets (each parameter stacked to [K, *shape]) of a model on a batch
each or on one shared batch. A model may define ``forward_stacked(params, x, shared_input)`` written
with batched matrix products (the MLP does): on a CPU the digits MLP's SGD step for 8 models takes
about half the time of the generic path (bench/batched_speed.py, "training only"). Any other model,
and a subclass that does not define its own, goes through ``torch.func``: ``functional_call`` under
``vmap``.
"""
import torch
from torch import nn
from torch.func import functional_call, vmap


def has_stacked_forward(model: nn.Module) -> bool:
    """Whether ``model``'s own class defines ``forward_stacked`` (one it inherits may not compute what a
    subclass's ``forward`` does) and the model has no buffers for it to miss."""
    return "forward_stacked" in type(model).__dict__ and next(model.buffers(), None) is None


def stacked_forward(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool = False,
                    buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Outputs [K, B, ...] of the K parameter sets ``params`` on ``x``: [K, B, ...] (a batch per set) or, with
    ``shared_input``, [B, ...] (one batch for all). ``buffers`` are shared by all K (none: the model's own)."""
    if has_stacked_forward(model):
        return model.forward_stacked(params, x, shared_input)
    shared = dict(model.named_buffers()) if buffers is None else buffers

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, shared), (xi,))
    return vmap(one, in_dims=(0, None if shared_input else 0), randomness="different")(params, x)
