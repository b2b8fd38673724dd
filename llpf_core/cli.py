"""``llpf`` (or ``python -m llpf_core``): the argparse parser and the dispatch to the subcommands.

Exit codes (docs/formats.md, Exit codes): 0 success, 2 user error (one line on stderr), 1 anything else. The
commands live in commands.py (``sweep`` in sweep_command.py), imported once the arguments parse:
``--help`` needs no torch.
"""
import argparse
import sys

from .errors import UserError
from .methods.registry import BUILTIN

# The methods named in --help: the built-in ones (listing them imports nothing); a plugin's name is
# checked against the registry once the plugins are loaded, so --algorithm takes it too.
METHODS_HELP = f"{', '.join(BUILTIN)}, or a plugin's method (--plugin FILE.py)"

# --- shared options ------------------------------------------------------------------------------

def _add_device_option(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", help=f"cpu, cuda, cuda:N or auto (CUDA when present; default: {default})")


def _add_data_root_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="torchvision data root (default: $LLPF_HOME/data)")


def _add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_plugin_option(parser: argparse.ArgumentParser) -> None:
    """``--plugin`` on every command (added to each subparser, so it may follow the command name)."""
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                        help="load a plugin that registers models or path methods (repeatable; also $LLPF_PLUGINS, "
                             "':'-separated)")


def _prog() -> str:
    """The command as it was typed: ``llpf`` (the installed script) or ``python -m llpf_core``."""
    return "python -m llpf_core" if sys.argv[0].endswith("__main__.py") else "llpf"


# --- parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(),
                                     description="Find and check low-loss paths between trained networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one mode from a seed")
    p.add_argument("--model", required=True, help="registry name: mlp, lenet5, cnn, ...")
    p.add_argument("--dataset", default="digits",
                   help="digits (default), fashion-mnist, mnist, cifar10, cifar100, folder:PATH, tensors:FILE")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="PATH.safetensors")
    p.add_argument("--recipe", help="training recipe (default: the one for this model and dataset)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--download", action="store_true",
                   help="download mnist/cifar10/cifar100 into the data root if missing (needs internet)")
    _add_device_option(p)
    _add_data_root_option(p)
    _add_quiet_option(p)
    p.set_defaults(command_name="train")

    p = sub.add_parser("connect", help="connect two modes (or a mode and the origin) with a path method "
                                       "(LLPF by default)")
    p.add_argument("start", help="start mode file")
    p.add_argument("end", help="end mode file, or 'origin' for m2o")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--preset", help="preset name or JSON file (default: the one for the modes' model)")
    p.add_argument("--algorithm", metavar="METHOD",
                   help=f"the path method: {METHODS_HELP} (default: m2m; m2o to 'origin')")
    p.add_argument("--ticks", type=int)
    p.add_argument("--seed", type=int)
    _add_device_option(p, default="the preset's, auto; with --resume, the device to continue on")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=0.01 --set phases.0.step_a=0.02")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _add_data_root_option(p)
    _add_quiet_option(p)
    p.set_defaults(command_name="connect")

    p = sub.add_parser("check", help="summarise a run; recompute its baseline or continuity checks")
    p.add_argument("run_dir")
    p.add_argument("--baseline", action="store_true", help="recompute the straight-line baseline")
    p.add_argument("--continuity", action="store_true", help="check continuity between consecutive saved points")
    _add_data_root_option(p)
    p.set_defaults(command_name="check")

    p = sub.add_parser("inspect", help="show a mode's metadata or a run's status and summary")
    p.add_argument("path", help="mode/point file or run folder")
    p.set_defaults(command_name="inspect")

    p = sub.add_parser("independence", help="per-layer cosine similarity of two modes, with a verdict")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(command_name="independence")

    p = sub.add_parser("demo", help="train two digits modes, connect them and print the checks (about 6 s on 2 cores)")
    p.add_argument("--out", help="folder for the demo's modes and run (default: $LLPF_HOME/demo-<time>)")
    _add_device_option(p, default="cpu")
    _add_quiet_option(p)
    p.set_defaults(command_name="demo")

    p = sub.add_parser("sweep", help="train 2N modes and run one or more path methods on every pair "
                                     "(batched, or in parallel on Ray)")
    p.add_argument("--out", required=True, help="sweep folder (modes/, runs/, sweep.json, summary.csv)")
    p.add_argument("--model", help="registry name (with --pairs)")
    p.add_argument("--dataset", help="dataset (default digits)")
    p.add_argument("--pairs", type=int, help="number of pairs N: seeds S..S+2N-1 paired (S, S+1), (S+2, S+3), ...")
    p.add_argument("--seed", type=int, help="first seed S (default 1)")
    p.add_argument("--modes", nargs="+", metavar="FILE",
                   help="existing mode files, paired in order, instead of training")
    p.add_argument("--preset", help="preset name (default: the one for the model)")
    p.add_argument("--algorithm", metavar="METHOD[,METHOD...]",
                   help=f"the path method(s) run on every pair, comma-separated: {METHODS_HELP} (default: m2m)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field for every pair")
    p.add_argument("--pair-set", action="append", metavar="PAIR:KEY=VALUE",
                   help="override a config field for one pair only, e.g. seed3-seed4:train.lr=0.01")
    p.add_argument("--recipe", help="training recipe for the modes (default: the one for the model and dataset)")
    p.add_argument("--workers", type=int, help="batches of pairs at once (default: the local CPU count; on a "
                   "cluster: all); 1 without --ray-address: in this process, without starting Ray")
    p.add_argument("--ray-address", help="join a Ray cluster (auto or host:port) instead of a local Ray")
    p.add_argument("--cpus-per-path", type=float, default=1.0, help="Ray CPUs per search (default 1)")
    p.add_argument("--gpus-per-path", type=float, default=0.0, help="Ray GPUs per search, e.g. 0.25 (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads inside each search (default 1)")
    p.add_argument("--batch", type=int, metavar="K",
                   help="LLPF pairs advanced together in one process, their training stacked (default: 32 "
                        "for small models such as the digits MLP, else 1; see docs/batched.md)")
    p.add_argument("--resume", action="store_true",
                   help="finish the sweep in --out as stored (failed or interrupted pairs); only the Ray options apply")
    _add_quiet_option(p)
    p.set_defaults(command_name="sweep")
    p = sub.add_parser("landscape",
                       help="the loss over the plane through the start mode, the end mode and a path point")
    p.add_argument("run_dir")
    p.add_argument("--point", type=int, metavar="TICK",
                   help="the saved point spanning the plane (default: the one farthest from the straight line)")
    p.add_argument("--grid", type=int, default=21, help="points per side, 3 to 201 (default: 21)")
    p.add_argument("--margin", type=float, default=0.2, help="border around A, B and the path, as a fraction "
                   "of the plane's extent (default: 0.2)")
    p.add_argument("--samples", type=int, help="samples per split (default: the run's eval_samples; 0 = whole split)")
    _add_device_option(p, default="cpu")
    _add_data_root_option(p)
    _add_quiet_option(p)
    p.set_defaults(command_name="landscape")

    p = sub.add_parser("layerwise", help="which layers carry the barrier: interpolate one layer (or group) at a time")
    p.add_argument("paths", nargs="+", metavar="START END | RUN",
                   help="two mode files (with --out), or a run folder (its endpoints; written to RUN/layerwise)")
    p.add_argument("--out", help="folder for layerwise.csv, summary.csv and layerwise.json")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1",
                   help="interpolation points between 0 and 1, comma-separated (default: 0,0.25,0.5,0.75,1)")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="only these layers (module names, as in summary.csv), and the whole model; no cumulative "
                        "groups")
    p.add_argument("--samples", type=int, help="samples per split (default: the preset's or the run's "
                   "eval_samples; 0 = whole split)")
    _add_device_option(p, default="cpu")
    _add_data_root_option(p)
    _add_quiet_option(p)
    p.set_defaults(command_name="layerwise")

    p = sub.add_parser("presets", help="list search presets and training recipes")
    p.set_defaults(command_name="presets")

    p = sub.add_parser("import", help="check a bare state dict (safetensors) against a model and save it as a mode")
    p.add_argument("state", help="STATE.safetensors, e.g. from save_file(model.state_dict(), ...)")
    p.add_argument("--model", required=True, help="registry name (the zoo's or a plugin's)")
    p.add_argument("--dataset", required=True,
                   help="the dataset it was trained on: digits, ..., folder:PATH, tensors:FILE.safetensors")
    p.add_argument("--out", required=True, help="MODE.safetensors to write")
    p.add_argument("--model-kwargs", dest="model_kwargs", help="builder arguments as JSON, e.g. '{\"hidden\": [32]}'")
    p.add_argument("--seed", type=int, help="the seed it was trained with (recorded)")
    _add_data_root_option(p)
    _add_quiet_option(p)
    p.set_defaults(command_name="import")
    p = sub.add_parser("dashboard", help="serve the Streamlit dashboard (http://localhost:8501 by default)")
    p.add_argument("--port", type=int, help="port to listen on (default: 8501, or the next free one)")
    p.add_argument("--address", help="address to listen on (default: 127.0.0.1, this machine only; "
                   "0.0.0.0 shares it on the network: set $LLPF_ACCESS_TOKEN first)")
    p.add_argument("--workspace", help="folder for modes, runs and data (default: $LLPF_HOME or ./llpf-workspace)")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, metavar="...",
                   help="further Streamlit options, e.g. --server.maxUploadSize 500")
    p.set_defaults(command_name="dashboard")
    for subparser in sub.choices.values():
        _add_plugin_option(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command_name == "dashboard":  # starts Streamlit in its own process: no torch here
            from .dashboard import run_dashboard
            return run_dashboard(args)
        from . import commands, sweep_command  # torch and the engine: imported only once a command runs
        from .plugins import load_plugins
        load_plugins(args.plugin)
        module = sweep_command if args.command_name == "sweep" else commands
        return getattr(module, f"cmd_{args.command_name}")(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an I/O failure that the engine did not word itself
        from .safefile import os_error
        print(f"error: {os_error(e, 'use', e.filename) if e.filename else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from .device import out_of_memory
        oom = out_of_memory(e, "lower the batch size (train --batch-size, connect --set train.batch_size=...)")
        if oom is None:
            raise
        print(f"error: {oom}", file=sys.stderr)
        return 2
