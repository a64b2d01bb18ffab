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


@pytest.mark.parametrize(("width", "height"), [(8000, 8000), (30_000, 30_000), (100_000, 100_000)])
def test_huge_declared_size_is_refused_before_decoding_naming_the_servers_cap(width, height):
    # 30000 x 30000 is past Pillow's own decompression-bomb limit: the message still names our cap
    with pytest.raises(ImageTooLargeError, match=f"declares .*{width * height} pixels, the limit is 1000000;"):
        decode_image(_png_declaring(width, height), max_pixels=1_000_000)


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


def test_alpha_is_composited_over_the_manifest_background(tiny_manifest):
    rgb = _rgb(4).astype(np.int64)
    alpha = np.random.default_rng(5).integers(0, 256, size=rgb.shape[:2] + (1,))
    data = _encode(Image.fromarray(np.concatenate([rgb, alpha], axis=2).astype(np.uint8), mode="RGBA"))
    white = np.asarray(decode_image(data)).astype(np.int64)
    expected = (rgb * alpha + 255 * (255 - alpha)) / 255.0  # straight alpha over white
    assert np.abs(white - expected).max() <= 1
    black = dataclasses.replace(tiny_manifest.preprocess, background=(0, 0, 0))
    on_black = np.asarray(decode_image(data, manifest=dataclasses.replace(tiny_manifest, preprocess=black)))
    assert np.abs(on_black.astype(np.int64) - rgb * alpha / 255.0).max() <= 1


def test_palette_with_and_without_transparency():
    rgb = _rgb(4)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    decoded = decode_image(_encode(palette_image))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(palette_image.convert("RGB")))
    transparent_index = int(np.asarray(palette_image)[0, 0])
    data = _encode(palette_image, transparency=transparent_index)
    pixels = np.asarray(decode_image(data))
    hidden = np.asarray(palette_image) == transparent_index
    assert (pixels[hidden] == 255).all() and hidden.sum() >= 1
    np.testing.assert_array_equal(pixels[~hidden], np.asarray(palette_image.convert("RGB"))[~hidden])


def test_cmyk_jpeg_converts_like_pillow():
    cmyk = Image.fromarray(_rgb(7)).convert("CMYK")
    data = _encode(cmyk, "JPEG", quality=95)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "CMYK"
    np.testing.assert_array_equal(np.asarray(decode_image(data)), np.asarray(opened.convert("RGB")))


def _with_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90),
     (2, Image.Transpose.FLIP_LEFT_RIGHT)],
)
def test_exif_orientation_is_applied_unless_the_manifest_says_not(tiny_manifest, orientation, transpose):
    image = Image.fromarray(_rgb(8, size_hw=(30, 12)))
    data = _with_orientation(image, orientation, "PNG")  # PNG: lossless, so pixels compare exactly
    np.testing.assert_array_equal(np.asarray(decode_image(data)), np.asarray(image.transpose(transpose)))
    off = dataclasses.replace(tiny_manifest.preprocess, exif_orientation=False)
    raw = decode_image(data, manifest=dataclasses.replace(tiny_manifest, preprocess=off))
    np.testing.assert_array_equal(np.asarray(raw), np.asarray(image))


def test_large_jpegs_decode_in_draft_mode_towards_the_input_size(tiny_manifest):
    data = _encode(Image.fromarray(_rgb(9, size_hw=(320, 160))), "JPEG", quality=90)
    assert decode_image(data).size == (160, 320)
    # 1/8 scale keeps 20x40 >= the 16x32 input; 1/16 does not exist
    assert decode_image(data, manifest=tiny_manifest).size == (20, 40)
    rotated = _with_orientation(Image.fromarray(_rgb(9, size_hw=(160, 320))), 6)  # stored 320x160, shown 160x320
    assert decode_image(rotated, manifest=tiny_manifest).size == (20, 40)
    off = dataclasses.replace(tiny_manifest.preprocess, jpeg_draft=False)
    assert decode_image(data, manifest=dataclasses.replace(tiny_manifest, preprocess=off)).size == (160, 320)


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
    """Every decoding case of the rule: JPEG (small and large enough for draft mode), gray, palette with
    and without transparency, RGBA, LA, CMYK, 16-bit gray, EXIF-rotated JPEG and PNG."""
    files = sorted(gallery_images.glob("*.jpg"))[:2]
    big = Image.fromarray(_rgb(6, size_hw=(130, 70)))
    huge = Image.fromarray(_rgb(7, size_hw=(400, 200)))
    alpha = Image.fromarray(np.random.default_rng(8).integers(0, 256, (130, 70), dtype=np.uint8))
    rgba = big.copy()
    rgba.putalpha(alpha)
    sixteen = (np.asarray(big.convert("L")).astype(np.uint16) * 257) ^ 0x5A
    palette = big.quantize(colors=32)
    cases = [
        ("photo.png", big, {}), ("photo.jpg", big, {}), ("draft.jpg", huge, {"quality": 90}),
        ("gray.jpg", big.convert("L"), {}), ("palette.png", palette, {}),
        ("palette-transparent.png", palette, {"transparency": 3}), ("rgba.png", rgba, {}),
        ("la.png", rgba.convert("LA"), {}), ("cmyk.jpg", big.convert("CMYK"), {}),
        ("cmyk.tiff", big.convert("CMYK"), {}), ("sixteen.png", Image.fromarray(sixteen), {}),
        ("rgba.webp", rgba, {"lossless": True}), ("palette.gif", palette, {}),
    ]
    for name, image, options in cases:
        image.save(tmp_path / name, **options)
        files.append(tmp_path / name)
    for orientation in (3, 6, 8):
        for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
            path = tmp_path / f"exif{orientation}.{suffix}"
            path.write_bytes(_with_orientation(huge if fmt == "JPEG" else big, orientation, fmt))
            files.append(path)
    return files


def test_matches_training_eval_resize(tmp_path, gallery_images, tiny_manifest):
    try:
        from training.data.transforms import load_rgb, resize_uint8
    except ImportError as exc:
        pytest.skip(
            f"training.data.transforms is not importable here ({exc}); parity needs the training package"
        )
    size = (tiny_manifest.input.height, tiny_manifest.input.width)
    files = _parity_files(tmp_path, gallery_images)
    modes = {Image.open(path).mode for path in files}
    assert {"RGB", "L", "P", "RGBA", "LA", "CMYK"} <= modes and modes & {"I;16", "I"}, modes
    for path in files:
        expected = resize_uint8(load_rgb(path, size), size)
        np.testing.assert_array_equal(load_image_file(path, tiny_manifest), expected, err_msg=str(path))
    # the cases are not all alike: draft mode and EXIF change what a plain full-size decode would give
    plain = {p.name: resize_uint8(Image.open(p).convert("RGB"), size) for p in files}
    for name in ("draft.jpg", "exif6.png", "exif8.jpg", "rgba.png"):
        assert not np.array_equal(load_image_file(tmp_path / name, tiny_manifest), plain[name]), name
