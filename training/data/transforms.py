"""Image loading and the train / eval transforms (PIL image -> normalised CHW float tensor).

The evaluation path is exactly: `load_rgb` (the shared decoding rule of `cdd_common.image_decoding`,
JPEG draft towards the input size) -> `resize_uint8` (PIL bilinear stretch to (h, w), no aspect
preservation) -> `normalize_uint8` ((x / 255 - mean) / std in float32). The serving side reproduces these
three steps; do not change them without changing serving's preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdd_common.image_decoding import UndecodableImage, decode_rgb8

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "ImageLoadError",
    "TrainTransform",
    "build_eval_transform",
    "build_train_transform",
    "load_rgb",
    "normalize_uint8",
    "resize_uint8",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean on the 0..1 scale."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation on the 0..1 scale."""

_ERASING_AREA = (0.02, 0.4)
_ERASING_ASPECT = (0.3, 3.3)
_ERASING_ATTEMPTS = 100


class ImageLoadError(Exception):
    """An image file is missing, unreadable, corrupt or truncated; `path` and `reason` say which/why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot load image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_rgb(path: str | Path, draft_hw: tuple[int, int] | None = None) -> Image.Image:
    """Decode the whole file by the shared decoding rule (`cdd_common.image_decoding.decode_rgb8`:
    EXIF orientation applied, alpha over white, 16-bit gray keeps its high byte) and return it as an RGB
    image. ``draft_hw``: the (h, w) it will be resized to; JPEGs then decode in draft mode towards it,
    as serving does. Raises ImageLoadError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except OSError as error:
        raise ImageLoadError(path, f"{type(error).__name__}: {error}") from error
    try:
        return decode_rgb8(data, draft_hw=draft_hw)
    except UndecodableImage as error:
        raise ImageLoadError(path, str(error)) from error


def resize_uint8(image: Image.Image, size_hw: tuple[int, int]) -> np.ndarray:
    """Stretch to (h, w) with `image.resize((w, h), Image.BILINEAR)`; returns uint8 array (h, w, 3)."""
    height, width = size_hw
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def normalize_uint8(
    pixels: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (h, w, 3) or (n, h, w, 3) -> float32 tensor (3, h, w) or (n, 3, h, w), (x / 255 - mean) / std."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] != 3:
        raise ValueError(
            f"normalize_uint8 expects uint8 of shape (h, w, 3) or (n, h, w, 3), "
            f"got {pixels.dtype} {pixels.shape}"
        )
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    normalised = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    channels_first = np.moveaxis(normalised, -1, -3)
    return torch.from_numpy(np.ascontiguousarray(channels_first))


@dataclass(frozen=True)
class EvalTransform:
    """PIL image -> float32 tensor (3, h, w): resize_uint8 then normalize_uint8. `rng` is ignored."""

    size_hw: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        return normalize_uint8(resize_uint8(image, self.size_hw), self.mean, self.std)


@dataclass
class TrainTransform:
    """Re-ID training augmentation: resize, horizontal flip, zero pad + random crop, normalise,
    random erasing (area 0.02-0.4 of the image, aspect 0.3-3.3, filled with the mean colour, i.e. 0
    after normalisation, or with N(0, 1) noise when `erasing_fill="random"`).

    Randomness comes from `rng` when given to `__call__` (per-sample generators keep DataLoader
    workers reproducible), else from the transform's own `generator`.
    """

    size_hw: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    flip_p: float = 0.5
    pad: int = 10
    erasing_p: float = 0.5
    erasing_fill: str = "mean"
    generator: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0), repr=False)

    def __post_init__(self) -> None:
        if self.erasing_fill not in ("mean", "random"):
            raise ValueError(f"erasing_fill must be 'mean' or 'random', got {self.erasing_fill!r}")
        for name in ("flip_p", "erasing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0 pixels, got {self.pad}")

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = self.generator if rng is None else rng
        pixels = resize_uint8(image, self.size_hw)
        if rng.random() < self.flip_p:
            pixels = pixels[:, ::-1]
        if self.pad > 0:
            pixels = _pad_and_crop(pixels, self.pad, rng)
        tensor = normalize_uint8(np.ascontiguousarray(pixels), self.mean, self.std)
        if rng.random() < self.erasing_p:
            _erase(tensor, rng, self.erasing_fill)
        return tensor


def _pad_and_crop(pixels: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)))
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    return padded[top : top + height, left : left + width]


def _erase(tensor: torch.Tensor, rng: np.random.Generator, fill: str) -> None:
    """Random erasing (Zhong et al. 2020) in place on a (3, h, w) tensor; may erase nothing."""
    _, height, width = tensor.shape
    log_aspect = (math.log(_ERASING_ASPECT[0]), math.log(_ERASING_ASPECT[1]))
    for _ in range(_ERASING_ATTEMPTS):
        area = rng.uniform(*_ERASING_AREA) * height * width
        aspect = math.exp(rng.uniform(*log_aspect))
        box_h = int(round(math.sqrt(area * aspect)))
        box_w = int(round(math.sqrt(area / aspect)))
        if 0 < box_h < height and 0 < box_w < width:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            if fill == "mean":
                tensor[:, top : top + box_h, left : left + box_w] = 0.0
            else:
                noise = rng.standard_normal((3, box_h, box_w)).astype(np.float32)
                tensor[:, top : top + box_h, left : left + box_w] = torch.from_numpy(noise)
            return


def build_eval_transform(
    size_hw: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> EvalTransform:
    """Deterministic evaluation transform: PIL image -> (3, h, w) float32 tensor."""
    return EvalTransform((int(size_hw[0]), int(size_hw[1])), tuple(mean), tuple(std))


def build_train_transform(
    size_hw: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip_p: float = 0.5,
    pad: int = 10,
    erasing_p: float = 0.5,
    erasing_fill: str = "mean",
    rng: np.random.Generator | int = 0,
) -> TrainTransform:
    """Training augmentation (see TrainTransform); `rng` is a Generator or an integer seed."""
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return TrainTransform(
        (int(size_hw[0]), int(size_hw[1])), tuple(mean), tuple(std), flip_p, pad, erasing_p, erasing_fill,
        generator,
    )
