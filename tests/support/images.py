"""Small images made at run time for tests."""

from __future__ import annotations

import io
import random

from PIL import Image


def png_bytes(width: int, height: int, *, noise: bool = False, seed: int = 1) -> bytes:
    """A PNG of ``width`` x ``height``; with ``noise`` it does not compress (size ~ 3 bytes a pixel)."""
    image = Image.new("RGB", (width, height), (200, 80, 40))
    if noise:
        rng = random.Random(seed)
        image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
