# The Rust extension (python/src/lib.rs); use the wrappers in pixelrts/__init__.py.
from typing import Optional

__version__: str

def encode(
    input: str,
    output: str,
    *,
    mode: str = ...,
    compression: str = ...,
    level: Optional[int] = ...,
    threads: Optional[int] = ...,
    gpu: str = ...,
    metadata_json: Optional[str] = ...,
    overwrite: bool = ...,
    sidecar: bool = ...,
    grid_size: Optional[int] = ...,
    segment_size: Optional[int] = ...,
) -> str: ...
def decode(
    input: str,
    output: str,
    *,
    verify: bool = ...,
    threads: Optional[int] = ...,
    overwrite: bool = ...,
    gpu: str = ...,
) -> str: ...
def info(path: str) -> str: ...
def verify(path: str, *, threads: Optional[int] = ...) -> bool: ...

class Reader:
    def __init__(self, path: str) -> None: ...
    def __len__(self) -> int: ...
    @property
    def size(self) -> int: ...
    def pread(self, offset: int, n: int) -> bytes: ...
