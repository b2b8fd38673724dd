"""Datasets as tensors, with batched augmentation on the compute device.

``load_dataset`` returns an ``ImageData``: a torch ``Dataset`` whose images and labels are whole
tensors. Training draws batches through ``ImageData.batch``, which gathers, augments and normalises a
whole batch at once on the data's device, so the hot path has no per-sample Python.

Augmentation follows docs/algorithm.md, Models and data as the paper built them. Fashion-MNIST
(which the paper does not use) takes the MNIST pipeline; the 8x8 digits are too small to crop or
rotate and are not augmented.
"""
import gzip
import math
import os
import shutil
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import UserError
from .resources import ASSETS_DIR
from .userdata import canonical_name, is_user_dataset, load_user_dataset
from .workspace import data_dir

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DIGITS_FILE = ASSETS_DIR / "data" / "digits.safetensors"

DIGITS_MEAN, DIGITS_STD = (0.3054,), (0.3761,)  # from the training split's pixels, scaled to [0, 1]
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True)
class Augmentation:
    """Random training transforms, applied per sample but computed for a whole batch."""
    rotate_degrees: float = 0.0
    crop_padding: int = 0
    crop_reflect: bool = False
    hflip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1], before normalisation, so that fills are black pixels."""
        shift = self.crop_padding if not self.crop_reflect else 0
        if self.rotate_degrees or shift:  # a black-padded crop is a shift: one resampling does both
            x = _random_rotation_and_shift(x, self.rotate_degrees, shift, generator)
        if self.crop_padding and self.crop_reflect:
            x = _random_crop(x, self.crop_padding, generator)
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


MNIST_AUGMENTATION = Augmentation(rotate_degrees=5.0, crop_padding=2)
CIFAR_AUGMENTATION = Augmentation(crop_padding=4, crop_reflect=True, hflip=True)


def _random_rotation_and_shift(x, degrees, shift, generator):
    """Rotate each image by a random angle in [-degrees, degrees] and shift it by a random whole number of
    pixels in [-shift, shift] along each axis (RandomCrop with black padding), in one nearest-neighbour
    resampling with black fill: output pixel p samples the input at R (p + s)."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, device=x.device, generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    # the crop's offsets, as _random_crop draws them; in affine_grid's units, a pixel is 2 / size
    sy = (torch.randint(0, 2 * shift + 1, (b,), device=x.device, generator=generator) - shift) * (2 / h)
    sx = (torch.randint(0, 2 * shift + 1, (b,), device=x.device, generator=generator) - shift) * (2 / w)
    theta = torch.stack([torch.stack([cos, -sin, cos * sx - sin * sy], 1),
                         torch.stack([sin, cos, sin * sx + cos * sy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _random_crop(x, padding, generator):
    """RandomCrop with reflect padding: each image cut at a random offset out of its padded copy."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


class ImageData(Dataset):
    """A whole split as tensors: ``images`` (N, C, H, W), raw pixels times ``scale`` in [0, 1]."""

    def __init__(self, name: str, split: str, images: torch.Tensor, labels: torch.Tensor,
                 scale: float, mean: tuple, std: tuple, num_classes: int,
                 augmentation: Augmentation | None):
        self.name, self.split = name, split
        self.images, self.labels = images, labels.long()
        self.scale, self.mean, self.std = scale, mean, std
        self.num_classes = num_classes
        self.augmentation = augmentation
        self._mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        # copies on other devices, shared while anyone holds them: the pairs of a batched sweep use one
        self._copies: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def model_kwargs(self) -> dict:
        """The ``build_model`` arguments that fit this data."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": self.image_size}

    def to(self, device: str | torch.device) -> "ImageData":
        """This split on ``device``: one copy there while it is in use, however many ask for it."""
        device = torch.device(device)
        if device == self.device:
            return self
        copy = self._copies.get(str(device))
        if copy is None:
            copy = ImageData(self.name, self.split, self.images.to(device), self.labels.to(device),
                             self.scale, self.mean, self.std, self.num_classes, self.augmentation)
            self._copies[str(device)] = copy
        return copy

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([i], device=self.device))
        return x[0], y[0]

    def batch(self, idx: torch.Tensor, augment: bool = False,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather samples ``idx``, augment them if asked (training), and normalise."""
        x = self.images[idx].float() * self.scale
        if augment and self.augmentation is not None:
            x = self.augmentation(x, generator)
        return (x - self._mean) / self._std, self.labels[idx]


_DATASETS = ("digits", "fashion-mnist", "fashion-mnist-rgb32", "mnist", "cifar10", "cifar100", "synthetic")


def list_datasets() -> list[str]:
    """The built-in datasets; ``folder:PATH`` and ``tensors:FILE.safetensors`` load the user's own."""
    return list(_DATASETS)


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = False) -> ImageData:
    """Load a split ("train" or "test") as normalised tensors on the CPU.

    ``root`` is the torchvision data root (default: the workspace's data/ folder). Nothing is
    downloaded unless ``download`` is true. Results are cached per process.
    """
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    if is_user_dataset(name):
        return _user(canonical_name(name), split)
    if name not in _DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(_DATASETS)}, folder:PATH "
                        f"or tensors:FILE.safetensors")
    return _load(name, split, str(Path(root) if root else data_dir()), download)


def _user(name: str, split: str) -> ImageData:
    """A ``folder:`` or ``tensors:`` dataset (userdata.py), both splits read once per process."""
    data = _user_splits(name)
    return ImageData(name, split, data[f"{split}_images"], data[f"{split}_labels"], 1 / 255, data["mean"],
                     data["std"], len(data["classes"]), None)


@lru_cache(maxsize=4)
def _user_splits(name: str) -> dict:
    return load_user_dataset(name)


@lru_cache(maxsize=16)
def _load(name: str, split: str, root: str, download: bool) -> ImageData:
    if name == "digits":
        return _digits(split)
    if name == "synthetic":
        return _synthetic(split)
    if name == "fashion-mnist-rgb32":
        return _as_rgb32(_mnist_family("fashion-mnist", split, Path(root), download))
    if name in ("mnist", "fashion-mnist"):
        return _mnist_family(name, split, Path(root), download)
    return _cifar(name, split, Path(root), download)


def _digits(split: str) -> ImageData:
    """scikit-learn's 1,797 8x8 digits, split 80/20 with a fixed seed (stratified), as
    assets/data/make_digits.py stored them: importing scikit-learn would cost every process a second."""
    from safetensors.torch import load_file
    if not DIGITS_FILE.is_file():
        raise UserError(f"the embedded digits file {DIGITS_FILE} is missing; restore it from the repository "
                        f"(or write it with `python assets/data/make_digits.py`)")
    tensors = load_file(DIGITS_FILE)
    images = tensors[f"{split}.images"].float()  # (N, 1, 8, 8), values 0..16
    return ImageData("digits", split, images, tensors[f"{split}.labels"].long(), 1 / 16, DIGITS_MEAN,
                     DIGITS_STD, 10, None)


def _synthetic(split: str) -> ImageData:
    """Random CIFAR-shaped images (32x32x3, 10 classes) for shape and speed checks of big models.
    Fixed seeds: 512 training and 256 test images."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 512 if split == "train" else 256
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageData("synthetic", split, images, labels, 1 / 255, (0.5,) * 3, (0.29,) * 3, 10,
                     CIFAR_AUGMENTATION)


def _as_rgb32(data: ImageData) -> ImageData:
    """28x28 grey images padded to 32x32 and copied into 3 channels, for CIFAR-shaped models."""
    images = F.pad(data.images, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()
    return ImageData(f"{data.name}-rgb32", data.split, images, data.labels, data.scale, data.mean * 3,
                     data.std * 3, data.num_classes, data.augmentation)


def _mnist_family(name: str, split: str, root: Path, download: bool) -> ImageData:
    from torchvision.datasets import MNIST, FashionMNIST

    cls, mean, std = ((FashionMNIST, FASHION_MNIST_MEAN, FASHION_MNIST_STD) if name == "fashion-mnist"
                      else (MNIST, MNIST_MEAN, MNIST_STD))
    raw = root / cls.__name__ / "raw"
    if name == "fashion-mnist":
        _unpack_debian_fashion_mnist(raw)
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError:
        hint = (f"install the Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST}) or "
                if name == "fashion-mnist" else "")
        raise UserError(f"{name} not found in {raw}: {hint}put the four idx files there, "
                        f"or run `train ... --download` on a machine with internet") from None
    except OSError as e:
        raise UserError(f"could not download {name} into {root}: {e}") from None
    return ImageData(name, split, ds.data.unsqueeze(1), ds.targets, 1 / 255, mean, std, 10,
                     MNIST_AUGMENTATION)


def _unpack_debian_fashion_mnist(raw: Path) -> None:
    """Unzip the Debian package's idx files into the torchvision layout, once."""
    if not DEBIAN_FASHION_MNIST.is_dir():
        return
    for gz in sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz")):
        target = raw / gz.stem
        if target.exists():
            continue
        try:
            raw.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        except OSError as e:
            raise UserError(f"could not unpack Fashion-MNIST into {raw}: {e}; pass a writable "
                            f"--data-root") from None


def _cifar(name: str, split: str, root: Path, download: bool) -> ImageData:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, mean, std, classes = ((CIFAR10, CIFAR10_MEAN, CIFAR10_STD, 10) if name == "cifar10"
                               else (CIFAR100, CIFAR100_MEAN, CIFAR100_STD, 100))
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError:
        raise UserError(f"{name} not found in {root / cls.base_folder}: put the extracted python "
                        f"version there, or run `train ... --download` on a machine with internet") from None
    except OSError as e:
        raise UserError(f"could not download {name} into {root}: {e}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    return ImageData(name, split, images, torch.tensor(ds.targets), 1 / 255, mean, std, classes,
                     CIFAR_AUGMENTATION)
