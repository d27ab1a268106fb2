"""The reference's API (`pixel_compiler.*`) on our core: the calls its users make, with the
reference's names, defaults, return shapes and errors, and without its bugs (FORMAT.md §4)."""

import hashlib
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pixel_compiler.pixelrts_mmap import DEFAULT_CHUNK_SIZE, MMapPixelRTSDecoder, MMapPixelRTSEncoder
from pixel_compiler.pixelrts_v2_core import PixelRTSDecoder, PixelRTSEncoder, calculate_grid_size

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "fixtures" / "reference"


def chunks(png: bytes):
    pos, out = 8, []
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def build_png(parts) -> bytes:
    body = b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in parts
    )
    return b"\x89PNG\r\n\x1a\n" + body


def with_wrong_hash(png: bytes) -> bytes:
    """The same image whose metadata claims another data_hash (chunk CRC fixed)."""
    parts = []
    for t, d in chunks(png):
        if t == b"tEXt" and b"PixelRTS{" in d:
            key, text = d.split(b"\0", 1)
            meta = json.loads(text[len(b"PixelRTS") :])
            meta["data_hash"] = "0" * 64
            d = key + b"\0PixelRTS" + json.dumps(meta, separators=(",", ":")).encode()
        parts.append((t, d))
    return build_png(parts)


def plain_png_without_metadata() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 6, 0, 0, 0)
    raw = b"".join(b"\0" + bytes(16) for _ in range(4))
    return build_png([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])


def test_mmap_encoder_and_decoder(tmp_path):
    data = b"".join(b"record %06d\n" % i for i in range(50000))
    src, png, out = tmp_path / "in.bin", tmp_path / "in.rts.png", tmp_path / "out.bin"
    src.write_bytes(data)
    enc = MMapPixelRTSEncoder()
    assert enc.mode == "standard" and MMapPixelRTSEncoder.DEFAULT_CHUNK_SIZE == DEFAULT_CHUNK_SIZE == 64 << 20
    meta = enc.encode_file(str(src), str(png), metadata={"author": "me"})
    assert meta["data_size"] == len(data) and meta["author"] == "me"
    assert meta["data_hash"] == hashlib.sha256(data).hexdigest()
    assert enc.get_metadata() == meta
    assert (tmp_path / "in.rts.png.meta.json").exists()

    dec = MMapPixelRTSDecoder()
    got = dec.decode_file(str(png), str(out), verify_hash=True)
    assert out.read_bytes() == data
    assert got["data_size"] == len(data) and dec.get_metadata() == got
    assert dec.get_info(str(png))["grid_size"] == meta["grid_size"]

    with pytest.raises(ValueError, match="^Invalid mode: fast"):
        MMapPixelRTSEncoder(mode="fast")
    with pytest.raises(ValueError, match="^Grid size must be power of 2"):
        enc.encode_file(str(src), str(png), grid_size=12)
    with pytest.raises(ValueError, match="exceeds grid capacity"):
        enc.encode_file(str(src), str(png), grid_size=4)


def test_hash_mismatch_and_missing_metadata(tmp_path):
    data = bytes(range(256)) * 64
    src, png = tmp_path / "a.bin", tmp_path / "a.rts.png"
    src.write_bytes(data)
    MMapPixelRTSEncoder().encode_file(str(src), str(png))
    (tmp_path / "a.rts.png.meta.json").unlink()
    bad = tmp_path / "bad.rts.png"
    bad.write_bytes(with_wrong_hash(png.read_bytes()))
    dec = MMapPixelRTSDecoder()
    with pytest.raises(ValueError, match="^Hash mismatch"):
        dec.decode_file(str(bad), str(tmp_path / "out"), verify_hash=True)
    assert not (tmp_path / "out").exists()
    # Without verify_hash the reference decodes it as it is.
    dec.decode_file(str(bad), str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == data
    with pytest.raises(ValueError, match="^Hash mismatch"):
        PixelRTSDecoder().load(str(bad), verify_hash=True)

    plain = tmp_path / "plain.png"
    plain.write_bytes(plain_png_without_metadata())
    dec.decode_file(str(png), str(tmp_path / "x"))
    assert dec.get_metadata() is not None
    with pytest.raises(ValueError, match="^No PixelRTS metadata found in PNG"):
        dec.get_info(str(plain))
    # The reference kept the previous file's metadata here (FORMAT.md §4); not this one.
    assert dec.get_metadata() is None


def test_empty_input_encodes_in_standard_mode(tmp_path):
    src, png = tmp_path / "empty", tmp_path / "empty.rts.png"
    src.write_bytes(b"")
    meta = MMapPixelRTSEncoder().encode_file(str(src), str(png))
    assert meta["data_size"] == 0
    assert PixelRTSDecoder().load(str(png), verify_hash=True) == b""


def test_v2_core_encoder_and_decoder(tmp_path):
    data = b"".join(b"%d,%d\n" % (i, i * i) for i in range(30000))
    enc = PixelRTSEncoder()
    png = enc.encode(data, metadata={"version": "1.2"})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    meta = enc.get_metadata()
    assert meta["content_version"] == "1.2" and meta["data_size"] == len(data)

    dec = PixelRTSDecoder()
    assert dec.decode(png) == data
    assert dec.get_metadata()["data_hash"] == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError):
        dec.decode(png, expected_size=len(data) + 1)
    assert dec.decode_range(png, 1000, 50) == data[1000:1050]
    assert dec.decode_range(png, len(data) - 5, 100) == data[-5:]

    out = tmp_path / "t.rts.png"
    saved = PixelRTSEncoder(compression="zlib", compression_level="high").save(data, str(out))
    assert saved["compression"]["type"] == "zlib"
    assert (tmp_path / "t.rts.png.meta.json").exists()
    assert dec.load(str(out), verify_hash=True) == data
    assert dec.info(str(out))["data_size"] == len(data)
    assert PixelRTSDecoder.verify_hash(data, hashlib.sha256(data).hexdigest())
    assert not PixelRTSDecoder.verify_hash(data + b"x", hashlib.sha256(data).hexdigest())
    with pytest.warns(UserWarning, match="blueprint"):
        PixelRTSEncoder().encode(b"abc", blueprint={"x": 1})
    with pytest.raises(ValueError, match="^Invalid mode"):
        PixelRTSEncoder(mode="dense")


def test_calculate_grid_size_follows_the_format():
    cases = {0: 1, 1: 4, 64: 4, 65: 8, 1000: 16, 1025: 32, 65536: 128, 65537: 256,
             1 << 20: 512, 5 << 20: 2048, 1 << 30: 16384}
    for n, g in cases.items():
        assert calculate_grid_size(n) == g, n


def test_reference_vectors_through_the_reference_api():
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    seen = 0
    for v in manifest["vectors"]:
        if not v.get("encode_ok") or "output_png" not in v:
            continue
        png = VECTORS / v["output_png"]
        data = (VECTORS / v["input"]).read_bytes()
        dec = PixelRTSDecoder()
        assert dec.load(str(png), verify_hash=True) == data, v["id"]
        assert dec.decode(png.read_bytes()) == data, v["id"]
        assert calculate_grid_size(len(data)) == v["grid_size"] or v["mode"] == "code", v["id"]
        seen += 1
    assert seen >= 5


def test_converter_command_line(tmp_path):
    src, png = tmp_path / "in.txt", tmp_path / "in.rts.png"
    src.write_bytes(b"hello\n" * 1000)
    run = subprocess.run(
        [sys.executable, "-m", "pixel_compiler.pixelrts_v2_converter", str(src), str(png)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert PixelRTSDecoder().load(str(png), verify_hash=True) == src.read_bytes()
    run = subprocess.run(
        [sys.executable, "-m", "pixel_compiler.pixelrts_v2_converter", str(tmp_path / "no"), str(png)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "no" in run.stderr
