"""Image bytes -> the uint8 (H, W, 3) RGB array a bundle's graph takes, as the manifest prescribes.

Pillow + numpy only. Decoding follows the one rule in ``cdd_common/image_decoding.py`` (the code training's
evaluation transform runs too), with the manifest's ``preprocess`` options (JPEG draft
towards the input size, EXIF orientation, alpha background); `to_model_input` then reproduces training's
evaluation resize exactly (``training/data/transforms.py``: ``resize_uint8(load_rgb(path, size), size)``:
PIL bilinear stretch). Mean/std normalisation happens inside the exported graph ("in_graph"), never here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cdd_common.image_decoding import ImageTooLarge, UndecodableImage, decode_rgb8
from serving.bundle import Manifest
from serving.config import ServeConfig
from serving.errors import InvalidInput, TooLarge
from serving.jpeg_fast_path import decode_jpeg_fast, decode_jpeg_pixels, jpeg_declared_pixels

__all__ = [
    "ImageDecodeError",
    "ImageTooLargeError",
    "decode_image",
    "declared_pixels",
    "image_to_model_input",
    "load_image_file",
    "to_model_input",
]

_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class ImageDecodeError(InvalidInput):
    """The bytes are empty, not an image, truncated or corrupt, or in a pixel mode we cannot convert."""


class ImageTooLargeError(TooLarge):
    """The image declares more pixels than allowed (width x height > max_pixels)."""


def decode_image(
    data: bytes, max_pixels: int = ServeConfig.max_pixels, manifest: Manifest | None = None
) -> Image.Image:
    """Decode encoded image ``data`` (JPEG, PNG, WebP, GIF, TIFF, BMP, ...) into a loaded 8-bit RGB image
    by the decoding rule of ``cdd_common.image_decoding`` (16-bit gray keeps its high byte, alpha is
    composited over the manifest's background, EXIF orientation applied as the manifest says).

    With ``manifest``, JPEGs are decoded in draft mode towards its input size; without, at full size with
    the rule's defaults. The declared size is checked against ``max_pixels`` before decoding pixels. JPEGs
    the native decoder gives the same pixels for are decoded by it (`serving.jpeg_fast_path`).
    Raises ImageDecodeError (every failure to decode), ImageTooLargeError."""
    options = _decode_options(manifest)
    fast = decode_jpeg_fast(data, max_pixels, options.get("draft_hw"), options.get("exif_orientation", True))
    if fast is not None:  # the same pixels, from the native decoder (`serving.jpeg_fast_path`)
        return fast
    return _decode_pillow(data, max_pixels, options)


def _decode_options(manifest: Manifest | None) -> dict[str, Any]:
    """`decode_rgb8`'s options from the manifest's preprocess section (none without a manifest)."""
    if manifest is None:
        return {}
    pre = manifest.preprocess
    return {
        "draft_hw": (manifest.input.height, manifest.input.width) if pre.jpeg_draft else None,
        "exif_orientation": pre.exif_orientation,
        "background": tuple(pre.background),
    }


def _decode_pillow(data: bytes, max_pixels: int, options: dict[str, Any]) -> Image.Image:
    try:
        return decode_rgb8(data, max_pixels, **options)
    except ImageTooLarge as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except UndecodableImage as exc:
        raise ImageDecodeError(str(exc)) from exc


def declared_pixels(data: bytes) -> int | None:
    """Width x height that encoded ``data`` declares in its header, read without decoding a pixel; None when
    the header cannot be read (decoding then says why)."""
    fast = jpeg_declared_pixels(data)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - any unreadable header: `decode_image` reports it precisely
        return None
    return int(width) * int(height)


def image_to_model_input(data: bytes, manifest: Manifest, max_pixels: int = ServeConfig.max_pixels) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3) model input: `decode_image` with the manifest's decoding
    policy, then `to_model_input`. Raises ImageDecodeError, ImageTooLargeError.

    A JPEG the native decoder takes that is already at the input size is returned as the decoder's array:
    `to_model_input` would wrap it in a Pillow image whose resize to its own size is a copy (same pixels),
    and convert it back."""
    options = _decode_options(manifest)
    pixels = decode_jpeg_pixels(data, max_pixels, options["draft_hw"], options["exif_orientation"])
    if pixels is None:
        return to_model_input(_decode_pillow(data, max_pixels, options), manifest)
    if pixels.shape == (manifest.input.height, manifest.input.width, 3):
        _check_policy(manifest)
        return pixels
    return to_model_input(Image.fromarray(pixels, "RGB"), manifest)


def to_model_input(image: Image.Image, manifest: Manifest) -> np.ndarray:
    """Resize ``image`` to the manifest's input size with its preprocessing policy; uint8 (H, W, 3) RGB.

    Only policy "stretch" (resize straight to (W, H), no aspect preservation) exists; raises ValueError
    for another policy, interpolation or colour order."""
    _check_policy(manifest)
    pre, spec = manifest.preprocess, manifest.input
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    resized = rgb.resize((spec.width, spec.height), _RESAMPLING[pre.interpolation])
    return np.asarray(resized, dtype=np.uint8)


def _check_policy(manifest: Manifest) -> None:
    """ValueError unless the manifest asks for what this build does: stretch, a known interpolation, RGB."""
    pre, spec = manifest.preprocess, manifest.input
    if pre.policy != "stretch":
        raise ValueError(
            f"manifest preprocess.policy is {pre.policy!r}; this serving build supports only 'stretch'; "
            "re-export the bundle or upgrade serving"
        )
    if pre.interpolation not in _RESAMPLING:
        raise ValueError(
            f"manifest preprocess.interpolation is {pre.interpolation!r}; supported: {sorted(_RESAMPLING)}"
        )
    if pre.color != "RGB" or spec.color != "RGB" or spec.channels != 3:
        raise ValueError(
            f"manifest colour order is preprocess.color={pre.color!r}, input.color={spec.color!r} with "
            f"{spec.channels} channels; this serving build feeds 3-channel RGB"
        )


def load_image_file(path: str | Path, manifest: Manifest, max_pixels: int = ServeConfig.max_pixels) -> np.ndarray:
    """Read, decode and resize one image file; uint8 (H, W, 3). Raises ImageDecodeError (including an
    unreadable or missing file, naming ``path``) or ImageTooLargeError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        return image_to_model_input(data, manifest, max_pixels)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{path}: {exc}") from exc
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc
