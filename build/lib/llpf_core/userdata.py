"""The user's own image data: ``folder:PATH`` (ImageFolder layout) and ``tensors:FILE.safetensors``.

A folder's images are decoded once (torchvision's decoders) into uint8 tensors, cached with the
training split's normalisation statistics in ``PATH/.llpf-cache.safetensors``; the cache is rebuilt
when any image file is added, removed or changed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .errors import UserError
from .safefile import read_tensors, save_tensors

FOLDER, TENSORS = "folder:", "tensors:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_NAME = ".llpf-cache.safetensors"
MIN_CLASS_SHARE = 0.05  # a class with fewer training images than 5% of the largest class's is unusable
SPLITS = ("train", "test")


def is_user_dataset(name: str) -> bool:
    return name.startswith((FOLDER, TENSORS))


def canonical_name(name: str) -> str:
    """``folder:``/``tensors:`` names with an absolute path (modes record it: they load from any folder);
    other names unchanged."""
    if not is_user_dataset(name):
        return name
    prefix = FOLDER if name.startswith(FOLDER) else TENSORS
    return prefix + str(Path(name[len(prefix):]).expanduser().resolve())


def load_user_dataset(name: str) -> dict[str, torch.Tensor | list]:
    """Both splits as ``{split_images, split_labels, mean, std, classes}``; every problem is one line."""
    if name.startswith(FOLDER):
        return _folder(Path(name[len(FOLDER):]).expanduser())
    return _tensor_file(Path(name[len(TENSORS):]).expanduser())


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).float() / 255
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist())


def _check(data: dict, where: str, classes: list[str]) -> None:
    """The checks both kinds of data share: empty, classes missing from test, too unbalanced."""
    train, test = data["train_labels"], data["test_labels"]
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"{where}: the {'train' if len(train) == 0 else 'test'} split has no images")
    counts = torch.bincount(train, minlength=len(classes))
    missing = [classes[c] for c in range(len(classes)) if c not in set(test.tolist())]
    if missing:
        raise UserError(f"{where}: class {', '.join(missing[:3])} has no test images; add some to test/")
    if counts.min() < MIN_CLASS_SHARE * counts.max():
        c = int(counts.argmin())
        raise UserError(f"{where}: class {classes[c]} has {int(counts[c])} training images against {int(counts.max())} "
                        f"for the largest class, too few to learn; add images or remove the class")


def _folder(root: Path) -> dict:
    where = f"folder:{root}"
    for split in SPLITS:
        if not (root / split).is_dir():
            raise UserError(f"{where} has no {split}/ folder; use the layout {split}/<class>/<image>.png")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{where}/train has no class folders; use the layout train/<class>/<image>.png")
    files = {s: sorted((f, c) for c, name in enumerate(classes) if (root / s / name).is_dir()
                       for f in (root / s / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
             for s in SPLITS}
    extra = sorted({d.name for d in (root / "test").iterdir() if d.is_dir()} - set(classes))
    if extra:
        raise UserError(f"{where}: test/ has class {', '.join(extra[:3])}, which train/ lacks")
    fingerprint = hashlib.sha256(json.dumps(
        [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for s in SPLITS for f, _ in files[s]]
    ).encode()).hexdigest()
    cache = root / CACHE_NAME
    if cache.is_file():
        tensors, meta = read_tensors(cache, "dataset cache")
        if meta.get("fingerprint") == fingerprint:
            return {**tensors, "mean": tuple(json.loads(meta["mean"])), "std": tuple(json.loads(meta["std"])),
                    "classes": classes}
    data = {}
    for split in SPLITS:
        images = [_decode(f) for f, _ in files[split]]
        shapes = {}
        for (f, _), img in zip(files[split], images):
            shapes.setdefault(tuple(img.shape), f)
        if len(shapes) > 1:
            (s1, f1), (s2, f2) = list(shapes.items())[:2]
            raise UserError(f"{where}: images differ in size: {f1} is {s1[0]}x{s1[1]}x{s1[2]} but {f2} is "
                            f"{s2[0]}x{s2[1]}x{s2[2]}; resize them all to one size")
        data[f"{split}_images"] = torch.stack(images) if images else torch.zeros(0, 1, 1, 1, dtype=torch.uint8)
        data[f"{split}_labels"] = torch.tensor([c for _, c in files[split]], dtype=torch.long)
    if data["train_images"].shape[1:] != data["test_images"].shape[1:] and len(data["test_labels"]):
        raise UserError(f"{where}: train images are {tuple(data['train_images'].shape[1:])} but test images are "
                        f"{tuple(data['test_images'].shape[1:])} (CxHxW); resize them to one size")
    _check(data, where, classes)
    mean, std = _stats(data["train_images"])
    try:  # a cache that cannot be written (a read-only folder) only costs the decoding next time
        save_tensors(cache, data, {"fingerprint": fingerprint, "mean": json.dumps(mean), "std": json.dumps(std)})
    except UserError:
        pass
    return {**data, "mean": mean, "std": std, "classes": classes}


def _decode(path: Path) -> torch.Tensor:
    """One image as uint8 (C, H, W); grey stays one channel, RGBA loses its alpha."""
    import warnings

    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for torchcodec's, on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, OSError) as e:
        raise UserError(f"cannot read image {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        f"replace or delete it") from None
    if img.shape[0] == 2:  # grey + alpha
        img = img[:1]
    if img.shape[0] == 4:
        img = img[:3]
    return img


def _tensor_file(path: Path) -> dict:
    where = f"tensors:{path}"
    tensors, _ = read_tensors(path, "dataset file")
    need = ("train_images", "train_labels", "test_images", "test_labels")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}; it needs {', '.join(need)}")
    for split in SPLITS:
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise UserError(f"{where}: {split}_images must be uint8 NxCxHxW, got {images.dtype} "
                            f"{tuple(images.shape)}")
        if labels.dim() != 1 or labels.is_floating_point() or len(labels) != len(images):
            raise UserError(f"{where}: {split}_labels must be {len(images)} integer labels, got {labels.dtype} "
                            f"{tuple(labels.shape)}")
        if len(labels) and labels.min() < 0:
            raise UserError(f"{where}: {split}_labels has negative labels; use 0 .. classes-1")
    if tensors["train_images"].shape[1:] != tensors["test_images"].shape[1:]:
        raise UserError(f"{where}: train images are {tuple(tensors['train_images'].shape[1:])} but test images "
                        f"are {tuple(tensors['test_images'].shape[1:])}; use one size")
    data = {k: tensors[k] if "images" in k else tensors[k].long() for k in need}
    every = torch.cat([data["train_labels"], data["test_labels"]])
    n = int(every.max()) + 1 if len(every) else 1
    classes = [str(c) for c in range(n)]
    _check(data, where, classes)
    mean, std = _stats(data["train_images"])
    return {**data, "mean": mean, "std": std, "classes": classes}
