"""Shared by the Python tests: where the repository's fixtures are."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "fixtures" / "reference"


def reference_vectors():
    """(manifest entry, PNG path, original bytes) of every vector the reference encoded."""
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    found = [
        (v, VECTORS / v["output_png"], (VECTORS / v["input"]).read_bytes())
        for v in manifest["vectors"]
        if v.get("encode_ok") and "output_png" in v
    ]
    assert len(found) >= 5, f"reference vectors missing in {VECTORS}"
    return found
