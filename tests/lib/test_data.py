"""Datasets through their real loaders (files in the real formats), splits, batching."""

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from oneprune import data as data_module
from oneprune.config import TrainConfig
from oneprune.data import (
    DATASETS,
    Augment,
    Batches,
    DataUnavailableError,
    Split,
    load_dataset,
    source,
)
from oneprune.train import train


def class_counts(split, classes):
    return np.bincount(split.labels.numpy(), minlength=classes)


def test_digits_splits_are_stratified_disjoint_and_seeded():
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    sizes = len(data.train), len(data.val), len(data.test)
    assert sum(sizes) == 1797 and sizes == (1293, 144, 360)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (1, 8, 8)
    assert data.num_classes == 10 and data.in_channels == 1 and data.image_size == 8
    for split in (data.train, data.val, data.test):  # every class in its share
        share = class_counts(split, 10) / len(split)
        assert np.all(np.abs(share - 0.1) < 0.02)
    # a partition: the splits' rows, together, are the dataset's rows, each once
    whole = load_digits()
    expected = Counter(tuple(np.rint(x * 255 / 16).astype(int).flatten()) + (int(y),)
                       for x, y in zip(whole.images, whole.target, strict=True))
    got = Counter(tuple(x.flatten().tolist()) + (int(y),)
                  for split in (data.train, data.val, data.test)
                  for x, y in zip(split.images, split.labels, strict=True))
    assert got == expected
    again = load_dataset("digits", val_fraction=0.1, seed=0)
    assert torch.equal(again.val.images, data.val.images)
    other = load_dataset("digits", val_fraction=0.1, seed=1)
    assert not torch.equal(other.val.images, data.val.images)


def test_normalisation_uses_the_training_split():
    data = load_dataset("digits")
    batches = Batches(data.train, len(data.train), mean=data.mean, std=data.std)
    images, _ = next(iter(batches))
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-3


def test_cifar10_through_torchvision(cifar10_dir):
    data = load_dataset("cifar10", cifar10_dir, val_fraction=0.2, verify=False)
    assert data.num_classes == 10 and data.in_channels == 3 and data.image_size == 32
    assert len(data.train) + len(data.val) == 100 and len(data.test) == 40
    assert np.all(class_counts(data.val, 10) == 2)
    # the pickle rows are R, G, B planes; each class has its own colour
    label = int(data.test.labels[0])
    mean_colour = data.test.images[0].float().mean().item()
    assert abs(mean_colour - label * 97 % 256) < 12
    assert data.augment == Augment(pad=4, flip=True)


def test_cifar100_through_torchvision(cifar100_dir):
    data = load_dataset("cifar100", cifar100_dir, val_fraction=0.25, verify=False)
    assert data.num_classes == 100
    assert len(data.train) == 900 and len(data.val) == 300 and len(data.test) == 400


def test_cifar_files_that_fail_torchvisions_checksums_are_refused(cifar10_dir):
    with pytest.raises(DataUnavailableError, match="Dataset not found or corrupted"):
        load_dataset("cifar10", cifar10_dir)


def test_missing_cifar_files(tmp_path):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataUnavailableError, match="holds no readable cifar100 files"):
        load_dataset("cifar100", tmp_path / "empty", verify=False)


def test_caltech101_resized_cached_and_split(caltech_dir):
    data = load_dataset("caltech101", caltech_dir, image_size=16, val_fraction=0.25, seed=3)
    assert data.num_classes == 3  # BACKGROUND_Google is not a class
    assert data.train.images.shape[1:] == (3, 16, 16)  # grey-scale images made RGB
    assert len(data.train) + len(data.val) + len(data.test) == 30 and len(data.test) == 6
    assert np.all(class_counts(data.test, 3) == 2)
    cache = caltech_dir / "caltech101" / "oneprune-16px.pt"
    stamp = cache.stat().st_mtime_ns
    again = load_dataset("caltech101", caltech_dir, image_size=16, val_fraction=0.25, seed=3)
    assert cache.stat().st_mtime_ns == stamp  # read from the cache
    assert torch.equal(again.test.images, data.test.images)
    # a changed folder invalidates the cache
    (caltech_dir / "caltech101" / "101_ObjectCategories" / "category_0" / "image_0010.jpg").unlink()
    fewer = load_dataset("caltech101", caltech_dir, image_size=16, val_fraction=0.25, seed=3)
    assert len(fewer.train) + len(fewer.val) + len(fewer.test) == 29
    cache.write_bytes(b"half a file")  # a broken cache is rebuilt, not an error
    rebuilt = load_dataset("caltech101", caltech_dir, image_size=16, val_fraction=0.25, seed=3)
    assert torch.equal(rebuilt.test.images, fewer.test.images)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="dataset must be one of 'digits', 'cifar10'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 0.5\]"):
        load_dataset("digits", val_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction=0.001 cannot carve a stratified split"):
        load_dataset("digits", val_fraction=0.001)


def test_batches_cover_the_split_once_per_pass_in_a_new_order():
    split = Split(torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2)
                  .contiguous(), torch.arange(20))
    batches = Batches(split, 6, mean=(0.0,), std=(1 / 255,), shuffle=True, seed=0)
    first = torch.cat([labels for _, labels in batches])
    second = torch.cat([labels for _, labels in batches])
    assert sorted(first.tolist()) == list(range(20)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    for images, labels in batches:  # the labels travel with their images
        assert torch.equal(images[:, 0, 0, 0], labels.float())
    assert len(Batches(split, 6, mean=(0.0,), std=(1.0,), drop_last=True)) == 3


def test_batches_shard_like_a_distributed_sampler():
    split = Split(torch.zeros(21, 1, 2, 2, dtype=torch.uint8), torch.arange(21))
    shards = [torch.cat([labels for _, labels in Batches(
        split, 4, mean=(0.0,), std=(1.0,), shuffle=True, seed=5, rank=rank, world_size=2)])
        for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 10
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    evaluation = [torch.cat([labels for _, labels in Batches(
        split, 4, mean=(0.0,), std=(1.0,), rank=rank, world_size=2)]) for rank in (0, 1)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(21))  # eval sees every sample


def test_augmentation_crops_and_flips_each_image_on_its_own():
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = Augment(pad=2, flip=True)(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets, flips = set(), 0
    for original, augmented in zip(padded, out, strict=True):
        match = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                 if torch.equal(augmented, (original[:, dy:dy + 8, dx:dx + 8].flip(2) if flip
                                            else original[:, dy:dy + 8, dx:dx + 8]))]
        assert match, "every output is a flipped or plain crop of its padded input"
        offsets.add(match[0][:2])
        flips += match[0][2]
    assert len(offsets) > 10 and 16 < flips < 48


@pytest.fixture
def stripes():
    """A dataset source defined here, as a user would add one: 200 generated 8x8 images of
    horizontal or vertical stripes (two classes), no files. It registers itself and is
    removed from the registry afterwards."""
    @source("stripes", embedded=True, default_model="convnet",
            augment=lambda size: Augment(pad=1, flip=False))
    def _stripes(request):
        generator = torch.Generator().manual_seed(request.seed)
        labels = torch.randint(0, 2, (200,), generator=generator)
        bars = (torch.arange(8) % 2 * 255).to(torch.uint8)
        images = torch.where(labels[:, None, None, None] == 0, bars[None, None, :, None],
                             bars[None, None, None, :]).expand(200, 1, 8, 8).clone()
        split = Split(images, labels)
        return data_module._stratified(split, 0.2, request.seed, "test_fraction") + (2,)

    yield DATASETS["stripes"]
    del data_module._DATASETS["stripes"]


def test_a_new_dataset_source_registers_and_trains_like_a_built_in_one(stripes):
    assert stripes.name == "stripes" and not stripes.resized
    cfg = TrainConfig(dataset="stripes", schedule=None, epochs=3, lr_max=1e-2)
    assert cfg.model == "convnet"  # the source's default model
    data = cfg.load_data()
    assert (data.num_classes, data.in_channels, data.image_size) == (2, 1, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 200
    assert train(cfg, data=data).test_acc > 0.9  # stripes are easy
    with pytest.raises(ValueError, match="dataset 'stripes' is registered twice"):
        source("stripes", augment=stripes.augment)(lambda request: None)

