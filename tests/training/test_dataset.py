"""ImageDataset items, the raise/skip policy on truncated and missing files, and verify_images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from training.data.dataset import ImageDataset, verify_images
from training.data.records import Record
from training.data.samplers import IdentityBalancedBatchSampler
from training.data.transforms import ImageLoadError, build_eval_transform, build_train_transform, load_rgb

SIZE = (16, 8)


def _jpeg(path: Path, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, quality=90)
    return str(path)


def _truncated(path: Path) -> str:
    _jpeg(path, 99)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


@pytest.fixture
def records(tmp_path: Path) -> list[Record]:
    return [
        Record(_jpeg(tmp_path / "a.jpg", 0), 100, 0),
        Record(_truncated(tmp_path / "b.jpg"), 100, 1),
        Record(str(tmp_path / "c.jpg"), 200, 2),  # missing file
        Record(_jpeg(tmp_path / "d.jpg", 1), 200, 3),
        Record(_truncated(tmp_path / "e.jpg"), 300, 4),  # the only image of its label
    ]


LABELS = [0, 0, 1, 1, 2]


def test_items_are_tensor_label_camid_index(records: list[Record]) -> None:
    dataset = ImageDataset(records, LABELS, build_eval_transform(SIZE))
    image, label, camid, index = dataset[3]
    assert torch.equal(image, build_eval_transform(SIZE)(load_rgb(records[3].path, SIZE)))
    assert (label, camid, index) == (1, 3, 3) and len(dataset) == 5


def test_raise_policy_names_the_file(records: list[Record]) -> None:
    dataset = ImageDataset(records, LABELS, build_eval_transform(SIZE), on_error="raise")
    with pytest.raises(ImageLoadError, match="b.jpg"):
        dataset[1]
    with pytest.raises(ImageLoadError, match="c.jpg: file not found"):
        dataset[2]


def test_skip_policy_substitutes_same_label_and_warns_once(records: list[Record]) -> None:
    transform = build_eval_transform(SIZE)
    dataset = ImageDataset(records, LABELS, transform, on_error="skip")
    with pytest.warns(RuntimeWarning, match="b.jpg"):
        image, label, camid, index = dataset[1]
    assert torch.equal(image, transform(load_rgb(records[0].path, SIZE))) and label == 0
    assert (camid, index) == (1, 1), "camid and index stay those of the requested record"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset[1]  # second time: no new warning
    with pytest.warns(RuntimeWarning, match="c.jpg"):
        image, label, _, _ = dataset[2]
    assert torch.equal(image, transform(load_rgb(records[3].path, SIZE))) and label == 1
    assert dataset.skipped == [records[1].path, records[2].path]
    with pytest.warns(RuntimeWarning), pytest.raises(ImageLoadError, match="no other image of label 2"):
        dataset[4]


def test_seeded_augmentation_repeats_per_sample_and_epoch(records: list[Record]) -> None:
    dataset = ImageDataset(records[:1], [0], build_train_transform(SIZE, pad=2), seed=4)
    first, again = dataset[0][0], dataset[0][0]
    assert torch.equal(first, again), "same (seed, epoch, index) -> same augmentation"
    draws = []
    for epoch in range(1, 6):
        dataset.set_epoch(epoch)
        draws.append(dataset[0][0])
    assert any(not torch.equal(first, d) for d in draws)


def test_dataloader_with_identity_sampler(records: list[Record]) -> None:
    good = [records[0], records[3]]
    dataset = ImageDataset(good, [0, 1], build_eval_transform(SIZE))
    loader = DataLoader(dataset, batch_sampler=IdentityBalancedBatchSampler([0, 1], p=2, k=2, seed=0))
    images, labels, camids, indices = next(iter(loader))
    assert images.shape == (4, 3, *SIZE) and labels.tolist() == [dataset.labels[i] for i in indices.tolist()]


def test_verify_images_lists_unreadable_files(records: list[Record]) -> None:
    failures = verify_images(records)
    assert [Path(path).name for path, _ in failures] == ["b.jpg", "c.jpg", "e.jpg"]
    assert failures[1][1] == "file not found" and "truncated" in failures[0][1].lower()


def test_bad_arguments(records: list[Record]) -> None:
    with pytest.raises(ValueError, match="5 records but 4 labels"):
        ImageDataset(records, LABELS[:4], build_eval_transform(SIZE))
    with pytest.raises(ValueError, match="on_error must be one of"):
        ImageDataset(records, LABELS, build_eval_transform(SIZE), on_error="ignore")
