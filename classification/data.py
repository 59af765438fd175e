"""Datasets, the paper's non-i.i.d. partitions and the LightningDataModule that serves them.

Protocol (docs/paper.md "Classification protocol"): the training split is cut into K
partitions with FedAvg label shards (indices sorted by label, 2K equal shards, two random
shards per partition); pretraining uses partition 0, fine-tuning partition 1. Each partition
is split 80/20 into train/validation with a seeded permutation. The partition table is saved
to a ``.npy`` file once and re-loaded by every later stage, so all stages see the same split.
The ``test`` stage evaluates on the dataset's official test split restricted to the classes
that occur in the partition.

Datasets are a registry (``DATASETS`` + ``@register_dataset``); grayscale sets are repeated
to 3 channels so every network sees RGB-shaped input. Nothing here downloads unless
``download: true`` is asked for.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T

from gradfilt.registry import new_registry, registering

__all__ = ["DATASETS", "DatasetInfo", "register_dataset", "num_classes_of", "fedavg_partitions",
           "load_or_create_partitions", "ClassificationData"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DatasetInfo:
    """What the data module needs to know about one dataset.

    Attributes:
        num_classes: number of labels.
        mean, std: per-channel normalization (3 channels).
        grayscale: repeat the single channel to 3.
        default_root: where the files are looked for when ``data_dir`` is not given.
        build: ``fn(root, train, transform, download) -> Dataset`` with a ``targets`` attribute.
        crop: use ImageNet-style random-resized-crop / centre-crop transforms.
    """

    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grayscale: bool
    default_root: Path
    build: Callable[[Path, bool, Callable, bool], Dataset]
    crop: bool = False


DATASETS: dict[str, DatasetInfo] = new_registry("datasets", "classification datasets: classes, channels, loader")


def register_dataset(name: str, info: DatasetInfo) -> DatasetInfo:
    """Register ``info`` under ``name`` (the ``data.dataset`` value).

    Args:
        name: dataset key.
        info: its description.
    """
    return registering(DATASETS, "dataset", name)(info)


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {sorted(DATASETS)}")
    return DATASETS[name]


def num_classes_of(dataset: str) -> int:
    """Number of classes of a registered dataset (linked to ``model.num_classes``)."""
    return _info(dataset).num_classes


def _torchvision(cls: type) -> Callable[[Path, bool, Callable, bool], Dataset]:
    def build(root: Path, train: bool, transform: Callable, download: bool) -> Dataset:
        return cls(str(root), train=train, transform=transform, download=download)

    return build


def _image_folder(root: Path, train: bool, transform: Callable, download: bool) -> Dataset:
    if download:
        raise ValueError("ImageNet cannot be downloaded automatically; put train/ and val/ ImageFolders under data_dir")
    return tvd.ImageFolder(str(root / ("train" if train else "val")), transform=transform)


_GRAY = dict(grayscale=True, default_root=REPO / "data")
register_dataset("fmnist", DatasetInfo(10, (0.2860,) * 3, (0.3530,) * 3, build=_torchvision(tvd.FashionMNIST), **_GRAY))
register_dataset("mnist", DatasetInfo(10, (0.1307,) * 3, (0.3081,) * 3, build=_torchvision(tvd.MNIST), **_GRAY))
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
register_dataset("cifar10", DatasetInfo(10, (0.4914, 0.4822, 0.4465), _CIFAR_STD, False, REPO / "data",
                                        _torchvision(tvd.CIFAR10)))
register_dataset("cifar100", DatasetInfo(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False,
                                         REPO / "data", _torchvision(tvd.CIFAR100)))
register_dataset("imagenet", DatasetInfo(1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False,
                                         REPO / "data" / "imagenet", _image_folder, crop=True))


def fedavg_partitions(labels: np.ndarray, num_partitions: int, seed: int) -> np.ndarray:
    """FedAvg label shards: sort by label, cut 2K equal shards, deal two random shards to each partition.

    Args:
        labels: (N,) integer labels.
        num_partitions: K >= 1.
        seed: seeds the shard assignment.

    Returns:
        (K, 2 * (N // 2K)) int64 dataset indices; the last N mod 2K samples (in label order) are dropped.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    n_shards = 2 * num_partitions
    shard = len(labels) // n_shards
    if shard == 0:
        raise ValueError(f"{len(labels)} samples cannot fill {n_shards} shards")
    order = np.argsort(labels, kind="stable")[: shard * n_shards]
    shards = order.reshape(n_shards, shard)  # (2K, N // 2K), shard i = i-th block in label order
    dealt = np.random.default_rng(seed).permutation(n_shards).reshape(num_partitions, 2)  # (K, 2)
    return shards[dealt].reshape(num_partitions, 2 * shard).astype(np.int64)  # (K, 2 * shard)


def load_or_create_partitions(path: Path, labels: np.ndarray, num_partitions: int, seed: int) -> np.ndarray:
    """Load the partition table from ``path``, or compute and save it there (atomically).

    Args:
        path: the ``.npy`` user-group file.
        labels: labels of the whole training split (to build it or to check a loaded one).
        num_partitions: K.
        seed: shard-assignment seed.
    """
    expected = fedavg_partitions(labels, num_partitions, seed)
    if path.is_file():
        try:
            loaded = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # truncated, garbage or not an .npy file
            raise ValueError(
                f"partition file {path} cannot be read as a .npy array ({err}); it is damaged: delete it "
                "(the next run writes it again from the dataset and the seed) or set data.split_file to another path"
            ) from None
        if loaded.shape != expected.shape or not np.array_equal(loaded, expected):
            raise ValueError(
                f"partition file {path} does not match dataset size {len(labels)}, num_partitions "
                f"{num_partitions} and seed {seed} (shape {loaded.shape}, expected {expected.shape}); "
                "delete it or set data.split_file to another path"
            )
        return loaded
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.part")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, expected)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return expected


class _Repeat3(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x  # (1, H, W) -> (3, H, W) view


class ClassificationData(pl.LightningDataModule):
    """One partition of a dataset, split into train/val, plus the matching test classes.

    Args:
        dataset: a key of DATASETS (fmnist, mnist, cifar10, cifar100, imagenet, ...).
        data_dir: root of the dataset files; default: the dataset's default root (data/ in the repo).
        image_size: side of the square network input (Resize; random-resized crop for ImageNet).
        batch_size: images per step (per device).
        num_workers: DataLoader worker processes.
        num_partitions: K of the FedAvg label-shard split.
        partition: which partition this run uses (0: pretraining, 1: fine-tuning).
        split_file: the ``.npy`` partition table; default ``<data_dir>/splits/<dataset>_k<K>_seed<seed>.npy``.
        seed: seed of the shard assignment and of the train/val split.
        val_fraction: share of the partition held out for validation.
        subset: use only this many images of the partition (before the train/val split); None: all.
        augment: random horizontal flip (and random-resized crop for ImageNet) on training images.
        download: let torchvision download CIFAR/MNIST/Fashion-MNIST if missing (needs network).
    """

    def __init__(
        self,
        dataset: str = "fmnist",
        data_dir: Optional[str] = None,
        image_size: int = 224,
        batch_size: int = 128,
        num_workers: int = 2,
        num_partitions: int = 2,
        partition: int = 0,
        split_file: Optional[str] = None,
        seed: int = 0,
        val_fraction: float = 0.2,
        subset: Optional[int] = None,
        augment: bool = True,
        download: bool = False,
    ) -> None:
        super().__init__()
        self.info = _info(dataset)
        if not 0 <= partition < num_partitions:
            raise ValueError(f"partition must be in [0, {num_partitions}) for num_partitions={num_partitions}, "
                             f"got {partition}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if image_size < 1 or batch_size < 1 or num_workers < 0 or (subset is not None and subset < 2):
            raise ValueError("image_size and batch_size must be >= 1, num_workers >= 0, subset >= 2 or null; got "
                             f"{image_size}, {batch_size}, {num_workers}, {subset}")
        self.dataset, self.image_size, self.batch_size, self.num_workers = dataset, image_size, batch_size, num_workers
        self.num_partitions, self.partition, self.seed = num_partitions, partition, seed
        self.val_fraction, self.subset, self.augment, self.download = val_fraction, subset, augment, download
        self.root = Path(data_dir) if data_dir is not None else self.info.default_root
        if not download and not self.root.is_dir():
            raise FileNotFoundError(
                f"data directory {self.root} for dataset {dataset!r} does not exist; set data.data_dir to the "
                "folder holding it" + ("" if dataset == "imagenet" else " (or data.download: true with network)")
            )
        self.split_file = Path(split_file) if split_file else (
            self.root / "splits" / f"{dataset}_k{num_partitions}_seed{seed}.npy")
        self.num_classes = self.info.num_classes
        self._train_labels: Optional[np.ndarray] = None

    def train_labels(self) -> np.ndarray:
        """Labels of the whole official training split (loaded once)."""
        if self._train_labels is None:
            self._train_labels = np.asarray(self._build(True, None).targets, dtype=np.int64)
        return self._train_labels

    def _transform(self, train: bool) -> Callable:
        size = self.image_size
        steps: list = []
        if self.info.crop:
            steps += [T.RandomResizedCrop(size)] if train and self.augment else [
                T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
        else:
            steps.append(T.Resize((size, size)))
        if train and self.augment:
            steps.append(T.RandomHorizontalFlip())
        steps.append(T.ToTensor())
        if self.info.grayscale:
            steps.append(_Repeat3())
        steps.append(T.Normalize(self.info.mean, self.info.std))
        return T.Compose(steps)

    def _build(self, train: bool, transform: Callable) -> Dataset:
        try:
            return self.info.build(self.root, train, transform, self.download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"dataset {self.dataset!r} not found under {self.root} ({err}); set data.data_dir, or "
                "data.download: true where there is network"
            ) from None

    def prepare_data(self) -> None:
        """Check the files are there and write the partition table (rank 0 only)."""
        load_or_create_partitions(self.split_file, self.train_labels(), self.num_partitions, self.seed)

    def partition_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) dataset indices of this run's partition."""
        table = load_or_create_partitions(self.split_file, self.train_labels(), self.num_partitions, self.seed)
        part = table[self.partition]
        part = part[np.random.default_rng(self.seed + 1000 * (self.partition + 1)).permutation(len(part))]
        if self.subset is not None:
            part = part[: self.subset]
        n_val = max(1, round(len(part) * self.val_fraction))
        return part[n_val:], part[:n_val]

    def setup(self, stage: str) -> None:
        train_idx, val_idx = self.partition_indices()
        self.train_set = Subset(self._build(True, self._transform(True)), train_idx.tolist())
        self.val_set = Subset(self._build(True, self._transform(False)), val_idx.tolist())
        if stage == "test":
            test = self._build(False, self._transform(False))
            classes = np.unique(self.train_labels()[train_idx])
            keep = np.flatnonzero(np.isin(np.asarray(test.targets), classes))
            self.test_set = Subset(test, keep.tolist())

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)
