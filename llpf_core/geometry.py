"""Tensor maths of LLPF: move, variance correction, distances and learning-rate scaling.

Pure functions on tensors that never read a result back to the host (no ``.item()``, no Python-list
indexing of device tensors), so on a GPU they only queue work.
Notation follows docs/algorithm.md, Notation: x is the current layer, y the destination, s the start.
"""
import torch


def variance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of all elements (``torch.var``'s default); 0 for a single element."""
    if x.numel() < 2:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return x.detach().float().var()


def variance_factor(var_now: torch.Tensor, var_target: torch.Tensor, eps: float) -> torch.Tensor:
    """k = sqrt((target + eps) / (current + eps)): eps damps the correction of tiny variances."""
    return ((var_target + eps) / (var_now + eps)).sqrt()


class VarianceCorrection:
    """Variance correction of one fixed list of tensors (docs/algorithm.md, M2M, step 3), in place.

    x <- mean + k (x - mean), k = sqrt((target + eps) / (Var(x) + eps)); single-element tensors stay as
    they are. The tensors' sizes are worked out once: this runs twice a tick, and on a CPU every small
    op costs microseconds. One fused (``torch._foreach_*``) update over all tensors, and two passes as
    ``torch.var`` does, but from cheap sums and one fused norm (``var_mean`` costs ten times a sum).
    """

    def __init__(self, xs: list[torch.Tensor], eps: float):
        keep = [i for i, x in enumerate(xs) if x.numel() >= 2]
        self.all = len(keep) == len(xs)
        self.xs = [xs[i] for i in keep]
        device = xs[0].device if xs else "cpu"
        # a device index built once: indexing a CUDA tensor with a Python list copies the list to the
        # device with a blocking copy on every call
        self.keep = torch.tensor(keep, dtype=torch.long, device=device)
        self.sizes = torch.tensor([x.numel() for x in self.xs], dtype=torch.float32, device=device)
        self.dof = self.sizes - 1
        self.eps = eps

    def __call__(self, targets: torch.Tensor) -> None:
        """``targets``: one variance per tensor of the list, as one tensor."""
        xs = self.xs
        if not xs:
            return
        if not self.all:
            targets = targets[self.keep]
        means = (torch.stack([x.sum() for x in xs]).float() / self.sizes).unbind()
        torch._foreach_sub_(xs, means)
        var = torch.stack(torch._foreach_norm(xs)).float().square_().div_(self.dof)
        torch._foreach_mul_(xs, variance_factor(var, targets, self.eps).unbind())
        torch._foreach_add_(xs, means)


def step_length(dist: torch.Tensor, step_a: float, step_f: float, step_c_len: torch.Tensor | float,
                clamp: bool) -> torch.Tensor:
    """L = max(step_f + C, step_a * ||d||), clamped to ||d|| by default (product decision 1)."""
    length = torch.maximum(step_f + step_c_len + torch.zeros_like(dist), step_a * dist)
    return torch.minimum(length, dist) if clamp else length


def move_(xs: list[torch.Tensor], ys: list[torch.Tensor] | None, step_a: float, step_f: float,
          step_c_len: torch.Tensor | float, clamp: bool, unit_of: torch.Tensor | None = None,
          active: torch.Tensor | None = None) -> None:
    """Move x toward ``ys`` by L along d = y - x, for one or many move units at once (in place).

    ``ys=None`` means the origin. ``unit_of[i]`` is the unit of ``xs[i]`` (default: all tensors form one
    unit); a unit's tensors are treated as one flattened vector, so a merged weight and bias share one
    direction and one length. ``step_c_len`` is a number or one length per unit. An all-zero d leaves
    x unchanged. Fused over all tensors with ``torch._foreach_*``; nothing syncs with the host.
    """
    ds = torch._foreach_neg(xs) if ys is None else torch._foreach_sub(ys, xs)
    squares = torch.stack(torch._foreach_norm(ds)).float().square()
    if unit_of is None:
        unit_of = torch.zeros(len(xs), dtype=torch.long, device=squares.device)
    units = 1 if isinstance(step_c_len, (int, float)) or step_c_len.dim() == 0 else len(step_c_len)
    dist = torch.zeros(units, device=squares.device).index_add_(0, unit_of, squares).sqrt()
    length = step_length(dist, step_a, step_f, step_c_len, clamp)
    scale = torch.where(dist > 0, length / dist.clamp_min(torch.finfo(dist.dtype).tiny), 0.0)
    if active is not None:
        scale = torch.where(active, scale, 0.0)
    torch._foreach_mul_(ds, list(scale[unit_of].unbind()))
    torch._foreach_add_(xs, ds)


def distances(xs: list[torch.Tensor], ys: list[torch.Tensor] | None) -> torch.Tensor:
    """Per-tensor L2 distances ||x_i - y_i|| as one tensor (``ys=None``: norms), fused."""
    return torch.stack(torch._foreach_norm(xs if ys is None else torch._foreach_sub(xs, ys))).float()


def geodesic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Arc length between a and b on a sphere of the mean radius: ((|a|+|b|)/2) * angle(a, b).

    Zero when either tensor is all zeros.
    """
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    na, nb = a.norm(), b.norm()
    cos = (a @ b / (na * nb)).clamp(-1.0, 1.0)
    arc = (na + nb) / 2 * torch.arccos(cos)
    return torch.where((na > 0) & (nb > 0), arc, torch.zeros_like(arc))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two flattened tensors; 0 when either is all zeros."""
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    denom = a.norm() * b.norm()
    return torch.where(denom > 0, a @ b / denom.clamp_min(1e-30), torch.zeros_like(denom))


def distance(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """L2 distance ||x - y|| (product decision 3); ``y=None`` means the origin."""
    x = x.detach().float()
    return (x if y is None else x - y.detach().float()).norm()


def angle_conformal_lr(lr0: float, var_now: torch.Tensor, var_start: torch.Tensor,
                       policy: str) -> torch.Tensor:
    """M2O's per-layer learning rate: lr0 * Var(x)/Var(s) ('var') or its square root ('std').

    Under a shrink by r the variance scales by r^2, so for a scale-invariant layer the angular
    step per update stays the same as at the start (docs/algorithm.md, M2O).
    """
    ratio = var_now / var_start
    return lr0 * (ratio if policy == "var" else ratio.sqrt())
