"""`pixel_compiler.pixelrts_parallel`: the reference's batch encoder and decoder, parallel
inside the Rust core (one thread pool; small files spread across it, a big file's own work
split inside it) instead of multiprocessing.

Each result is a dict with the reference's `input`, `output`, `size` and `hash`, plus
`status` ("ok" or "error") and `error`. Differences on purpose: inputs whose outputs would
have the same name (`a.bin` and `a.txt` both give `a.rts.png` by the reference's naming) are
not encoded over each other — the later ones fail with an error naming the earlier input;
one failing file does not stop the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from pixelrts import _core

from ._common import check_mode

DEFAULT_MMAP_THRESHOLD = 16 * 1024 * 1024


def _output_name(pattern: str, input_path: Path) -> str:
    return pattern.replace("*", input_path.stem) if "*" in pattern else input_path.stem + pattern


def _run(inputs: List[Path], outputs: List[Path], call) -> List[Dict[str, Any]]:
    # The core refuses a later input whose output an earlier one takes, naming it.
    if not inputs:
        return []
    return json.loads(call([str(p) for p in inputs], [str(p) for p in outputs]))


class ParallelPixelRTSEncoder:
    def __init__(
        self,
        workers: Optional[int] = None,
        mode: str = "standard",
        use_mmap: bool = True,
        mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    ):
        self.workers = workers
        self.mode = check_mode(mode)
        # Kept for the API: the core always maps its inputs.
        self.use_mmap = use_mmap
        self.mmap_threshold = mmap_threshold

    def encode_batch(
        self,
        input_files: Iterable[str],
        output_dir: str,
        metadata: Optional[Dict[str, Any]] = None,
        pattern: str = "*.rts.png",
        progress_callback: Optional[Callable[[int, int], Any]] = None,
    ) -> List[Dict[str, Any]]:
        """Encodes each input into `output_dir`, named by `pattern` ('*' = the input's stem);
        `progress_callback(done, total)` after each file."""
        inputs = [Path(p) for p in input_files]
        out_dir = Path(output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs = [out_dir / _output_name(pattern, p) for p in inputs]
        return _run(
            inputs,
            outputs,
            lambda i, o: _core.encode_batch(
                i,
                o,
                mode=self.mode,
                workers=self.workers,
                metadata_json=None if metadata is None else json.dumps(dict(metadata)),
                progress=progress_callback,
            ),
        )

    def encode_directory(
        self,
        input_dir: str,
        output_dir: str,
        pattern: str = "*",
        recursive: bool = False,
        **kwargs: Any,
    ) -> List[Dict[str, Any]]:
        """Encodes the files of `input_dir` matching `pattern` (with `recursive`, of its
        subfolders too, mirrored under `output_dir`)."""
        base = Path(input_dir)
        found = sorted(
            p for p in (base.rglob(pattern) if recursive else base.glob(pattern)) if p.is_file()
        )
        results: List[Dict[str, Any]] = []
        by_folder: Dict[Path, List[Path]] = {}
        for p in found:
            by_folder.setdefault(p.parent.relative_to(base), []).append(p)
        for rel, files in by_folder.items():
            results += self.encode_batch(
                [str(f) for f in files], str(Path(output_dir) / rel), **kwargs
            )
        return results


def parallel_decode_batch(
    input_files: Iterable[str],
    output_dir: str,
    workers: Optional[int] = None,
    verify_hash: bool = False,
) -> List[Dict[str, Any]]:
    """Decodes each image into `output_dir` under its name without `.rts.png` (or `.png`)."""
    inputs = [Path(p) for p in input_files]
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def name(p: Path) -> str:
        for suffix in (".rts.png", ".png"):
            if p.name.endswith(suffix) and len(p.name) > len(suffix):
                return p.name[: -len(suffix)]
        return p.name + ".decoded"

    outputs = [out_dir / name(p) for p in inputs]
    return _run(
        inputs,
        outputs,
        lambda i, o: _core.decode_batch(i, o, verify=verify_hash, workers=workers),
    )
