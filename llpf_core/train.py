"""SGD on tensor data: the batch stream, the per-tick ``train_until`` loop, and mode training."""
import json
import math
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainSpec
from .data import ImageData, load_dataset
from .device import autocast, out_of_memory, out_of_memory_is_user_error, resolve_device
from .errors import UserError
from .evaluate import Evaluator
from .modefile import Mode, ModeMeta, save_mode
from .registry import build_model
from .resources import ASSETS_DIR

RECIPE_DIR = ASSETS_DIR / "recipes"


class TrainingDiverged(UserError):
    """A non-finite training loss: the learning rate is too high for this point."""


class BatchStream:
    """Endless shuffled batches, epoch after epoch, drawn with one generator on the data's device.

    Its state (permutation, position, generator) is part of a search checkpoint, so a resumed run
    sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, data: ImageData, batch_size: int, generator: torch.Generator, augment: bool = True,
                 channels_last: bool = False):
        self.data, self.batch_size, self.generator, self.augment = data, batch_size, generator, augment
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.perm = torch.empty(0, dtype=torch.long, device=data.device)
        self.pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.batch(self.next_indices(), augment=self.augment, generator=self.generator)
        return x.contiguous(memory_format=self.memory_format), y

    def next_indices(self) -> torch.Tensor:
        """The next batch's sample indices (the batched engine gathers many streams' batches at once)."""
        if self.pos >= len(self.perm):
            self.perm = torch.randperm(len(self.data), generator=self.generator, device=self.data.device)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    @property
    def augments(self) -> bool:
        """Whether its batches are augmented (with random draws from its own generator)."""
        return self.augment and self.data.augmentation is not None

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint's state; a value that cannot be this stream's is a ``ValueError``."""
        perm, pos = state["perm"], state["pos"]
        if perm.dtype != torch.long or perm.dim() != 1 or len(perm) not in (0, len(self.data)) or \
                (len(perm) and not bool(((perm >= 0) & (perm < len(self.data))).all())):
            raise ValueError(f"the batch order is not a permutation of the {len(self.data)} samples")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= len(perm) + self.batch_size:
            raise ValueError(f"the batch position {pos!r} is out of range")
        self.generator.set_state(state["rng"])
        self.perm, self.pos = perm.to(self.data.device), pos


class PlainSGD:
    """Plain SGD (no momentum, no weight decay) with a learning-rate factor per parameter: parameter i moves
    by ``lr * scales[i]`` times its gradient (M2O's angle-conformal rates; all 1 otherwise).

    The LLPF tick's optimizer, with ``torch.optim.Optimizer``'s ``param_groups``, ``zero_grad`` and ``step``.
    Not ``torch.optim.SGD``: its first use imports ``torch._dynamo``, about 2 s at the start of every
    ``connect`` and ``sweep`` command (docs/performance.md), and its per-step bookkeeping cost a digits search
    a fifth of its SGD time. One fused multi-tensor update over all parameters.
    """

    def __init__(self, params: list[nn.Parameter], lr: float):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": lr}]
        self.scales = [1.0] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (always to None: nothing here reads a zero gradient)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        pairs = [(p, p.grad, s) for p, s in zip(self.params, self.scales) if p.grad is not None]
        if not pairs:
            return
        params, grads, scales = (list(t) for t in zip(*pairs))
        if any(s != 1.0 for s in scales):
            torch._foreach_mul_(grads, scales)
        torch._foreach_add_(params, grads, alpha=-self.param_groups[0]["lr"])


def should_stop(iteration: int, rolling_loss: float, spec: TrainSpec) -> bool:
    """The per-tick stop rule: ``max_iters`` reached, or the rolling loss (window = ``min_iters``
    batches) at or below ``loss_threshold`` after at least ``min_iters`` iterations."""
    return iteration >= spec.max_iters or (iteration >= spec.min_iters and rolling_loss <= spec.loss_threshold)


@dataclass
class TickTraining:
    loss_rolling: float  # mean of the last min_iters batch losses
    acc_rolling: float  # accuracy over all iterations of the tick
    iterations: int


ACCURACY_BLOCK = 64  # iterations whose outputs are kept before their correct predictions are counted
INTERRUPT_EVERY = 64  # iterations between two looks at the stop and pause requests


def train_until(model: nn.Module, optimizer: "PlainSGD | torch.optim.Optimizer", stream: BatchStream,
                spec: TrainSpec, dtype: str = "float32",
                interrupted: Callable[[], bool] | None = None) -> TickTraining:
    """Train all parameters until ``should_stop`` (docs/algorithm.md, M2M, step 4), or until
    ``interrupted()`` (asked every ``INTERRUPT_EVERY`` iterations: a stop or pause need not wait for
    a tick of 20,000 steps) returns true: the tick then ends early with what it has trained.

    Nothing on the hot path waits for the device or adds work per step beyond the bare SGD step:
    - the batch losses stay on the device and the host reads them only when the stop rule can fire:
      once for the first ``min_iters`` iterations as a block, then one per iteration. On CUDA each
      loss is copied to pinned memory right after its forward pass and read after the backward pass
      and the update are queued, so the GPU never waits for the host;
    - the accuracy is counted from the kept outputs in blocks of ``ACCURACY_BLOCK`` iterations.
    """
    if not model.training:
        model.train()
    cuda = stream.data.device.type == "cuda"
    window: deque[float] = deque(maxlen=spec.min_iters)  # the rolling window
    pending: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []  # losses not read yet
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits, labels) not counted yet
    correct = seen = iteration = 0
    while True:
        iteration += 1
        x, y = stream.next()
        with autocast(x.device, dtype):
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        if cuda:  # recorded on the loss's own device's stream: with cuda:N, N > 0, it is not the current one
            event = torch.cuda.Event()
            pending.append((loss.detach().to("cpu", non_blocking=True), event))
            event.record(torch.cuda.current_stream(loss.device))
        else:
            pending.append((loss.detach(), None))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        outputs.append((out.detach(), y))
        seen += len(y)
        if len(outputs) == ACCURACY_BLOCK:
            correct = _count_correct(outputs) + correct  # stays on the device
            outputs.clear()
        interrupt = interrupted is not None and iteration % INTERRUPT_EVERY == 0 and interrupted()
        if iteration < spec.min_iters and not interrupt:
            continue  # the stop rule cannot fire yet: nothing to read
        values = _read_losses(pending)
        for i, value in enumerate(values, iteration - len(values) + 1):
            if not math.isfinite(value):
                lr = optimizer.param_groups[0]["lr"]
                raise TrainingDiverged(f"training diverged: the loss became {value} (iteration {i}, "
                                       f"lr {lr:g}); lower the learning rate (train.lr)")
        window.extend(values)
        if interrupt or should_stop(iteration, sum(window) / len(window), spec):
            correct = int(_count_correct(outputs) + correct)
            return TickTraining(sum(window) / len(window), correct / seen, iteration)


def _count_correct(outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | int:
    if not outputs:
        return 0
    logits, labels = zip(*outputs)
    return (torch.cat(logits).argmax(1) == torch.cat(labels)).sum()


def _read_losses(pending: list[tuple[torch.Tensor, torch.cuda.Event | None]]) -> list[float]:
    """The pending losses as floats, in one read; empties ``pending``."""
    if pending[-1][1] is not None:
        pending[-1][1].synchronize()  # stream order: every earlier copy is done too
    values = [pending[0][0].item()] if len(pending) == 1 else torch.stack([v for v, _ in pending]).tolist()
    pending.clear()
    return values


# --- mode training -----------------------------------------------------------------------------

@dataclass
class TrainRecipe:
    """How to train a mode from scratch (docs/algorithm.md, Training recipes)."""
    epochs: int = 30
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    schedule: str = "constant"  # constant | cosine | onecycle, stepped per iteration
    warmup_epochs: int = 0  # cosine: linear warm-up from min_lr first
    min_lr: float = 0.0  # cosine: the floor
    optimizer: str = "sgd"  # sgd | adamw (momentum is ignored by adamw)
    augment: bool = True


def list_recipes() -> list[dict]:
    out = []
    for path in sorted(RECIPE_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        out.append({"name": path.stem, **{k: data[k] for k in ("description", "model", "dataset")},
                    "default": bool(data.get("default"))})
    return out


def load_recipe(name: str) -> TrainRecipe:
    path = RECIPE_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(r['name'] for r in list_recipes())}")
    data = json.loads(path.read_text())
    return TrainRecipe(**{f.name: data[f.name] for f in fields(TrainRecipe) if f.name in data})


GENERIC_RECIPE = "generic"


def default_recipe(model: str, dataset: str) -> str:
    """The recipe tuned for this model and dataset, else the generic one (assets/recipes/generic.json).

    A recipe tuned for the same model on another dataset is not used: the digits MLP's recipe left an MLP on
    Fashion-MNIST at chance accuracy."""
    exact = [r for r in list_recipes() if r["model"] == model and r["dataset"] == dataset and r["default"]]
    return exact[0]["name"] if exact else GENERIC_RECIPE


def _scheduler(optimizer, recipe: TrainRecipe, steps_per_epoch: int):
    steps = recipe.epochs * steps_per_epoch
    if recipe.schedule == "constant":
        return None
    if recipe.schedule == "cosine":
        warmup = recipe.warmup_epochs * steps_per_epoch
        floor = recipe.min_lr / recipe.lr

        def factor(step: int) -> float:
            if step < warmup:
                return floor + (1 - floor) * step / warmup
            progress = (step - warmup) / max(1, steps - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps)
    raise UserError(f"unknown schedule {recipe.schedule!r}; use constant, cosine or onecycle")


def train_mode(model_name: str, dataset: str, seed: int, out: str | Path, recipe: TrainRecipe,
               device: str = "auto", data_root: str | Path | None = None,
               on_epoch: Callable[[int, int, float], None] | None = None, recipe_name: str = "",
               on_start: Callable[[], None] | None = None, download: bool = False) -> Mode:
    """Train one mode from a seeded initialisation and save it with its final metrics.

    ``on_start()`` is called once every input is checked and the data is loaded, just before the
    first epoch; ``on_epoch(epoch, epochs, mean_loss)`` reports progress.
    """
    for name in ("epochs", "batch_size"):
        if getattr(recipe, name) <= 0:
            raise UserError(f"{name.replace('_', '-')} must be positive, got {getattr(recipe, name)}")
    if recipe.lr <= 0 or recipe.weight_decay < 0 or recipe.momentum < 0:
        raise UserError("lr must be positive; weight decay and momentum must be >= 0")
    dev = resolve_device(device)
    # Every caller (the CLI, the dashboard's training thread) gets an out-of-memory failure as one line.
    with out_of_memory_is_user_error(f"training {model_name} on {dev}: lower the batch size "
                                     f"(train --batch-size) or train on the CPU"):
        train = load_dataset(dataset, "train", data_root, download).to(dev)
        test = load_dataset(dataset, "test", data_root, download).to(dev)
        dataset = train.name  # folder:/tensors: data with an absolute path, as the mode records it
        kwargs = train.model_kwargs()
        torch.manual_seed(seed)
        model = build_model(model_name, **kwargs).to(dev)
        try:  # a model built for bigger images fails here with a shape error, not mid-epoch
            with torch.no_grad():
                model.eval()(train.batch(torch.arange(2, device=dev))[0])
        except RuntimeError as e:
            if out_of_memory(e, "") is not None:
                raise
            raise UserError(f"model {model_name!r} cannot take {dataset}'s {train.in_channels}x{train.image_size}x"
                            f"{train.image_size} images ({str(e).splitlines()[0]}); use a 32x32 dataset such as "
                            f"cifar10 or fashion-mnist-rgb32") from None
        if recipe.optimizer == "adamw":
            optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        elif recipe.optimizer == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                        weight_decay=recipe.weight_decay)
        else:
            raise UserError(f"unknown optimizer {recipe.optimizer!r}; use sgd or adamw")
        steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
        scheduler = _scheduler(optimizer, recipe, steps_per_epoch)
        stream = BatchStream(train, recipe.batch_size, torch.Generator(dev).manual_seed(seed),
                             augment=recipe.augment)
        model.train()
        if on_start:
            on_start()
        for epoch in range(recipe.epochs):
            total = torch.zeros((), device=dev)
            for _ in range(steps_per_epoch):
                x, y = stream.next()
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler:
                    scheduler.step()
                total += loss.detach()
            mean_loss = total.item() / steps_per_epoch
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(f"training diverged in epoch {epoch + 1} (loss {mean_loss}), so the mode "
                                       f"learned nothing and {out} was not written: lr {recipe.lr:g} is too high for "
                                       f"{model_name} on {dataset}; lower --lr")
            if on_epoch:
                on_epoch(epoch + 1, recipe.epochs, mean_loss)
        scratch = build_model(model_name, **kwargs).to(dev)
        metrics = Evaluator(scratch, train, test, 0, seed, 10, recipe.batch_size).evaluate(model.state_dict())
        meta = ModeMeta(model=model_name, model_kwargs=kwargs, dataset=dataset, seed=seed,
                        train_config={"recipe": recipe_name, **asdict(recipe)}, metrics=metrics)
        save_mode(out, model, meta)
    return Mode(model=model.cpu(), meta=meta, path=Path(out))
