"""``rebasin``: weight matching (Ainsworth et al. 2023), then the straight line from A to the aligned B.

A permutation spec lists, per permutation group, the (tensor, axis) pairs it permutes; an axis entry
may cover a flattened block (LeNet-5's fc1 reads 16 channels of 5x5). Coordinate descent over the
groups with scipy's ``linear_sum_assignment`` until no group changes. BatchNorm running statistics are
permuted with their channels; the evaluator recomputes them along the path.
"""
import torch

from ..config import CurveSpec
from ..errors import UserError
from ..modefile import ModeMeta, now_iso, save_mode
from .registry import register_method
from .straight import StraightLine

# group -> [(state key, axis, block)]: ``block`` consecutive entries of the axis per unit (flatten)
Spec = dict[str, list[tuple[str, int, int]]]
BN = ("weight", "bias", "running_mean", "running_var")


def _out(prefix: str, bias: bool = True) -> list[tuple[str, int, int]]:
    return [(f"{prefix}.weight", 0, 1)] + ([(f"{prefix}.bias", 0, 1)] if bias else [])


def _bn(prefix: str) -> list[tuple[str, int, int]]:
    return [(f"{prefix}.{k}", 0, 1) for k in BN]


def _mlp(state) -> Spec:
    n = len([k for k in state if k.startswith("layers.") and k.endswith(".weight")])
    nxt = [f"layers.{i}" for i in range(1, n)] + ["head"]
    return {f"P{i}": _out(f"layers.{i}") + [(f"{nxt[i]}.weight", 1, 1)] for i in range(n)}


def _lenet5(state) -> Spec:
    block = state["fc1.weight"].shape[1] // 16
    return {"conv1": _out("conv1") + [("conv2.weight", 1, 1)],
            "conv2": _out("conv2") + [("fc1.weight", 1, block)],
            "fc1": _out("fc1") + [("fc2.weight", 1, 1)],
            "fc2": _out("fc2") + [("fc3.weight", 1, 1)]}


def _conv_bn_chain(convs: list[str], bns: list[str], head: str, state) -> Spec:
    spec = {}
    for i, (conv, bn) in enumerate(zip(convs, bns)):
        nxt = convs[i + 1] if i + 1 < len(convs) else head
        spec[f"P{i}"] = _out(conv, f"{conv}.bias" in state) + _bn(bn) + [(f"{nxt}.weight", 1, 1)]
    return spec


def _cnn(state) -> Spec:
    return _conv_bn_chain(["0.0", "2.0", "4.0"], ["0.1", "2.1", "4.1"], "7", state)


def _vgg11(state) -> Spec:
    convs = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.") and
                    state[k].dim() == 4})
    return _conv_bn_chain([f"features.{i}" for i in convs], [f"features.{i + 1}" for i in convs],
                          "classifier", state)


def _resnet18(state) -> Spec:
    """One permutation per residual stream (stage); one inside each basic block."""
    spec: Spec = {}
    stream = _out("conv1", False) + _bn("bn1")
    for layer in range(1, 5):
        for blk in range(2):
            p = f"layer{layer}.{blk}"
            stream.append((f"{p}.conv1.weight", 1, 1))
            if f"{p}.downsample.0.weight" in state:
                stream.append((f"{p}.downsample.0.weight", 1, 1))
                spec[f"S{layer - 1}"] = stream
                stream = _out(f"{p}.downsample.0", False) + _bn(f"{p}.downsample.1")
            spec[f"{p}.inner"] = _out(f"{p}.conv1", False) + _bn(f"{p}.bn1") + [(f"{p}.conv2.weight", 1, 1)]
            stream += _out(f"{p}.conv2", False) + _bn(f"{p}.bn2")
    spec["S4"] = stream + [("fc.weight", 1, 1)]
    return spec


SPECS = {"mlp": _mlp, "lenet5": _lenet5, "cnn": _cnn, "vgg11": _vgg11, "resnet18": _resnet18}


def check_supported(model: str) -> None:
    if model not in SPECS:
        raise UserError(f"rebasin has no permutation spec for model {model!r}; supported models: "
                        f"{', '.join(SPECS)}; use --algorithm linear, bezier or m2m for this model")


def permutation_spec(model: str, state: dict[str, torch.Tensor]) -> Spec:
    check_supported(model)
    return SPECS[model](state)


def _take(w: torch.Tensor, axis: int, block: int, perm: torch.Tensor) -> torch.Tensor:
    if block == 1:
        return w.index_select(axis, perm)
    shape = w.shape
    grouped = w.reshape(*shape[:axis], -1, block, *shape[axis + 1:])
    return grouped.index_select(axis, perm).reshape(shape)


def apply_permutation(spec: Spec, perms: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                      skip: str | None = None) -> dict[str, torch.Tensor]:
    """``state`` with every group's permutation applied to its axes (except group ``skip``)."""
    out = dict(state)
    for group, axes in spec.items():
        if group == skip:
            continue
        for key, axis, block in axes:
            out[key] = _take(out[key], axis, block, perms[group].to(out[key].device))
    return out


def _front(w: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """The axis as rows, everything else (and the flattened block) as columns."""
    w = w.movedim(axis, 0).reshape(w.shape[axis] // block, -1)
    return w.double()


def weight_matching(spec: Spec, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                    max_rounds: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Permutations of B's units that maximise sum <A, P(B)> over the spec's tensors."""
    from scipy.optimize import linear_sum_assignment
    keys = {k for axes in spec.values() for k, _, _ in axes if not k.endswith(("running_mean", "running_var"))}
    sizes = {g: a[axes[0][0]].shape[axes[0][1]] // axes[0][2] for g, axes in spec.items()}
    perms = {g: torch.arange(n) for g, n in sizes.items()}
    order = torch.Generator().manual_seed(seed)
    groups = list(spec)
    for _ in range(max_rounds):
        changed = False
        for gi in torch.randperm(len(groups), generator=order).tolist():
            g = groups[gi]
            pb = apply_permutation(spec, perms, b, skip=g)
            cost = torch.zeros(sizes[g], sizes[g], dtype=torch.float64)
            for key, axis, block in spec[g]:
                if key in keys:
                    cost += (_front(a[key], axis, block) @ _front(pb[key], axis, block).T).cpu()
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            if not torch.equal(new, perms[g]):
                old_score = cost[torch.arange(sizes[g]), perms[g]].sum()
                if cost[torch.arange(sizes[g]), new].sum() > old_score + 1e-12:
                    perms[g], changed = new, True
        if not changed:
            break
    return perms


@register_method("rebasin", settings=CurveSpec, prefix="curve", preset_family="m2m",
                 reads=("points", "repair", "repair_samples"),
                 description="weight matching (Git Re-Basin) aligns the end mode to the start, then the straight "
                             "line (curve.repair: REPAIRed)")
class Rebasin(StraightLine):
    @classmethod
    def check(cls, start, end, cfg) -> None:
        check_supported(start.meta.model)
        super().check(start, end, cfg)

    def path(self) -> list[dict]:
        ctx, meta = self.ctx, self.ctx.start.meta
        spec = permutation_spec(meta.model, ctx.a)
        perms = weight_matching(spec, ctx.a, ctx.b, seed=ctx.cfg.seed)
        aligned = apply_permutation(spec, perms, ctx.b)
        saved = ModeMeta(model=meta.model, model_kwargs=meta.model_kwargs, dataset=meta.dataset, seed=meta.seed,
                         created=now_iso(), extra={"llpf.aligned_to": "start", "llpf.run": ctx.folder.name})
        save_mode(ctx.folder / "aligned_end.safetensors", {k: v.contiguous() for k, v in aligned.items()}, saved)
        return self.line(aligned)
