"""`image_to_model_input` returns a JPEG already at the bundle's input size as the native decoder's array
(no Pillow round trip): the same uint8 pixels as Pillow's decoding rule plus `to_model_input`, for every
JPEG kind; other sizes, EXIF-rotated and non-JPEG files still go through Pillow's resize; the manifest's
policy is still checked."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from cdd_common.image_decoding import decode_rgb8
from serving.bundle import Manifest
from serving.preprocess import image_to_model_input, to_model_input

pytest.importorskip("simplejpeg", reason="simplejpeg (a core dependency) is not installed")

JPEG_OPTIONS = [{"quality": 90}, {"quality": 75, "subsampling": 0}, {"quality": 95, "subsampling": 1},
                {"quality": 85, "progressive": True}, {"quality": 50, "optimize": True}]


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 5, 3)).astype(np.float32)
    picture = np.kron(blocks, np.ones((height // 6 + 1, width // 5 + 1, 1), dtype=np.float32))[:height, :width]
    return np.clip(picture + rng.normal(0.0, 12.0, picture.shape), 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pillow_reference(data: bytes, manifest: Manifest) -> np.ndarray:
    """Pillow's decoding rule with the manifest's options, then the resize: what the model input must be."""
    pre = manifest.preprocess
    image = decode_rgb8(data, 10**8, draft_hw=(manifest.input.height, manifest.input.width),
                        exif_orientation=pre.exif_orientation, background=tuple(pre.background))
    return to_model_input(image, manifest)


def _check(data: bytes, manifest: Manifest) -> np.ndarray:
    got = image_to_model_input(data, manifest, 10**8)
    assert got.dtype == np.uint8 and got.shape == (manifest.input.height, manifest.input.width, 3)
    np.testing.assert_array_equal(got, _pillow_reference(data, manifest))
    return got


@pytest.mark.parametrize("options", JPEG_OPTIONS)
def test_jpegs_at_the_input_size_give_pillows_pixels(tiny_manifest: Manifest, options: dict) -> None:
    height, width = tiny_manifest.input.height, tiny_manifest.input.width
    _check(_encode(Image.fromarray(_picture(height, width, seed=7)), **options), tiny_manifest)
    _check(_encode(Image.fromarray(_picture(height, width, seed=8)[..., 0], "L"), **options), tiny_manifest)


def test_other_sizes_exif_and_other_formats_still_resize_like_pillow(tiny_manifest: Manifest) -> None:
    height, width = tiny_manifest.input.height, tiny_manifest.input.width
    for size in ((2 * height, 2 * width), (height + 3, width - 1), (7 * height, 3 * width)):
        _check(_encode(Image.fromarray(_picture(*size, seed=sum(size)))), tiny_manifest)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: Pillow's path, which turns (width, height) into the input size
    rotated = _check(_encode(Image.fromarray(_picture(width, height, 3)), exif=exif.tobytes()), tiny_manifest)
    assert rotated.shape[:2] == (height, width)
    _check(_encode(Image.fromarray(_picture(height, width, 4)), "PNG"), tiny_manifest)


def test_the_manifests_policy_is_checked_on_the_at_size_path(tiny_manifest: Manifest) -> None:
    at_size = _encode(Image.fromarray(_picture(tiny_manifest.input.height, tiny_manifest.input.width, 5)))
    cropping = dataclasses.replace(tiny_manifest,
                                   preprocess=dataclasses.replace(tiny_manifest.preprocess, policy="crop"))
    with pytest.raises(ValueError, match="supports only 'stretch'"):
        image_to_model_input(at_size, cropping)
