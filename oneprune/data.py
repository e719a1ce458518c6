"""Datasets as in-memory uint8 tensors, split into train / val / test, and batched on the device.

Every dataset is a source (`DataSource`) that registers itself by name in `DATASETS`: a
function decorated with `@source(...)`, which reads the files into a train and a test split
and declares how the training batches are augmented, whether the images are decoded at
`image_size`, whether `data_dir` is required (and what it must hold) and the model a config
defaults to. A new dataset is one decorated function here. The built-in ones:

- `digits`: scikit-learn's 8x8 digits (1,797 images, embedded: always available offline).
- `cifar10`, `cifar100`: torchvision's `CIFAR10` / `CIFAR100` (their files under `data_dir`,
  or downloaded there with `download=True`).
- `caltech101`: torchvision's `Caltech101`, each image resized (shorter side) and centre-
  cropped to `image_size` once, then cached under `data_dir` as a tensor file.
- `imagefolder`: your own images in torchvision's `ImageFolder` layout, `data_dir/train/
  <class>/*` and, if present, `data_dir/test/<class>/*`; any file Pillow reads (JPEG, PNG,
  greyscale, RGBA, any size), resized and centre-cropped like Caltech-101 and cached the
  same way (`imagefolder_cache`).

Digits, Caltech-101 and an image folder without `test/` have no official test split: a
stratified, seeded `TEST_FRACTION` of them is the test set. The validation set is always a
stratified, seeded `val_fraction` of the training set: tuning reads val, the final verdict
reads test. The split depends only on `seed`, so every trial of a study sees the same split.

`Batches` feeds a split to the training loop without per-sample Python: a batch is one
index into the tensor, its augmentation (random crop with zero padding, horizontal flip)
is applied to the whole batch at once, then it is normalised with the training set's
per-channel mean and std.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

from oneprune import _validate
from oneprune._files import write_atomically

DEFAULT_DATA_DIR = Path("~/.cache/oneprune/data")
TEST_FRACTION = 0.2
CALTECH_CACHE_VERSION = 1
IMAGEFOLDER_CACHE_VERSION = 1
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})  # Pillow's single-channel modes


class DataUnavailableError(ValueError):
    """The dataset's files are missing or unreadable and could not be downloaded."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, C, H, W) and their int64 class labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Augment:
    """Batch augmentation: random crop after `pad` pixels of zero padding, random h-flip."""

    pad: int = 0
    flip: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a uint8 (B, C, H, W) batch; randomness drawn from the CPU `generator`."""
        b, _, h, w = images.shape
        device = images.device
        if self.pad:
            padded = F.pad(images, (self.pad,) * 4)
            offsets = torch.randint(0, 2 * self.pad + 1, (2, b), generator=generator)
            offsets = offsets.to(device)
            rows = (offsets[0, :, None] + torch.arange(h, device=device))[:, :, None]
            cols = (offsets[1, :, None] + torch.arange(w, device=device))[:, None, :]
            batch = torch.arange(b, device=device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(device)
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images


@dataclass(frozen=True)
class ImageData:
    """A dataset's three splits, its class count, normalisation and training augmentation,
    and the `split_seed` / `val_fraction` that made the splits."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    split_seed: int
    val_fraction: float

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[2]


class Batches:
    """Iterates `split` in batches of normalised float images and labels on `device`.

    With `shuffle`, every pass draws a new permutation from `seed`; with `world_size` > 1,
    rank `rank` takes its shard of it (equal shards, the same permutation on every rank,
    as `DistributedSampler` does). Augmentation randomness differs per rank.
    """

    def __init__(self, split: Split, batch_size: int, *, mean, std, device="cpu",
                 augment: Augment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.batch_size = _validate.integer("batch_size", batch_size, low=1)
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        channels = (1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(channels).to(self.device)
        self._shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(channels)
        self._shift = self._shift.to(self.device)
        self.augment, self.shuffle, self.drop_last = augment, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.memory_format = memory_format
        self._order = torch.Generator().manual_seed(seed)
        rank_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
        self._augment_generator = torch.Generator().manual_seed(rank_seed)

    def _shard_size(self) -> int:
        n = len(self.labels)
        if self.shuffle:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def generator_state(self) -> dict[str, torch.Tensor]:
        """The random state of batch order and augmentation (to resume a pass exactly)."""
        return {"order": self._order.get_state(), "augment": self._augment_generator.get_state()}

    def load_generator_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `generator_state()` returned."""
        self._order.set_state(state["order"])
        self._augment_generator.set_state(state["augment"])

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self._order)
            order = order[: n - n % self.world_size][self.rank::self.world_size]
        else:
            order = torch.arange(self.rank, n, self.world_size)
        order = order.to(self.device)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.images[index]
            if self.augment is not None:
                images = self.augment(images, self._augment_generator)
            images = images.float().mul_(self._scale).sub_(self._shift)
            yield images.contiguous(memory_format=self.memory_format), self.labels[index]


# -- loading ------------------------------------------------------------------------------


def _stratified(split: Split, fraction: float, seed: int, field: str) -> tuple[Split, Split]:
    """(rest, carved): a stratified, seeded `fraction` of `split` carved out."""
    from sklearn.model_selection import train_test_split  # ~1 s to import; loading only
    indices = np.arange(len(split))
    try:
        rest, carved = train_test_split(indices, test_size=fraction, random_state=seed,
                                        stratify=split.labels.numpy())
    except ValueError as error:
        raise ValueError(f"{field}={fraction:g} cannot carve a stratified split from "
                         f"{len(split)} samples: {error}") from None
    rest, carved = np.sort(rest), np.sort(carved)
    return (Split(split.images[rest], split.labels[rest]),
            Split(split.images[carved], split.labels[carved]))


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, from exact histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].flatten(), minlength=256).double()
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return tuple(means), tuple(stds)


@dataclass(frozen=True)
class SourceRequest:
    """What a source is asked for: its registered `name`, the folder its files are in
    (`root`), whether it may `download` them, the side to decode images at, the seed of a
    test split it carves itself, whether to `verify` checksums, a progress bar, a log."""

    name: str
    root: Path
    download: bool
    image_size: int
    seed: int
    verify: bool
    progress: bool
    log: Callable[[str], None]


@dataclass(frozen=True)
class DataSource:
    """A dataset by name: `read(request)` gives its (train, test, class count); `augment(
    image_size)` its training augmentation. `resized`: decoded once at `image_size` (so
    that setting matters, and data loaded at another size is not this config's).
    `embedded`: it has no files. `layout`: what `data_dir` must hold when the source needs
    one given (None: it defaults to `DEFAULT_DATA_DIR`). `default_model`: the model a
    config without one trains."""

    name: str
    read: Callable[[SourceRequest], tuple[Split, Split, int]]
    augment: Callable[[int], Augment]
    resized: bool = False
    embedded: bool = False
    layout: str | None = None
    default_model: str = "resnet18"


_DATASETS: dict[str, DataSource] = {}
DATASETS: Mapping[str, DataSource] = MappingProxyType(_DATASETS)
"""Every dataset source by name, in the order they were registered."""


def source(name: str, *, augment: Callable[[int], Augment], resized: bool = False,
           embedded: bool = False, layout: str | None = None,
           default_model: str = "resnet18") -> Callable:
    """Register the decorated `read(request)` function as the dataset `name` (see
    `DataSource`); a name is taken once."""
    def register(read: Callable[[SourceRequest], tuple[Split, Split, int]]):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = DataSource(name, read, augment, resized, embedded, layout,
                                     default_model)
        return read
    return register


def data_source(name: str) -> DataSource:
    """The registered source `name`; `ValueError` naming the known ones otherwise."""
    return DATASETS[_validate.choice("dataset", name, tuple(DATASETS))]


@source("digits", embedded=True, default_model="convnet",
        augment=lambda size: Augment(pad=1, flip=False))  # digits are not mirror-symmetric
def _digits(request: SourceRequest) -> tuple[Split, Split, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    whole = Split(torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64)))
    train, test = _stratified(whole, TEST_FRACTION, request.seed, "test_fraction")
    return train, test, 10


def _unavailable(name: str, root: Path, download: bool, error: Exception) -> DataUnavailableError:
    how = ("the download failed" if download else
           "pass download=True (--download) or point data_dir (--data-dir) at them")
    return DataUnavailableError(f"data_dir {str(root)!r} holds no readable {name} files "
                                f"({error}); {how}")


@source("cifar100", augment=lambda size: Augment(pad=4, flip=True))
@source("cifar10", augment=lambda size: Augment(pad=4, flip=True))  # registered first
def _cifar(request: SourceRequest) -> tuple[Split, Split, int]:
    from torchvision import datasets

    name, root, download = request.name, request.root, request.download
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if not request.verify:  # same files and parser, without torchvision's md5 checks
        cls = type(cls.__name__, (cls,), {
            "train_list": [[file, None] for file, _ in cls.train_list],
            "test_list": [[file, None] for file, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None}})
    splits = []
    for train in (True, False):
        try:
            dataset = cls(root=str(root), train=train, download=download)
        except (RuntimeError, OSError, urllib.error.URLError, EOFError, KeyError) as error:
            raise _unavailable(name, root, download, error) from None
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        splits.append(Split(images, torch.tensor(dataset.targets, dtype=torch.int64)))
        num_classes = len(dataset.classes)
    return splits[0], splits[1], num_classes


@source("caltech101", resized=True, augment=lambda size: Augment(pad=size // 8, flip=True))
def _caltech101(request: SourceRequest) -> tuple[Split, Split, int]:
    from torchvision import datasets, transforms

    root, download, image_size = request.root, request.download, request.image_size

    resize = transforms.Compose([transforms.Lambda(lambda image: image.convert("RGB")),
                                 _resize(image_size)])
    try:
        dataset = datasets.Caltech101(str(root), transform=resize, download=download)
    except (RuntimeError, OSError, urllib.error.URLError) as error:
        raise _unavailable("caltech101", root, download, error) from None
    if len(dataset) == 0:
        raise _unavailable("caltech101", root, download, RuntimeError("no images"))
    signature = {"version": CALTECH_CACHE_VERSION, "categories": list(dataset.categories),
                 "images": len(dataset), "image_size": image_size}
    def build() -> dict:
        try:
            pairs = [dataset[i] for i in range(len(dataset))]
        except OSError as error:
            raise _unavailable("caltech101", root, download, error) from None
        return {"images": torch.stack([image for image, _ in pairs]),
                "labels": torch.tensor([label for _, label in pairs], dtype=torch.int64)}

    cached = _cached(Path(dataset.root) / f"oneprune-{image_size}px.pt", signature, build)
    whole = Split(cached["images"], cached["labels"])
    train, test = _stratified(whole, TEST_FRACTION, request.seed, "test_fraction")
    return train, test, len(dataset.categories)


def _resize(image_size: int):
    """PIL image -> uint8 (C, H, W) tensor: shorter side resized to `image_size`, then
    centre-cropped to a square (torchvision's `Resize` and `CenterCrop`)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(image_size),
                               transforms.CenterCrop(image_size),
                               transforms.PILToTensor()])


def _folder_samples(folder: Path, class_to_idx: dict[str, int] | None = None,
                    ) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, class index)]) of an ImageFolder split, by torchvision's own
    `find_classes` / `make_dataset` (sorted; only files with an image extension)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, found = find_classes(str(folder))
    except (FileNotFoundError, NotADirectoryError) as error:
        raise DataUnavailableError(f"{str(folder)!r} has no class folders ({error})") from None
    if class_to_idx is not None:
        unknown = [name for name in classes if name not in class_to_idx]
        if unknown:
            raise DataUnavailableError(f"{str(folder)!r} has classes that train/ lacks: "
                                       f"{', '.join(unknown[:5])}")
        found = {name: class_to_idx[name] for name in classes}
    try:
        samples = make_dataset(str(folder), found, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:
        raise DataUnavailableError(f"{str(folder)!r}: {error}".replace("\n", " ")) from None
    return classes, samples


def _decode(paths: list[str], image_size: int, root: Path, progress: bool,
            ) -> tuple[torch.Tensor, int]:
    """The images at `paths` as one uint8 (N, C, S, S) tensor (C = 1 when every image is
    greyscale, else 3; alpha is dropped), decoded on a thread pool (Pillow releases the
    GIL); also how many were smaller than `image_size` and upsampled."""
    from PIL import Image
    from tqdm import tqdm

    resize = _resize(image_size)

    def load(path: str) -> tuple[torch.Tensor, bool, bool]:
        try:
            with Image.open(path) as image:
                grey = image.mode in GREY_MODES
                return resize(image.convert("RGB")), min(image.size) < image_size, grey
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataUnavailableError(f"cannot read image {os.path.relpath(path, root)!r}: "
                                       f"{error}") from None

    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    upsampled, all_grey = 0, True
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(paths), desc=f"decoding {root.name}", unit="image",
                 file=sys.stderr, disable=not progress) as bar:
        for i, (image, small, grey) in enumerate(pool.map(load, paths, chunksize=64)):
            images[i] = image
            upsampled += small
            all_grey &= grey
            bar.update()
    if all_grey:  # R = G = B: keep one channel
        images = images[:, :1].clone()
    return images, upsampled


def _signature(samples: list[tuple[str, int]], classes: list[str], root: Path,
               image_size: int) -> str:
    """Digest of what a cache was made from: every file's path, class, size and mtime."""
    digest = hashlib.sha256(f"{IMAGEFOLDER_CACHE_VERSION} {image_size} {classes}".encode())
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)} {label} {stat.st_size} "
                      f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def imagefolder_cache(root: Path, image_size: int) -> Path:
    """Where `load_dataset("imagefolder", root, ...)` caches the decoded images: beside
    them in `root`, or under `DEFAULT_DATA_DIR` when `root` cannot be written."""
    name = f"oneprune-{image_size}px.pt"
    if os.access(root, os.W_OK):
        return root / name
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return DEFAULT_DATA_DIR.expanduser() / "imagefolder" / key / name


@source("imagefolder", resized=True, layout="a folder with train/<class>/ (and optionally "
        "test/)", augment=lambda size: Augment(pad=size // 8, flip=True))
def _imagefolder(request: SourceRequest) -> tuple[Split, Split, int]:
    root, image_size, log = request.root, request.image_size, request.log
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise DataUnavailableError(f"data_dir {str(root)!r} has no train/ folder (the "
                                   f"layout: train/<class>/<image>, optionally test/...)")
    classes, train_samples = _folder_samples(train_dir)
    if len(classes) < 2:
        raise DataUnavailableError(f"{str(train_dir)!r} has {len(classes)} class folder; "
                                   f"a classifier needs at least 2")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    test_samples = (_folder_samples(test_dir, class_to_idx)[1] if test_dir.is_dir() else [])
    samples = train_samples + test_samples
    signature = _signature(samples, classes, root, image_size)
    cache = imagefolder_cache(root, image_size)

    def build() -> dict:
        images, upsampled = _decode([path for path, _ in samples], image_size, root,
                                    request.progress)
        return {"images": images, "upsampled": upsampled,
                "labels": torch.tensor([label for _, label in samples], dtype=torch.int64)}

    cached = _cached(cache, signature, build)
    images, labels = cached["images"], cached["labels"]
    where = "train/ and test/" if test_samples else "train/ (no test/: 20% held out)"
    log(f"imagefolder {str(root)!r}: {len(samples):,} images of {len(classes)} classes in "
        f"{where}, {images.shape[1]}x{image_size}x{image_size}, cached in {str(cache)!r}")
    if cached["upsampled"]:
        log(f"imagefolder: {cached['upsampled']:,} images are smaller than image_size="
            f"{image_size} on their shorter side and were upsampled")
    n = len(train_samples)
    train = Split(images[:n], labels[:n])
    if test_samples:
        return train, Split(images[n:], labels[n:]), len(classes)
    train, test = _stratified(train, TEST_FRACTION, request.seed, "test_fraction")
    return train, test, len(classes)


def _cached(path: Path, signature, build: Callable[[], dict]) -> dict:
    """The tensors cached at `path` if they were made from `signature`, else `build()`'s,
    written there atomically (a reader never sees half a file) with the signature."""
    try:
        cached = torch.load(path, weights_only=True)
    except Exception:  # missing, or broken in any way (torch.load then raises anything)
        cached = None
    if not isinstance(cached, dict) or cached.get("signature") != signature:
        cached = {"signature": signature, **build()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: torch.save(cached, f))
    return cached


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def load_dataset(name: str = "digits", data_dir: str | os.PathLike | None = None,
                 download: bool = False, val_fraction: float = 0.1, seed: int = 0, *,
                 image_size: int = 64, verify: bool = True, progress: bool = False,
                 log: Callable[[str], None] = _stderr) -> ImageData:
    """Load `name` with its train / val / test splits (see the module docstring).

    Args:
        data_dir: where the files are or go (default `~/.cache/oneprune/data`); digits
            needs none.
        download: fetch missing files (CIFAR, Caltech-101) from the official source.
        val_fraction: share of the training set held out for validation, in (0, 0.5].
        seed: seed of the stratified splits (not of training).
        image_size: side of the Caltech-101 and image-folder images after resizing
            (smaller images are upsampled, and `log` says how many).
        verify: check the CIFAR files against torchvision's md5 sums; turn off only for
            files you made yourself in the same format (smaller subsets, tests).
        progress: a progress bar while an image folder is decoded the first time.
        log: where an image folder's summary (images, classes, cache) is written.

    Raises:
        ValueError: a bad argument (naming it and its range).
        DataUnavailableError: the files are missing or unreadable and were not downloaded.
    """
    data = data_source(name)
    val_fraction = _validate.real("val_fraction", val_fraction, **_validate.VAL_FRACTION)
    seed = _validate.integer("seed", seed, **_validate.SEED)
    image_size = _validate.integer("image_size", image_size, **_validate.IMAGE_SIZE)
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    if data.layout is not None and (data_dir is None or not root.is_dir()):
        raise DataUnavailableError(f"dataset {name!r} needs data_dir (--data-dir), "
                                   f"{data.layout}: " + ("none given" if data_dir is None
                                                         else f"{str(root)!r} does not exist"))
    if not data.embedded and not download and not root.is_dir():
        raise DataUnavailableError(f"data_dir {str(root)!r} does not exist; pass "
                                   f"download=True (--download) or an existing folder")
    train, test, num_classes = data.read(SourceRequest(name, root, download, image_size, seed,
                                                       verify, progress, log))
    augment = data.augment(image_size)
    train, val = _stratified(train, val_fraction, seed, "val_fraction")
    mean, std = _channel_stats(train.images)
    return ImageData(name, train, val, test, num_classes, mean, std, augment, seed,
                     val_fraction)
