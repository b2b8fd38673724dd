"""Tensor maths of LLPF: move, variance correction, distances and learning-rate scaling.

Pure functions on tensors; nothing here syncs with the host, so they run unchanged on a GPU.
Notation follows llpf-algorithm.md section 0: x is the current layer, y the destination, s the start.
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


def correct_variance_(xs: list[torch.Tensor], targets: list[torch.Tensor], eps: float) -> None:
    """Rescale each tensor about its own mean so its variance moves to the target (in place).

    llpf-algorithm.md 1.2 step 5: x <- mean + k (x - mean); single-element tensors stay as they are.
    """
    for x, target in zip(xs, targets):
        if x.numel() < 2:
            continue
        mean = x.mean()
        k = variance_factor(x.var(), target, eps)
        x.sub_(mean).mul_(k).add_(mean)


def step_length(dist: torch.Tensor, step_a: float, step_f: float, step_c_len: torch.Tensor | float,
                clamp: bool) -> torch.Tensor:
    """L = max(step_f + C, step_a * ||d||), clamped to ||d|| by default (product decision 1)."""
    length = torch.maximum(step_f + step_c_len + torch.zeros_like(dist), step_a * dist)
    return torch.minimum(length, dist) if clamp else length


def move_(xs: list[torch.Tensor], ys: list[torch.Tensor] | None, step_a: float, step_f: float,
          step_c_len: torch.Tensor | float, clamp: bool) -> None:
    """Move one unit (a layer, or a merged weight+bias) toward ``ys`` by L along d = y - x.

    ``ys=None`` means the origin. ``xs`` and ``ys`` are treated as one flattened vector, so a merged
    weight and bias share one direction and one length. An all-zero d leaves x unchanged.
    """
    ds = [-x for x in xs] if ys is None else [y - x for x, y in zip(xs, ys)]
    dist = torch.stack([d.float().square().sum() for d in ds]).sum().sqrt()
    length = step_length(dist, step_a, step_f, step_c_len, clamp)
    scale = torch.where(dist > 0, length / dist.clamp_min(torch.finfo(dist.dtype).tiny), 0.0)
    for x, d in zip(xs, ds):
        x.add_(d * scale.to(d.dtype))


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
    step per update stays the same as at the start (llpf-algorithm.md section 2).
    """
    ratio = var_now / var_start
    return lr0 * (ratio if policy == "var" else ratio.sqrt())
