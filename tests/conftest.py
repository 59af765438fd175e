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


@pytest.fixture
def onednn_products(monkeypatch) -> list:
    """The patch-grid products take their oneDNN path at any batch size; the returned list grows by one entry
    per product that did (so a test can check the path ran, where torch has oneDNN)."""
    import torch

    from gradfilt.ops import stages as functional

    taken = []
    choose = functional._onednn_maps

    def counted(*mats):
        maps = choose(*mats)
        if maps is not None:
            taken.append(len(mats))
        return maps

    monkeypatch.setattr(functional, "_ONEDNN_ROWS", 0)
    monkeypatch.setattr(functional, "_onednn_maps", counted)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch was built without oneDNN")
    return taken
