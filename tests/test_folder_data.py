"""The user's own image data: the digits exported to an ImageFolder tree (folder:PATH) and to a tensor
file (tensors:FILE), trained on and connected; and the bad-data cases, each one line, nothing written."""
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.io import write_png

from conftest import run_cli
from llpf_core import load_dataset, load_run, run_summary

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")  # write_png


def _uint8(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", split)  # pixels 0..16
    return (data.images * 255 / 16).round().to(torch.uint8), data.labels


def export_folder(root: Path, classes=range(10)) -> Path:
    """The digits as PNG files in root/{train,test}/<class>/<n>.png."""
    for split in ("train", "test"):
        images, labels = _uint8(split)
        for i, (img, label) in enumerate(zip(images, labels.tolist())):
            if label in classes:
                (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
                write_png(img, str(root / split / f"c{label}" / f"{i:04d}.png"))
    return root


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    return export_folder(tmp_path_factory.mktemp("data") / "digits-png")


def test_folder_matches_the_digits_and_caches(digits_folder):
    train = load_dataset(f"folder:{digits_folder}", "train")
    images, labels = _uint8("train")
    assert (train.num_classes, train.in_channels, train.image_size) == (10, 1, 8)
    assert len(train) == len(labels) and torch.equal(torch.bincount(train.labels), torch.bincount(labels))
    assert abs(train.mean[0] - images.float().mean().item() / 255) < 1e-4
    assert (digits_folder / ".llpf-cache.safetensors").is_file()


def test_two_mlps_trained_on_a_folder_connect(digits_folder, tmp_path):
    dataset = f"folder:{digits_folder}"
    modes = [tmp_path / f"m{seed}.safetensors" for seed in (1, 2)]
    def train(seed, mode):
        run_cli("train", "--model", "mlp", "--dataset", dataset, "--seed", seed, "--out", mode, "--epochs", 20,
                "--device", "cpu", "--quiet", env=ENV, check=True)

    with ThreadPoolExecutor(2) as pool:  # the two seeds side by side, one core each
        list(pool.map(train, (1, 2), modes))
    run_cli("connect", *modes, "--out", tmp_path / "run", "--ticks", 100, "--set", "phases.0.step_a=0.05",
            "--device", "cpu", "--quiet", env=ENV, check=True)
    s = run_summary(load_run(tmp_path / "run"))
    assert s["path_max_train_loss"] < 0.5 * s["barrier"], s


def test_tensor_file_dataset(tmp_path, monkeypatch):
    tr, te = _uint8("train"), _uint8("test")
    path = tmp_path / "digits.safetensors"
    save_file({"train_images": tr[0], "train_labels": tr[1], "test_images": te[0], "test_labels": te[1]}, path)
    monkeypatch.chdir(tmp_path)
    test = load_dataset("tensors:digits.safetensors", "test")
    assert len(test) == len(te[1]) and test.num_classes == 10 and test.image_size == 8
    assert test.name == f"tensors:{path.resolve()}"  # what modes record: they load from any folder


def _bad_folders(root: Path, good: Path) -> dict[str, tuple[Path, list[str]]]:
    cases = {}
    empty = root / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "test" / "a").mkdir(parents=True)
    cases["empty"] = (empty, ["train split has no images"])
    unbalanced = shutil.copytree(good, root / "unbalanced")
    for f in sorted((unbalanced / "train" / "c3").iterdir())[2:]:
        f.unlink()
    cases["unbalanced"] = (unbalanced, ["class c3 has 2 training images"])
    no_test = shutil.copytree(good, root / "no-test")
    shutil.rmtree(no_test / "test" / "c7")
    cases["class_missing_from_test"] = (no_test, ["class c7 has no test images"])
    mixed = shutil.copytree(good, root / "mixed")
    odd = sorted((mixed / "train" / "c5").iterdir())[0]
    write_png(torch.zeros(1, 9, 9, dtype=torch.uint8), str(odd))
    cases["mixed_sizes"] = (mixed, ["differ in size", odd.name, "9x9"])
    broken = shutil.copytree(good, root / "broken")
    bad = sorted((broken / "test" / "c1").iterdir())[0]
    bad.write_bytes(b"not a png")
    cases["unreadable"] = (broken, ["cannot read image", str(bad)])
    for path in cases.values():
        (path[0] / ".llpf-cache.safetensors").unlink(missing_ok=True)
    return cases


def test_bad_folders_are_one_line_and_write_nothing(digits_folder, tmp_path):
    cases = _bad_folders(tmp_path, digits_folder)

    def run(item):
        name, (folder, _) = item
        before = sorted(str(p) for p in folder.rglob("*"))
        proc = run_cli("train", "--model", "mlp", "--dataset", f"folder:{folder}", "--seed", 1, "--out",
                       tmp_path / f"{name}.safetensors", "--epochs", 1, "--quiet", env=ENV)
        return name, (proc, before == sorted(str(p) for p in folder.rglob("*")))

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, cases.items()))
    for name, (_, needles) in cases.items():
        proc, unchanged = results[name]
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and all(n in lines[0] for n in needles), (name, lines)
        assert unchanged and not (tmp_path / f"{name}.safetensors").exists(), name
