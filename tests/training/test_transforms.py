"""Image loading, resize/normalise known answers and the seeded training augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLoadError,
    build_eval_transform,
    build_train_transform,
    load_rgb,
    normalize_uint8,
    resize_uint8,
)


def _random_image(seed: int = 0, size_wh: tuple[int, int] = (23, 41)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size_wh[1], size_wh[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_load_rgb_converts_and_reports_bad_files(tmp_path: Path) -> None:
    Image.new("L", (5, 7), 99).save(tmp_path / "gray.png")
    image = load_rgb(tmp_path / "gray.png")
    assert image.mode == "RGB" and image.size == (5, 7) and image.getpixel((0, 0)) == (99, 99, 99)
    with pytest.raises(ImageLoadError, match="missing.jpg: file not found") as error:
        load_rgb(tmp_path / "missing.jpg")
    assert error.value.path == str(tmp_path / "missing.jpg")
    _random_image(size_wh=(64, 128)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_rgb(tmp_path / "truncated.jpg")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageLoadError, match="garbage.png"):
        load_rgb(tmp_path / "garbage.png")


def test_resize_uint8_is_the_pil_bilinear_stretch() -> None:
    image = _random_image()
    pixels = resize_uint8(image, (16, 8))
    assert pixels.shape == (16, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, np.asarray(image.resize((8, 16), Image.BILINEAR)))


def test_normalize_uint8_known_values_and_layouts() -> None:
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = (255, 0, 128)
    out = normalize_uint8(pixels)
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
                (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, rtol=1e-6)
    batch = normalize_uint8(np.stack([pixels, pixels]))
    assert batch.shape == (2, 3, 2, 3) and torch.equal(batch[1], out)
    with pytest.raises(ValueError, match="expects uint8"):
        normalize_uint8(pixels.astype(np.float32))


def test_eval_transform_equals_manual_resize_and_normalise() -> None:
    image = _random_image(1)
    manual = (np.asarray(image.resize((16, 32), Image.BILINEAR), np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    out = build_eval_transform((32, 16))(image)
    assert out.shape == (3, 32, 16)
    np.testing.assert_allclose(out.numpy(), manual.transpose(2, 0, 1), atol=1e-6)


def test_train_transform_is_seeded() -> None:
    image = _random_image(2)
    first = build_train_transform((32, 16), rng=7)
    second = build_train_transform((32, 16), rng=np.random.default_rng(7))
    outputs_a = [first(image) for _ in range(5)]
    outputs_b = [second(image) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(outputs_a, outputs_b, strict=True))
    assert not all(torch.equal(outputs_a[0], o) for o in outputs_a[1:]), "consecutive draws must differ"
    assert outputs_a[0].shape == (3, 32, 16) and outputs_a[0].dtype == torch.float32
    per_sample = [first(image, rng=np.random.default_rng(3)) for _ in range(2)]
    assert torch.equal(per_sample[0], per_sample[1])


def test_flip_really_flips_and_pad_crop_translates() -> None:
    image = _random_image(3)
    reference = build_eval_transform((32, 16))(image)
    flipped = build_train_transform((32, 16), flip_p=1.0, pad=0, erasing_p=0.0)(image)
    assert torch.equal(flipped, torch.flip(reference, dims=[2]))
    shifted = build_train_transform((32, 16), flip_p=0.0, pad=3, erasing_p=0.0, rng=1)(image)
    padded = np.pad(resize_uint8(image, (32, 16)), ((3, 3), (3, 3), (0, 0)))
    windows = [(dy, dx) for dy in range(7) for dx in range(7)
               if torch.equal(normalize_uint8(np.ascontiguousarray(padded[dy : dy + 32, dx : dx + 16])), shifted)]
    assert len(windows) == 1, "output must be exactly one crop of the zero-padded image"
    assert windows != [(3, 3)], "seed 1 must draw a non-centred crop (otherwise the test proves nothing)"


def test_random_erasing_fills_one_box_with_the_mean() -> None:
    image = Image.fromarray(np.full((32, 16, 3), 200, np.uint8), "RGB")
    for seed in range(5):
        out = build_train_transform((32, 16), flip_p=0.0, pad=0, erasing_p=1.0, rng=seed)(image)
        erased = (out == 0).all(dim=0)
        rows, cols = torch.nonzero(erased, as_tuple=True)
        assert rows.numel() > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == rows.numel(), "erased pixels must form one rectangle"
        assert 0.02 * 512 * 0.5 <= rows.numel() <= 0.4 * 512 * 1.5
    with pytest.raises(ValueError, match="erasing_fill"):
        build_train_transform((32, 16), erasing_fill="zeros")
