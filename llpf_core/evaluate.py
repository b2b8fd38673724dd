"""Eval-mode evaluation of any point, path point or interpolation (product decision 4).

Points are evaluated in eval mode on fixed sample sets. Models with BatchNorm first get their running
statistics recomputed on fixed training batches, because interpolated running statistics are
meaningless.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageData

EVAL_BATCH = 1000


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fixed_subset(n: int, size: int, seed: int, device) -> torch.Tensor:
    """``size`` indices out of ``n`` drawn with ``seed`` (all of them, in order, if size is 0 or >= n)."""
    if size <= 0 or size >= n:
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values.to(device)


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None,
                alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for float tensors (b=None: the origin); integer buffers follow b."""
    out = {}
    for k, va in a.items():
        vb = torch.zeros_like(va) if b is None else b[k]
        out[k] = torch.lerp(va, vb, alpha) if va.is_floating_point() else vb.clone()
    return out


class Evaluator:
    """Evaluates states of one architecture on fixed train and test samples, in eval mode."""

    def __init__(self, model: nn.Module, train: ImageData, test: ImageData, samples: int, seed: int,
                 bn_batches: int, bn_batch_size: int):
        self.model = model  # a scratch copy: loading states into it never touches the search
        self.train, self.test = train, test
        self.train_idx = fixed_subset(len(train), samples, seed + 1, train.device)
        self.test_idx = fixed_subset(len(test), samples, seed + 2, test.device)
        self.bn = has_batchnorm(model)
        self.bn_idx = fixed_subset(len(train), bn_batches * bn_batch_size, seed + 3, train.device)
        self.bn_batch_size = bn_batch_size

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
        if self.bn:
            self._recalibrate_bn()
        self.model.eval()

    @torch.no_grad()
    def _recalibrate_bn(self) -> None:
        """Recompute running statistics as an exact average over the fixed calibration batches."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.model.train()
        for chunk in self.bn_idx.split(self.bn_batch_size):
            self.model(self.train.batch(chunk)[0])
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum

    @torch.no_grad()
    def loss_acc(self, data: ImageData, idx: torch.Tensor) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the loaded state on ``data[idx]``."""
        total_loss = torch.zeros((), device=data.device)
        correct = torch.zeros((), device=data.device)
        for chunk in idx.split(EVAL_BATCH):
            x, y = data.batch(chunk)
            out = self.model(x).float()
            total_loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
        n = len(idx)
        return (total_loss / n).item(), (correct / n).item()

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """train_loss, train_acc, test_loss, test_acc of ``state``."""
        self.load(state)
        train_loss, train_acc = self.loss_acc(self.train, self.train_idx)
        test_loss, test_acc = self.loss_acc(self.test, self.test_idx)
        return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                "test_acc": test_acc}

    def line(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None,
             alphas: list[float], idx: torch.Tensor | None = None) -> list[dict[str, float]]:
        """Evaluate the straight line between a and b at ``alphas``: on the train and test sets, or
        only on ``train[idx]`` (loss and acc) when ``idx`` is given (the continuity check)."""
        rows = []
        for alpha in alphas:
            point = interpolate(a, b, alpha)
            if idx is None:
                rows.append({"alpha": alpha, **self.evaluate(point)})
            else:
                self.load(point)
                loss, acc = self.loss_acc(self.train, idx)
                rows.append({"alpha": alpha, "loss": loss, "acc": acc})
        return rows
