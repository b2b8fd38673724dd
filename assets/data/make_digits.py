"""Writes digits.safetensors: scikit-learn's 1,797 8x8 digits, split 80/20 (stratified, random_state=0).

    python assets/data/make_digits.py

The split is stored so that loading the embedded default dataset does not import scikit-learn (about a
second in every process: each CLI command, search subprocess and sweep worker). tests/test_data.py checks
that the file equals this split.
"""
from pathlib import Path

import sklearn
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def digits_split() -> dict[str, torch.Tensor]:
    bunch = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target)
    return {"train.images": torch.tensor(x_train, dtype=torch.uint8).unsqueeze(1),  # (N, 1, 8, 8), 0..16
            "train.labels": torch.tensor(y_train, dtype=torch.uint8),
            "test.images": torch.tensor(x_test, dtype=torch.uint8).unsqueeze(1),
            "test.labels": torch.tensor(y_test, dtype=torch.uint8)}


if __name__ == "__main__":
    save_file(digits_split(), str(Path(__file__).with_name("digits.safetensors")),
              {"source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits), "
                         "train_test_split(test_size=0.2, random_state=0, stratify=target)",
               "sklearn": sklearn.__version__})
