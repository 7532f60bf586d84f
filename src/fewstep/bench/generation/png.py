"""8-bit PNG files from arrays, with the standard library only (PNG specification, ISO/IEC 15948).

A sample of shape ``(C, H, W)`` (``C`` = 1 or 3) or ``(H, W)`` with values in the model's data range ``[lo, hi]``
becomes the bytes ``round(255 (x - lo) / (hi - lo))``, clipped to ``[0, 255]``: grey or RGB, no filter, one zlib
stream. The file is a function of the pixels alone, so its checksum is reproducible.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["to_uint8", "png_bytes", "check_image_shape"]


def check_image_shape(shape: tuple[int, ...]) -> None:
    """ValueError unless ``shape`` is ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``."""
    if len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3)):
        return
    raise ValueError(
        f"format: 'png' needs samples of shape (H, W), (1, H, W) or (3, H, W), the model's is {shape}; use 'npz'"
    )


def to_uint8(sample: np.ndarray, data_range: tuple[float, float]) -> np.ndarray:
    """``sample`` mapped from ``data_range`` to 8 bits (module docstring), as ``(H, W)`` or ``(H, W, 3)``."""
    lo, hi = data_range
    scaled = np.rint((sample.astype(np.float64) - lo) * (255.0 / (hi - lo)))
    pixels = np.clip(scaled, 0, 255).astype(np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    return pixels


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels: np.ndarray) -> bytes:
    """The PNG file of 8-bit ``pixels``, ``(H, W)`` grey or ``(H, W, 3)`` RGB."""
    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0  # truecolour or greyscale
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    )
