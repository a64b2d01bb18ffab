"""Animal-MNIST written to disk as a class-per-folder retrieval benchmark (the real shipped set).

Source: the PyPI package `animal-mnist==0.4` (installed with --no-deps: it declares tensorflow,
which is not needed). Its data are two gzipped pickles inside the package: 10,000 grayscale 28x28
uint8 silhouettes and their labels, 10 classes x 1,000 images. The label order is alphabetical:
0 bear, 1 bird, 2 cat, 3 cow, 4 dog, 5 elephant, 6 giraffe, 7 horse, 8 sheep, 9 zebra (checked by
eye against the images). The files are read with gzip + pickle; `animal_mnist` itself is never
imported (its __init__ imports tensorflow).

Protocol (unseen-class retrieval, like CUB/SOP): classes 0-4 are the training set
(`train/<class>/NNNNN.png`, 5,000 images), classes 5-9 are never seen in training and form the test
set (`test/<class>/NNNNN.png`, 5,000 images). Every test image is a query against all other test
images (query == gallery, only the query itself is dropped); a match is an image of the same class.
`load_dataset("folder", out)` reads it with protocol "class". NNNNN is the image's index in the
package's array. PNGs are stored as RGB (the gray value repeated), at the original 28x28.

Class folds (`--fold N`, `FOLDS`): the same images with other classes held out, so a comparison can be
averaged over several train/test partitions of the ten classes instead of resting on one. Fold 0 is the
protocol above; fold 1 swaps its halves; folds 2 and 3 split the classes by even and odd label; folds 4
and 5 split them into bear, bird, elephant, giraffe, horse and the rest.

    python -m training.data.animal_mnist --out data/animal-mnist [--fold N] [--limit-per-class N]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.staged_folder import staged_folder

__all__ = [
    "CLASS_NAMES",
    "COMPLETE_MARKER",
    "FOLDS",
    "INSTALL_HINT",
    "TEST_CLASSES",
    "TRAIN_CLASSES",
    "load_animal_mnist_arrays",
    "main",
    "materialize_animal_mnist",
]

CLASS_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
"""Folder name of each label 0-9 (sorted order == label order)."""
TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)
FOLDS: dict[int, tuple[int, ...]] = {0: TRAIN_CLASSES, 1: TEST_CLASSES, 2: (0, 2, 4, 6, 8), 3: (1, 3, 5, 7, 9),
                                     4: (0, 1, 5, 6, 7), 5: (2, 3, 4, 8, 9)}
"""Training classes of each class fold; its test classes are the other five. Three partitions of the ten
classes, each used both ways round (folds 2k and 2k+1); any two partitions share two or three classes per half."""
COMPLETE_MARKER = ".complete"
INSTALL_HINT = "pip install --no-deps animal-mnist==0.4"
_DATA_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")


def _data_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the animal-mnist package is not installed; run: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def load_animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (10000, 28, 28), labels int64 (10000,)) from the installed package.

    Raises ModuleNotFoundError naming the install command, or ValueError if the files differ from
    the expected shapes (another package version).
    """
    folder = _data_dir()
    arrays = []
    for name in _DATA_FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the animal-mnist package; reinstall: {INSTALL_HINT}")
        with gzip.open(path, "rb") as handle:
            arrays.append(np.asarray(pickle.load(handle)))  # trusted: data shipped inside the package
    images, labels = arrays[0], arrays[1].astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"unexpected animal-mnist data: images {images.dtype} {images.shape}, labels {labels.shape}; "
            f"expected uint8 (N, 28, 28) and (N,) as in version 0.4 ({INSTALL_HINT})"
        )
    return images, labels


def _write_split(folder: Path, images: np.ndarray, labels: np.ndarray, classes: Sequence[int],
                 limit_per_class: int | None) -> int:
    written = 0
    for label in classes:
        class_dir = folder / CLASS_NAMES[label]
        class_dir.mkdir(parents=True)
        for index in np.flatnonzero(labels == label)[:limit_per_class]:
            Image.fromarray(images[index], "L").convert("RGB").save(class_dir / f"{index:05d}.png")
            written += 1
    return written


def materialize_animal_mnist(
    out: str | Path, limit_per_class: int | None = None, overwrite: bool = False, fold: int = 0
) -> Path:
    """Write train/<class>/ and test/<class>/ PNGs under `out` (atomic, with a `.complete` marker).

    limit_per_class: keep only the first N images of each class (tests, demos). fold: which classes
    train (`FOLDS`; the other five are the test set). If `out` already holds a complete set with the
    same options it is kept; anything else there raises FileExistsError unless overwrite=True.
    """
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be >= 1 or None, got {limit_per_class}")
    if fold not in FOLDS:
        raise ValueError(f"fold must be one of {sorted(FOLDS)}, got {fold}")
    out = Path(out)
    options: dict[str, object] = {"source": "animal-mnist==0.4", "limit_per_class": limit_per_class}
    if fold:  # fold 0's marker keeps its original form, so folders written before folds existed stay valid
        options["fold"] = fold
    train_classes = FOLDS[fold]
    test_classes = tuple(label for label in range(len(CLASS_NAMES)) if label not in train_classes)
    marker = out / COMPLETE_MARKER
    if not overwrite and marker.is_file() and json.loads(marker.read_text()).get("options") == options:
        return out
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists and is not this animal-mnist set; remove it or pass overwrite=True")
    images, labels = load_animal_mnist_arrays()
    with staged_folder(out) as partial:
        counts = {
            "train": _write_split(partial / "train", images, labels, train_classes, limit_per_class),
            "test": _write_split(partial / "test", images, labels, test_classes, limit_per_class),
        }
        (partial / COMPLETE_MARKER).write_text(json.dumps({"options": options, "counts": counts}, indent=1))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: materialise the set under --out."""
    parser = argparse.ArgumentParser(description="Write Animal-MNIST as a class-per-folder retrieval set.")
    parser.add_argument("--out", type=Path, default=Path("data/animal-mnist"))
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--fold", type=int, default=0, choices=sorted(FOLDS),
                        help="class fold (FOLDS): 0 trains on classes 0-4, 1 on 5-9, 2 on even labels, 3 on odd ones, "
                             "4 on 0, 1, 5, 6, 7 and 5 on the rest")
    parser.add_argument("--force", action="store_true", help="replace an existing folder at --out")
    args = parser.parse_args(argv)
    try:
        out = materialize_animal_mnist(args.out, args.limit_per_class, overwrite=args.force, fold=args.fold)
    except (ModuleNotFoundError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"animal-mnist retrieval set ready at {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
