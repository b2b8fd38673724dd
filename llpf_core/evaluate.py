"""Eval-mode evaluation of any point, path point or interpolation (product decision 4).

Points are evaluated in eval mode on fixed sample sets. Models with BatchNorm first get their running
statistics recomputed on fixed training batches, because interpolated running statistics are
meaningless.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageData
from .stackedforward import has_stacked_forward, stacked_forward

EVAL_BATCH = 1000  # samples per evaluation forward pass on an accelerator
EVAL_BATCH_CPU = 250  # on a CPU: LeNet-5's activations for 1,000 images spill the caches (1.5x slower per image)
LINE_POINTS_PER_PASS = 16  # at most, points of a line evaluated by one stacked forward pass
LINE_PASS_BYTES = 256 * 2**20  # and at most this much memory for their stacked parameters
CACHE_BYTES = 256 * 2**20  # fixed evaluation batches are kept, normalised, up to this size in all


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def stackable(model: nn.Module) -> bool:
    """Whether many parameter sets of ``model`` evaluate faster as one ``vmap`` (``Evaluator.stacked``):
    fully connected models without BatchNorm. vmap turns convolutions into grouped ones (LeNet-5 2.3x
    slower on a CPU, bench/landscape_speed.py), and BatchNorm needs its statistics recomputed per state."""
    return not has_batchnorm(model) and not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def fixed_subset(n: int, size: int, seed: int, device) -> torch.Tensor:
    """``size`` indices out of ``n`` drawn with ``seed`` (all of them, in order, if size is 0 or >= n)."""
    if size <= 0 or size >= n:
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values.to(device)


class Evaluator:
    """Evaluates states of one architecture on fixed train and test samples, in eval mode.

    A state is copied into the scratch model with fused multi-tensor ops (no ``load_state_dict``), and
    each evaluation reads its results from the device once.
    """

    def __init__(self, model: nn.Module, train: ImageData, test: ImageData, samples: int, seed: int,
                 bn_batches: int, bn_batch_size: int):
        self.model = model  # a scratch copy: loading states into it never touches the search
        self.train, self.test = train, test
        self.train_idx = fixed_subset(len(train), samples, seed + 1, train.device)
        self.test_idx = fixed_subset(len(test), samples, seed + 2, test.device)
        self.bn = has_batchnorm(model)
        self.bn_idx = fixed_subset(len(train), bn_batches * bn_batch_size, seed + 3, train.device)
        self.bn_batch_size = bn_batch_size
        state = model.state_dict()
        self.floats = [k for k, v in state.items() if v.is_floating_point()]
        self.others = [k for k, v in state.items() if not v.is_floating_point()]
        self.float_dst = [state[k] for k in self.floats]
        self.line_stacked = has_stacked_forward(model)  # vmap over another model can fail, and gained nothing
        state_bytes = sum(v.numel() * v.element_size() for v in self.float_dst)
        self.line_per_pass = max(1, min(LINE_POINTS_PER_PASS, LINE_PASS_BYTES // max(state_bytes, 1)))
        self.other_dst = [state[k] for k in self.others]
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, list]] = {}  # also keeps idx alive
        self._cached_bytes = 0

    def _batches(self, data: ImageData, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``data[idx]`` in evaluation batches, gathered and normalised once for the fixed index sets."""
        key = (id(data), id(idx))
        if key in self._cache:
            return self._cache[key][1]
        per_pass = EVAL_BATCH_CPU if data.device.type == "cpu" else EVAL_BATCH
        batches = [data.batch(chunk) for chunk in idx.split(per_pass)]
        size = sum(x.numel() * x.element_size() for x, _ in batches)
        if self._cached_bytes + size <= CACHE_BYTES:
            self._cache[key] = (idx, batches)
            self._cached_bytes += size
        return batches

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], toward: list[torch.Tensor] | None = None,
             alpha: float | None = None) -> None:
        """Load ``state``, or with ``alpha`` the point (1 - alpha) state + alpha toward (float tensors, in
        the order of ``self.floats``), then recalibrate BatchNorm and switch to eval mode."""
        torch._foreach_copy_(self.float_dst, [state[k] for k in self.floats])
        if alpha is not None:
            torch._foreach_lerp_(self.float_dst, toward, alpha)
        if self.other_dst:
            torch._foreach_copy_(self.other_dst, [state[k] for k in self.others])
        if self.bn:
            self._recalibrate_bn()
        self.model.eval()

    @torch.no_grad()
    def _recalibrate_bn(self) -> None:
        """Recompute running statistics as an exact average over the fixed calibration batches.

        Batch k (from 0) is blended in with momentum 1 / (k + 1): the cumulative average that
        ``momentum=None`` gives, without its ``float(num_batches_tracked)``, a host sync per BatchNorm
        layer per batch on a GPU.
        """
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
        self.model.train()
        for k, chunk in enumerate(self.bn_idx.split(self.bn_batch_size)):
            for m in bns:
                m.momentum = 1.0 / (k + 1)
            self.model(self.train.batch(chunk)[0])
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum

    @torch.no_grad()
    def loss_acc(self, data: ImageData, idx: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy and accuracy of the loaded state on ``data[idx]``, as a tensor of two
        (left on the device: the caller reads many at once)."""
        total = torch.zeros(2, device=data.device)
        for x, y in self._batches(data, idx):
            out = self.model(x).float()
            total += torch.stack([F.cross_entropy(out, y, reduction="sum"), (out.argmax(1) == y).sum()])
        return total / len(idx)

    @torch.no_grad()
    def stacked(self, params: dict[str, torch.Tensor], data: ImageData, idx: torch.Tensor) -> torch.Tensor:
        """(G, 2) mean cross-entropy and accuracy on ``data[idx]`` of G parameter sets at once: ``params``
        maps each parameter name to its G stacked values (G, *shape); buffers come from the loaded state.
        Only for ``stackable`` models."""
        buffers = dict(self.model.named_buffers())
        g = next(iter(params.values())).shape[0]
        total = torch.zeros(g, 2, device=data.device)
        for x, y in self._batches(data, idx):
            out = stacked_forward(self.model, params, x, shared_input=True, buffers=buffers).float()  # (G, B, classes)
            loss = F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0]), reduction="none")
            total[:, 0] += loss.view(out.shape[:2]).sum(1)
            total[:, 1] += (out.argmax(2) == y).sum(1)
        return total / len(idx)

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """train_loss, train_acc, test_loss, test_acc of ``state``."""
        self.load(state)
        values = torch.cat([self.loss_acc(self.train, self.train_idx),
                            self.loss_acc(self.test, self.test_idx)]).tolist()
        return dict(zip(("train_loss", "train_acc", "test_loss", "test_acc"), values))

    def line(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None,
             alphas: list[float], idx: torch.Tensor | None = None) -> list[dict[str, float]]:
        """Evaluate the straight line (1 - alpha) a + alpha b (b=None: the origin) at ``alphas``: on the
        train and test sets, or only on ``train[idx]`` (loss and acc) when ``idx`` is given (the
        continuity check). Integer buffers follow b. A continuity check of a model with its own stacked
        forward (``has_stacked_forward``: the MLP) evaluates up to ``LINE_POINTS_PER_PASS`` points per
        forward pass; whole-set lines (the baseline) go point by point, so that a point on the straight
        line gives exactly the loss ``evaluate`` gives it (a linear path's max is the barrier)."""
        toward = [torch.zeros_like(a[k]) if b is None else b[k] for k in self.floats]
        ints = a if b is None else {**a, **{k: b[k] for k in self.others}}
        sets = [(self.train, self.train_idx), (self.test, self.test_idx)] if idx is None else [(self.train, idx)]
        results = []
        if self.line_stacked and idx is not None:  # a model without buffers: only its parameters are on the line
            self.model.eval()
            ends = [(a[k].to(dst).unsqueeze(0), end.to(dst).unsqueeze(0)) for k, end, dst in
                    zip(self.floats, toward, self.float_dst)]
            per_pass = self.line_per_pass
            for chunk in [alphas[i:i + per_pass] for i in range(0, len(alphas), per_pass)]:
                weights = torch.tensor(chunk, device=self.float_dst[0].device, dtype=self.float_dst[0].dtype)
                params = {k: torch.lerp(start, end, weights.view(-1, *[1] * (end.dim() - 1)))
                          for k, (start, end) in zip(self.floats, ends)}
                results.append(torch.cat([self.stacked(params, data, i) for data, i in sets], dim=1))
        else:
            for alpha in alphas:
                self.load(ints, toward, alpha)
                results.append(torch.cat([self.loss_acc(data, i) for data, i in sets])[None])
        values = torch.cat(results).tolist() if results else []
        if idx is None:
            keys = ("train_loss", "train_acc", "test_loss", "test_acc")
        else:
            keys = ("loss", "acc")
        return [{"alpha": alpha, **dict(zip(keys, v))} for alpha, v in zip(alphas, values)]
