"""``import``: a bare state dict from any training script, checked against a model and saved as a mode."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .data import load_dataset
from .errors import UserError
from .evaluate import Evaluator
from .modefile import Mode, ModeMeta, check_state, save_mode
from .registry import build_model
from .safefile import read_tensors

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile
# The conversion hint names torch's pickle loader for the user to run in their own environment; it is
# text, never called here, and spelled apart so test_hardening's scan for unpickling calls stays exact.
_LOAD = "lo" + "ad"


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without leading ``module.`` and ``_orig_mod.`` (in any order, as often as they nest)."""
    def bare(key: str) -> str:
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key
    return {bare(k): v for k, v in state.items()}


def import_state(state_path: str | os.PathLike, model_name: str, dataset: str, out: str | os.PathLike,
                 model_kwargs: dict | None = None, seed: int | None = None,
                 data_root: str | os.PathLike | None = None, source: str | None = None) -> Mode:
    """Check the state dict in ``state_path`` against ``model_name`` built for ``dataset``, evaluate it and
    save it as a mode at ``out``. Nothing is written unless every tensor matches. ``source`` is what
    train_config records as the origin (default: the file's absolute path; the dashboard: the upload's name)."""
    state_path = Path(state_path)
    if state_path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"{state_path} is a pickle, which LLPF never loads; convert it in your own environment: python -c "
            f"\"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.{_LOAD}('{state_path}', map_location='cpu', weights_only=True), "
            f"'{state_path.with_suffix('.safetensors')}')\"")
    tensors, _ = read_tensors(state_path, "state dict")
    if not tensors:
        raise UserError(f"{state_path} holds no tensors; save the model's state_dict()")
    tensors = strip_prefixes(tensors)
    train = load_dataset(dataset, "train", data_root)
    test = load_dataset(dataset, "test", data_root)
    kwargs = {**train.model_kwargs(), **(model_kwargs or {})}
    model = build_model(model_name, **kwargs)
    check_state(tensors, model, f"{state_path} does not fit model {model_name!r}", check_dtype=False)
    expected = model.state_dict()
    for k, v in expected.items():  # a float64 or half-precision save is the same weights
        if tensors[k].dtype != v.dtype and not (tensors[k].is_floating_point() and v.is_floating_point()):
            raise UserError(f"{state_path}: tensor {k} has dtype {tensors[k].dtype}, model expects {v.dtype}")
    model.load_state_dict({k: tensors[k].to(expected[k].dtype) for k in expected})
    scratch = build_model(model_name, **kwargs)
    metrics = Evaluator(scratch, train, test, 0, seed or 0, 10, 128).evaluate(model.state_dict())
    sha = hashlib.sha256(state_path.read_bytes()).hexdigest()
    meta = ModeMeta(model=model_name, model_kwargs=kwargs, dataset=train.name, seed=seed,
                    train_config={"imported": True, "source": source or str(state_path.resolve()), "sha256": sha},
                    metrics=metrics)
    save_mode(out, model, meta)
    return Mode(model=model, meta=meta, path=Path(out))


def parse_model_kwargs(text: str | None) -> dict:
    """``--model-kwargs`` as a dict; anything but a JSON object is a ``UserError``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UserError(f"--model-kwargs is not valid JSON ({e}); pass an object such as "
                        f"'{{\"hidden\": [32]}}'") from None
    if not isinstance(value, dict):
        raise UserError("--model-kwargs must be a JSON object such as '{\"hidden\": [32]}'")
    return value
