"""Shared test fixtures. Fashion-MNIST is put under data/ by `make` (scripts/get_fmnist.sh)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    root = REPO / "data"
    if not (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"Fashion-MNIST is missing under {root}; run `make data` (tests run through `make test`)")
    return root
