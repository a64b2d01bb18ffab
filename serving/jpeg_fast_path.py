"""A native JPEG decoder (simplejpeg, libjpeg-turbo) for the JPEGs where it gives rule "rgb8-v1"'s pixels.

`decode_jpeg_fast` returns the same loaded RGB image as `cdd_common.image_decoding.decode_rgb8` would, pixel
for pixel, or None when it cannot promise that, and the caller decodes with Pillow as always. It takes:

- baseline or progressive JPEGs in YCbCr or gray (libjpeg's own YCbCr->RGB and gray->RGB, the same
  islow DCT and fancy upsampling Pillow uses);
- with ``draft_hw``, scaled by exactly the factor Pillow's draft mode picks (1/2, 1/4 or 1/8 while the
  result stays at least that size; libjpeg-turbo alone would also pick factors like 7/8);
- declared sizes within ``max_pixels``.

Anything else goes to Pillow: not a JPEG, CMYK / YCCK / Adobe RGB, an EXIF block while EXIF orientation
is applied, a larger image than allowed (so the refusal names the limit), and any decoder warning or
error (``strict``: a damaged file gets Pillow's precise message). tests/serving/test_jpeg_fast_path.py
checks pixel equality. Without simplejpeg installed every call returns None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

__all__ = ["decode_jpeg_fast", "decode_jpeg_pixels", "jpeg_declared_pixels"]

_SOI = b"\xff\xd8"
_SOS, _APP1 = 0xDA, 0xE1
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_COLOURS = ("YCbCr", "Gray")
_DRAFT_SCALES = (8, 4, 2, 1)
_simplejpeg: Any = None


def _decoder() -> Any:
    global _simplejpeg
    if _simplejpeg is None:
        try:
            import simplejpeg
        except ImportError:
            _simplejpeg = False
        else:
            _simplejpeg = simplejpeg
    return _simplejpeg


def _has_exif(data: bytes) -> bool:
    """Whether an APP1 Exif segment precedes the scan; True when the markers cannot be walked (be safe)."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return True
        marker = data[offset + 1]
        if marker == 0xFF:
            offset += 1
            continue
        if marker in _STANDALONE:
            offset += 2
            continue
        if marker == _SOS:
            return False
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker == _APP1 and data[offset + 4 : offset + 10] == b"Exif\x00\x00":
            return True
        offset += 2 + length
    return True


def _draft_scale(height: int, width: int, draft_hw: tuple[int, int] | None) -> int:
    """The DCT scale Pillow's ``draft(None, (w, h))`` picks for a (height, width) JPEG."""
    if draft_hw is None:
        return 1
    target_h, target_w = draft_hw
    scale = min(width // target_w, height // target_h)
    return next((s for s in _DRAFT_SCALES if scale >= s), 1)


def decode_jpeg_fast(
    data: bytes, max_pixels: int | None, draft_hw: tuple[int, int] | None, exif_orientation: bool
) -> Image.Image | None:
    """``decode_rgb8(data, max_pixels, draft_hw, exif_orientation)``'s image, or None: use Pillow."""
    pixels = decode_jpeg_pixels(data, max_pixels, draft_hw, exif_orientation)
    return None if pixels is None else Image.fromarray(pixels, "RGB")


def decode_jpeg_pixels(
    data: bytes, max_pixels: int | None, draft_hw: tuple[int, int] | None, exif_orientation: bool
) -> np.ndarray | None:
    """`decode_jpeg_fast`'s pixels as the decoder's own uint8 (H, W, 3) array (no Pillow image), or None."""
    decoder = _decoder()
    if not decoder or not isinstance(data, bytes) or not data.startswith(_SOI):
        return None
    if exif_orientation and _has_exif(data):
        return None
    try:
        height, width, colour, _ = decoder.decode_jpeg_header(data)
        if colour not in _COLOURS or (max_pixels is not None and width * height > max_pixels):
            return None
        scale = _draft_scale(height, width, draft_hw)
        out_h, out_w = -(-height // scale), -(-width // scale)
        pixels = decoder.decode_jpeg(data, colorspace="RGB", min_height=out_h, min_width=out_w, strict=True)
    except Exception:  # noqa: BLE001 - Pillow decodes it and reports any damage precisely
        return None
    if pixels.shape != (out_h, out_w, 3):
        return None
    return pixels


def jpeg_declared_pixels(data: bytes) -> int | None:
    """Width x height a JPEG's frame header declares (what Pillow's ``Image.open(...).size`` gives), read
    by the native decoder; None when it is not a JPEG it can read (ask Pillow)."""
    decoder = _decoder()
    if not decoder or not isinstance(data, bytes) or not data.startswith(_SOI):
        return None
    try:
        height, width, _, _ = decoder.decode_jpeg_header(data)
    except Exception:  # noqa: BLE001 - Pillow reads it, or reports why not
        return None
    return int(width) * int(height)
