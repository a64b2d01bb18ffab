"""Map-style image dataset over Records, with an explicit policy for unreadable files."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from training.data.records import Record
from training.data.transforms import ImageLoadError, load_rgb

__all__ = ["ON_ERROR_POLICIES", "ImageDataset", "verify_images"]

ON_ERROR_POLICIES = ("raise", "skip")


class ImageDataset(Dataset):
    """Item i -> (image tensor, label, camid, i) for records[i] with labels[i].

    on_error="raise": an unreadable image raises ImageLoadError naming the file.
    on_error="skip": it is replaced by another image of the SAME label (the next readable one in
    record order), its path is appended to `skipped` and a warning is issued once per file; if no
    image of that label loads, ImageLoadError is raised. With DataLoader workers, `skipped` is
    per worker process; run `verify_images` beforehand for a complete list.

    seed: when not None, the transform is called as transform(image, rng=Generator(seed, epoch, i))
    so random augmentation repeats exactly whatever the worker count (see `set_epoch`); the
    transform must then accept an `rng` keyword (TrainTransform and EvalTransform do).
    """

    def __init__(
        self,
        records: Sequence[Record],
        labels: Sequence[int],
        transform: Callable[..., torch.Tensor],
        on_error: str = "raise",
        seed: int | None = None,
    ) -> None:
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {on_error!r}")
        if len(records) != len(labels):
            raise ValueError(f"got {len(records)} records but {len(labels)} labels; they must pair up")
        self.records = tuple(records)
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.on_error = on_error
        self.seed = seed
        self.epoch = 0
        self.skipped: list[str] = []
        self._bad: dict[int, ImageLoadError] = {}
        self._same_label: dict[int, list[int]] = {}
        for index, label in enumerate(self.labels):
            self._same_label.setdefault(label, []).append(index)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch mixed into per-sample augmentation seeds (only used when seed is set)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        image = self._load(index)
        if self.seed is None:
            tensor = self.transform(image)
        else:
            tensor = self.transform(image, rng=np.random.default_rng((self.seed, self.epoch, index)))
        record = self.records[index]
        return tensor, self.labels[index], record.camid, index

    def _load(self, index: int) -> Image.Image:
        try:
            return self._load_one(index)
        except ImageLoadError:
            if self.on_error == "raise":
                raise
        candidates = self._same_label[self.labels[index]]
        start = candidates.index(index)
        for other in candidates[start + 1 :] + candidates[:start]:
            try:
                return self._load_one(other)
            except ImageLoadError:
                continue
        raise ImageLoadError(
            self.records[index].path,
            f"unreadable ({self._bad[index].reason}) and no other image of label {self.labels[index]} "
            f"loads either; fix or remove these files (see verify_images)",
        )

    def _load_one(self, index: int) -> Image.Image:
        if index in self._bad:
            raise self._bad[index]
        try:
            # Decode JPEGs in draft mode towards the transform's input size, as serving does.
            return load_rgb(self.records[index].path, getattr(self.transform, "size_hw", None))
        except ImageLoadError as error:
            self._bad[index] = error
            if self.on_error == "skip":
                self.skipped.append(error.path)
                warnings.warn(
                    f"{error}; using another image of the same label instead", RuntimeWarning, stacklevel=4
                )
            raise


def verify_images(records: Iterable[Record]) -> list[tuple[str, str]]:
    """Fully decode every record's file; returns [(path, reason)] for those that cannot be loaded."""
    failures = []
    for record in records:
        try:
            load_rgb(record.path)
        except ImageLoadError as error:
            failures.append((error.path, error.reason))
    return failures
