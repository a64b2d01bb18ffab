"""The one image decoding rule: encoded bytes -> a fully loaded 8-bit RGB PIL image (Pillow + numpy only).

Rule "rgb8-v1", used by training's evaluation transform and by serving, so that both feed the network
the same pixels:

- the declared width x height is checked against ``max_pixels`` before any pixel is decoded;
- JPEGs are decoded in Pillow's draft mode towards ``draft_hw`` (the model's input size): the DCT
  scales down by 1/2, 1/4 or 1/8 only while the result stays at least that size in both dimensions;
- EXIF orientation (tag 0x0112) is applied when ``exif_orientation`` is true; unreadable EXIF counts
  as orientation 1;
- 16-bit and 32-bit integer gray keep the high byte (value >> 8 after clipping to 0..65535);
- RGBA, LA, PA and images with a transparency colour are composited over ``background`` (RGB);
- palette, gray, bilevel, CMYK and YCbCr go through Pillow's ``convert("RGB")``; other modes
  (float, LAB, HSV, ...) are refused.

Every failure to decode is an `UndecodableImage` with a one-line reason (Pillow raises OSError,
ValueError, SyntaxError, struct.error, IndexError, ... for damaged files; all of them are caught here).

There is one copy, in the torch-free `cdd_common` package that training and serving both import
(docs/architecture.md, "The import rule").
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image

__all__ = [
    "DECODE_RULE",
    "DEFAULT_BACKGROUND",
    "ImageTooLarge",
    "UndecodableImage",
    "decode_rgb8",
]

DECODE_RULE = "rgb8-v1"
"""Name of this rule, recorded in a bundle manifest's ``preprocess.decode``."""
DEFAULT_BACKGROUND = (255, 255, 255)
"""RGB colour transparent pixels are composited over (white, as product and crop images expect)."""

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_CONVERTIBLE_MODES = frozenset({"RGB", "RGBX", "L", "P", "1", "CMYK", "YCbCr"})
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class UndecodableImage(ValueError):
    """The bytes are empty, not an image, truncated or corrupt, or in a pixel mode the rule refuses."""


class ImageTooLarge(UndecodableImage):
    """The image declares more pixels than ``max_pixels`` (or decoding it ran out of memory)."""


def decode_rgb8(
    data: bytes,
    max_pixels: int | None = None,
    draft_hw: tuple[int, int] | None = None,
    exif_orientation: bool = True,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> Image.Image:
    """Decode ``data`` by rule "rgb8-v1" into a loaded RGB image (see the module docstring).

    ``max_pixels``: largest declared width x height (None: Pillow's own decompression-bomb limit).
    ``draft_hw``: (height, width) the image will be resized to, for JPEG draft decoding (None: full size).
    Raises ImageTooLarge, UndecodableImage."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UndecodableImage(f"image data must be bytes, found {type(data).__name__}")
    if len(data) == 0:
        raise UndecodableImage("image data is empty (0 bytes); send the encoded file's bytes")
    try:
        return _decode(bytes(data), max_pixels, draft_hw, exif_orientation, background)
    except UndecodableImage:
        raise
    except MemoryError as exc:
        raise ImageTooLarge(f"decoding the image ran out of memory ({len(data)} bytes); send a smaller image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(_bomb_reason(exc, max_pixels)) from exc
    except Exception as exc:  # noqa: BLE001 - Pillow reports damaged files with many exception types
        raise UndecodableImage(_reason(exc, len(data))) from exc


def _bomb_reason(exc: Exception, max_pixels: int | None) -> str:
    """Pillow refused the header before our own check ran (its limit is far above ours): say ours."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    declared = f"{found.group(1)} pixels" if found else "more pixels than Pillow's decompression-bomb limit"
    limit = f"the limit is {max_pixels}" if max_pixels is not None else "Pillow refuses images that large"
    return f"image declares {declared}, {limit}; downscale it before sending"


def _reason(exc: Exception, size: int) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return f"{size} bytes are not a recognised image format (expected JPEG, PNG, WebP, GIF, TIFF, BMP, ...)"
    detail = " ".join(str(exc).split())[:200] or "no detail"
    return f"image is truncated or corrupt ({type(exc).__name__}: {detail}); send the complete, valid file"


def _decode(
    data: bytes,
    max_pixels: int | None,
    draft_hw: tuple[int, int] | None,
    exif_orientation: bool,
    background: tuple[int, int, int],
) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF/TIFF metadata warnings
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(
                f"image declares {width}x{height} = {width * height} pixels, the limit is {max_pixels}; "
                "downscale it before sending"
            )
        if width < 1 or height < 1:
            raise UndecodableImage(f"image declares an empty size {width}x{height}")
        # A JPEG's EXIF sits in its header (read without decoding pixels, needed for the draft size);
        # other formats may keep EXIF after the pixels, so it is read only once the pixels loaded cleanly.
        jpeg = image.format == "JPEG"
        orientation = _orientation(image) if exif_orientation and jpeg else 1
        if draft_hw is not None and jpeg:
            target_h, target_w = draft_hw
            if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the stored image is transposed
                target_h, target_w = target_w, target_h
            image.draft(None, (target_w, target_h))
        image.load()
        if exif_orientation and not jpeg:
            orientation = _orientation(image)
        rgb = _to_rgb8(image, background)
    transpose = _TRANSPOSE.get(orientation)
    return rgb if transpose is None else rgb.transpose(transpose)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF is treated as "no orientation"
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _to_rgb8(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = image.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return image
    if mode in _CONVERTIBLE_MODES:
        return image.convert("RGB")
    if mode in _WIDE_GRAY_MODES:
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    raise UndecodableImage(
        f"pixel mode {mode!r} is not supported (supported: 8-bit RGB/RGBA/gray/palette/CMYK/YCbCr, "
        "16-bit gray); convert the image to 8-bit RGB"
    )
