"""`pixel_compiler.pixelrts_mmap`: the reference's memory-mapped encoder and decoder.

The core maps the input and streams the image in bounded memory at any size (the reference's
"memory-mapped" encoder built the whole image in RAM, and its code mode lost the data).
The sidecar is `OUTPUT.meta.json` beside the PNG (the reference's mmap encoder named it
`X.rts.meta.json`; its other encoders and every decoder use `X.rts.png.meta.json`).
Content that compresses is stored compressed (`compression` in the metadata, as the
reference's own compressed files): the reference and any PNG reader still decode it."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import pixelrts

from ._common import check_grid, check_mode, metadata_of

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024


class MMapPixelRTSEncoder:
    DEFAULT_CHUNK_SIZE = DEFAULT_CHUNK_SIZE

    def __init__(self, mode: str = "standard", chunk_size: Optional[int] = None):
        self.mode = check_mode(mode)
        # Kept for the API; the core sizes its own work units.
        self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        self.metadata: Optional[Dict[str, Any]] = None

    def encode_file(
        self,
        input_path: str,
        output_path: str,
        metadata: Optional[Dict[str, Any]] = None,
        grid_size: Optional[int] = None,
    ) -> Dict[str, Any]:
        check_grid(grid_size)
        self.metadata = None
        self.metadata = pixelrts.encode(
            os.fspath(input_path),
            os.fspath(output_path),
            mode=self.mode,
            metadata=metadata,
            grid_size=grid_size,
            sidecar=True,
        )
        return self.metadata

    def get_metadata(self) -> Optional[Dict[str, Any]]:
        return self.metadata


class MMapPixelRTSDecoder:
    def __init__(self) -> None:
        self.metadata: Optional[Dict[str, Any]] = None

    def decode_file(
        self, input_path: str, output_path: str, verify_hash: bool = False
    ) -> Dict[str, Any]:
        """Decodes into `output_path`; with `verify_hash`, a `ValueError` starting
        "Hash mismatch" when the bytes do not match (and nothing is left at `output_path`).
        Returns the image's metadata."""
        self.metadata = None
        report = pixelrts.decode(os.fspath(input_path), os.fspath(output_path), verify=verify_hash)
        self.metadata = report["metadata"]
        return self.metadata

    def get_info(self, input_path: str) -> Dict[str, Any]:
        """The metadata, without decoding pixels; `ValueError("No PixelRTS metadata found in
        PNG")` when there is none."""
        self.metadata = None
        self.metadata = metadata_of(os.fspath(input_path))
        return self.metadata

    def get_metadata(self) -> Optional[Dict[str, Any]]:
        return self.metadata
