"""A small real-data segmentation set built from Fashion-MNIST, registered in mmseg.

Each canvas (``size`` x ``size``, black) gets 1-3 garments: Fashion-MNIST images scaled by a
seeded factor in [1, 2] and pasted at seeded positions, later garments on top. The label of a
pixel is 1 + the garment's class where the pasted garment is brighter than ``THRESHOLD`` (its
mask), else 0 (background): 11 classes. Images are written as RGB PNGs (gray repeated) and
labels as 8-bit PNGs in mmseg's layout ``img_dir/{train,val}``, ``ann_dir/{train,val}``,
once, into a temporary folder renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS
from PIL import Image
from torchvision.datasets import FashionMNIST

__all__ = ["FashionMNISTSegDataset", "CLASSES", "build_fmnist_seg"]

CLASSES = ("background", "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")
THRESHOLD = 0.2  # of the garment's max brightness 1.0
_PALETTE = [[0, 0, 0]] + [[(37 * i) % 256, (91 * i) % 256, (163 * i) % 256] for i in range(1, 11)]


@DATASETS.register_module()
class FashionMNISTSegDataset(BaseSegDataset):
    """mmseg dataset over the folder :func:`build_fmnist_seg` writes (built on first use).

    Args:
        data_root: the set's folder (written if missing).
        fmnist_root: folder holding FashionMNIST/raw, the source garments.
        n_train, n_val, size, seed: passed to :func:`build_fmnist_seg` when the set is built.
        kwargs: BaseSegDataset's (data_prefix, pipeline, test_mode, ...).
    """

    METAINFO = dict(classes=CLASSES, palette=_PALETTE)

    def __init__(self, data_root: str, fmnist_root: str = "data", n_train: int = 400, n_val: int = 100,
                 size: int = 64, seed: int = 0, **kwargs) -> None:
        build_fmnist_seg(data_root, fmnist_root, n_train, n_val, size, seed)
        super().__init__(data_root=data_root, img_suffix=".png", seg_map_suffix=".png", reduce_zero_label=False,
                         **kwargs)


def _canvas(garments: torch.Tensor, labels: torch.Tensor, size: int, rng: np.random.Generator):
    image = np.zeros((size, size), np.float32)
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        k = int(rng.integers(len(garments)))
        side = int(round(28 * rng.uniform(1.0, min(2.0, size / 28))))
        patch = F.interpolate(garments[k][None, None].float() / 255, size=(side, side), mode="bilinear",
                              align_corners=False)[0, 0].numpy()  # (side, side) in [0, 1]
        top, left = rng.integers(0, size - side + 1, size=2)
        mask = patch > THRESHOLD
        region = (slice(top, top + side), slice(left, left + side))
        image[region][mask] = patch[mask]
        label[region][mask] = int(labels[k]) + 1
    return (image * 255).round().astype(np.uint8), label


def build_fmnist_seg(out_dir: str, fmnist_root: str, n_train: int = 400, n_val: int = 100, size: int = 64,
                     seed: int = 0) -> Path:
    """Write the set once to ``out_dir`` (returned as is when it is already complete).

    Args:
        out_dir: destination (mmseg's data_root).
        fmnist_root: folder holding FashionMNIST/raw (torchvision layout; `make data` puts it in data/).
        n_train, n_val: canvases per split (train garments come from FMNIST's train split, val's from its test split).
        size: canvas side in pixels (>= 28).
        seed: seeds garment choice, scale and position.
    """
    out = Path(out_dir)
    if (out / ".complete").is_file():
        return out
    if size < 28 or n_train < 1 or n_val < 1:
        raise ValueError(f"size must be >= 28 and n_train, n_val >= 1; got {size}, {n_train}, {n_val}")
    try:
        splits = {"train": FashionMNIST(fmnist_root, train=True), "val": FashionMNIST(fmnist_root, train=False)}
    except RuntimeError as err:
        raise FileNotFoundError(f"Fashion-MNIST not found under {fmnist_root} ({err}); run `make data`") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for split, count in (("train", n_train), ("val", n_val)):
            rng = np.random.default_rng(seed + (split == "val"))
            (tmp / "img_dir" / split).mkdir(parents=True)
            (tmp / "ann_dir" / split).mkdir(parents=True)
            ds = splits[split]
            for i in range(count):
                image, label = _canvas(ds.data, ds.targets, size, rng)
                Image.fromarray(np.repeat(image[:, :, None], 3, axis=2)).save(tmp / "img_dir" / split / f"{i:05d}.png")
                Image.fromarray(label).save(tmp / "ann_dir" / split / f"{i:05d}.png")
        (tmp / ".complete").touch()
        if out.exists() and not (out / ".complete").is_file():
            shutil.rmtree(out)  # an incomplete earlier attempt
        if (out / ".complete").is_file():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
