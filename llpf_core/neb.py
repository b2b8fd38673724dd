"""AutoNEB (Draxler et al. 2018): a chain of pivots from A to B relaxed onto a low-loss path.

The chain starts on the straight line with ``settings.pivots`` interior pivots. Each cycle of the
schedule (steps, lr, inserts) first inserts up to ``inserts`` pivots where the last dense evaluation
bulges most above the chord between two pivots, then takes ``steps`` SGD steps on all interior pivots
jointly, and ends with a dense evaluation (``dense_per_segment`` interpolated points per segment). One SGD
step:
- every pivot's loss on one shared batch (the ends' without gradient; they never move);
- each interior gradient loses its component along the Henkelman-Jonsson improved tangent, so pivots
  slide down the valley without bunching up; SGD with momentum (torch.optim.SGD) moves them;
- the pivots are re-spaced along the chain's arc length to their target fractions (equal at the start;
  an insertion splits its segment's fraction where it inserted): the reference configs' infinite
  spring constant.

Pivots are flat vectors of the model's *parameters*. BatchNorm: the training loss is taken in train
mode (batch statistics, as the modes were trained), and running statistics are not optimised: a path
point's float buffers are interpolated between A's and B's by its arc position, and every evaluation
(the dense one here, through ``evaluator_loss``, and the run's points) recomputes them on fixed training
batches as llpf_core/evaluate.py does, because interpolated running statistics are meaningless.

``AutoNEB`` is a resumable state machine: ``advance(n)`` does at most ``n`` SGD steps (and the
insertions and dense evaluations on the way), ``state_dict()``/``load_state_dict()`` checkpoint it at
any step, and ``path_states()`` gives the final pivots as full state dicts.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

from .errors import UserError
from .evaluate import Evaluator, fixed_subset
from .train import BatchStream

State = dict[str, torch.Tensor]
DenseLoss = Callable[[list[State]], list[float]]


@dataclass(frozen=True)
class Cycle:
    steps: int  # SGD steps on the interior pivots
    lr: float  # SGD learning rate for those steps
    inserts: int  # pivots inserted at the largest bulges before the steps (at most; see insert_threshold)


@dataclass
class AutoNEBSettings:
    """AutoNEB's knobs. The defaults fit the digits MLP and LeNet-5 on a CPU (seconds to a few minutes);
    the reference's CIFAR configs use 4,000-14,000 steps at lr 0.1 to 0.001 and 9 points per segment."""
    pivots: int = 3  # interior pivots of the starting chain, equally spaced on the straight line
    # a list (not a tuple) so the run config's type check reads it: --set autoneb.cycles.0.steps=100
    cycles: list[Cycle] = field(default_factory=lambda: [Cycle(150, 0.05, 0), Cycle(150, 0.05, 2),
                                                         Cycle(150, 0.05, 2), Cycle(150, 0.01, 2),
                                                         Cycle(150, 0.001, 0)])
    momentum: float = 0.9  # SGD momentum, reset at every cycle (the pivot count may change)
    weight_decay: float = 0.0  # L2 on the interior pivots, added to their gradients before the projection
    batch_size: int = 64  # training samples per SGD step, shared by all pivots of the step
    dense_per_segment: int = 4  # interpolated points per segment in the dense evaluation
    insert_threshold: float = 0.1  # least bulge, as a fraction of the pivots' loss range, worth a pivot
    dense_samples: int = 2000  # fixed training samples per dense evaluation point (0 = the whole split)

    def check(self) -> None:
        """One-line errors for settings no run could use."""
        if self.pivots < 1 or self.dense_per_segment < 0 or self.dense_samples < 0 or self.batch_size <= 0:
            raise UserError("autoneb: pivots and batch_size must be positive, dense_per_segment and "
                            "dense_samples >= 0")
        if not self.cycles:
            raise UserError("autoneb: the schedule needs at least one cycle (steps, lr, inserts)")
        for c in self.cycles:
            if c.steps < 0 or c.lr <= 0 or c.inserts < 0:
                raise UserError(f"autoneb: bad cycle {c}: steps and inserts must be >= 0 and lr positive")
        if any(c.inserts for c in self.cycles) and self.dense_per_segment == 0:
            raise UserError("autoneb: inserting pivots needs dense_per_segment >= 1 (it finds the bulges)")

    def to_dict(self) -> dict:
        return {**asdict(self), "cycles": [asdict(c) for c in self.cycles]}

    @classmethod
    def from_dict(cls, data: dict) -> AutoNEBSettings:
        """The inverse of ``to_dict`` (a config's or a checkpoint's JSON; a cycle may also be a
        [steps, lr, inserts] triple); unknown names are an error."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"autoneb: unknown setting {unknown[0]!r}; known: {', '.join(f.name for f in fields(cls))}")
        if "cycles" not in data:
            return cls(**data)
        try:
            cycles = tuple(Cycle(**c) if isinstance(c, dict) else Cycle(*c) for c in data["cycles"])
        except TypeError:
            raise UserError("autoneb: each cycle needs exactly steps, lr and inserts, e.g. [150, 0.05, 2]") from None
        return cls(**{**data, "cycles": cycles})


# --- the chain's geometry (pure functions on (n, D) pivot tensors) --------------------------------

def improved_tangents(pivots: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Unit tangents at the interior pivots (Henkelman & Jonsson 2000): toward the higher neighbour on
    a slope; at an extremum, both neighbours' directions weighted by the loss differences."""
    forward, backward = pivots[2:] - pivots[1:-1], pivots[1:-1] - pivots[:-2]
    prev, here, nxt = losses[:-2], losses[1:-1], losses[2:]
    d_next, d_prev = (nxt - here).abs(), (prev - here).abs()
    big, small = torch.maximum(d_next, d_prev), torch.minimum(d_next, d_prev)
    w_fwd = torch.where(nxt > prev, big, small)
    w_bwd = torch.where(nxt > prev, small, big)
    rising, falling = (prev < here) & (here < nxt), (prev > here) & (here > nxt)
    w_fwd = torch.where(rising, 1.0, torch.where(falling, 0.0, w_fwd))
    w_bwd = torch.where(rising, 0.0, torch.where(falling, 1.0, w_bwd))
    flat = (w_fwd == 0) & (w_bwd == 0)  # all three losses equal: the chord's direction
    w_fwd, w_bwd = torch.where(flat, 1.0, w_fwd), torch.where(flat, 1.0, w_bwd)
    tangent = w_fwd[:, None] * forward + w_bwd[:, None] * backward
    return tangent / tangent.norm(dim=1, keepdim=True).clamp_min(1e-30)


def project_out(grads: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
    """Each row of ``grads`` without its component along the matching unit tangent."""
    return grads - (grads * tangents).sum(1, keepdim=True) * tangents


def arc_lengths(pivots: torch.Tensor) -> torch.Tensor:
    """Cumulative Euclidean length along the chain at each pivot (0 at the first)."""
    return F.pad((pivots[1:] - pivots[:-1]).norm(dim=1).cumsum(0), (1, 0))


def respace(pivots: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """The chain's pivots moved along its own polyline so that segment i spans ``fractions[i]`` of the
    arc length; the ends stay exactly where they are."""
    s = arc_lengths(pivots)
    targets = fractions.cumsum(0)[:-1] / fractions.sum() * s[-1]
    seg = (torch.searchsorted(s, targets, right=True) - 1).clamp(0, len(pivots) - 2)
    span = (s[seg + 1] - s[seg]).clamp_min(1e-30)
    t = ((targets - s[seg]) / span).clamp(0, 1)[:, None]
    inner = torch.lerp(pivots[seg], pivots[seg + 1], t)
    return torch.cat([pivots[:1], inner, pivots[-1:]])


def dense_alphas(per_segment: int) -> torch.Tensor:
    """Positions inside a segment of the dense evaluation's interpolated points."""
    return torch.linspace(0, 1, per_segment + 2)[1:-1]


def dense_points(pivots: torch.Tensor, per_segment: int) -> torch.Tensor:
    """Pivots with ``per_segment`` points interpolated into each segment, in order along the chain."""
    alphas = dense_alphas(per_segment).to(pivots)[None, :, None]
    inner = torch.lerp(pivots[:-1, None], pivots[1:, None], alphas)  # (n-1, m, D)
    rows = torch.cat([pivots[:-1, None], inner], 1).flatten(0, 1)
    return torch.cat([rows, pivots[-1:]])


def bulges(dense: torch.Tensor, n_pivots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per segment, the largest excess of the dense loss over the chord between its two pivots' losses,
    as a fraction of the pivots' loss range, and the position in the segment where it is."""
    per = (len(dense) - 1) // (n_pivots - 1) - 1
    at_pivots = dense[::per + 1]
    inner = dense[:-1].reshape(n_pivots - 1, per + 1)[:, 1:]
    alphas = dense_alphas(per).to(dense)
    chord = torch.lerp(at_pivots[:-1, None], at_pivots[1:, None], alphas[None])
    excess = (inner - chord) / ((at_pivots.max() - at_pivots.min()) + 1e-12)
    best, where = excess.max(1)
    return best, alphas[where]


def insert_at_bulges(pivots: torch.Tensor, fractions: torch.Tensor, dense: torch.Tensor, count: int,
                     threshold: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Up to ``count`` new pivots, one in each of the segments with the largest bulges above
    ``threshold``, placed where the bulge is; the segment's fraction is split there. Returns the new
    pivots, fractions and how many were inserted."""
    score, alpha = bulges(dense, len(pivots))
    chosen = [i for i in score.argsort(descending=True)[:count].tolist() if score[i] > threshold]
    rows, fracs = [pivots[:1]], []
    for i in range(len(pivots) - 1):
        if i in chosen:
            a = float(alpha[i])
            rows.append(torch.lerp(pivots[i], pivots[i + 1], a)[None])
            fracs += [fractions[i] * a, fractions[i] * (1 - a)]
        else:
            fracs.append(fractions[i])
        rows.append(pivots[i + 1:i + 2])
    return torch.cat(rows), torch.stack(fracs), len(chosen)


# --- the state machine ----------------------------------------------------------------------------

class AutoNEB:
    """AutoNEB between the states ``a`` and ``b`` of ``model`` (a skeleton: it runs a copy with
    ``functional_call``, all pivots at once under ``vmap``; no weights of its own are used).
    ``stream`` gives the training batches (its position is part of the checkpoint); ``dense_loss``
    evaluates a list of full states (eval mode on fixed samples: ``evaluator_loss``)."""

    def __init__(self, model: nn.Module, a: State, b: State, stream: BatchStream, dense_loss: DenseLoss,
                 settings: AutoNEBSettings):
        settings.check()
        # an own copy, its BatchNorm layers on batch statistics only: vmap runs every pivot's forward
        # pass at once, and no pass may write running statistics
        self.model = replace_all_batch_norm_modules_(copy.deepcopy(model)).train()
        self.a, self.b = a, b
        self.stream, self.dense_loss, self.settings = stream, dense_loss, settings
        self.keys = [k for k, _ in model.named_parameters()]
        self.shapes = [a[k].shape for k in self.keys]
        self.buffers = dict(self.model.named_buffers())
        ends = torch.stack([self._flatten(a), self._flatten(b)])
        line = torch.linspace(0, 1, settings.pivots + 2, dtype=ends.dtype, device=ends.device)[:, None]
        self.pivots = torch.lerp(ends[:1], ends[1:], line)
        self.fractions = torch.full((settings.pivots + 1,), 1.0 / (settings.pivots + 1), dtype=torch.float64)
        self.cycle = self.step = self.sgd_steps = 0
        self.started_cycle = False  # this cycle's insertion done and optimizer set up
        self.inserted = 0  # pivots this cycle inserted
        self.dense: torch.Tensor | None = None  # dense losses of the current pivots (None: stale)
        self.history: list[dict] = []  # one entry per finished cycle, for progress and the summary
        self.last_losses: torch.Tensor | None = None  # the last SGD step's batch loss at every pivot
        self.optimizer: torch.optim.SGD | None = None
        self.interior: torch.Tensor | None = None

    # flat vectors <-> parameter dicts
    def _flatten(self, state: State) -> torch.Tensor:
        return torch.cat([state[k].reshape(-1) for k in self.keys]).detach()

    def _params(self, vectors: torch.Tensor) -> State:
        """Parameter dicts of flat vectors: (D,) -> shapes, (n, D) -> (n, *shapes) for vmap."""
        chunks = vectors.split([s.numel() for s in self.shapes], dim=-1)
        return {k: c.reshape(*vectors.shape[:-1], *s) for k, c, s in zip(self.keys, chunks, self.shapes)}

    @property
    def total_steps(self) -> int:
        return sum(c.steps for c in self.settings.cycles)

    @property
    def done(self) -> bool:
        return self.cycle >= len(self.settings.cycles)

    def advance(self, max_steps: int) -> int:
        """Run at most ``max_steps`` SGD steps, with the cycle boundaries on the way (insertions, dense
        evaluations); returns the steps taken (fewer only when the schedule is done)."""
        taken = 0
        while not self.done:
            spec = self.settings.cycles[self.cycle]
            if not self.started_cycle:
                self._start_cycle(spec)
            if self.step >= spec.steps:
                self._finish_cycle()
                continue
            if taken >= max_steps:
                break
            self._sgd_step()
            taken += 1
        return taken

    def _start_cycle(self, spec: Cycle) -> None:
        inserted = 0
        if spec.inserts:
            self.pivots, self.fractions, inserted = insert_at_bulges(
                self.pivots, self.fractions, self.evaluate_dense(), spec.inserts, self.settings.insert_threshold)
            if inserted:
                self.dense = None
        self._new_optimizer(spec.lr)
        self.started_cycle, self.inserted = True, inserted

    def _new_optimizer(self, lr: float, momentum_buffer: torch.Tensor | None = None) -> None:
        self.interior = self.pivots[1:-1].clone().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.interior], lr=lr, momentum=self.settings.momentum)
        if momentum_buffer is not None:
            self.optimizer.state[self.interior]["momentum_buffer"] = momentum_buffer.to(self.interior).clone()

    def _sgd_step(self) -> None:
        x, y = self.stream.next()
        chain = torch.cat([self.pivots[:1], self.interior, self.pivots[-1:]])  # the ends carry no gradient
        params = self._params(chain)

        def loss(p: State) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.model, {**p, **self.buffers}, (x,)), y)
        stacked = vmap(loss, randomness="different")(params)
        self.last_losses = stacked.detach()
        self.optimizer.zero_grad(set_to_none=True)
        stacked[1:-1].sum().backward()
        with torch.no_grad():
            grad = self.interior.grad
            if self.settings.weight_decay:
                grad += self.settings.weight_decay * self.interior
            tangents = improved_tangents(self.pivots, stacked.detach())
            grad.copy_(project_out(grad, tangents))
            self.optimizer.step()
            self.pivots[1:-1] = self.interior
            self.pivots = respace(self.pivots, self.fractions.to(self.pivots))
            self.interior.copy_(self.pivots[1:-1])
        self.step += 1
        self.sgd_steps += 1
        self.dense = None

    def _finish_cycle(self) -> None:
        dense = self.evaluate_dense()
        self.history.append({"cycle": self.cycle, "pivots": len(self.pivots), "inserted": self.inserted,
                             "steps": self.step, "sgd_steps": self.sgd_steps,
                             "dense_max": float(dense.max()), "pivot_max": float(self.pivot_losses().max())})
        self.cycle, self.step, self.started_cycle = self.cycle + 1, 0, False

    def evaluate_dense(self) -> torch.Tensor:
        """The dense evaluation of the current chain (cached until the pivots move)."""
        if self.dense is None:
            points = dense_points(self.pivots, self.settings.dense_per_segment)
            positions = self._positions(points)
            self.dense = torch.tensor(self.dense_loss([self._state(p, s) for p, s in zip(points, positions)]),
                                      dtype=torch.float64)
        return self.dense

    def pivot_losses(self) -> torch.Tensor:
        """The dense evaluation's losses at the pivots."""
        return self.evaluate_dense()[::self.settings.dense_per_segment + 1]

    def _positions(self, points: torch.Tensor) -> list[float]:
        s = arc_lengths(points)
        return (s / s[-1].clamp_min(1e-30)).tolist()

    def _state(self, vector: torch.Tensor, position: float) -> State:
        """A full state dict: parameters from ``vector``; float buffers interpolated between A's and B's
        by arc position (the evaluator recomputes BatchNorm's); integer buffers from the nearer end."""
        params = {k: v.detach().clone() for k, v in self._params(vector).items()}
        others = {k: (torch.lerp(self.a[k], self.b[k], position) if self.a[k].is_floating_point()
                      else (self.b[k] if position > 0.5 else self.a[k]).clone())
                  for k in self.a if k not in params}
        return {k: (params[k] if k in params else others[k]) for k in self.a}

    def path_states(self) -> list[State]:
        """The pivots as full state dicts, from exactly A to exactly B."""
        positions = self._positions(self.pivots)
        inner = [self._state(p, s) for p, s in zip(self.pivots[1:-1], positions[1:-1])]
        return [dict(self.a), *inner, dict(self.b)]

    def state_dict(self) -> tuple[State, dict]:
        """Tensors and JSON-able info that ``load_state_dict`` continues from, at any step."""
        stream = self.stream.state_dict()
        tensors = {"pivots": self.pivots.detach().clone(), "fractions": self.fractions.clone(),
                   "stream.perm": stream["perm"], "stream.rng": stream["rng"], "torch.rng": self._rng_state()}
        if self.dense is not None:
            tensors["dense"] = self.dense
        if self.started_cycle:
            buf = self.optimizer.state.get(self.interior, {}).get("momentum_buffer")
            if buf is not None:
                tensors["momentum"] = buf.detach().clone()
        info = {"algorithm": "autoneb", "cycle": self.cycle, "step": self.step, "sgd_steps": self.sgd_steps,
                "started_cycle": self.started_cycle, "inserted": self.inserted,
                "history": list(self.history), "stream_pos": stream["pos"], "settings": self.settings.to_dict()}
        return tensors, info

    def _rng_state(self) -> torch.Tensor:
        """The generator dropout draws its masks from (under vmap, one per pivot)."""
        return torch.cuda.get_rng_state(self.pivots.device) if self.pivots.is_cuda else torch.get_rng_state()

    def load_state_dict(self, tensors: State, info: dict) -> None:
        pivots = tensors.get("pivots")
        if pivots is None or pivots.dim() != 2 or pivots.shape[1] != self.pivots.shape[1]:
            raise UserError("the AutoNEB checkpoint does not fit this model (pivot size differs); "
                            "start the run afresh instead of resuming it")
        self.pivots = pivots.to(self.pivots).clone()
        self.fractions = tensors["fractions"].double().clone()
        self.dense = tensors["dense"].double().clone() if "dense" in tensors else None
        self.cycle, self.step, self.sgd_steps = int(info["cycle"]), int(info["step"]), int(info["sgd_steps"])
        self.started_cycle, self.inserted = bool(info["started_cycle"]), int(info["inserted"])
        self.history = list(info["history"])
        self.stream.load_state_dict({"perm": tensors["stream.perm"], "pos": info["stream_pos"],
                                     "rng": tensors["stream.rng"]})
        if self.pivots.is_cuda:
            torch.cuda.set_rng_state(tensors["torch.rng"], self.pivots.device)
        else:
            torch.set_rng_state(tensors["torch.rng"])
        if self.started_cycle:
            self._new_optimizer(self.settings.cycles[self.cycle].lr, tensors.get("momentum"))


def evaluator_loss(evaluator: Evaluator, samples: int, seed: int) -> DenseLoss:
    """The dense evaluation through ``evaluator``: eval mode, BatchNorm statistics recomputed, mean
    cross-entropy on ``samples`` fixed training samples drawn with ``seed`` (0: the whole split)."""
    idx = fixed_subset(len(evaluator.train), samples, seed, evaluator.train.device)

    def losses(states: list[State]) -> list[float]:
        values = []
        for state in states:
            evaluator.load(state)
            values.append(evaluator.loss_acc(evaluator.train, idx)[0])
        return torch.stack(values).tolist()
    return losses
