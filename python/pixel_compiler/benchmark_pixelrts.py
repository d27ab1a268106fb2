"""`pixel_compiler.benchmark_pixelrts`: the reference's benchmark, on the runner and history
of `pixelrts bench` (the same `benchmark_history.jsonl`, so both tools see each other's
records).

    python -m pixel_compiler.benchmark_pixelrts --sizes 1048576 10485760 --iterations 5
    python -m pixel_compiler.benchmark_pixelrts --check-regression [--threshold 0.1]

Difference on purpose: `--check-regression` exits 1 when a test regressed (the reference
always exited 0)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from pixelrts import _core

from ._common import check_mode

DEFAULT_OUTPUT_DIR = "benchmark_results"
PATTERNS = ("random", "zeros", "ones", "sequential", "text")


class PixelRTSBenchmark:
    def __init__(self, output_dir: Optional[str] = None):
        self.output_dir = Path(output_dir or DEFAULT_OUTPUT_DIR)
        self.results: List[Dict[str, Any]] = []

    def benchmark_encode_decode(
        self,
        data_size: int = 1024 * 1024,
        pattern: str = "random",
        iterations: int = 5,
        mode: str = "standard",
    ) -> Dict[str, Any]:
        """Times `iterations` encodes and decodes of `data_size` bytes of `pattern`; the record
        (`encode_time`, `decode_time`, `total_time`, `throughput_mb_sec`, `data_size`,
        `grid_size`, `peak_memory_mb`, `test_name`, …) is returned and added to the history."""
        check_mode(mode)
        if pattern not in PATTERNS:
            raise ValueError(f"Invalid pattern: {pattern}. Must be one of {', '.join(PATTERNS)}")
        records = json.loads(
            _core.bench_run(
                [int(data_size)],
                iterations=int(iterations),
                pattern=pattern,
                mode=mode,
                output_dir=str(self.output_dir),
            )
        )
        self.results += records
        return records[0]

    def benchmark_sizes(
        self, sizes: Optional[List[int]] = None, iterations: int = 3
    ) -> List[Dict[str, Any]]:
        sizes = sizes or [1024 * 1024, 10 * 1024 * 1024]
        return [self.benchmark_encode_decode(s, iterations=iterations) for s in sizes]

    def detect_regression(self, threshold: float = 0.1) -> List[Dict[str, Any]]:
        """Tests whose latest record is slower than their best earlier one by more than
        `threshold` (a fraction), each with `test_name` and `regression_percent`."""
        rows = json.loads(_core.bench_check(str(self.output_dir), threshold=threshold))
        return [r for r in rows if r["regressed"] or not r["roundtrip_ok"]]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pixel_compiler.benchmark_pixelrts")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024 * 1024, 10 * 1024 * 1024])
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--pattern", default="random", choices=PATTERNS)
    p.add_argument("--mode", default="standard", choices=["standard", "code"])
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    p.add_argument("--check-regression", action="store_true")
    p.add_argument("--threshold", type=float, default=0.1)
    a = p.parse_args(argv)
    bench = PixelRTSBenchmark(a.output_dir)
    if a.check_regression:
        regressed = bench.detect_regression(a.threshold)
        for r in regressed:
            print(f"REGRESSED {r['test_name']}: {r['regression_percent']:.1f}% slower")
        if not regressed:
            print("no regression")
        return 1 if regressed else 0
    for size in a.sizes:
        r = bench.benchmark_encode_decode(size, a.pattern, a.iterations, a.mode)
        print(
            f"{r['test_name']}: encode {r['encode_time']:.4f} s, decode {r['decode_time']:.4f} s, "
            f"{r['throughput_mb_sec']:.1f} MB/s, peak {r['peak_memory_mb']:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
