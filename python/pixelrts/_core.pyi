# The Rust extension (python/src/lib.rs); use the wrappers in pixelrts/__init__.py.
from typing import Any, Callable, List, Optional

Progress = Optional[Callable[[int, int], Any]]

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
    progress: Progress = ...,
) -> str: ...
def decode(
    input: str,
    output: str,
    *,
    verify: bool = ...,
    threads: Optional[int] = ...,
    overwrite: bool = ...,
    gpu: str = ...,
    progress: Progress = ...,
) -> str: ...
def info(path: str) -> str: ...
def verify(path: str, *, threads: Optional[int] = ...) -> bool: ...
def encode_batch(
    inputs: List[str],
    outputs: List[str],
    *,
    mode: str = ...,
    compression: str = ...,
    workers: Optional[int] = ...,
    metadata_json: Optional[str] = ...,
    sidecar: bool = ...,
    progress: Progress = ...,
) -> str: ...
def decode_batch(
    inputs: List[str],
    outputs: List[str],
    *,
    verify: bool = ...,
    workers: Optional[int] = ...,
    progress: Progress = ...,
) -> str: ...
def bench_run(
    sizes: List[int],
    *,
    iterations: int = ...,
    pattern: str = ...,
    mode: str = ...,
    threads: Optional[int] = ...,
    output_dir: Optional[str] = ...,
) -> str: ...
def bench_check(history: str, *, threshold: float = ...) -> str: ...

class Reader:
    def __init__(self, path: str) -> None: ...
    def __len__(self) -> int: ...
    @property
    def size(self) -> int: ...
    def pread(self, offset: int, n: int) -> bytes: ...
