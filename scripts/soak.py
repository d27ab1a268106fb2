#!/usr/bin/env python3
"""Soak test of `pixelrts mount` under mixed load; see scripts/soak.sh for the command line.

Every byte a reader gets is compared with the original. Load, all at once:
- N readers: random ranges of random sizes (1 B to 1 MiB) from every kind of file the mount
  serves: raw and compressed payloads, a plain PNG without an index (checkpoint path), a
  code-mode file, and one file that a replacer thread keeps replacing in SOURCE;
- one writer: copies files of up to 6 MiB into encode/, closes them, reads the published file
  back through the view, removes it;
- one replacer: renames a new version of a PNG over a SOURCE file every 0.3 s; an open of it
  must serve one version for its whole life (a read that matches neither version, or another
  version than the open's earlier reads, is a torn read);
- a sampler: the mount process's RssAnon every 0.2 s.

Prints one line of figures (and JSON with --json); exits 1 on any wrong byte, torn read,
unexpected error or RssAnon over the budget (cache_size + 64 MiB).
"""

import argparse
import hashlib
import json
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20


def sh(*args):
    p = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        sys.exit(f"soak: {' '.join(args)} failed: {p.stderr.strip()}")


def is_mounted(mp):
    mp = os.path.realpath(mp)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mp for line in f)


def rss_anon_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def real_content(n):
    """n bytes of real content: shared libraries and docs as found on the machine."""
    out = bytearray()
    for root in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/share"):
        for dirpath, _, names in os.walk(root):
            for name in sorted(names):
                p = os.path.join(dirpath, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                try:
                    with open(p, "rb") as f:
                        out += f.read(n - len(out))
                except OSError:
                    continue
                if len(out) >= n:
                    return bytes(out)
    # A bare machine: pad with text.
    while len(out) < n:
        out += b"the quick brown fox jumps over the lazy dog %d\n" % len(out)
    return bytes(out[:n])


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reads = 0
        self.bytes = 0
        self.wrong = 0
        self.torn = 0
        self.errors = 0
        self.encodes = 0
        self.replaced = 0
        self.messages = []

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def fail(self, kind, message):
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if len(self.messages) < 20:
                self.messages.append(f"{kind}: {message}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pixelrts", required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--cache-mib", type=int, default=64)
    ap.add_argument("--threads", type=int, default=8, help="the mount's FUSE threads")
    ap.add_argument("--size-mib", type=int, default=48, help="size of the big files")
    ap.add_argument("--vectors", required=True, help="folder of the reference vectors")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="pixelrts-soak-", dir=a.workdir)
    src, mp, orig, staged = (os.path.join(work, d) for d in ("src", "mnt", "orig", "staged"))
    for d in (src, mp, orig, staged):
        os.mkdir(d)
    rng = random.Random(1)
    size = a.size_mib * MIB

    def encode(name, data, *opts):
        p = os.path.join(orig, name)
        with open(p, "wb") as f:
            f.write(data)
        sh(a.pixelrts, "encode", p, os.path.join(staged, name + ".rts.png"), "--no-sidecar", *opts)
        return p

    print(f"soak: preparing files in {work}", file=sys.stderr)
    files = {}
    files["raw"] = encode("raw", rng.randbytes(size), "--compress", "none")
    corpus = real_content(size)
    files["compressed"] = encode("compressed", corpus, "--compress", "zlib")
    files["plain"] = encode(
        "plain", corpus[: size // 4][::-1], "--layout", "plain", "--compress", "none")
    shutil.copy(os.path.join(a.vectors, "g_5MiB_prng.bin"), os.path.join(orig, "reference"))
    shutil.copy(os.path.join(a.vectors, "g_5MiB_prng.rts.png"),
                os.path.join(staged, "reference.rts.png"))
    files["reference"] = os.path.join(orig, "reference")
    shutil.copy(os.path.join(a.vectors, "f_add.wasm"), os.path.join(orig, "code"))
    shutil.copy(os.path.join(a.vectors, "f_add_wasm_code.rts.png"),
                os.path.join(staged, "code.rts.png"))
    files["code"] = os.path.join(orig, "code")
    for name in files:
        shutil.copy(os.path.join(staged, name + ".rts.png"), os.path.join(src, name + ".rts.png"))
    # The replaced file: two versions that differ in every byte, one of each payload kind.
    v0 = corpus[size // 2: size // 2 + 8 * MIB]
    v1 = bytes(b ^ 0x5A for b in v0)
    encode("replaced.v0", v0)
    encode("replaced.v1", v1, "--compress", "none")
    versions = [v0, v1]
    shutil.copy(os.path.join(staged, "replaced.v0.rts.png"), os.path.join(src, "replaced.rts.png"))

    originals = {}
    for name, p in files.items():
        with open(p, "rb") as f:
            originals[name] = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if os.path.getsize(p) else b""

    # SOAK_MOUNT_WRAPPER: a command to run the mount under (e.g. "heaptrack -o FILE").
    wrapper = os.environ.get("SOAK_MOUNT_WRAPPER", "").split()
    mount = subprocess.Popen(
        wrapper + [a.pixelrts, "mount", src, mp, "-f", "-o",
         f"cache_size={a.cache_mib}M,threads={a.threads}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "mount.log"), "w"))
    deadline = time.time() + 30
    while not is_mounted(mp):
        if mount.poll() is not None or time.time() > deadline:
            sys.exit(f"soak: the mount did not come up (see {work}/mount.log)")
        time.sleep(0.05)

    stats = Stats()
    stop = threading.Event()
    peak = [0]
    samples = []

    def reader(seed):
        r = random.Random(seed)
        names = list(files) + ["replaced"]
        while not stop.is_set():
            name = r.choice(names)
            path = os.path.join(mp, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                stats.fail("errors", f"open {path}: {e}")
                continue
            try:
                length = os.fstat(fd).st_size
                opened = None  # the version this open serves (replaced file)
                for _ in range(r.randint(1, 40)):
                    if stop.is_set() or length == 0:
                        break
                    n = r.randint(1, 4096) if r.random() < 0.5 else r.randint(1, MIB)
                    off = r.randrange(length)
                    got = os.pread(fd, n, off)
                    stats.add(reads=1, bytes=len(got))
                    if name == "replaced":
                        match = [i for i, v in enumerate(versions) if v[off:off + n] == got]
                        if not match:
                            stats.fail("torn", f"{name} at {off}+{n}: neither version")
                        elif opened is not None and match[0] != opened:
                            stats.fail("torn", f"{name} at {off}+{n}: version {match[0]} after {opened}")
                        else:
                            opened = match[0]
                    elif got != originals[name][off:off + n]:
                        stats.fail("wrong", f"{name} at {off}+{n}")
            except OSError as e:
                stats.fail("errors", f"read {path}: {e}")
            finally:
                os.close(fd)

    def writer(seed):
        r = random.Random(seed)
        i = 0
        while not stop.is_set():
            i += 1
            n = r.randint(1, 6 * MIB)
            at = r.randrange(len(corpus) - n)
            data = r.randbytes(n) if i % 2 else corpus[at:at + n]
            name = f"w{seed}-{i}"
            try:
                with open(os.path.join(mp, "encode", name), "wb") as f:
                    for k in range(0, n, MIB):
                        f.write(data[k:k + MIB])
                with open(os.path.join(mp, name), "rb") as f:
                    back = f.read()
                if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
                    stats.fail("wrong", f"{name}: read back differs ({len(back)} of {n} bytes)")
                os.unlink(os.path.join(mp, "encode", name))
                stats.add(encodes=1)
            except OSError as e:
                stats.fail("errors", f"encode {name}: {e}")

    def replacer():
        k = 0
        while not stop.wait(0.3):
            k ^= 1
            tmp = os.path.join(src, "replaced.rts.png.new")
            shutil.copy(os.path.join(staged, f"replaced.v{k}.rts.png"), tmp)
            os.rename(tmp, os.path.join(src, "replaced.rts.png"))
            stats.add(replaced=1)

    def sampler():
        with open(os.path.join(work, "rss_anon.tsv"), "w") as log:
            while not stop.wait(0.2):
                kib = rss_anon_kib(mount.pid)
                if kib is not None:
                    samples.append(kib)
                    peak[0] = max(peak[0], kib)
                    log.write(f"{time.time() - start:.1f}\t{kib}\n")

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(a.readers)]
    threads += [threading.Thread(target=writer, args=(99 + s,)) for s in range(a.writers)]
    threads += [threading.Thread(target=t) for t in (replacer, sampler)]
    start = time.time()
    for t in threads:
        t.start()
    try:
        while time.time() - start < a.seconds and mount.poll() is None:
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    elapsed = time.time() - start
    died = mount.poll() is not None
    subprocess.run([a.pixelrts, "umount", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        mount.wait(timeout=30)
    except subprocess.TimeoutExpired:
        mount.kill()
    budget_mib = a.cache_mib + 64
    peak_mib = peak[0] / 1024
    result = {
        "seconds": round(elapsed, 1), "readers": a.readers, "reads": stats.reads,
        "gib_checked": round(stats.bytes / (1 << 30), 2), "wrong_bytes": stats.wrong,
        "torn_reads": stats.torn, "errors": stats.errors, "encodes": stats.encodes,
        "replacements": stats.replaced, "rss_anon_peak_mib": round(peak_mib, 1),
        "rss_anon_median_mib": round(sorted(samples)[len(samples) // 2] / 1024, 1) if samples else None,
        "budget_mib": budget_mib, "mount_died": died,
        # Drift: the median of the first and of the last fifth of the run.
        "rss_anon_first_fifth_mib": round(sorted(samples[:len(samples) // 5 or 1])[len(samples) // 10] / 1024, 1) if samples else None,
        "rss_anon_last_fifth_mib": round(sorted(samples[-(len(samples) // 5 or 1):])[len(samples) // 10] / 1024, 1) if samples else None,
    }
    for m in stats.messages:
        print("soak:", m, file=sys.stderr)
    print(
        f"soak: {result['seconds']} s, {a.readers} readers, {stats.reads} reads, "
        f"{result['gib_checked']} GiB checked, {stats.wrong} wrong, {stats.torn} torn, "
        f"{stats.errors} errors, {stats.encodes} encodes, {stats.replaced} replacements, "
        f"RssAnon peak {result['rss_anon_peak_mib']} MiB (median {result['rss_anon_median_mib']}, "
        f"first/last fifth {result['rss_anon_first_fifth_mib']}/{result['rss_anon_last_fifth_mib']}) "
        f"of {budget_mib} MiB allowed")
    if a.json:
        print(json.dumps(result))
    ok = not (stats.wrong or stats.torn or stats.errors or died or peak_mib > budget_mib
              or stats.reads == 0)
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"soak: FAILED (files kept in {work})", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
