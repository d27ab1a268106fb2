"""`python -m pixel_compiler.pixelrts_v2_converter INPUT OUTPUT [--mode standard|code]
[--grid-size N] [--metadata JSON]`: the reference's converter command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import pixelrts


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pixel_compiler.pixelrts_v2_converter",
        description="Convert a file into a PixelRTS v2 image (.rts.png).",
    )
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--mode", choices=["standard", "code"], default="standard")
    p.add_argument("--grid-size", type=int, default=None)
    p.add_argument("--metadata", default=None, help="extra metadata as a JSON object")
    a = p.parse_args(argv)
    try:
        user = json.loads(a.metadata) if a.metadata else None
        meta = pixelrts.encode(
            a.input, a.output, mode=a.mode, grid_size=a.grid_size, metadata=user, sidecar=True
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{a.input} -> {a.output}: {meta['data_size']} bytes, grid {meta['grid_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
