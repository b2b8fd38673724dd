"""Many parameter sets of one architecture through one forward pass.

``stacked_forward`` runs K parameter sets (each parameter stacked to [K, *shape]) of a model on a batch
each or on one shared batch. A model may define ``forward_stacked(params, x, shared_input)`` written
with batched matrix products (the MLP does): on a CPU the digits MLP's SGD step for 8 models takes
about half the time of the generic path (bench/batched_speed.py, "training only"). Any other model
goes through ``torch.func``: ``functional_call`` under ``vmap``.
"""
import torch
from torch import nn
from torch.func import functional_call, vmap


def stacked_forward(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool = False,
                    buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Outputs [K, B, ...] of the K parameter sets ``params`` on ``x``: [K, B, ...] (a batch per set) or, with
    ``shared_input``, [B, ...] (one batch for all). ``buffers`` are shared by all K (none: the model's own)."""
    fast = getattr(model, "forward_stacked", None)
    if fast is not None and not any(True for _ in model.buffers()):
        return fast(params, x, shared_input)
    shared = dict(model.named_buffers()) if buffers is None else buffers

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, shared), (xi,))
    return vmap(one, in_dims=(0, None if shared_input else 0), randomness="different")(params, x)
