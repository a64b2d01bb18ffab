"""Animal-MNIST materialisation: unseen-class folders, RGB PNGs equal to the packaged arrays."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.animal_mnist import (
    CLASS_NAMES,
    COMPLETE_MARKER,
    FOLDS,
    load_animal_mnist_arrays,
    main,
    materialize_animal_mnist,
)
from training.data.layouts import load_dataset

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("animal_mnist") is None,
    reason="animal-mnist is not installed (pip install --no-deps animal-mnist==0.4)",
)


def test_arrays_are_ten_balanced_classes() -> None:
    images, labels = load_animal_mnist_arrays()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert "tensorflow" not in sys.modules, "reading the data must not import the package (tensorflow)"


def test_small_subset_is_an_unseen_class_retrieval_set(tmp_path: Path) -> None:
    out = materialize_animal_mnist(tmp_path / "animal-mnist", limit_per_class=5)
    assert sorted(p.name for p in (out / "train").iterdir()) == list(CLASS_NAMES[:5])
    assert sorted(p.name for p in (out / "test").iterdir()) == list(CLASS_NAMES[5:])
    splits = load_dataset("folder", out)
    assert splits.protocol == "class" and splits.query == splits.gallery
    assert len(splits.train) == 25 and len(splits.query) == 25
    assert sorted({r.pid for r in splits.train}) == [0, 1, 2, 3, 4], "folder pids equal the package labels"
    assert sorted({r.pid for r in splits.query}) == [5, 6, 7, 8, 9]
    images, labels = load_animal_mnist_arrays()
    for record in (splits.train[0], splits.query[-1]):
        index = int(Path(record.path).stem)
        assert labels[index] == record.pid
        with Image.open(record.path) as png:
            assert png.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(png), np.repeat(images[index][..., None], 3, axis=2))
    marker = json.loads((out / COMPLETE_MARKER).read_text())
    assert marker["counts"] == {"train": 25, "test": 25}
    assert materialize_animal_mnist(out, limit_per_class=5) == out
    with pytest.raises(FileExistsError, match="exists and is not this animal-mnist set; remove it or pass "
                                              "overwrite=True"):
        materialize_animal_mnist(out, limit_per_class=6)


def test_the_class_folds_hold_out_every_class_once_per_pair_and_keep_the_pixels(tmp_path: Path) -> None:
    for first in (0, 2, 4):  # each partition used both ways round
        assert sorted(FOLDS[first] + FOLDS[first + 1]) == list(range(10))
    halves = [set(FOLDS[f]) for f in (0, 2, 4)]
    assert all(len(a & b) in (2, 3) for a in halves for b in halves if a is not b), "the partitions differ"
    images, _ = load_animal_mnist_arrays()
    for fold, train_classes in FOLDS.items():
        out = materialize_animal_mnist(tmp_path / f"fold-{fold}", limit_per_class=2, fold=fold)
        assert sorted(p.name for p in (out / "train").iterdir()) == sorted(CLASS_NAMES[c] for c in train_classes)
        assert sorted(p.name for p in (out / "test").iterdir()) == sorted(
            CLASS_NAMES[c] for c in range(10) if c not in train_classes)
        splits = load_dataset("folder", out)
        assert sorted({r.pid for r in splits.train}) == sorted(train_classes)
        record = splits.query[0]
        with Image.open(record.path) as png:
            np.testing.assert_array_equal(np.asarray(png)[..., 0], images[int(Path(record.path).stem)])
        options = json.loads((out / COMPLETE_MARKER).read_text())["options"]
        assert options.get("fold", 0) == fold
    assert "fold" not in json.loads((tmp_path / "fold-0" / COMPLETE_MARKER).read_text())["options"], (
        "fold 0's marker keeps the form folders written before folds have")
    with pytest.raises(FileExistsError, match="is not this animal-mnist set"):
        materialize_animal_mnist(tmp_path / "fold-0", limit_per_class=2, fold=1)
    with pytest.raises(ValueError, match=r"fold must be one of \[0, 1, 2, 3, 4, 5\], got 6"):
        materialize_animal_mnist(tmp_path / "fold-6", fold=6)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path / "am"), "--limit-per-class", "2"]) == 0
    assert len(list((tmp_path / "am").rglob("*.png"))) == 20
    assert main(["--out", str(tmp_path / "am"), "--limit-per-class", "0"]) == 2
    assert "limit_per_class must be >= 1" in capsys.readouterr().err


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "animal_mnist", None)  # Python's documented way to block an import
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps animal-mnist==0\.4"):
        load_animal_mnist_arrays()
