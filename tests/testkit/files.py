"""Small dataset files in the real on-disk formats, read through torchvision's loaders."""

import pickle

import numpy as np
from PIL import Image


def write_cifar(root, name="cifar10", per_class_train=12, per_class_test=4, classes=None):
    """CIFAR-10 / CIFAR-100 python-pickle batches (the layout of the official tarballs).

    Each class gets its own mean colour, so a model can learn them."""
    rng = np.random.default_rng(0)
    classes = classes or (10 if name == "cifar10" else 100)

    def images_and_labels(per_class):
        labels = np.repeat(np.arange(classes), per_class)
        rng.shuffle(labels)
        colours = (labels[:, None] * 97 % 256).astype(np.int16)
        noise = rng.integers(-30, 31, size=(len(labels), 3072))
        data = np.clip(colours + noise, 0, 255).astype(np.uint8)  # rows: R plane, G, B
        return data, labels.tolist()

    def dump(path, entry):
        with open(path, "wb") as f:
            pickle.dump(entry, f)

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            data, labels = images_and_labels(per_class_train // 5 or 1)
            dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                              "data": data, "labels": labels,
                                              "filenames": [f"{j}.png" for j in labels]})
        data, labels = images_and_labels(per_class_test)
        dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": data,
                                     "labels": labels, "filenames": []})
        dump(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(classes)],
                                       "num_cases_per_batch": 10000, "num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, per_class in (("train", per_class_train), ("test", per_class_test)):
            data, labels = images_and_labels(per_class)
            dump(folder / split, {"data": data, "fine_labels": labels,
                                  "coarse_labels": [c // 5 for c in labels], "filenames": []})
        dump(folder / "meta", {"fine_label_names": [f"class{c}" for c in range(classes)],
                               "coarse_label_names": [f"super{c}" for c in range(20)]})
    return root


def write_caltech101(root, categories=3, per_category=10):
    """The Caltech-101 folder layout: 101_ObjectCategories/<category>/image_NNNN.jpg, with
    the BACKGROUND_Google clutter class, JPEGs of mixed sizes and grey-scale ones."""
    rng = np.random.default_rng(1)
    base = root / "caltech101" / "101_ObjectCategories"
    for category in ["BACKGROUND_Google"] + [f"category_{c}" for c in range(categories)]:
        (base / category).mkdir(parents=True)
        for i in range(1, per_category + 1):
            height, width = rng.integers(40, 120, size=2)
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i % 4 == 0:
                image = image.convert("L")
            image.save(base / category / f"image_{i:04d}.jpg")
    return root


def write_image_folder(root, classes=("ant", "bee", "cat"), per_class=8, test_per_class=3,
                       size=(24, 40)):
    """torchvision's ImageFolder layout, train/<class>/ and (test_per_class > 0) test/
    <class>/, as a user's folder looks: JPEGs and PNGs of odd sizes, a greyscale and an
    RGBA (palette, alpha) image per class. Each image is filled with its class's colour
    plus noise, so a model can learn it."""
    rng = np.random.default_rng(2)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(classes):
            if count == 0:
                continue
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(*size, size=2))
                colour = np.array([(label * 97) % 256, (label * 57 + 80) % 256, 200 - label * 60])
                pixels = np.clip(colour + rng.normal(0, 25, (height, width, 3)), 0, 255)
                image = Image.fromarray(pixels.astype(np.uint8))
                if i == 1:
                    image = image.convert("L")
                if i == 2:
                    image = image.convert("RGBA")
                image.save(folder / f"{i:03d}.{'png' if i % 2 or i == 2 else 'jpg'}")
    return root
