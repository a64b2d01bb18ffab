"""Listers for retrieval datasets as they are distributed (no renaming step), behind `load_dataset`.

One shared mechanism (`_Layout` + `load_dataset`: folder checks, option checking, DatasetSplits
assembly) and one thin lister per dataset returning (train, query, gallery) records.
Camera ids are 0-based (Market `c1` -> 0). Stdlib only.

Layouts (root = the extracted dataset folder):
- market1501 / dukemtmc: `bounding_box_train/`, `query/`, `bounding_box_test/`, files
  `<pid>_c<cam>...jpg`. pid -1 (junk) is dropped everywhere; pid 0 (distractor) is kept in the gallery
  only.
- msmt17: `train/` + `test/` (or V2's `mask_train_v2/` + `mask_test_v2/`) and `list_train.txt`,
  `list_query.txt`, `list_gallery.txt` (+ optional `list_val.txt`, added to training by default), lines
  `<relative path> <pid>`; camera = third `_` field of the file name. pid 0 is a real identity here.
- veri776: `image_train/`, `image_query/`, `image_test/`, files `<vid>_c<cam>_...jpg`.
- vehicleid: `image/<image_id>.jpg` + `train_test_split/train_list.txt` and `test_list_<N>.txt`
  (N = 800, 1600, 2400), lines `<image_id> <vehicle_id>`. Test protocol: per identity one seeded random
  image goes to the gallery (camid 1), the rest to the query (camid 0); train camid is -1.
- folder: `root/<class>/*.{jpg,png,...}`, either under `root/train/` and `root/test/` or one flat level
  of classes split CUB-style (first half of the sorted classes = train, rest = test); protocol "class":
  query == gallery == test records; pid = index of the class name among all sorted class names.
"""

from __future__ import annotations

import inspect
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.records import DatasetSplits, Record

__all__ = ["IMAGE_SUFFIXES", "dataset_names", "load_dataset"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
"""File suffixes (lower case) treated as images by the folder-scanning listers."""

_REID_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_Splits = tuple[Sequence[Record], Sequence[Record], Sequence[Record]]


@dataclass(frozen=True)
class _Layout:
    """How to list one dataset: `needs` describes the layout for error messages."""

    needs: str
    lister: Callable[..., _Splits]
    protocol: str = "reid"


def _missing(path: Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name}: expected {path} but it does not exist; the {name} layout needs {_LAYOUTS[name].needs}. "
        f"Pass the extracted dataset folder as root."
    )


def _existing(root: Path, name: str, *alternatives: str) -> Path:
    """The first of root/<alternative> that exists, else FileNotFoundError naming the first one."""
    for rel in alternatives:
        if (root / rel).exists():
            return root / rel
    raise _missing(root / alternatives[0], name)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _parse_reid_name(path: Path) -> tuple[int, int]:
    match = _REID_NAME.match(path.name)
    if match is None:
        raise ValueError(
            f"{path}: file name does not start with '<pid>_c<camera>' (e.g. 0002_c1s1_000451_03.jpg); "
            f"remove files that are not part of the dataset from this folder"
        )
    return int(match.group(1)), int(match.group(2)) - 1


def _reid_folder(folder: Path, keep_distractors: bool) -> list[Record]:
    """Records of a name-encoded re-ID folder: drops junk (pid -1), and distractors (pid 0) unless kept."""
    records = []
    for path in _image_files(folder):
        pid, camid = _parse_reid_name(path)
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        records.append(Record(str(path), pid, camid))
    return records


def _market_style(root: Path, name: str, train: str, query: str, gallery: str) -> _Splits:
    folders = [_existing(root, name, rel) for rel in (train, query, gallery)]
    return (
        _reid_folder(folders[0], keep_distractors=False),
        _reid_folder(folders[1], keep_distractors=False),
        _reid_folder(folders[2], keep_distractors=True),
    )


def _list_market1501(root: Path) -> _Splits:
    return _market_style(root, "market1501", "bounding_box_train", "query", "bounding_box_test")


def _list_dukemtmc(root: Path) -> _Splits:
    return _market_style(root, "dukemtmc", "bounding_box_train", "query", "bounding_box_test")


def _list_veri776(root: Path) -> _Splits:
    return _market_style(root, "veri776", "image_train", "image_query", "image_test")


def _read_pairs(list_file: Path) -> list[tuple[str, int]]:
    """Lines `<name> <int>` of a list file; blank lines are skipped."""
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{list_file}:{number}: expected '<image> <integer id>', found {line!r}")
        pairs.append((fields[0], int(fields[1])))
    return pairs


def _msmt17_list(image_dir: Path, list_file: Path) -> list[Record]:
    records = []
    for rel, pid in _read_pairs(list_file):
        fields = Path(rel).name.split("_")
        if len(fields) < 3 or not fields[2].isdigit():
            raise ValueError(
                f"{list_file}: cannot read the camera from {rel!r}; expected names like "
                f"0000_000_01_0303morning_0015_0.jpg (camera = third '_' field)"
            )
        records.append(Record(str(image_dir / rel), pid, int(fields[2]) - 1))
    return records


def _list_msmt17(root: Path, include_val: bool = True) -> _Splits:
    name = "msmt17"
    train_dir = _existing(root, name, "train", "mask_train_v2")
    test_dir = _existing(root, name, "test", "mask_test_v2")
    lists = {split: _existing(root, name, f"list_{split}.txt") for split in ("train", "query", "gallery")}
    train = _msmt17_list(train_dir, lists["train"])
    if include_val and (root / "list_val.txt").exists():
        train += _msmt17_list(train_dir, root / "list_val.txt")
    return train, _msmt17_list(test_dir, lists["query"]), _msmt17_list(test_dir, lists["gallery"])


_VEHICLEID_TEST_SIZES = (800, 1600, 2400)


def _list_vehicleid(root: Path, test_size: int = 800, seed: int = 0) -> _Splits:
    name = "vehicleid"
    if test_size not in _VEHICLEID_TEST_SIZES:
        raise ValueError(f"vehicleid: test_size must be one of {_VEHICLEID_TEST_SIZES}, got {test_size}")
    image_dir = _existing(root, name, "image")
    train_list = _existing(root, name, "train_test_split/train_list.txt")
    test_list = _existing(root, name, f"train_test_split/test_list_{test_size}.txt")
    train = [Record(str(image_dir / f"{img}.jpg"), vid, -1) for img, vid in _read_pairs(train_list)]
    by_id: dict[int, list[str]] = {}
    for img, vid in _read_pairs(test_list):
        by_id.setdefault(vid, []).append(img)
    rng = random.Random(seed)
    query, gallery = [], []
    for vid in sorted(by_id):
        images = by_id[vid]
        pick = rng.randrange(len(images))
        for i, img in enumerate(images):
            record = Record(str(image_dir / f"{img}.jpg"), vid, 1 if i == pick else 0)
            (gallery if i == pick else query).append(record)
    return train, query, gallery


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_records(class_dirs: Sequence[Path], pid_of: dict[str, int]) -> list[Record]:
    return [Record(str(path), pid_of[d.name], -1) for d in class_dirs for path in _image_files(d)]


def _list_folder(root: Path) -> _Splits:
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_dirs, test_dirs = _class_dirs(root / "train"), _class_dirs(root / "test")
    else:
        classes = [d for d in _class_dirs(root) if _image_files(d)]
        if len(classes) < 2:
            raise ValueError(
                f"folder: {root} holds {len(classes)} class folder(s) with images; the layout needs "
                f"{_LAYOUTS['folder'].needs}"
            )
        half = len(classes) // 2
        train_dirs, test_dirs = classes[:half], classes[half:]
    pid_of = {n: i for i, n in enumerate(sorted({d.name for d in [*train_dirs, *test_dirs]}))}
    test = _class_records(test_dirs, pid_of)
    return _class_records(train_dirs, pid_of), test, test


_LAYOUTS: dict[str, _Layout] = {
    "market1501": _Layout("bounding_box_train/, query/ and bounding_box_test/ with files like "
                          "0002_c1s1_000451_03.jpg", _list_market1501),
    "dukemtmc": _Layout("bounding_box_train/, query/ and bounding_box_test/ with files like "
                        "0001_c2_f0046182.jpg", _list_dukemtmc),
    "msmt17": _Layout("train/ and test/ (or mask_train_v2/ and mask_test_v2/) plus list_train.txt, "
                      "list_query.txt, list_gallery.txt (optional list_val.txt)", _list_msmt17),
    "veri776": _Layout("image_train/, image_query/ and image_test/ with files like "
                       "0001_c001_00016450_0.jpg", _list_veri776),
    "vehicleid": _Layout("image/<image_id>.jpg plus train_test_split/train_list.txt and "
                         "train_test_split/test_list_<800|1600|2400>.txt", _list_vehicleid),
    "folder": _Layout("root/<class>/*.jpg (first half of the sorted classes = train), or "
                      "root/train/<class>/ and root/test/<class>/", _list_folder, protocol="class"),
}


def dataset_names() -> tuple[str, ...]:
    """Names accepted by `load_dataset`."""
    return tuple(_LAYOUTS)


def _check_options(name: str, lister: Callable[..., _Splits], options: dict[str, Any]) -> None:
    valid = [p for p in inspect.signature(lister).parameters if p != "root"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"load_dataset({name!r}): unknown option(s) {unknown}; valid options: {valid or 'none'}"
        )


def load_dataset(name: str, root: str | Path, **options: Any) -> DatasetSplits:
    """List the train/query/gallery records of dataset `name` stored under `root`.

    Options: msmt17 `include_val` (bool, default True); vehicleid `test_size` (800/1600/2400) and
    `seed` (gallery picks). Raises ValueError for an unknown name/option or a malformed list file,
    FileNotFoundError naming the expected path and what the layout needs.
    """
    if name not in _LAYOUTS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_LAYOUTS)}")
    layout = _LAYOUTS[name]
    root = Path(root)
    if not root.is_dir():
        raise _missing(root, name)
    _check_options(name, layout.lister, options)
    train, query, gallery = layout.lister(root, **options)
    return DatasetSplits(name, tuple(train), tuple(query), tuple(gallery), layout.protocol)
