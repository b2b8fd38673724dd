"""A sweep folder's record: what the sweep runs (``SweepSpec``), ``sweep.json`` (the sweep and each run's
status; read back checked by ``read_sweep``) and ``summary.csv`` (one row per pair and method), both
rewritten atomically whenever a run changes state (docs/formats.md, Sweep folder)."""
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

SWEEP_FORMAT = "llpf-sweep/1"
SUMMARY_COLUMNS = ["run", "algorithm", "start_seed", "end_seed", "status", "barrier", "path_max_train_loss",
                   "final_distance_rel", "wall_s", "error"]


@dataclass
class SweepSpec:
    """What a sweep runs; stored in sweep.json as ``spec``. Two sweeps are the same sweep when their specs are."""
    model: str
    dataset: str
    seeds: list[int]  # pairs (seeds[0], seeds[1]), (seeds[2], seeds[3]), ...
    preset: str  # "" (new sweeps without --preset): each method's default preset for the model
    algorithm: str  # one method, or several comma-separated
    overrides: list[str] = field(default_factory=list)
    recipe: str = ""
    modes: list[str] = field(default_factory=list)  # given mode files instead of trained seeds
    pair_overrides: dict[str, list[str]] = field(default_factory=dict)  # pair name -> extra overrides


def pair_name(a: int, b: int) -> str:
    return f"seed{a}-seed{b}"


def algorithms_of(spec: "SweepSpec") -> list[str]:
    return [a.strip() for a in spec.algorithm.split(",") if a.strip()]


def spec_pairs(spec: SweepSpec) -> list[tuple[str, int, int]]:
    s = spec.seeds
    return [(pair_name(s[i], s[i + 1]), s[i], s[i + 1]) for i in range(0, len(s), 2)]


SWEEP_SCHEMA = {"format": str, "status": str,
                "spec": {"model": str, "dataset": str, "seeds": [int], "preset": str, "algorithm": str,
                         "overrides?": [str], "recipe?": str, "modes?": [str], "pair_overrides?": dict},
                "pairs": [{"name": str, "pair?": str, "algorithm?": str, "start_seed": int, "end_seed": int,
                           "status": str, "error": (str, None), "run": str, "summary?": (dict, None)}]}


def read_sweep(out: str | Path) -> dict:
    """sweep.json, read back and checked (a UserError when the folder holds no sweep or it is damaged)."""
    from dataclasses import fields

    from .readers import check_schema, damaged, read_json
    file = Path(out) / "sweep.json"
    if not file.is_file():
        raise UserError(f"{out} holds no sweep (no sweep.json); start one with `sweep --out {out} ...`")
    fix = "restore it from a backup, or start the sweep again with another --out"
    info = read_json(file, SWEEP_SCHEMA, fix=fix)
    if info["format"] != SWEEP_FORMAT:
        raise UserError(f"{file} has format {info['format'][:40]!r}, expected {SWEEP_FORMAT!r}")
    unknown = sorted(set(info["spec"]) - {f.name for f in fields(SweepSpec)})
    if unknown:
        raise damaged(file, f"spec has the unknown key {unknown[0][:40]!r}", fix)
    for name, overrides in info["spec"].get("pair_overrides", {}).items():
        check_schema(overrides, [str], file, fix, f"spec.pair_overrides.{name}")
    seeds = info["spec"]["seeds"]
    if len(seeds) < 2 or len(seeds) % 2:
        raise damaged(file, f"spec.seeds lists {len(seeds)} seeds, not pairs of them", fix)
    for pair in info["pairs"]:  # each pair's seeds are the spec's; its run folder is inside the sweep folder
        if pair["start_seed"] not in seeds or pair["end_seed"] not in seeds:
            raise damaged(file, f"pair {pair['name'][:40]!r} has seeds the spec does not list", fix)
        run = Path(pair["run"])
        if run.is_absolute() or ".." in run.parts or not run.parts:
            raise damaged(file, f"pair {pair['name'][:40]!r} names the run folder {pair['run'][:60]!r}, outside the "
                                f"sweep", fix)
    return info


def spec_of(info: dict) -> SweepSpec:
    return SweepSpec(**info["spec"])


class SweepFolder:
    """sweep.json and summary.csv, rewritten atomically on every change."""

    def __init__(self, out: Path, spec: SweepSpec, info: dict | None):
        self.out = out
        methods = algorithms_of(spec)
        runs = [(n if len(methods) == 1 else f"{n}-{m}", n, m, a, b) for n, a, b in spec_pairs(spec) for m in methods]
        self.info = info or {"format": SWEEP_FORMAT, "spec": spec.__dict__, "status": "created", "pairs": [
            {"name": run, "pair": n, "algorithm": m, "start_seed": a, "end_seed": b, "status": "pending",
             "error": None, "start": None, "end": None, "run": f"runs/{run}"} for run, n, m, a, b in runs]}

    def pair(self, name: str) -> dict:
        return next(p for p in self.info["pairs"] if p["name"] == name)

    def set(self, name: str | None = None, **fields) -> None:
        (self.pair(name) if name else self.info).update(fields)
        self.write()

    def write(self) -> None:
        from .safefile import write_atomic, write_json
        write_json(self.out / "sweep.json", self.info)
        buf = io.StringIO()
        w = csv.DictWriter(buf, SUMMARY_COLUMNS, lineterminator="\n")
        w.writeheader()
        for p in self.info["pairs"]:
            s = p.get("summary") or {}
            w.writerow({"run": p["name"], "algorithm": p.get("algorithm", self.info["spec"]["algorithm"]),
                        "start_seed": p["start_seed"], "end_seed": p["end_seed"], "status": p["status"],
                        "error": p["error"] or "", **{k: s.get(k, "") for k in SUMMARY_COLUMNS[5:9]}})
        write_atomic(self.out / "summary.csv", buf.getvalue().encode())
