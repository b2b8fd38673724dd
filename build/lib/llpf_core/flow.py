"""Layer groups in data-flow order, and matching of layer-name patterns to state-dict names."""
from fnmatch import fnmatchcase

import torch
from torch import nn

from .errors import UserError


def follow_data_flow(model: nn.Module) -> list[list[str]]:
    """Group the state-dict tensors by owning module, ordered by when each module first runs.

    One forward pass on a zero batch (shape from ``model.input_shape``) records the order in which
    modules start; that differs from registration order in models such as DLA or CCT. Each module's
    own tensors (``recurse=False``) form one group, so parallel branches stay separate groups.
    Modules that never run come last, in registration order.
    """
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _x, name=name: order.append(name))
             for name, m in model.named_modules()]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()  # eval mode: BatchNorm statistics stay untouched
        with torch.no_grad():
            model(torch.zeros(2, *model.input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    first_run = {name: i for i, name in reversed(list(enumerate(order)))}
    modules = list(model.named_modules())
    modules.sort(key=lambda item: first_run.get(item[0], len(order)))  # stable: unrun keep reg. order
    state_names = set(model.state_dict())
    groups = []
    for name, module in modules:
        own = [name + "." + n if name else n for n, _ in
               [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]]
        own = [n for n in own if n in state_names]
        if own:
            groups.append(own)
    return groups


def pattern_matches(pattern: str, name: str) -> bool:
    """A pattern matches a name exactly, as a glob (``layer1.*``), or as a module prefix (``fc1``)."""
    return name == pattern or name.startswith(pattern + ".") or fnmatchcase(name, pattern)


def match_layers(patterns: list[str], names: list[str], where: str = "layers") -> list[str]:
    """The names matched by any pattern, in ``names`` order. A pattern matching nothing is an error."""
    for p in patterns:
        if not any(pattern_matches(p, n) for n in names):
            close = [n for n in names if p.split(".")[0] in n][:5] or names[:5]
            raise UserError(f"{where}: pattern {p!r} matches no layer of the model; layers look like "
                            f"{', '.join(close)}")
    return [n for n in names if any(pattern_matches(p, n) for p in patterns)]


def norm_layer_names(model: nn.Module) -> set[str]:
    """State-dict names of every BatchNorm, LayerNorm and GroupNorm tensor (M2O never moves them)."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    names = set()
    for mname, module in model.named_modules():
        if isinstance(module, norm_types):
            for n, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                names.add(f"{mname}.{n}" if mname else n)
    return names
