"""The Python package (`import pixelrts`) on the Rust core: round trips, errors, the reference's
vectors, files the CLI wrote, and random access through `pixelrts.open` (zipfile, tarfile,
many threads). Run by .ci/run after the wheel is built: `pytest python/tests`."""

import hashlib
import io
import os
import random
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import pixelrts

from conftest import ROOT, VECTORS, reference_vectors


def cli() -> Path:
    """The CLI built by `cargo build --release` (PIXELRTS_BIN overrides)."""
    p = Path(os.environ.get("PIXELRTS_BIN", ROOT / "target" / "release" / "pixelrts"))
    if not p.exists():
        pytest.fail(f"{p}: build the CLI first (cargo build --release)")
    return p


def contents():
    rnd = random.Random(7)
    text = b"".join(b"line %d: the quick brown fox\n" % i for i in range(40000))
    return {
        "text": text,
        "random": rnd.randbytes(300_000),
        "zeros": bytes(200_000),
        "mixed": bytes(70_000) + rnd.randbytes(70_000) + text[:70_000],
        "one": b"x",
    }


@pytest.mark.parametrize("name", sorted(contents()))
@pytest.mark.parametrize("compression", ["auto", "zlib", "none"])
def test_round_trip(tmp_path, name, compression):
    data = contents()[name]
    src = tmp_path / name
    src.write_bytes(data)
    png = tmp_path / f"{name}.rts.png"
    meta = pixelrts.encode(src, png, compression=compression, metadata={"note": "hi"})
    assert meta["data_size"] == len(data)
    assert meta["data_hash"] == hashlib.sha256(data).hexdigest()
    assert meta["note"] == "hi"
    assert pixelrts.verify(png)
    out = tmp_path / "out"
    report = pixelrts.decode(png, out)
    assert out.read_bytes() == data
    assert report["bytes"] == len(data)
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    info = pixelrts.info(png)
    assert info["data_size"] == len(data)
    assert info["metadata"]["note"] == "hi"
    with pixelrts.open(png) as f:
        assert f.read() == data
        f.seek(len(data) // 3)
        assert f.read(1000) == data[len(data) // 3 : len(data) // 3 + 1000]


def test_progress_callbacks(tmp_path):
    data = contents()["text"] * 10
    src, png = tmp_path / "p.txt", tmp_path / "p.rts.png"
    src.write_bytes(data)
    seen = []
    pixelrts.encode(src, png, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] and len(seen) <= 102
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    seen.clear()
    pixelrts.decode(
        png, tmp_path / "p.out", progress=lambda done, total: seen.append((done, total))
    )
    assert seen and seen[-1][0] == seen[-1][1]


def test_code_mode(tmp_path):
    wasm = (VECTORS / "f_add.wasm").read_bytes()
    src = tmp_path / "add.wasm"
    src.write_bytes(wasm)
    png = tmp_path / "add.rts.png"
    meta = pixelrts.encode(src, png, mode="code")
    assert meta["encoding_mode"] == "RGBA-code"
    assert pixelrts.info(png)["metadata"]["encoding"]["type"] == "RGBA-code"
    pixelrts.decode(png, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == wasm


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        pixelrts.encode(missing, tmp_path / "x.rts.png")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        pixelrts.info(missing)

    src = tmp_path / "a.bin"
    src.write_bytes(b"abc" * 1000)
    png = tmp_path / "a.rts.png"
    pixelrts.encode(src, png)
    with pytest.raises(FileExistsError, match="a.rts.png"):
        pixelrts.encode(src, png, overwrite=False)
    with pytest.raises(ValueError, match="mode"):
        pixelrts.encode(src, png, mode="fast")
    with pytest.raises(ValueError, match="compression"):
        pixelrts.encode(src, png, compression="lz4")

    not_png = tmp_path / "not.png"
    not_png.write_bytes(b"hello, not a PNG at all")
    with pytest.raises(ValueError, match="not.png"):
        pixelrts.info(not_png)
    with pytest.raises(ValueError, match="not.png"):
        pixelrts.open(not_png)

    # A damaged payload: the decode refuses it and leaves no output; verify raises too.
    data = random.Random(3).randbytes(100_000)
    src.write_bytes(data)
    pixelrts.encode(src, png, compression="none")
    raw = bytearray(png.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    bad = tmp_path / "bad.rts.png"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="bad.rts.png"):
        pixelrts.decode(bad, tmp_path / "bad.out")
    assert not (tmp_path / "bad.out").exists()
    with pytest.raises(ValueError, match="bad.rts.png"):
        pixelrts.verify(bad)


def test_reference_vectors_decode():
    for v, png, data in reference_vectors():
        with pixelrts.open(png) as f:
            assert f.read() == data, v["id"]
        assert pixelrts.verify(png), v["id"]


def test_cli_and_python_read_each_other(tmp_path):
    data = contents()["mixed"] * 40
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    by_cli = tmp_path / "cli.rts.png"
    subprocess.run([cli(), "encode", src, by_cli, "--no-sidecar"], check=True, capture_output=True)
    pixelrts.decode(by_cli, tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == data
    by_py = tmp_path / "py.rts.png"
    pixelrts.encode(src, by_py)
    subprocess.run(
        [cli(), "decode", by_py, tmp_path / "b", "--verify"], check=True, capture_output=True
    )
    assert (tmp_path / "b").read_bytes() == data


def test_zipfile_and_tarfile_read_through_open(tmp_path):
    rnd = random.Random(11)
    members = {f"dir/file{i}.bin": rnd.randbytes(rnd.randrange(1, 200_000)) for i in range(20)}
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    tpath = tmp_path / "a.tar"
    with tarfile.open(tpath, "w") as t:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    for path in (zpath, tpath):
        pixelrts.encode(path, f"{path}.rts.png")
    with zipfile.ZipFile(pixelrts.open(f"{zpath}.rts.png")) as z:
        assert sorted(z.namelist()) == sorted(members)
        for name in rnd.sample(sorted(members), 5):
            assert z.read(name) == members[name]
    with tarfile.open(fileobj=pixelrts.open(f"{tpath}.rts.png")) as t:
        for m in t.getmembers():
            assert t.extractfile(m).read() == members[m.name]


def test_pread_from_many_threads(tmp_path):
    rnd = random.Random(5)
    data = contents()["text"] * 20 + rnd.randbytes(2_000_000)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    for compression in ("auto", "none"):
        png = tmp_path / f"big-{compression}.rts.png"
        pixelrts.encode(src, png, compression=compression)
        raw = pixelrts.RawReader(png)
        assert raw.size == len(data)
        errors = []

        def worker(seed):
            r = random.Random(seed)
            for _ in range(200):
                off = r.randrange(0, len(data) + 10)
                n = r.choice([0, 1, 7, 4096, 65536, 300_000])
                if raw.pread(off, n) != data[off : off + n]:
                    errors.append((off, n))

        def through_open(seed):
            # Each thread its own buffered file over the same image (a BufferedReader's
            # seek + read pair is not atomic, as for any Python file).
            r = random.Random(seed)
            with pixelrts.open(png) as f:
                for _ in range(100):
                    off = r.randrange(0, len(data))
                    n = r.choice([1, 100, 8192, 200_000])
                    f.seek(off)
                    if f.read(n) != data[off : off + n]:
                        errors.append(("open", off, n))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        threads += [threading.Thread(target=through_open, args=(100 + s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        raw.close()
        with pytest.raises(ValueError):
            raw.pread(0, 1)


def test_open_behaves_like_a_file(tmp_path):
    data = bytes(range(256)) * 1000
    src = tmp_path / "b.bin"
    src.write_bytes(data)
    png = tmp_path / "b.rts.png"
    pixelrts.encode(src, png)
    f = pixelrts.open(png)
    assert isinstance(f, io.BufferedReader)
    assert f.seekable() and f.readable() and not f.writable()
    assert f.seek(-10, io.SEEK_END) == len(data) - 10
    assert f.read() == data[-10:]
    assert f.read() == b""
    f.seek(5)
    buf = bytearray(20)
    assert f.readinto(buf) == 20 and bytes(buf) == data[5:25]
    assert f.tell() == 25
    with pytest.raises(OSError):
        f.seek(-1)
    f.close()
    with pytest.raises(ValueError):
        f.read()
