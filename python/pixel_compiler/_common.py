"""Shared pieces of the compatibility layer."""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Dict, Optional

import pixelrts

MODES = ("standard", "code")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode}. Must be 'standard' or 'code'")
    return mode


def check_grid(grid_size: Optional[int]) -> Optional[int]:
    if grid_size is not None and (grid_size < 1 or grid_size & (grid_size - 1)):
        raise ValueError(f"Grid size must be power of 2, got {grid_size}")
    return grid_size


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata_of(path: str) -> Dict[str, Any]:
    """The PixelRTS metadata of an image, or the reference's ValueError when it has none."""
    try:
        return pixelrts.info(path)["metadata"]
    except ValueError as e:
        if "no PixelRTS metadata" in str(e):
            raise ValueError("No PixelRTS metadata found in PNG") from e
        raise


class ScratchFile:
    """A private temporary file holding `data` (for the APIs that take bytes in memory)."""

    def __init__(self, data: Optional[bytes] = None, suffix: str = ""):
        fd, self.path = tempfile.mkstemp(prefix="pixel_compiler.", suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            if data:
                f.write(data)

    def __enter__(self) -> "ScratchFile":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
