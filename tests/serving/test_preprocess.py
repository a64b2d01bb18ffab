"""Image decoding and resizing for serving: bad inputs, pixel-mode conversions, parity with training."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.bundle import Preprocess
from serving.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    load_image_file,
    to_model_input,
)


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels but whose data is a few bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _rgb(seed: int = 0, size_hw: tuple[int, int] = (20, 12)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size_hw, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(2000), "not a recognised image format"),
        ("not bytes", "must be bytes"),
    ],
)
def test_bad_bytes_are_refused(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(data)


def test_truncated_jpeg_is_refused():
    data = _encode(Image.fromarray(_rgb(size_hw=(64, 64))), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(("width", "height"), [(8000, 8000), (100_000, 100_000)])
def test_huge_declared_size_is_refused_before_decoding(width, height):
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_declaring(width, height))


def test_pixel_limit_is_configurable():
    data = _encode(Image.fromarray(_rgb(size_hw=(10, 10))))
    assert decode_image(data, max_pixels=100).size == (10, 10)
    with pytest.raises(ImageTooLargeError, match="10x10 = 100 pixels, the limit is 99"):
        decode_image(data, max_pixels=99)


def test_grayscale_png_becomes_equal_rgb_channels():
    gray = np.random.default_rng(1).integers(0, 256, size=(9, 7), dtype=np.uint8)
    image = decode_image(_encode(Image.fromarray(gray, mode="L")))
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (9, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray)


def test_sixteen_bit_png_is_scaled_not_clipped():
    eight = np.random.default_rng(2).integers(0, 256, size=(6, 5)).astype(np.uint16)
    sixteen = eight * 257 + np.random.default_rng(3).integers(0, 256, size=eight.shape).astype(np.uint16)
    data = _encode(Image.fromarray(sixteen))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    pixels = np.asarray(decode_image(data))
    np.testing.assert_array_equal(pixels[..., 0], (sixteen >> 8).astype(np.uint8))
    assert pixels.max() == (sixteen >> 8).max() and pixels.min() == (sixteen >> 8).min()


def test_rgba_and_palette_convert_to_their_rgb():
    rgb = _rgb(4)
    alpha = np.full(rgb.shape[:2] + (1,), 77, dtype=np.uint8)
    rgba = decode_image(_encode(Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA")))
    np.testing.assert_array_equal(np.asarray(rgba), rgb)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    decoded = decode_image(_encode(palette_image))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(palette_image.convert("RGB")))


def test_unsupported_mode_is_refused():
    data = _encode(Image.fromarray(np.zeros((4, 4), dtype=np.float32), mode="F"), "TIFF")
    with pytest.raises(ImageDecodeError, match="pixel mode 'F' is not supported"):
        decode_image(data)


def test_to_model_input_stretches_to_manifest_size(tiny_manifest):
    image = Image.fromarray(_rgb(5, size_hw=(50, 40)))
    pixels = to_model_input(image, tiny_manifest)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 16, 3)
    np.testing.assert_array_equal(pixels, np.asarray(image.resize((16, 32), Image.Resampling.BILINEAR)))
    letterbox = dataclasses.replace(tiny_manifest, preprocess=Preprocess(policy="letterbox"))
    with pytest.raises(ValueError, match="policy is 'letterbox'.*only 'stretch'"):
        to_model_input(image, letterbox)


def test_load_image_file_names_the_bad_file(tmp_path, tiny_manifest):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageDecodeError, match="nope.jpg: cannot read the file"):
        load_image_file(missing, tiny_manifest)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        load_image_file(broken, tiny_manifest)


def _parity_files(tmp_path: Path, gallery_images: Path) -> list[Path]:
    files = sorted(gallery_images.glob("*.jpg"))[:4]
    big = Image.fromarray(_rgb(6, size_hw=(130, 70)))
    for name, fmt, image in (
        ("photo.png", "PNG", big),
        ("photo.jpg", "JPEG", big),
        ("gray.jpg", "JPEG", big.convert("L")),
        ("palette.png", "PNG", big.quantize(colors=32)),
    ):
        image.save(tmp_path / name, format=fmt)
        files.append(tmp_path / name)
    return files


def test_matches_training_eval_resize(tmp_path, gallery_images, tiny_manifest):
    try:
        from training.data.transforms import load_rgb, resize_uint8
    except ImportError as exc:
        pytest.skip(
            f"training.data.transforms is not importable here ({exc}); parity needs the training package"
        )
    size = (tiny_manifest.input.height, tiny_manifest.input.width)
    for path in _parity_files(tmp_path, gallery_images):
        expected = resize_uint8(load_rgb(path), size)
        np.testing.assert_array_equal(load_image_file(path, tiny_manifest), expected, err_msg=str(path))
