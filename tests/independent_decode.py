#!/usr/bin/env python3
"""Independent PixelRTS v2 decoder (FORMAT.md), used by the Rust tests as a second opinion.

Usage: independent_decode.py FILE.rts.png OUT

Pillow reads the pixels and the text chunks; the payload is gathered along the classic Hilbert
curve d2xy (x = column, y = row); data_size comes from the `PixelRTS{...}` metadata in the PNG.
Code mode (`RGBA-code`) returns `original_data_b64`. A `compression` object means, as in the
reference decoder, that the first `encoded_size` payload bytes are a zlib stream (or a zstd
frame) of the original: `zlib.decompress` inflates it, and the length must equal
`compression.original_size`. The SHA-256 is checked against data_hash.
Exit 0 on success, 1 on any failure (message on stderr).
"""
import base64
import hashlib
import json
import sys

from PIL import Image

# Our files are legitimately large (grids of 16384+); this is a test tool, not a viewer.
Image.MAX_IMAGE_PIXELS = None


def d2xy(n, d):
    x = y = 0
    t = d
    s = 1
    while s < n:
        rx = 1 & (t >> 1)
        ry = 1 & (t ^ rx)
        if ry == 0:
            if rx == 1:
                x = s - 1 - x
                y = s - 1 - y
            x, y = y, x
        x += s * rx
        y += s * ry
        t >>= 2
        s <<= 1
    return x, y


def find_metadata(img):
    texts = []
    for v in list(getattr(img, "text", {}).values()) + list(img.info.values()):
        if isinstance(v, bytes):
            try:
                v = v.decode("latin-1")
            except Exception:
                continue
        if isinstance(v, str):
            texts.append(v)
    for t in texts:
        if t.startswith("PixelRTS{"):
            try:
                return json.loads(t[len("PixelRTS"):])
            except ValueError:
                continue
    return None


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, out = sys.argv[1], sys.argv[2]
    img = Image.open(src)
    img.load()
    meta = find_metadata(img)
    if meta is None:
        print(f"{src}: no PixelRTS metadata", file=sys.stderr)
        return 1
    size = int(meta["data_size"])
    mode = meta.get("encoding_mode") or meta.get("encoding", {}).get("type")
    if mode == "RGBA-code" or "original_data_b64" in meta:
        data = base64.b64decode(meta.get("original_data_b64", ""), validate=True)
    else:
        if img.mode != "RGBA":
            print(f"{src}: image mode {img.mode}, expected RGBA", file=sys.stderr)
            return 1
        w, h = img.size
        if w != h or w & (w - 1):
            print(f"{src}: image {w}x{h} is not a power-of-two square", file=sys.stderr)
            return 1
        compression = meta.get("compression")
        payload_size = int(meta["encoded_size"]) if compression else size
        if payload_size > 4 * w * w:
            print(f"{src}: data_size {size} exceeds grid capacity", file=sys.stderr)
            return 1
        raw = img.tobytes()  # row-major RGBA
        n = w
        npix = (payload_size + 3) // 4
        buf = bytearray(npix * 4)
        for i in range(npix):
            x, y = d2xy(n, i)
            p = 4 * (y * n + x)
            buf[4 * i:4 * i + 4] = raw[p:p + 4]
        data = bytes(buf[:payload_size])
        if compression:
            import zlib
            data = zlib.decompress(data)
            if len(data) != int(compression["original_size"]):
                print(f"{src}: inflated {len(data)} bytes, compression.original_size is "
                      f"{compression['original_size']}", file=sys.stderr)
                return 1
    if len(data) != size:
        print(f"{src}: decoded {len(data)} bytes, metadata says {size}", file=sys.stderr)
        return 1
    want = meta.get("data_hash")
    got = hashlib.sha256(data).hexdigest()
    if want is not None and want != got:
        print(f"{src}: hash mismatch: expected {want}, got {got}", file=sys.stderr)
        return 1
    with open(out, "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
