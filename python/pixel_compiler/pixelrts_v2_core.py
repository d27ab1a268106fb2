"""`pixel_compiler.pixelrts_v2_core`: the reference's in-memory encoder and decoder.

`encode`/`decode` take and return bytes (the core works on a private temporary file: these
APIs hold the whole input in memory by their nature — for large files use `pixelrts_mmap` or
`pixelrts.open`). Differences on purpose: empty input encodes in standard mode too; a decoder
reports the metadata of the file it decoded last, never a previous one; `blueprint` is
accepted but not written (a warning says so)."""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional, Union

import pixelrts

from ._common import ScratchFile, check_grid, check_mode, metadata_of, sha256_hex

# The reference's names for levels; numbers 1–9 are zlib levels as they are.
_LEVELS = {"fast": 1, "low": 1, "medium": 6, "default": 6, "high": 9, "max": 9, "maximum": 9}


def calculate_grid_size(data_size_bytes: int, bytes_per_pixel: int = 4) -> int:
    """The automatic grid: 1 for no data, else the smallest power of two g >= 4 with
    bytes_per_pixel * g * g >= data_size_bytes."""
    if data_size_bytes <= 0:
        return 1
    g = 4
    while g * g * bytes_per_pixel < data_size_bytes:
        g *= 2
    return g


def _compression(compression: Optional[str]) -> str:
    if compression is None or compression in ("none", False):
        return "none"
    if compression in ("zlib", "auto", "zstd", "zstd-h5", True):
        # The core writes zlib segments (what the reference and every PNG reader decode);
        # zstd payloads are read, not written.
        return "zlib" if compression != "auto" else "auto"
    raise ValueError(f"Invalid compression: {compression}")


def _level(level: Union[str, int, None]) -> Optional[int]:
    if level is None:
        return None
    if isinstance(level, int):
        if not 1 <= level <= 9:
            raise ValueError(f"Invalid compression level: {level}")
        return level
    try:
        return _LEVELS[str(level).lower()]
    except KeyError:
        raise ValueError(f"Invalid compression level: {level}") from None


class PixelRTSEncoder:
    def __init__(
        self,
        mode: str = "standard",
        compression: Optional[str] = None,
        compression_level: Union[str, int] = "medium",
        use_layout: bool = False,
    ):
        self.mode = check_mode(mode)
        self.compression = _compression(compression)
        self.compression_level = _level(compression_level)
        self.use_layout = use_layout
        self.metadata: Optional[Dict[str, Any]] = None

    def _encode_to(
        self, data: bytes, output_path: str, metadata, grid_size, sidecar
    ) -> Dict[str, Any]:
        check_grid(grid_size)
        self.metadata = None
        with ScratchFile(bytes(data)) as src:
            self.metadata = pixelrts.encode(
                src.path,
                output_path,
                mode=self.mode,
                compression=self.compression,
                level=self.compression_level if self.compression != "none" else None,
                metadata=metadata,
                grid_size=grid_size,
                sidecar=sidecar,
            )
        return self.metadata

    @staticmethod
    def _blueprint(blueprint: Any) -> None:
        if blueprint is not None:
            warnings.warn("pixelrts: blueprints are not written (the image is)", stacklevel=3)

    def encode(
        self,
        data: bytes,
        metadata: Optional[Dict[str, Any]] = None,
        grid_size: Optional[int] = None,
        blueprint: Any = None,
    ) -> bytes:
        """The PNG image of `data`, as bytes."""
        self._blueprint(blueprint)
        with ScratchFile(suffix=".rts.png") as out:
            self._encode_to(data, out.path, metadata, grid_size, sidecar=False)
            with open(out.path, "rb") as f:
                return f.read()

    def save(
        self,
        data: bytes,
        output_path: str,
        metadata: Optional[Dict[str, Any]] = None,
        grid_size: Optional[int] = None,
        sidecar: bool = True,
        blueprint: Any = None,
    ) -> Dict[str, Any]:
        """Writes the PNG of `data` to `output_path` (and `output_path.meta.json` with
        `sidecar`); returns the metadata."""
        self._blueprint(blueprint)
        return self._encode_to(data, os.fspath(output_path), metadata, grid_size, sidecar)

    def get_metadata(self) -> Optional[Dict[str, Any]]:
        return self.metadata


class PixelRTSDecoder:
    def __init__(self) -> None:
        self.metadata: Optional[Dict[str, Any]] = None

    def set_metadata(self, metadata: Dict[str, Any]) -> None:
        """The reference's way to hand a decoder a sidecar's metadata. The image's own
        metadata wins here; this one is kept for `get_metadata` until the next decode."""
        self.metadata = dict(metadata)

    def get_metadata(self) -> Optional[Dict[str, Any]]:
        return self.metadata

    def _read_all(self, path: str, verify: bool) -> bytes:
        self.metadata = None
        self.metadata = metadata_of(path)
        with pixelrts.open(path) as f:
            data = f.read()
        expected = self.metadata.get("data_hash")
        if verify and expected is not None:
            actual = sha256_hex(data)
            if actual != expected:
                raise ValueError(f"Hash mismatch for {path}: expected {expected}, got {actual}")
        return data

    def decode(self, png_data: bytes, expected_size: Optional[int] = None) -> bytes:
        """The bytes held by the PNG image `png_data`; with `expected_size`, a ValueError
        when the image holds another size."""
        with ScratchFile(bytes(png_data), suffix=".rts.png") as src:
            data = self._read_all(src.path, verify=False)
        if expected_size is not None and len(data) != expected_size:
            raise ValueError(f"Size mismatch: expected {expected_size}, got {len(data)}")
        return data

    def decode_range(self, png_data: bytes, start_byte: int, count: int) -> bytes:
        """`count` bytes from `start_byte` (fewer at the end), decoding only what they need."""
        if start_byte < 0 or count < 0:
            raise ValueError("start_byte and count must not be negative")
        with ScratchFile(bytes(png_data), suffix=".rts.png") as src:
            self.metadata = None
            self.metadata = metadata_of(src.path)
            return pixelrts.RawReader(src.path).pread(start_byte, count)

    def load(self, input_path: str, verify_hash: bool = False) -> bytes:
        """The bytes of the image at `input_path`; with `verify_hash`, a ValueError starting
        "Hash mismatch" when they do not match its `data_hash`."""
        return self._read_all(os.fspath(input_path), verify_hash)

    def info(self, input_path: str) -> Dict[str, Any]:
        """The image's metadata, without decoding pixels."""
        self.metadata = None
        self.metadata = metadata_of(os.fspath(input_path))
        return self.metadata

    @staticmethod
    def verify_hash(data: bytes, expected_hash: str) -> bool:
        return sha256_hex(data) == expected_hash
