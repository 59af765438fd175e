"""Partitions and the data module, on generated labels and on the real Fashion-MNIST files."""

import re

import numpy as np
import pytest

from classification.data import DATASETS, ClassificationData, fedavg_partitions, load_or_create_partitions


def test_fedavg_shards_by_hand():
    labels = np.repeat(np.arange(4), 3)  # 12 samples, classes 0..3; 2K = 4 shards = one class each
    parts = fedavg_partitions(labels, 2, seed=0)
    assert parts.shape == (2, 6)
    assert sorted(np.concatenate(parts).tolist()) == list(range(12))
    classes = [sorted(set(labels[p].tolist())) for p in parts]
    assert all(len(c) == 2 for c in classes) and not set(classes[0]) & set(classes[1])
    shard_of = {tuple(labels[p].tolist()) for p in parts.reshape(4, 3)}
    assert shard_of == {(c, c, c) for c in range(4)}  # every shard is one label block
    assert np.array_equal(fedavg_partitions(labels, 2, seed=0), parts)


def test_fedavg_drops_the_remainder_and_rejects_bad_k():
    labels = np.repeat(np.arange(2), 7)  # 14 samples, 4 shards of 3, 2 dropped
    assert fedavg_partitions(labels, 2, 1).shape == (2, 6)
    with pytest.raises(ValueError, match="num_partitions must be >= 1"):
        fedavg_partitions(labels, 0, 0)
    with pytest.raises(ValueError, match="cannot fill 8 shards"):
        fedavg_partitions(labels[:5], 4, 0)


def test_cifar10_shaped_split_shares_two_classes_with_seed_0():
    labels = np.repeat(np.arange(10), 5000)  # CIFAR-10's label histogram
    parts = fedavg_partitions(labels, 2, seed=0)
    shared = set(labels[parts[0]].tolist()) & set(labels[parts[1]].tolist())
    assert shared == {2, 7}  # the paper: the partitions share 2 of 10 classes


def test_partition_file_is_written_once_and_checked(tmp_path):
    labels = np.repeat(np.arange(5), 8)
    path = tmp_path / "splits" / "toy.npy"
    first = load_or_create_partitions(path, labels, 2, 3)
    assert path.is_file() and not list(path.parent.glob("*.part"))
    assert np.array_equal(np.load(path), first)
    assert np.array_equal(load_or_create_partitions(path, labels, 2, 3), first)
    with pytest.raises(ValueError, match="does not match dataset size 40, num_partitions 4 and seed 3"):
        load_or_create_partitions(path, labels, 4, 3)
    np.save(path, first[::-1])  # a file for another seed
    with pytest.raises(ValueError, match="delete it or set data.split_file"):
        load_or_create_partitions(path, labels, 2, 3)


def _data(root, tmp_path, **kw):
    args = dict(dataset="fmnist", data_dir=str(root), image_size=32, batch_size=16, num_workers=0,
                split_file=str(tmp_path / "split.npy"))
    return ClassificationData(**{**args, **kw})


def test_fmnist_partitions_are_deterministic_and_disjoint(fmnist_root, tmp_path):
    dm = _data(fmnist_root, tmp_path, partition=1)
    dm.prepare_data()
    train, val = dm.partition_indices()
    assert len(train) + len(val) == 30000 and len(val) == 6000
    assert not set(train.tolist()) & set(val.tolist())
    again = _data(fmnist_root, tmp_path, partition=1).partition_indices()
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = np.concatenate(_data(fmnist_root, tmp_path, partition=0).partition_indices())
    assert not set(other.tolist()) & set(np.concatenate([train, val]).tolist())
    small = _data(fmnist_root, tmp_path, partition=1, subset=100).partition_indices()
    assert (len(small[0]), len(small[1])) == (80, 20)


def test_fmnist_batches_are_normalized_rgb(fmnist_root, tmp_path):
    dm = _data(fmnist_root, tmp_path, subset=40)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.dtype.is_floating_point is False
    assert (x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()
    dm.setup("test")
    train_classes = set(dm.train_labels()[dm.partition_indices()[0]].tolist())
    test_labels = {int(dm.test_set.dataset.targets[i]) for i in dm.test_set.indices}
    assert test_labels <= train_classes and len(dm.test_set) > 0


def test_data_errors(fmnist_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'; valid datasets: \['cifar10', 'cifar100'"):
        ClassificationData(dataset="svhn")
    with pytest.raises(FileNotFoundError, match="data directory .*nowhere.* does not exist; set data.data_dir"):
        ClassificationData(dataset="cifar10", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"partition must be in \[0, 2\)"):
        _data(fmnist_root, tmp_path, partition=2)
    with pytest.raises(FileNotFoundError, match="dataset 'cifar10' not found under"):
        ClassificationData(dataset="cifar10", data_dir=str(tmp_path)).prepare_data()
    assert DATASETS["cifar100"].num_classes == 100


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_partition_file_names_itself_and_the_remedy(tmp_path, damage):
    labels = np.repeat(np.arange(4), 10)
    path = tmp_path / "split.npy"
    load_or_create_partitions(path, labels, 2, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a numpy file at all" * 4)
    with pytest.raises(ValueError, match=rf"partition file {re.escape(str(path))} cannot be read as a \.npy array "
                                         r".*delete it \(the next run writes it again"):
        load_or_create_partitions(path, labels, 2, 0)
