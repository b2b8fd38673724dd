"""load_dataset and ImageData (docs/python-api.md; augmentation per docs/algorithm.md,
Models and data as the paper built them).

``load_dataset`` caches per process (an lru_cache on ``llpf_core.data._load``), so every test that
loads from disk uses its own data root.
"""
import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llpf_core import ImageData, UserError, list_datasets, load_dataset
from llpf_core.data import (
    DEBIAN_FASHION_MNIST,
    DIGITS_FILE,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    Augmentation,
    _load,
)
from tests.conftest import REPO

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The MNIST idx format: big-endian magic (0x0803 images, 0x0801 labels), sizes, then uint8 data."""
    folder.mkdir(parents=True, exist_ok=True)
    image_file, label_file = MNIST_FILES[split]
    n, h, w = images.shape
    (folder / image_file).write_bytes(struct.pack(">IIII", 0x0803, n, h, w) + images.astype(np.uint8).tobytes())
    (folder / label_file).write_bytes(struct.pack(">II", 0x0801, n) + labels.astype(np.uint8).tobytes())


def tiny_mnist(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """Real-format MNIST files with random content in <root>/MNIST/raw; returns what was written."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, :4] = 0  # a black border, as in MNIST
        labels = np.arange(n) % 10
        write_idx(root / "MNIST" / "raw", split, images, labels)
        data[split] = (images, labels)
    return data


def channel_stats(ds: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    x, _ = ds.batch(torch.arange(len(ds)))
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


# --- digits -------------------------------------------------------------------------------------------

def test_digits_sizes_and_shapes():
    train, test = load_dataset("digits", "train"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.num_classes == 10 and set(train.labels.tolist()) == set(range(10))
    assert train.model_kwargs() == {"num_classes": 10, "in_channels": 1, "image_size": 8}
    assert "digits" in list_datasets()


def test_digits_train_split_is_normalised():
    mean, std = channel_stats(load_dataset("digits", "train"))
    assert mean.shape == std.shape == (1,)
    assert abs(mean.item()) < 0.01, mean
    assert abs(std.item() - 1) < 0.01, std


def test_the_stored_digits_are_scikit_learns_split():
    sys.path.insert(0, str(REPO / "assets" / "data"))
    from make_digits import digits_split
    stored, expected = load_file(DIGITS_FILE), digits_split()
    assert stored.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(stored[key], tensor), key
    train = load_dataset("digits", "train")
    assert torch.equal(train.images, expected["train.images"].float())
    assert torch.equal(train.labels, expected["train.labels"].long())


def test_digits_split_is_fixed_and_a_partition_of_all_digits():
    from sklearn.datasets import load_digits

    first = (load_dataset("digits", "train"), load_dataset("digits", "test"))
    _load.cache_clear()  # load again for real, not from the per-process cache
    second = (load_dataset("digits", "train"), load_dataset("digits", "test"))
    for a, b in zip(first, second):
        assert a is not b
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)

    # train + test hold every one of the 1,797 digits exactly once (as a multiset of image and label)
    def rows(images, labels):
        images = np.asarray(images, dtype=np.float32).reshape(len(labels), -1)
        return sorted((*img, int(label)) for img, label in zip(images.tolist(), labels))

    train, test = first
    bunch = load_digits()
    assert rows(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]).tolist()) == \
        rows(bunch.images, bunch.target.tolist())
    # stratified: each class is within one sample of 20% in the test split
    counts = np.bincount(bunch.target, minlength=10)
    test_counts = np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1), test_counts


def test_digits_are_not_augmented():
    ds = load_dataset("digits", "train")
    idx = torch.arange(64)
    x_aug, y_aug = ds.batch(idx, augment=True, generator=torch.Generator().manual_seed(0))
    x, y = ds.batch(idx)
    assert torch.equal(x_aug, x) and torch.equal(y_aug, y)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_getitem_equals_a_batch_of_one(name, tmp_path):
    if name == "mnist":
        tiny_mnist(tmp_path)
        ds = load_dataset("mnist", "train", tmp_path)
    else:
        ds = load_dataset("digits", "train")
    for i in (0, 7, len(ds) - 1):
        x, y = ds[i]
        bx, by = ds.batch(torch.tensor([i]))
        assert x.shape == ds.images.shape[1:]
        assert torch.equal(x, bx[0]) and y.item() == by[0].item() == ds.labels[i].item()
    # a torch DataLoader sees the same samples
    xs, ys = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    bx, by = ds.batch(torch.arange(5))
    assert torch.equal(xs, bx) and torch.equal(ys, by)


# --- Fashion-MNIST from the Debian package ----------------------------------------------------------

def test_fashion_mnist_from_the_debian_package(tmp_path):
    assert DEBIAN_FASHION_MNIST == Path("/usr/share/datasets/fashion-mnist")
    assert DEBIAN_FASHION_MNIST.is_dir(), "install the Debian package dataset-fashion-mnist"
    train = load_dataset("fashion-mnist", "train", tmp_path)
    test = load_dataset("fashion-mnist", "test", tmp_path)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8  # raw pixels, normalised per batch
    assert set(test.labels.tolist()) == set(range(10))
    assert train.model_kwargs() == {"num_classes": 10, "in_channels": 1, "image_size": 28}
    # unpacked once into the torchvision layout under the given root
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES["train"] + MNIST_FILES["test"])
    # the first test image is the package's first t10k image
    with gzip.open(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as f:
        head = f.read(16 + 28 * 28)
    assert struct.unpack(">IIII", head[:16]) == (0x0803, 10000, 28, 28)
    assert torch.equal(test.images[0, 0], torch.frombuffer(bytearray(head[16:]), dtype=torch.uint8).view(28, 28))
    # normalised with the training split's own statistics
    x, _ = train.batch(torch.arange(len(train)))
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    assert train.mean == FASHION_MNIST_MEAN and train.std == FASHION_MNIST_STD


# --- MNIST through torchvision, from tiny idx files -------------------------------------------------

def test_mnist_from_idx_files(tmp_path):
    written = tiny_mnist(tmp_path, n_train=20, n_test=10)
    for split, n in (("train", 20), ("test", 10)):
        ds = load_dataset("mnist", split, tmp_path)
        images, labels = written[split]
        assert len(ds) == n and ds.images.shape == (n, 1, 28, 28)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert ds.labels.tolist() == labels.tolist()
        assert ds.labels.dtype == torch.int64
        x, y = ds.batch(torch.arange(n))
        expected = (torch.from_numpy(images).float().unsqueeze(1) / 255 - MNIST_MEAN[0]) / MNIST_STD[0]
        assert torch.allclose(x, expected, atol=1e-5)
        assert torch.equal(y, torch.from_numpy(labels).long())


def test_default_root_is_the_workspace_data_folder(tmp_path, monkeypatch):
    tiny_mnist(tmp_path / "data", n_train=12, n_test=6)
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    assert len(load_dataset("mnist", "train")) == 12
    assert len(load_dataset("mnist", "test")) == 6


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_root_is_a_user_error_naming_the_folder(tmp_path, name):
    root = tmp_path / "no-such-data-root"
    with pytest.raises(UserError) as info:
        load_dataset(name, "train", root)
    message = str(info.value)
    assert str(root) in message and name in message
    assert "\n" not in message


def test_incomplete_mnist_folder_is_a_user_error(tmp_path):
    tiny_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError) as info:  # torchvision wants all four files, whichever the split
        load_dataset("mnist", "test", tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)


@pytest.mark.parametrize("name, split", [("imagenet", "train"), ("digits", "validation")])
def test_unknown_dataset_or_split_is_a_user_error(name, split):
    with pytest.raises(UserError):
        load_dataset(name, split)


# --- batch augmentation -------------------------------------------------------------------------------

@pytest.fixture
def mnist_train(tmp_path):
    tiny_mnist(tmp_path, n_train=20, n_test=10)
    return load_dataset("mnist", "train", tmp_path)


def test_augmentation_is_deterministic_for_a_generator_seed(mnist_train):
    idx = torch.arange(20)
    x1, y1 = mnist_train.batch(idx, augment=True, generator=torch.Generator().manual_seed(5))
    x2, y2 = mnist_train.batch(idx, augment=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = mnist_train.batch(idx, augment=True, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(x1, x3)


def test_augmentation_keeps_shapes_and_labels_and_changes_images(mnist_train):
    idx = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    plain_x, plain_y = mnist_train.batch(idx, augment=False)
    x, y = mnist_train.batch(idx, augment=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == plain_x.shape == (8, 1, 28, 28) and x.dtype == plain_x.dtype == torch.float32
    assert torch.equal(y, plain_y)
    assert not torch.equal(x, plain_x)
    # rotation (nearest) and crop only move pixels or fill black ones in: no new pixel values
    pixels = torch.round((x * MNIST_STD[0] + MNIST_MEAN[0]) * 255).long()
    for i, j in enumerate(idx.tolist()):
        allowed = torch.cat([mnist_train.images[j].flatten().long(), torch.tensor([0])])
        assert torch.isin(pixels[i], allowed).all()


def test_augmentation_does_not_change_the_stored_images(mnist_train):
    before = mnist_train.images.clone()
    mnist_train.batch(torch.arange(20), augment=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mnist_train.images, before)


def test_black_padded_crop_is_the_same_shift_as_cutting_the_padded_image(mnist_train):
    """Without rotation, the one resampling that does rotation and crop cuts exactly the window that
    RandomCrop(28, padding 2) would, at the offsets drawn from the same generator."""
    idx = torch.arange(20)
    x, _ = mnist_train.batch(idx, augment=False)
    crop_only = Augmentation(crop_padding=2)
    shifted = crop_only(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.rand(20, generator=g)  # the angles' draw, which crop_only makes too
    dy, dx = (torch.randint(0, 5, (20,), generator=g) for _ in range(2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    expected = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(20)])
    assert torch.equal(shifted, expected)
    assert not torch.equal(shifted, x)
