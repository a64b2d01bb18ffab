"""Image bytes -> the uint8 (H, W, 3) RGB array a bundle's graph takes, as the manifest prescribes.

Pillow + numpy only. `to_model_input` reproduces training's evaluation resize exactly
(``training/data/transforms.py``: ``resize_uint8(load_rgb(path), (h, w))``: PIL bilinear stretch); mean/std
normalisation happens inside the exported graph ("in_graph"), never here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.bundle import Manifest
from serving.config import ServeConfig
from serving.errors import InvalidInput, TooLarge

__all__ = [
    "ImageDecodeError",
    "ImageTooLargeError",
    "decode_image",
    "load_image_file",
    "to_model_input",
]

_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
_EIGHT_BIT_MODES = frozenset(
    {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr"}
)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageDecodeError(InvalidInput):
    """The bytes are empty, not an image, truncated or corrupt, or in a pixel mode we cannot convert."""


class ImageTooLargeError(TooLarge):
    """The image declares more pixels than allowed (width x height > max_pixels)."""


def decode_image(data: bytes, max_pixels: int = ServeConfig.max_pixels) -> Image.Image:
    """Decode encoded image ``data`` (JPEG, PNG, WebP, BMP, ...) into a fully loaded 8-bit RGB image.

    Grayscale, palette, RGBA (alpha dropped, as training does), CMYK convert to RGB; 16-bit images are
    scaled to 8 bits (value >> 8), not clipped. The declared size is checked before decoding pixels.
    Raises ImageDecodeError, ImageTooLargeError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageDecodeError(f"image data must be bytes, found {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("image data is empty (0 bytes); send the encoded file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{len(data)} bytes are not a recognised image format (expected JPEG, PNG, WebP, BMP, ...)"
        ) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image declares {width}x{height} = {width * height} pixels, the limit is {max_pixels}; "
            "downscale it before sending"
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image declares an empty size {width}x{height}")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"{image.format} image is truncated or corrupt: {exc}") from exc
    return _to_rgb8(image)


def _to_rgb8(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _EIGHT_BIT_MODES:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    raise ImageDecodeError(
        f"pixel mode {mode!r} is not supported (supported: 8-bit RGB/RGBA/gray/palette/CMYK, 16-bit gray); "
        "convert the image to 8-bit RGB"
    )


def to_model_input(image: Image.Image, manifest: Manifest) -> np.ndarray:
    """Resize ``image`` to the manifest's input size with its preprocessing policy; uint8 (H, W, 3) RGB.

    Only policy "stretch" (resize straight to (W, H), no aspect preservation) exists; raises ValueError
    for another policy, interpolation or colour order."""
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
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    resized = rgb.resize((spec.width, spec.height), _RESAMPLING[pre.interpolation])
    return np.asarray(resized, dtype=np.uint8)


def load_image_file(path: str | Path, manifest: Manifest, max_pixels: int = ServeConfig.max_pixels) -> np.ndarray:
    """Read, decode and resize one image file; uint8 (H, W, 3). Raises ImageDecodeError (including an
    unreadable or missing file, naming ``path``) or ImageTooLargeError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        image = decode_image(data, max_pixels)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{path}: {exc}") from exc
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc
    return to_model_input(image, manifest)
