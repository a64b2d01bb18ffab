"""The native JPEG decoder gives rule "rgb8-v1"'s pixels exactly, or steps aside for Pillow: pixel equality
on synthetic and test-gallery JPEGs (baseline, progressive, every chroma subsampling, gray, draft scales),
fallback for EXIF-rotated, CMYK, palette / PNG, truncated and oversized files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdd_common.image_decoding import decode_rgb8
from serving.jpeg_fast_path import decode_jpeg_fast, jpeg_declared_pixels

pytest.importorskip("simplejpeg", reason="simplejpeg (a core dependency) is not installed")

DRAFTS = (None, (64, 32), (256, 128))


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 5, 3)).astype(np.float32)
    picture = np.kron(blocks, np.ones((height // 6 + 1, width // 5 + 1, 1), dtype=np.float32))[:height, :width]
    return np.clip(picture + rng.normal(0.0, 12.0, picture.shape), 0, 255).astype(np.uint8)


def _jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _same(data: bytes, draft: tuple[int, int] | None, exif: bool = True) -> None:
    fast = decode_jpeg_fast(data, 16_000_000, draft, exif)
    assert fast is not None, "the fast path stepped aside for a JPEG it should take"
    reference = decode_rgb8(data, 16_000_000, draft_hw=draft, exif_orientation=exif)
    assert fast.mode == "RGB" and fast.size == reference.size
    assert np.array_equal(np.asarray(fast), np.asarray(reference))


@pytest.mark.parametrize("size", [(64, 32), (300, 170), (1024, 512), (37, 91)])
@pytest.mark.parametrize("options", [
    {"quality": 90}, {"quality": 75, "subsampling": 0}, {"quality": 95, "subsampling": 1},
    {"quality": 85, "progressive": True}, {"quality": 60, "optimize": True},
])
def test_colour_jpegs_decode_to_the_rules_pixels_at_every_draft_scale(size: tuple[int, int], options: dict) -> None:
    data = _jpeg(Image.fromarray(_picture(*size, seed=sum(size))), **options)
    for draft in DRAFTS:
        _same(data, draft)


def test_gray_and_test_gallery_jpegs_decode_to_the_rules_pixels(gallery_images: Path) -> None:
    _same(_jpeg(Image.fromarray(_picture(300, 170, 1)[..., 0], "L")), (64, 32))
    files = sorted(gallery_images.glob("*.jpg"))
    assert files
    for path in files:
        for draft in DRAFTS:
            _same(path.read_bytes(), draft)


def test_exif_rotated_jpegs_go_to_pillow_unless_orientation_is_ignored() -> None:
    image = Image.fromarray(_picture(120, 80, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    data = _jpeg(image, exif=exif.tobytes())
    assert decode_jpeg_fast(data, None, (64, 32), True) is None
    assert decode_rgb8(data, draft_hw=(64, 32)).size == (120, 80)  # Pillow applies the rotation
    _same(data, (64, 32), exif=False)


@pytest.mark.parametrize("kind", ["cmyk", "png", "palette-gif", "truncated", "oversized", "garbage"])
def test_files_it_cannot_promise_go_to_pillow(kind: str) -> None:
    picture = Image.fromarray(_picture(64, 48, 3))
    data = {
        "cmyk": lambda: _jpeg(picture.convert("CMYK")),
        "png": lambda: _png(picture),
        "palette-gif": lambda: _gif(picture),
        "truncated": lambda: _jpeg(picture)[:300],
        "oversized": lambda: _jpeg(picture),
        "garbage": lambda: b"\xff\xd8" + bytes(100),
    }[kind]()
    limit = 64 * 48 - 1 if kind == "oversized" else None
    assert decode_jpeg_fast(data, limit, (32, 16), True) is None


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _gif(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("P").save(buffer, format="GIF")
    return buffer.getvalue()


def test_declared_pixels_from_the_jpeg_header_match_pillows_size() -> None:
    for size in ((64, 32), (37, 91), (300, 170)):
        image = Image.fromarray(_picture(*size, seed=7))
        for data in (_jpeg(image), _jpeg(image, progressive=True), _jpeg(image.convert("CMYK"))):
            with Image.open(io.BytesIO(data)) as opened:
                assert jpeg_declared_pixels(data) == opened.size[0] * opened.size[1]
    assert jpeg_declared_pixels(_png(Image.fromarray(_picture(8, 8, 1)))) is None
    assert jpeg_declared_pixels(b"\xff\xd8" + bytes(10)) is None
