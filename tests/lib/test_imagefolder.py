"""`dataset: imagefolder`: a user's own images in torchvision's ImageFolder layout, through
the library and the train CLI (files written by `write_image_folder`: JPEG, PNG,
greyscale, RGBA, odd sizes). The service's side: tests/service/test_user_inputs.py."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from testkit.files import write_image_folder

from oneprune.cli import main
from oneprune.config import TrainConfig
from oneprune.data import DataUnavailableError, imagefolder_cache, load_dataset
from oneprune.train import train


def load(folder, **kwargs):
    lines = []
    data = load_dataset("imagefolder", folder, image_size=16, log=lines.append, **kwargs)
    return data, lines


def test_a_folder_is_decoded_resized_split_and_cached(image_folder):
    data, lines = load(image_folder)
    assert data.num_classes == 3 and data.in_channels == 3 and data.image_size == 16
    assert data.train.images.dtype == torch.uint8
    assert len(data.test) == 9 and np.bincount(data.test.labels.numpy()).tolist() == [3, 3, 3]
    assert len(data.train) + len(data.val) == 24
    assert lines[0].startswith(f"imagefolder {str(image_folder)!r}: 33 images of 3 classes "
                               f"in train/ and test/, 3x16x16")
    # Labels follow torchvision's sorted class folders; a class's colour is its label's.
    red = data.test.images[:, 0].float().mean(dim=(1, 2))
    assert red[data.test.labels == 1].mean() > red[data.test.labels == 0].mean() + 40
    cache = imagefolder_cache(image_folder, 16)
    assert cache == image_folder / "oneprune-16px.pt" and cache.is_file()

    stamp = cache.stat().st_mtime_ns
    again, _ = load(image_folder)
    assert cache.stat().st_mtime_ns == stamp  # read from the cache, not decoded again
    assert torch.equal(again.train.images, data.train.images)
    # A changed folder is decoded again.
    Image.new("RGB", (30, 30), "white").save(image_folder / "train" / "ant" / "new.png")
    changed, _ = load(image_folder)
    assert cache.stat().st_mtime_ns != stamp and len(changed.train) + len(changed.val) == 25


def test_without_test_folder_a_stratified_test_split_is_carved(tmp_path):
    folder = write_image_folder(tmp_path / "f", per_class=10, test_per_class=0)
    data, lines = load(folder, seed=3)
    assert "no test/: 20% held out" in lines[0]
    assert np.bincount(data.test.labels.numpy()).tolist() == [2, 2, 2]
    assert sum(map(len, (data.train, data.val, data.test))) == 30


def test_greyscale_folders_stay_one_channel_and_small_images_are_upsampled(tmp_path):
    folder = tmp_path / "grey"
    for name in ("a", "b"):
        (folder / "train" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (10 + i, 10 + i), 40 if name == "a" else 200).save(
                folder / "train" / name / f"{i}.png")
    data, lines = load(folder)
    assert data.in_channels == 1
    assert lines[1] == ("imagefolder: 12 images are smaller than image_size=16 on their "
                        "shorter side and were upsampled")


def test_a_read_only_folder_is_cached_under_the_user_cache(image_folder, monkeypatch,
                                                           tmp_path):
    monkeypatch.setattr("oneprune.data.DEFAULT_DATA_DIR", tmp_path / "cache")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    cache = imagefolder_cache(image_folder, 16)
    assert cache.parent.parent == tmp_path / "cache" / "imagefolder"
    load(image_folder)
    assert cache.is_file() and not (image_folder / "oneprune-16px.pt").exists()


def corrupt(folder):
    (folder / "train" / "bee" / "004.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")


def missing_train(folder):
    os.rename(folder / "train", folder / "training")


def empty_class(folder):
    (folder / "train" / "dog").mkdir()


def extra_test_class(folder):
    (folder / "test" / "eel").mkdir()
    Image.new("RGB", (20, 20)).save(folder / "test" / "eel" / "0.png")


def one_class(folder):
    for name in ("bee", "cat"):
        for path in (folder / "train" / name).iterdir():
            path.unlink()
        (folder / "train" / name).rmdir()


@pytest.mark.parametrize("damage, message", [
    (corrupt, "cannot read image 'train/bee/004.jpg'"),
    (missing_train, "has no train/ folder"),
    (empty_class, "Found no valid file for the classes dog"),
    (extra_test_class, "has classes that train/ lacks: eel"),
    (one_class, "has 1 class folder; a classifier needs at least 2"),
])
def test_bad_folders_are_refused_naming_the_problem(image_folder, damage, message):
    damage(image_folder)
    with pytest.raises(DataUnavailableError, match=message.replace("/", ".")):
        load(image_folder)


def test_a_missing_folder_and_no_data_dir_are_refused(tmp_path):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs data_dir"):
        TrainConfig(dataset="imagefolder")


def test_training_on_a_folder(image_folder):
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(image_folder), image_size=16,
                      epochs=2, batch_size=8, val_fraction=0.2, width=0.25)
    result = train(cfg, data=cfg.load_data())
    assert result.model is not None and 0.0 <= result.test_acc <= 1.0
    assert abs(result.sparsity - 0.9) < 0.01


def test_the_train_cli_prints_one_line_for_a_corrupt_image(image_folder, capsys):
    corrupt(image_folder)
    with pytest.raises(SystemExit) as exit:
        main(["--dataset", "imagefolder", "--data-dir", str(image_folder), "--image-size",
              "16", "--quiet"])
    done = capsys.readouterr()
    assert exit.value.code == 2 and done.out == ""
    assert done.err.count("\n") == 1 and "cannot read image 'train/bee/004.jpg'" in done.err
