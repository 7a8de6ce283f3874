"""Real PNG bytes, written by hand, so stored results are genuine images.

The storage worker checks content types and hashes what it downloads; serving actual PNGs
(rather than a placeholder string) keeps that path honest without pulling in Pillow. Each
image is a diagonal gradient whose two colours derive from (prediction id, index, prompt), so
the same output URL always yields the same bytes and different outputs differ.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = 64


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 over type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def gradient_png(prediction_id: str, index: int, prompt: str, *, size: int = SIZE) -> bytes:
    """A ``size`` x ``size`` 8-bit RGB image, deterministic in its arguments."""
    seed = hashlib.sha256(f"{prediction_id}\x00{index}\x00{prompt}".encode()).digest()
    start, end = seed[0:3], seed[3:6]
    span = max(2 * (size - 1), 1)
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter type 0 (None) for every scanline
        for x in range(size):
            t = (x + y) / span
            rows.extend(round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _chunk(b"IEND", b"")
    )
