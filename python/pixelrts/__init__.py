"""PixelRTS v2 containers — files packed into PNG images — on the pixelrts Rust core.

    import pixelrts
    meta = pixelrts.encode("disk.img", "disk.img.rts.png")     # -> the metadata written
    pixelrts.decode("disk.img.rts.png", "disk.img")              # verified by default
    pixelrts.info("disk.img.rts.png")["metadata"]["data_size"]
    pixelrts.verify("disk.img.rts.png")                          # -> bool
    with pixelrts.open("a.zip.rts.png") as f:                    # random access, no full decode
        zipfile.ZipFile(f).namelist()

Every call releases the GIL while the core works; errors name the file: `OSError` (with
errno: `FileNotFoundError`, `FileExistsError`, …) for the operating system's, `ValueError` for
bad arguments and for damaged or foreign files.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Union

from . import _core

__all__ = ["encode", "decode", "info", "verify", "open", "RawReader", "__version__"]
__version__: str = _core.__version__

PathLike = Union[str, "os.PathLike[str]"]


def encode(
    input: PathLike,
    output: PathLike,
    *,
    mode: str = "standard",
    compression: str = "auto",
    level: Optional[int] = None,
    threads: Optional[int] = None,
    gpu: str = "auto",
    metadata: Optional[Mapping[str, Any]] = None,
    overwrite: bool = True,
    sidecar: bool = False,
    grid_size: Optional[int] = None,
    segment_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> Dict[str, Any]:
    """Encodes the file `input` into the PNG `output` (written atomically) and returns the
    metadata written. Options as `pixelrts encode`: mode "standard"|"code", compression
    "auto"|"zlib"|"none", level (zlib level of compressed payloads), threads, gpu
    "auto"|"on"|"off", metadata (extra keys), sidecar (also write OUTPUT.meta.json),
    progress (`progress(done, total)` in bytes, at most once per percent)."""
    text = _core.encode(
        os.fspath(input),
        os.fspath(output),
        mode=mode,
        compression=compression,
        level=level,
        threads=threads,
        gpu=gpu,
        metadata_json=None if metadata is None else json.dumps(dict(metadata)),
        overwrite=overwrite,
        sidecar=sidecar,
        grid_size=grid_size,
        segment_size=segment_size,
        progress=progress,
    )
    return json.loads(text)


def decode(
    input: PathLike,
    output: PathLike,
    verify: bool = True,
    *,
    threads: Optional[int] = None,
    overwrite: bool = True,
    gpu: str = "auto",
    progress: Optional[Callable[[int, int], Any]] = None,
) -> Dict[str, Any]:
    """Decodes the PNG `input` into the file `output` (written atomically: nothing is left
    under that name when decoding or, with `verify`, the SHA-256 check fails). Returns
    {"bytes", "sha256", "metadata"}."""
    text = _core.decode(
        os.fspath(input),
        os.fspath(output),
        verify=verify,
        threads=threads,
        overwrite=overwrite,
        gpu=gpu,
        progress=progress,
    )
    return json.loads(text)


def info(path: PathLike) -> Dict[str, Any]:
    """What `pixelrts info --json` prints: the metadata and the layout, without decoding."""
    return json.loads(_core.info(os.fspath(path)))


def verify(path: PathLike, *, threads: Optional[int] = None) -> bool:
    """Whether the decoded bytes hash to the recorded `data_hash` (damaged files raise)."""
    return _core.verify(os.fspath(path), threads=threads)


class RawReader(io.RawIOBase):
    """The decoded bytes of an image as a seekable, read-only raw file. Reads go through the
    core's random-access reader (only the tiles or segments a read touches are decoded and
    verified; a shared cache keeps recent ones) with the GIL released. `pread` never moves
    the position and may be called from many threads at once."""

    def __init__(self, path: PathLike):
        super().__init__()
        self.name = os.fspath(path)
        self._reader = _core.Reader(self.name)
        self._size = self._reader.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset` (fewer at the end of the data)."""
        self._checkClosed()
        if offset < 0 or n < 0:
            raise ValueError("negative offset or count")
        return self._reader.pread(offset, n)

    def readinto(self, b) -> int:  # type: ignore[override]
        self._checkClosed()
        view = memoryview(b).cast("B")
        data = self._reader.pread(self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        self._checkClosed()
        data = self._reader.pread(self._pos, max(0, self._size - self._pos))
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(22, f"{self.name}: negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def close(self) -> None:
        self._reader = None  # type: ignore[assignment]
        super().close()


def open(path: PathLike, buffer_size: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
    """The decoded bytes of the image at `path` as a buffered binary file (seekable), read
    at random without decoding the whole image: `zipfile.ZipFile(pixelrts.open(p))`,
    `tarfile.open(fileobj=pixelrts.open(p))`, `numpy.frombuffer(f.read(n), ...)`."""
    return io.BufferedReader(RawReader(path), buffer_size)
