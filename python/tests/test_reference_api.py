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

from pixel_compiler.pixelrts_mmap import (
    DEFAULT_CHUNK_SIZE,
    MMapPixelRTSDecoder,
    MMapPixelRTSEncoder,
)
from pixel_compiler.pixelrts_v2_core import PixelRTSDecoder, PixelRTSEncoder, calculate_grid_size

from conftest import reference_vectors


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
    assert (
        enc.mode == "standard"
        and MMapPixelRTSEncoder.DEFAULT_CHUNK_SIZE == DEFAULT_CHUNK_SIZE == 64 << 20
    )
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
    cases = {
        0: 1,
        1: 4,
        64: 4,
        65: 8,
        1000: 16,
        1025: 32,
        65536: 128,
        65537: 256,
        1 << 20: 512,
        5 << 20: 2048,
        1 << 30: 16384,
    }
    for n, g in cases.items():
        assert calculate_grid_size(n) == g, n


def test_reference_vectors_through_the_reference_api():
    for v, png, data in reference_vectors():
        dec = PixelRTSDecoder()
        assert dec.load(str(png), verify_hash=True) == data, v["id"]
        assert dec.decode(png.read_bytes()) == data, v["id"]
        assert calculate_grid_size(len(data)) == v["grid_size"] or v["mode"] == "code", v["id"]


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
        [
            sys.executable,
            "-m",
            "pixel_compiler.pixelrts_v2_converter",
            str(tmp_path / "no"),
            str(png),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "no" in run.stderr


def test_parallel_batch_encode_and_decode(tmp_path):
    from pixel_compiler.pixelrts_parallel import ParallelPixelRTSEncoder, parallel_decode_batch

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    files = {}
    for i in range(30):
        body = (b"small file %d\n" % i) * (i + 1)
        (src / f"f{i:02}.bin").write_bytes(body)
        files[f"f{i:02}.bin"] = body
    big = bytes(range(256)) * 40000
    (src / "big.img").write_bytes(big)
    files["big.img"] = big
    (src / "f00.txt").write_bytes(b"same stem as f00.bin")
    (src / "sub" / "deep.bin").write_bytes(b"deep")

    calls = []
    enc = ParallelPixelRTSEncoder(workers=2)
    inputs = sorted(str(p) for p in src.iterdir() if p.is_file()) + [str(src / "missing.bin")]
    results = enc.encode_batch(
        inputs, str(tmp_path / "out"), progress_callback=lambda d, t: calls.append((d, t))
    )
    assert [r["input"] for r in results] == inputs
    by_input = {Path(r["input"]).name: r for r in results}
    assert (
        by_input["missing.bin"]["status"] == "error"
        and "missing.bin" in by_input["missing.bin"]["error"]
    )
    # f00.bin and f00.txt both map to f00.rts.png: the later one is refused, not written over.
    assert by_input["f00.txt"]["status"] == "error" and "f00.bin" in by_input["f00.txt"]["error"]
    ok = [r for r in results if r["status"] == "ok"]
    assert len(ok) == 31
    for r in ok:
        name = Path(r["input"]).name
        assert r["size"] == len(files[name])
        assert r["hash"] == hashlib.sha256(files[name]).hexdigest()
    # Every input counts, the refused one too.
    assert sorted(calls)[-1] == (33, 33) and len(calls) == 33

    decoded = parallel_decode_batch(
        [r["output"] for r in ok], str(tmp_path / "back"), verify_hash=True
    )
    assert all(r["status"] == "ok" for r in decoded)
    for r in ok:
        stem = Path(r["input"]).stem
        assert (tmp_path / "back" / stem).read_bytes() == files[Path(r["input"]).name]

    tree = enc.encode_directory(str(src), str(tmp_path / "tree"), pattern="*.bin", recursive=True)
    assert all(r["status"] == "ok" for r in tree)
    assert (tmp_path / "tree" / "sub" / "deep.rts.png").exists()
    assert len(tree) == 31


def test_benchmark_history_and_regression(tmp_path):
    from pixel_compiler.benchmark_pixelrts import PixelRTSBenchmark

    out = tmp_path / "results"
    b = PixelRTSBenchmark(str(out))
    r = b.benchmark_encode_decode(data_size=64 * 1024, pattern="zeros", iterations=1)
    for key in (
        "encode_time",
        "decode_time",
        "total_time",
        "throughput_mb_sec",
        "data_size",
        "grid_size",
        "peak_memory_mb",
        "test_name",
    ):
        assert key in r, key
    assert r["data_size"] == 64 * 1024
    history = out / "benchmark_history.jsonl"
    assert len(history.read_text().splitlines()) == 1
    assert b.detect_regression() == []

    # A later record of the same test at a third of the speed: a regression, and the command
    # line says so with exit status 1 (the reference's always exited 0).
    slow = dict(r)
    for k in ("throughput_mb_sec", "encode_mb_sec", "decode_mb_sec"):
        if isinstance(slow.get(k), (int, float)):
            slow[k] = slow[k] / 3
    slow["timestamp"] = "2999-01-01T00:00:00.000Z"
    with history.open("a") as f:
        f.write(json.dumps(slow) + "\n")
    regressed = b.detect_regression(threshold=0.1)
    assert [x["test_name"] for x in regressed] == [r["test_name"]]
    assert regressed[0]["regression_percent"] > 50
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixel_compiler.benchmark_pixelrts",
            "--check-regression",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "REGRESSED" in run.stdout
