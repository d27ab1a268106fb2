//! `pixelrts mount` for real: every test mounts its own temporary SOURCE on its own temporary
//! mount point through the built binary, and a guard unmounts (`fusermount3 -u -z`) and stops
//! the mount process even when the test fails. Anything that could block on the filesystem
//! runs under a timeout.
//!
//! Needs root (tmpfs and bind mounts for the failure cases), /dev/fuse, fusermount3 and
//! mount.fuse3 (fuse3), getfattr/setfattr (attr), rsync, cmp, and python3 with Pillow.
mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount a FUSE filesystem (load the fuse module, or run in a container with --device /dev/fuse)"
    );
    assert!(
        Command::new("fusermount3").arg("-V").output().is_ok(),
        "fusermount3 is not installed (Debian: apt-get install -y fuse3)"
    );
}

/// Runs `f` on another thread; panics if it takes longer than `limit` (a hung filesystem
/// must fail the test, not hang it).
fn timed<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

/// Runs a command with a time limit; kills it when the limit passes.
fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    wait_output(child, limit, &what)
}

fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().unwrap(),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("{what}: still running after {limit:?}: {}", describe(&out));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn pixelrts(args: &[&OsStr]) -> Output {
    let mut c = Command::new(bin());
    c.args(args);
    run_limited(c, WAIT)
}

/// True when something is mounted exactly at `mp`.
fn is_mounted(mp: &Path) -> bool {
    let mp = mp.canonicalize().unwrap_or_else(|_| mp.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|p| p.replace("\\040", " ") == mp.to_string_lossy())
    })
}

/// The `pixelrts mount` processes serving `mp` (found by their command line).
fn mount_pids(mp: &Path) -> Vec<u32> {
    let want = mp.as_os_str().as_encoded_bytes().to_vec();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_ours = args
            .first()
            .is_some_and(|a| a.ends_with(b"pixelrts") || a.ends_with(b"mount.fuse.pixelrts"));
        if is_ours && args.contains(&want.as_slice()) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Running (not gone, not a zombie waiting for its reaper).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// A mounted test filesystem: SOURCE, mount point, and cleanup that always runs.
struct Mounted {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    mp: PathBuf,
}

impl Mounted {
    /// Mounts `src` (moved into the guard's temp dir) in the background, asserting success.
    fn new(opts: &[&str]) -> Self {
        let m = Self::unmounted();
        m.mount_ok(opts);
        m
    }

    fn unmounted() -> Self {
        require_fuse();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mp = tmp.path().join("mnt");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&mp).unwrap();
        Mounted { _tmp: tmp, src, mp }
    }

    fn mount_args(&self, opts: &[&str]) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "mount".into(),
            self.src.clone().into(),
            self.mp.clone().into(),
        ];
        for o in opts {
            a.push("-o".into());
            a.push((*o).into());
        }
        a
    }

    fn mount(&self, opts: &[&str]) -> Output {
        self.mount_env(opts, &[])
    }

    /// Mounts with extra environment for the mount process (crash points). The mount process
    /// logs to a file of this guard, which failure messages show.
    fn mount_env(&self, opts: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.args(self.mount_args(opts))
            .env("PIXELRTS_LOG_FILE", self.log_path())
            .env("PIXELRTS_LOG", "info,fuser=warn")
            .envs(env.iter().copied());
        run_limited(c, WAIT)
    }

    fn log_path(&self) -> PathBuf {
        self._tmp.path().join("mount.log")
    }

    /// The mount processes' log so far, for failure messages.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn mount_ok(&self, opts: &[&str]) {
        self.mount_ok_env(opts, &[]);
    }

    fn mount_ok_env(&self, opts: &[&str], env: &[(&str, &str)]) {
        let out = self.mount_env(opts, env);
        assert!(
            out.status.success(),
            "mount failed: {}\nmount log:\n{}",
            describe(&out),
            self.log()
        );
        // Ready means ready: no waiting here.
        assert!(
            is_mounted(&self.mp),
            "mount returned before the mount existed; mount processes {:?}; mount log:\n{}",
            mount_pids(&self.mp),
            self.log()
        );
    }

    fn unmount(&self) {
        let out = pixelrts(&["umount".as_ref(), self.mp.as_os_str()]);
        assert!(out.status.success(), "umount: {}", describe(&out));
        assert!(!is_mounted(&self.mp));
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let pids = mount_pids(&self.mp);
        if is_mounted(&self.mp) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "-q"])
                .arg(&self.mp)
                .stderr(Stdio::null())
                .status();
        }
        for pid in pids {
            if !wait_until(Duration::from_secs(5), || !alive(pid)) {
                // SAFETY: kill of a test-owned process by pid.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(vectors_dir().join("manifest.json")).unwrap())
        .unwrap()
}

/// (shown name, original input path) of every vector with an output PNG, the PNGs (and
/// sidecars) copied into `src`.
fn install_vectors(src: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for v in manifest()["vectors"].as_array().unwrap() {
        let Some(png) = v["output_png"].as_str() else {
            continue;
        };
        for f in v["outputs_written"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            std::fs::copy(vectors_dir().join(f), src.join(f)).unwrap();
        }
        let shown = png.strip_suffix(".rts.png").unwrap().to_string();
        out.push((shown, vectors_dir().join(v["input"].as_str().unwrap())));
    }
    assert!(out.len() >= 8, "too few vectors: {out:?}");
    out
}

/// Encodes `data` with the CLI into `png` (extra CLI args allowed).
/// Numbered lines of words, with a stretch of random bytes every so often: deflates well,
/// except where it does not (both kinds of pieces in one payload).
fn text_with_random_stretches(len: usize, seed: u64) -> Vec<u8> {
    let noise = prng_bytes(len / 8 + 4096, seed);
    let words = [
        "pixel", "tile", "segment", "hilbert", "curve", "index", "png", "zlib",
    ];
    let mut out = Vec::with_capacity(len + 4096);
    let mut line = 0usize;
    while out.len() < len {
        if line % 97 == 96 {
            let at = (line * 131) % (noise.len() - 4096);
            out.extend_from_slice(&noise[at..at + 1000 + line % 3000]);
        } else {
            let w = words[line % words.len()];
            out.extend_from_slice(format!("{line:08} {w} {} {w}\n", line * 7).as_bytes());
        }
        line += 1;
    }
    out.truncate(len);
    out
}

fn encode_into(data: &[u8], png: &Path, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, data).unwrap();
    let mut args: Vec<&OsStr> = vec!["encode".as_ref(), input.as_os_str(), png.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let out = pixelrts(&args);
    assert!(out.status.success(), "encode: {}", describe(&out));
}

#[test]
fn every_reference_vector_compares_equal_through_the_mount() {
    let m = Mounted::unmounted();
    let vectors = install_vectors(&m.src);
    m.mount_ok(&["ro"]);
    // Readahead raised to 1 MiB (root can; the FUSE default is 128 KiB).
    let dev = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(&*m.mp.to_string_lossy()))
        .map(|l| l.split(' ').nth(2).unwrap().to_string())
        .next()
        .unwrap();
    let ra = std::fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    assert_eq!(ra.trim(), "1024", "readahead of {dev}");
    let mut listed = list_dir(&m.mp);
    listed.sort();
    let mut want: Vec<String> = vectors.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(listed, want, "sidecars and PNG names must not show");
    for (name, input) in &vectors {
        let shown = m.path(name);
        let meta = std::fs::metadata(&shown).unwrap();
        assert_eq!(
            meta.len(),
            std::fs::metadata(input).unwrap().len(),
            "{name}: size"
        );
        let mut c = Command::new("cmp");
        c.arg(&shown).arg(input);
        let out = run_limited(c, WAIT);
        assert!(out.status.success(), "cmp {name}: {}", describe(&out));
    }
}

#[test]
fn random_ranges_from_8_threads_match_the_originals() {
    let m = Mounted::unmounted();
    let seekable = prng_bytes(3 << 20, 7);
    encode_into(&seekable, &m.src.join("seekable.bin.rts.png"), &[]);
    std::fs::copy(
        vectors_dir().join("g_5MiB_prng.rts.png"),
        m.src.join("plain.rts.png"),
    )
    .unwrap();
    let plain = std::fs::read(vectors_dir().join("g_5MiB_prng.bin")).unwrap();
    // A compressed payload (segments of 16 KiB) of text with random stretches in it.
    let compressed = text_with_random_stretches(6 << 20, 9);
    encode_into(
        &compressed,
        &m.src.join("compressed.txt.rts.png"),
        &[
            "--compress",
            "zlib",
            "--segment-size",
            "16K",
            "--layout",
            "seekable",
        ],
    );
    m.mount_ok(&["ro", "threads=8", "cache_size=4M"]);
    let files = Arc::new(vec![
        (m.path("seekable.bin"), seekable),
        (m.path("plain"), plain),
        (m.path("compressed.txt"), compressed),
    ]);
    let files2 = files.clone();
    timed("8 threads of random preads", WAIT, move || {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let files = files2.clone();
                std::thread::spawn(move || {
                    let mut s = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut next = move || {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        s
                    };
                    for i in 0..150 {
                        let (path, orig) = &files[(i + t as usize) % files.len()];
                        let f = File::open(path).unwrap();
                        let off = next() % orig.len() as u64;
                        let len = (next() % (300 << 10)) as usize + 1;
                        let mut buf = vec![0u8; len];
                        let n = f.read_at(&mut buf, off).unwrap();
                        let end = (off as usize + len).min(orig.len());
                        assert_eq!(n, end - off as usize, "{} at {off}+{len}", path.display());
                        assert!(
                            buf[..n] == orig[off as usize..end],
                            "{}: bytes differ at {off}+{len}",
                            path.display()
                        );
                        // Past the end: nothing.
                        assert_eq!(f.read_at(&mut buf[..1], orig.len() as u64).unwrap(), 0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a reader thread failed");
        }
    });
    drop(files);
}

#[test]
fn python_mmap_slices_match() {
    let m = Mounted::unmounted();
    let data = prng_bytes((1 << 20) + 12345, 11);
    encode_into(&data, &m.src.join("m.rts.png"), &[]);
    let orig = m._tmp.path().join("orig");
    std::fs::write(&orig, &data).unwrap();
    m.mount_ok(&[]);
    let script = r#"
import mmap, random, sys
mounted, orig = sys.argv[1], sys.argv[2]
want = open(orig, 'rb').read()
with open(mounted, 'rb') as f:
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    assert len(mm) == len(want), (len(mm), len(want))
    rnd = random.Random(5)
    for _ in range(300):
        a = rnd.randrange(len(want)); b = min(len(want), a + rnd.randrange(1, 200000))
        assert mm[a:b] == want[a:b], (a, b)
    assert mm[:] == want
    mm.close()
print("ok")
"#;
    let mut c = Command::new("python3");
    c.arg("-c").arg(script).arg(m.path("m")).arg(&orig);
    let out = run_limited(c, WAIT);
    assert!(out.status.success(), "python mmap: {}", describe(&out));
}

#[test]
fn xattrs_show_metadata_with_size_probe_and_erange() {
    let m = Mounted::unmounted();
    encode_into(
        b"kernel bytes",
        &m.src.join("k.rts.png"),
        &[
            "--type",
            "kernel",
            "--meta",
            "arch=\"x86_64\"",
            "--meta",
            "tags=[1,2]",
        ],
    );
    m.mount_ok(&[]);
    let mut c = Command::new("getfattr");
    c.args(["-d", "-m", "user.pixelrts", "--absolute-names"])
        .arg(m.path("k"));
    let out = run_limited(c, WAIT);
    assert!(out.status.success(), "getfattr: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "user.pixelrts.type=\"kernel\"",
        "user.pixelrts.arch=\"x86_64\"",
        "user.pixelrts.tags=\"[1,2]\"",
        "user.pixelrts.data_size=\"12\"",
        "user.pixelrts.format=\"PixelRTS-2.0\"",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }
    let whole = text
        .lines()
        .find_map(|l| l.strip_prefix("user.pixelrts.metadata="))
        .expect("user.pixelrts.metadata");
    assert!(whole.contains("\\\"type\\\":\\\"kernel\\\""), "{whole}");

    // The size-0 probe, ERANGE, ENODATA, listxattr, and read-only: through libc via ctypes.
    let script = r#"
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
p = sys.argv[1].encode()
res = {}
name = b"user.pixelrts.type"
n = libc.getxattr(p, name, None, 0); res["probe"] = n
buf = ctypes.create_string_buffer(64)
r = libc.getxattr(p, name, buf, 64); res["value"] = buf.raw[:r].decode()
small = ctypes.create_string_buffer(2)
r = libc.getxattr(p, name, small, 2); res["small"] = [r, ctypes.get_errno() == errno.ERANGE]
r = libc.getxattr(p, b"user.pixelrts.nope", buf, 64); res["missing"] = [r, ctypes.get_errno() == errno.ENODATA]
ln = libc.listxattr(p, None, 0); big = ctypes.create_string_buffer(ln)
r = libc.listxattr(p, big, ln); res["list"] = [x.decode() for x in big.raw[:r].split(b"\0") if x]
r = libc.listxattr(p, small, 2); res["list_small"] = [r, ctypes.get_errno() == errno.ERANGE]
try:
    os.setxattr(sys.argv[1], "user.pixelrts.type", b"x"); res["set"] = "ok"
except OSError as e:
    res["set"] = errno.errorcode[e.errno]
print(json.dumps(res))
"#;
    let mut c = Command::new("python3");
    c.arg("-c").arg(script).arg(m.path("k"));
    let out = run_limited(c, WAIT);
    assert!(out.status.success(), "python xattr: {}", describe(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["probe"], 6, "{r}");
    assert_eq!(r["value"], "kernel");
    assert_eq!(r["small"], serde_json::json!([-1, true]));
    assert_eq!(r["missing"], serde_json::json!([-1, true]));
    assert_eq!(r["list_small"], serde_json::json!([-1, true]));
    assert_eq!(r["set"], "EROFS");
    let list: Vec<&str> = r["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        list.contains(&"user.pixelrts.type") && list.contains(&"user.pixelrts.metadata"),
        "{list:?}"
    );
}

/// Every file under `dir` with its bytes, sorted (to prove SOURCE did not change).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn writes_to_decoded_files_fail_with_erofs_and_source_is_untouched() {
    let m = Mounted::unmounted();
    std::fs::create_dir(m.src.join("sub")).unwrap();
    encode_into(b"read only", &m.src.join("sub/f.rts.png"), &[]);
    m.mount_ok(&[]);
    let before = snapshot(&m.src);
    let f = m.path("sub/f");
    let mp = m.mp.clone();
    let errors = timed("writes into the view", WAIT, move || {
        let code = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
        vec![
            (
                "open for writing",
                code(std::fs::OpenOptions::new().write(true).open(&f).map(|_| ())),
            ),
            (
                "truncate",
                code(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&f)
                        .map(|_| ()),
                ),
            ),
            ("create", code(std::fs::write(mp.join("sub/new"), b"x"))),
            ("unlink", code(std::fs::remove_file(&f))),
            ("rename", code(std::fs::rename(&f, mp.join("sub/g")))),
            ("mkdir", code(std::fs::create_dir(mp.join("sub/d")))),
            ("rmdir", code(std::fs::remove_dir(mp.join("sub")))),
            (
                "chmod",
                code(std::fs::set_permissions(
                    &f,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )),
            ),
        ]
    });
    for (op, e) in errors {
        assert_eq!(e, Some(libc::EROFS), "{op} on a decoded file");
    }
    assert_eq!(std::fs::read(m.path("sub/f")).unwrap(), b"read only");
    assert!(snapshot(&m.src) == before, "SOURCE changed");
}

#[test]
fn new_and_replaced_pngs_in_source_show_up() {
    let m = Mounted::new(&["ro"]);
    assert!(list_dir(&m.mp).is_empty());
    encode_into(b"first", &m.src.join("a.rts.png"), &[]);
    let a = m.path("a");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read(&a).ok().as_deref()
            == Some(b"first")),
        "new PNG did not show up"
    );
    // Replace it (new inode, new size) while the old content is in the page cache.
    let staged = m._tmp.path().join("staged.rts.png");
    encode_into(b"second, longer", &staged, &[]);
    std::fs::rename(&staged, m.src.join("a.rts.png")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read(&a).ok().as_deref()
            == Some(b"second, longer")),
        "replaced PNG not seen: {:?}",
        std::fs::read(&a)
    );
    std::fs::remove_file(m.src.join("a.rts.png")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !a.exists()),
        "removed PNG still shown"
    );
}

#[test]
fn unreadable_pngs_are_left_out_but_listing_works() {
    let m = Mounted::unmounted();
    encode_into(b"good", &m.src.join("good.rts.png"), &[]);
    std::fs::write(m.src.join("junk.rts.png"), b"not a png at all").unwrap();
    let good = std::fs::read(m.src.join("good.rts.png")).unwrap();
    std::fs::write(m.src.join("cut.rts.png"), &good[..20]).unwrap();
    std::fs::write(m.src.join("notes.txt"), b"hidden").unwrap();
    m.mount_ok(&[]);
    assert_eq!(list_dir(&m.mp), ["encode", "good"]);
    let mut c = Command::new("ls");
    c.arg("-la").arg(&m.mp);
    let out = run_limited(c, WAIT);
    assert!(out.status.success(), "ls: {}", describe(&out));
    assert!(!m.path("junk").exists());
}

#[test]
fn mount_errors_are_clear() {
    let m = Mounted::unmounted();
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

    let missing = m._tmp.path().join("missing-src");
    let out = pixelrts(&["mount".as_ref(), missing.as_os_str(), m.mp.as_os_str()]);
    assert_clean_failure(&out, "missing SOURCE", &name(&missing), &["no such file"]);

    let file = m._tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = pixelrts(&["mount".as_ref(), file.as_os_str(), m.mp.as_os_str()]);
    assert_clean_failure(&out, "SOURCE a file", "a-file", &["not a directory"]);

    let out = pixelrts(&["mount".as_ref(), m.src.as_os_str(), missing.as_os_str()]);
    assert_clean_failure(&out, "missing MOUNTPOINT", "missing-src", &["no such file"]);

    let out = m.mount(&["bogus_option"]);
    assert_clean_failure(&out, "unknown option", "bogus_option", &["unknown option"]);
    let out = m.mount(&["threads=0"]);
    assert_clean_failure(&out, "bad threads", "threads=0", &["between"]);

    std::fs::create_dir(m.src.join("encode")).unwrap();
    let out = m.mount(&[]);
    assert_clean_failure(
        &out,
        "encode dir collision",
        "encode",
        &["encode directory"],
    );
    assert!(!is_mounted(&m.mp));
    // The same SOURCE mounts read-only (no encode directory), or with another name.
    m.mount_ok(&["encode_dir=incoming"]);
    assert_eq!(list_dir(&m.mp), ["encode", "incoming"]);

    let out = m.mount(&["ro"]);
    assert_clean_failure(&out, "busy mount point", &name(&m.mp), &["busy"]);
    m.unmount();
}

#[test]
fn gpu_on_without_a_gpu_is_a_mount_error() {
    let m = Mounted::unmounted();
    let has_gpu = pixelrts::gpu::Gpu::open(pixelrts::gpu::GpuMode::On).is_ok();
    let out = m.mount(&["gpu=on"]);
    if has_gpu {
        assert!(out.status.success(), "{}", describe(&out));
        m.unmount();
    } else {
        assert_clean_failure(&out, "gpu=on", "gpu", &["gpu"]);
        assert!(!is_mounted(&m.mp));
    }
    let out = m.mount(&["gpu=sometimes"]);
    assert_clean_failure(&out, "gpu=bad", "gpu=sometimes", &["auto, on, off"]);
}

#[test]
fn umount_and_sigterm_leave_no_process_behind() {
    let m = Mounted::unmounted();
    encode_into(b"x", &m.src.join("x.rts.png"), &[]);

    m.mount_ok(&[]);
    let pids = mount_pids(&m.mp);
    assert_eq!(pids.len(), 1, "one mount process: {pids:?}");
    m.unmount();
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pids[0])),
        "mount process {} still running after umount",
        pids[0]
    );

    m.mount_ok(&[]);
    let pids = mount_pids(&m.mp);
    assert_eq!(pids.len(), 1);
    // A busy mount (an open file) still goes away on SIGTERM.
    let held = File::open(m.path("x")).unwrap();
    // SAFETY: signalling the test's own mount process.
    unsafe {
        libc::kill(pids[0] as i32, libc::SIGTERM);
    }
    assert!(
        wait_until(Duration::from_secs(15), || !alive(pids[0])),
        "mount process still running after SIGTERM"
    );
    assert!(!is_mounted(&m.mp), "still mounted after SIGTERM");
    drop(held);
}

#[test]
fn foreground_mode_notifies_systemd_and_exits_0_on_sigint() {
    use std::os::unix::net::UnixDatagram;
    let m = Mounted::unmounted();
    let sock_path = m._tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let child = Command::new(bin())
        .args(["mount", "-f"])
        .arg(&m.src)
        .arg(&m.mp)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .expect("no READY=1 from the mount process");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(is_mounted(&m.mp), "READY=1 before the mount existed");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = wait_output(child, WAIT, "pixelrts mount -f");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!is_mounted(&m.mp));
}

#[test]
fn mount_fuse3_and_mount_helper_conventions() {
    let m = Mounted::unmounted();
    encode_into(b"helper", &m.src.join("h.rts.png"), &[]);
    // mount.fuse3 runs `pixelrts SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh from PATH
    // (mount(8) itself runs helpers with a fixed PATH; this is the step after it).
    let bindir = m._tmp.path().join("bin");
    std::fs::create_dir(&bindir).unwrap();
    std::os::unix::fs::symlink(bin(), bindir.join("pixelrts")).unwrap();
    if let Ok(fuse3) = which("mount.fuse3") {
        let mut c = Command::new(fuse3);
        c.arg(&m.src)
            .arg(&m.mp)
            .args(["-o", "ro,noatime,nofail,_netdev", "-t", "fuse.pixelrts"])
            .env("PATH", format!("{}:/usr/bin:/bin", bindir.display()));
        let out = run_limited(c, WAIT);
        assert!(out.status.success(), "mount.fuse3: {}", describe(&out));
        assert!(is_mounted(&m.mp));
        assert_eq!(std::fs::read(m.path("h")).unwrap(), b"helper");
        m.unmount();
    }
    // A /sbin/mount.fuse.pixelrts symlink: mount(8) runs it as `SOURCE MP [-n] -o OPTS`.
    let helper = bindir.join("mount.fuse.pixelrts");
    std::os::unix::fs::symlink(bin(), &helper).unwrap();
    let mut c = Command::new(&helper);
    c.arg(&m.src)
        .arg(&m.mp)
        .args(["-n", "-o", "rw,nodev,nosuid,x-systemd.automount"]);
    let out = run_limited(c, WAIT);
    assert!(
        out.status.success(),
        "mount.fuse.pixelrts: {}",
        describe(&out)
    );
    assert!(is_mounted(&m.mp));
    assert_eq!(list_dir(&m.mp), ["encode", "h"]);
    m.unmount();
    // mount -f (fake) mounts nothing.
    let mut c = Command::new(&helper);
    c.arg(&m.src).arg(&m.mp).args(["-f", "-o", "ro"]);
    let out = run_limited(c, WAIT);
    assert!(out.status.success(), "fake mount: {}", describe(&out));
    assert!(!is_mounted(&m.mp));
    // Bad calls in this convention are clear too.
    let out = pixelrts(&[
        m.src.as_os_str(),
        m.mp.as_os_str(),
        "-o".as_ref(),
        "nonsense".as_ref(),
    ]);
    assert_clean_failure(&out, "helper, bad option", "nonsense", &["unknown option"]);
}

fn which(name: &str) -> Result<PathBuf, ()> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

// ---- the encode directory -------------------------------------------------------------

/// Checks that `SOURCE/<rel>.rts.png` holds `data`: through the mount (view and encode/), with
/// `pixelrts decode --verify`, and with the independent Pillow decoder.
fn assert_encoded(m: &Mounted, rel: &str, data: &[u8]) {
    let png = m.src.join(format!("{rel}.rts.png"));
    assert!(png.is_file(), "{} was not written", png.display());
    assert!(
        std::fs::read(m.path(rel)).unwrap() == data,
        "{rel}: view bytes differ"
    );
    let via_encode = std::fs::read(m.path(&format!("encode/{rel}"))).unwrap();
    assert!(via_encode == data, "{rel}: encode/ bytes differ");
    let out_dir = tempfile::tempdir().unwrap();
    let decoded = out_dir.path().join("decoded");
    let out = pixelrts(&[
        "decode".as_ref(),
        png.as_os_str(),
        decoded.as_os_str(),
        "--verify".as_ref(),
    ]);
    assert!(out.status.success(), "decode {rel}: {}", describe(&out));
    assert!(
        std::fs::read(&decoded).unwrap() == data,
        "{rel}: pixelrts decode differs"
    );
    let indep = python_decode(&png, &out_dir.path().join("indep"));
    assert!(indep == data, "{rel}: independent decoder differs");
}

fn sh(script: &str, args: &[&Path]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).arg("sh").args(args);
    run_limited(c, WAIT)
}

#[test]
fn cp_cat_dd_tee_and_rsync_into_encode_end_as_the_right_pngs() {
    let m = Mounted::new(&[]);
    let inputs = m._tmp.path().join("in");
    std::fs::create_dir_all(inputs.join("tree/deeper")).unwrap();
    let big = prng_bytes(2_500_000, 21);
    let small = b"a few bytes\n".to_vec();
    std::fs::write(inputs.join("big"), &big).unwrap();
    std::fs::write(inputs.join("small"), &small).unwrap();
    std::fs::write(inputs.join("tree/a"), prng_bytes(70_000, 22)).unwrap();
    std::fs::write(inputs.join("tree/deeper/b"), b"").unwrap();
    std::fs::set_permissions(
        inputs.join("tree/a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let enc = m.path("encode");

    let out = sh("cp \"$1/big\" \"$2/cp_big\"", &[&inputs, &enc]);
    assert!(out.status.success(), "cp: {}", describe(&out));
    assert_encoded(&m, "cp_big", &big);

    let out = sh("cat \"$1/small\" > \"$2/catted\"", &[&inputs, &enc]);
    assert!(out.status.success(), "cat >: {}", describe(&out));
    assert_encoded(&m, "catted", &small);

    let out = sh(
        "dd if=\"$1/big\" of=\"$2/dd_big\" bs=65536 status=none",
        &[&inputs, &enc],
    );
    assert!(out.status.success(), "dd: {}", describe(&out));
    assert_encoded(&m, "dd_big", &big);

    let out = sh(
        "tee \"$2/teed\" < \"$1/small\" > /dev/null",
        &[&inputs, &enc],
    );
    assert!(out.status.success(), "tee: {}", describe(&out));
    assert_encoded(&m, "teed", &small);

    // Appending re-opens a committed file (copy-up) and commits the longer content.
    let out = sh("cat \"$1/small\" >> \"$2/catted\"", &[&inputs, &enc]);
    assert!(out.status.success(), "cat >>: {}", describe(&out));
    assert_encoded(&m, "catted", &[small.clone(), small.clone()].concat());

    // rsync -a writes ".name.XXXXXX", closes it, sets mode and times, then renames it.
    let mut c = Command::new("rsync");
    c.arg("-a")
        .arg(format!("{}/", inputs.join("tree").display()))
        .arg(m.path("encode/tree"));
    let out = run_limited(c, WAIT);
    assert!(out.status.success(), "rsync -a: {}", describe(&out));
    assert_encoded(&m, "tree/a", &std::fs::read(inputs.join("tree/a")).unwrap());
    assert_encoded(&m, "tree/deeper/b", b"");
    let mut names: Vec<String> = snapshot(&m.src)
        .into_iter()
        .map(|(p, _)| {
            p.strip_prefix(&m.src)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| !p.starts_with(".pixelrts-spool"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "catted.rts.png",
            "cp_big.rts.png",
            "dd_big.rts.png",
            "teed.rts.png",
            "tree/a.rts.png",
            "tree/deeper/b.rts.png"
        ],
        "no temporary names may be left in SOURCE"
    );
    // rsync's chmod/utimens after close show on the decoded file.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let orig = std::fs::metadata(inputs.join("tree/a")).unwrap();
    let shown = std::fs::metadata(m.path("tree/a")).unwrap();
    assert_eq!(shown.mtime(), orig.mtime(), "mtime of tree/a");
    assert_eq!(shown.permissions().mode() & 0o777, 0o550, "mode of tree/a");
    // ... and are in the PNG's metadata, so they survive a remount.
    m.unmount();
    m.mount_ok(&["ro"]);
    let shown = std::fs::metadata(m.path("tree/a")).unwrap();
    assert_eq!(shown.mtime(), orig.mtime(), "mtime of tree/a after remount");
    assert_eq!(
        shown.permissions().mode() & 0o777,
        0o550,
        "mode after remount"
    );
}

#[test]
fn setfattr_before_close_ends_up_in_the_png_metadata() {
    let m = Mounted::new(&[]);
    let f = m.path("encode/vmlinuz");
    // The setfattr processes are started before the file is opened: a process forked while
    // the file is open would close its copy of the descriptor, and every close commits.
    let script = r#"
import os, subprocess, sys
path = sys.argv[1]
helper = subprocess.Popen(
    ["sh", "-c", 'read go; setfattr -n user.pixelrts.type -v kernel "$1" && setfattr -n user.pixelrts.arch -v x86_64 "$1"; echo $?', "sh", path],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"\x7fELF pretend kernel")
helper.stdin.write(b"go\n"); helper.stdin.flush()
status = helper.stdout.readline().strip()
os.close(fd)
helper.wait()
assert status == b"0", status
"#;
    let mut c = Command::new("python3");
    c.arg("-c").arg(script).arg(&f);
    let out = run_limited(c, WAIT);
    assert!(out.status.success(), "{}", describe(&out));
    let png = std::fs::read(m.src.join("vmlinuz.rts.png")).unwrap();
    let meta = png_metadata(&png).unwrap();
    assert_eq!(meta["type"], "kernel", "{meta:?}");
    assert_eq!(meta["arch"], "x86_64", "{meta:?}");
    assert_encoded(&m, "vmlinuz", b"\x7fELF pretend kernel");
    let mut c = Command::new("getfattr");
    c.args(["--only-values", "-n", "user.pixelrts.type"])
        .arg(m.path("vmlinuz"));
    let out = run_limited(c, WAIT);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kernel",
        "{}",
        describe(&out)
    );
}

/// A tmpfs or bind mount made for a test, lazily unmounted on drop.

#[test]
fn an_encode_failure_is_reported_at_close_and_nothing_is_lost() {
    let m = Mounted::unmounted();
    let _tmpfs = SysMount::new(&m.src, "1m");
    let spool = m._tmp.path().join("spool");
    let spool_opt = format!("spool={}", spool.display());
    m.mount_ok(&[&spool_opt]);
    let data = prng_bytes(3_000_000, 33);
    let input = m._tmp.path().join("input");
    std::fs::write(&input, &data).unwrap();

    let out = sh("cp \"$1\" \"$2\"", &[&input, &m.path("encode/big")]);
    assert!(!out.status.success(), "cp must fail when SOURCE is full");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left"), "{}", describe(&out));
    // Nothing lost: still in encode/, in the spool, and not (half) in SOURCE.
    assert!(std::fs::read(m.path("encode/big")).unwrap() == data);
    assert!(std::fs::read(spool.join("data/big")).unwrap() == data);
    assert!(!m.src.join("big.rts.png").exists());
    assert!(!m.path("big").exists());
    assert!(
        snapshot(&m.src).is_empty(),
        "temporary files left in SOURCE"
    );

    // Pending spool files survive the unmount and are encoded when the next mount starts.
    m.unmount();
    _tmpfs.resize("20m");
    m.mount_ok(&[&spool_opt]);
    assert!(
        std::fs::read(m.path("big")).unwrap() == data,
        "pending file not encoded at mount"
    );
    let out_dir = tempfile::tempdir().unwrap();
    assert!(python_decode(&m.src.join("big.rts.png"), &out_dir.path().join("d")) == data);
    assert!(
        !spool.join("data/big").exists(),
        "spool copy kept after the commit"
    );
    m.unmount();
}

#[test]
fn a_read_only_source_fails_at_close_with_erofs() {
    let m = Mounted::unmounted();
    // A read-only bind mount of SOURCE onto itself.
    let bind = |args: &[&str]| {
        let out = Command::new("mount")
            .args(args)
            .arg(&m.src)
            .arg(&m.src)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount {args:?}: {}", describe(&out));
    };
    bind(&["--bind"]);
    let _bind = SysMount(m.src.clone());
    let out = Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&m.src)
        .output()
        .unwrap();
    assert!(out.status.success(), "remount ro: {}", describe(&out));
    let spool = m._tmp.path().join("spool");
    m.mount_ok(&[&format!("spool={}", spool.display())]);
    // cp reports close() errors (a shell redirection would not).
    let input = m._tmp.path().join("hello");
    std::fs::write(&input, b"hello").unwrap();
    let out = sh("cp \"$1\" \"$2\"", &[&input, &m.path("encode/x")]);
    assert!(
        !out.status.success(),
        "writing into a read-only SOURCE must fail at close"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read(m.path("encode/x")).unwrap(), b"hello");
    assert_eq!(std::fs::read(spool.join("data/x")).unwrap(), b"hello");
}

#[test]
fn a_dead_mount_is_reported_busy_and_can_be_unmounted() {
    let m = Mounted::new(&["ro"]);
    let pids = mount_pids(&m.mp);
    assert_eq!(pids.len(), 1);
    // SAFETY: killing the test's own mount process.
    unsafe {
        libc::kill(pids[0] as i32, libc::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(10), || !alive(pids[0])));
    assert!(
        is_mounted(&m.mp),
        "a killed FUSE process leaves its mount behind"
    );
    let out = m.mount(&["ro"]);
    assert_clean_failure(&out, "dead mount", "mnt", &["busy"]);
    m.unmount();
    m.mount_ok(&["ro"]);
    m.unmount();
    let out = pixelrts(&["umount".as_ref(), m.mp.as_os_str()]);
    assert_clean_failure(&out, "umount of nothing", "mnt", &["not mounted"]);
}

#[test]
fn encode_dir_namespace_operations() {
    let m = Mounted::new(&[]);
    let enc = m.path("encode");
    let mp = m.mp.clone();
    let src = m.src.clone();
    timed("namespace operations", WAIT, move || {
        let code = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
        std::fs::create_dir_all(enc.join("a/b")).unwrap();
        std::fs::write(enc.join("a/b/f"), b"nested").unwrap();
        assert_eq!(std::fs::read(mp.join("a/b/f")).unwrap(), b"nested");
        // Renaming a folder moves its committed PNGs in SOURCE.
        std::fs::rename(enc.join("a"), enc.join("z")).unwrap();
        assert_eq!(std::fs::read(enc.join("z/b/f")).unwrap(), b"nested");
        assert!(src.join("z/b/f.rts.png").is_file());
        assert!(!src.join("a/b/f.rts.png").exists());
        // Unlink forgets the encode entry; the PNG (the user's data) stays.
        std::fs::remove_file(enc.join("z/b/f")).unwrap();
        assert!(!enc.join("z/b/f").exists());
        assert!(src.join("z/b/f.rts.png").is_file());
        std::fs::remove_dir(enc.join("z/b")).unwrap();
        // Not supported here: special files, links; across view and encode.
        let fifo =
            std::ffi::CString::new(enc.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid C path.
        let r = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
        assert_eq!(
            (r, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EPERM))
        );
        assert_eq!(
            code(std::os::unix::fs::symlink("x", enc.join("l"))),
            Some(libc::EPERM)
        );
        std::fs::write(enc.join("g"), b"g").unwrap();
        // Owners (the tests run as root, so the mount does): root gives a committed file
        // away; its image records the owner, which the decoded view shows.
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(enc.join("g"), Some(12345), Some(54321)).unwrap();
        let st = std::fs::metadata(enc.join("g")).unwrap();
        assert_eq!((st.uid(), st.gid()), (12345, 54321));
        let st = std::fs::metadata(mp.join("g")).unwrap();
        assert_eq!((st.uid(), st.gid()), (12345, 54321), "the view's owner");
        let meta = png_metadata(&std::fs::read(src.join("g.rts.png")).unwrap()).unwrap();
        assert_eq!(
            (meta["file_uid"].as_u64(), meta["file_gid"].as_u64()),
            (Some(12345), Some(54321))
        );
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        std::os::unix::fs::chown(enc.join("g"), Some(uid), Some(gid)).unwrap();
        assert_eq!(
            code(std::fs::rename(enc.join("g"), mp.join("g2"))),
            Some(libc::EXDEV)
        );
        assert_eq!(
            code(std::fs::rename(mp.join("g"), enc.join("g3"))),
            Some(libc::EXDEV)
        );
        assert_eq!(code(std::fs::remove_dir(&enc)), Some(libc::EROFS));
        assert_eq!(
            code(std::fs::rename(&enc, mp.join("e2"))),
            Some(libc::EROFS)
        );
    });
}

/// Issue 11: compressed payloads show through the mount as plain files — ours (read at random
/// through the segment index) and the reference's (one zlib stream, decoded once) — and files
/// written into encode/ become compressed PNGs that Pillow + zlib.decompress read back.
#[test]
fn compressed_images_read_through_the_mount_and_encode_dir_compresses() {
    let m = Mounted::unmounted();
    let text: Vec<u8> = (0..3_000_000u32)
        .map(|i| {
            b"lorem ipsum dolor sit amet, consectetur\n"[(i % 40) as usize] ^ ((i / 4093) % 3) as u8
        })
        .collect();
    encode_into(
        &text,
        &m.src.join("ours.rts.png"),
        &["--segment-size", "64K"],
    );
    let meta = png_metadata(&std::fs::read(m.src.join("ours.rts.png")).unwrap()).unwrap();
    assert!(
        meta.contains_key("compression"),
        "text is compressed by default"
    );
    let theirs = &text[..700_000];
    std::fs::write(
        m.src.join("theirs.rts.png"),
        reference_compressed(theirs, &zlib(theirs), "zlib"),
    )
    .unwrap();
    m.mount_ok(&["cache_size=32M"]);
    assert_eq!(std::fs::read(m.path("ours")).unwrap(), text);
    assert_eq!(std::fs::read(m.path("theirs")).unwrap(), theirs);
    // A range in the middle, through pread.
    let f = std::fs::File::open(m.path("ours")).unwrap();
    let mut buf = vec![0u8; 10_000];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 1_234_567).unwrap();
    assert_eq!(&buf[..], &text[1_234_567..1_244_567]);
    drop(f);
    std::fs::write(m.path("encode/new.txt"), &text).unwrap();
    let png = m.src.join("new.txt.rts.png");
    let bytes = std::fs::read(&png).unwrap();
    assert!(png_metadata(&bytes).unwrap().contains_key("compression"));
    assert!(bytes.len() < text.len() / 4, "{} bytes", bytes.len());
    let tmp = tempfile::tempdir().unwrap();
    assert!(python_decode(&png, &tmp.path().join("py")) == text);
    assert_eq!(std::fs::read(m.path("new.txt")).unwrap(), text);
}

/// A loop device attached to a file and an ext4 mount of it; both undone on drop.
struct LoopMount {
    dev: String,
    at: PathBuf,
}

impl LoopMount {
    fn new(file: &Path, at: &Path) -> Self {
        let out = run_limited(
            {
                let mut c = Command::new("losetup");
                c.args(["-r", "-f", "--show"]).arg(file);
                c
            },
            WAIT,
        );
        assert!(out.status.success(), "losetup: {}", describe(&out));
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::create_dir_all(at).unwrap();
        let guard = LoopMount {
            dev,
            at: at.to_path_buf(),
        };
        let out = run_limited(
            {
                let mut c = Command::new("mount");
                c.args(["-t", "ext4", "-o", "ro,noload", &guard.dev])
                    .arg(at);
                c
            },
            WAIT,
        );
        assert!(out.status.success(), "mount -o loop: {}", describe(&out));
        guard
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Every regular file under `root`, relative path → contents; directories and symlinks by name.
fn tree(root: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel == Path::new("lost+found") {
                continue;
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p);
                out.push((rel, None));
            } else if t.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.push((rel, Some(target.into_os_string().into_encoded_bytes())));
            } else {
                out.push((rel, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

/// What people do with a mounted disk image: an ext4 image (`mkfs.ext4 -d` of a small tree of
/// text, binaries and zeros) encoded three ways — compressed payload as `encode` writes it,
/// raw seekable, compressed seekable — each loop-mounted read-only from the mount; the tree
/// inside equals the original. Skipped, saying why, where loop devices or mkfs.ext4 are absent.
#[test]
fn an_ext4_image_loop_mounts_through_the_mount() {
    if !Path::new("/dev/loop-control").exists() || which("losetup").is_err() {
        eprintln!("skipped: no loop devices here (/dev/loop-control or losetup missing)");
        return;
    }
    if which("mkfs.ext4").is_err() {
        eprintln!("skipped: mkfs.ext4 is not installed (Debian: e2fsprogs)");
        return;
    }
    let m = Mounted::unmounted();
    let work = m._tmp.path().join("work");
    let content = work.join("tree");
    std::fs::create_dir_all(content.join("lib/deep/er")).unwrap();
    std::fs::create_dir_all(content.join("doc")).unwrap();
    for i in 0..40u64 {
        let text: Vec<u8> = (0..(i * 997 % 20_000) as usize)
            .map(|k| b"the quick brown fox jumps over the lazy dog\n"[k % 44])
            .collect();
        std::fs::write(content.join(format!("doc/readme{i}.txt")), text).unwrap();
        std::fs::write(
            content.join(format!("lib/deep/er/lib{i}.so")),
            prng_bytes((i as usize * 7919) % 150_000, i),
        )
        .unwrap();
    }
    std::fs::write(content.join("lib/big.bin"), prng_bytes(3 << 20, 99)).unwrap();
    std::fs::write(content.join("zeros"), vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("lib/big.bin", content.join("link")).unwrap();
    let img = work.join("os.img");
    let out = run_limited(
        {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-d"])
                .arg(&content)
                .arg(&img)
                .arg("16M");
            c
        },
        WAIT,
    );
    assert!(out.status.success(), "mkfs.ext4: {}", describe(&out));
    let image = std::fs::read(&img).unwrap();
    let ways: [(&str, &[&str]); 3] = [
        ("default", &[]),
        (
            "raw-seekable",
            &["--compress", "none", "--layout", "seekable"],
        ),
        (
            "compressed-seekable",
            &["--layout", "seekable", "--segment-size", "64K"],
        ),
    ];
    for (name, extra) in ways {
        encode_into(&image, &m.src.join(format!("{name}.img.rts.png")), extra);
    }
    m.mount_ok(&["ro"]);
    let want = tree(&content);
    assert!(want.len() > 80, "{}", want.len());
    for (name, _) in ways {
        let served = m.path(&format!("{name}.img"));
        let at = work.join(format!("loop-{name}"));
        let lm = LoopMount::new(&served, &at);
        let got = timed("walk the loop-mounted tree", WAIT, {
            let at = lm.at.clone();
            move || tree(&at)
        });
        assert_eq!(got.len(), want.len(), "{name}: entries in the tree");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0, "{name}: names");
            assert!(g.1 == w.1, "{name}: {} differs", g.0.display());
        }
        drop(lm);
    }
}

impl Mounted {
    /// After the mount process died: waits for it to be gone, detaches its mount.
    fn clean_up_dead_mount(&self) {
        let pids = mount_pids(&self.mp);
        assert!(
            wait_until(WAIT, || pids.iter().all(|&p| !alive(p))),
            "the mount did not stop at its crash point"
        );
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q"])
            .arg(&self.mp)
            .status();
        assert!(wait_until(Duration::from_secs(10), || !is_mounted(
            &self.mp
        )));
    }
}

/// For a failure message: whether the PNG itself holds `data` (decoded outside the mount by
/// an independent decoder), and its metadata.
fn describe_png(png: &Path, data: &[u8]) -> String {
    let bytes = match std::fs::read(png) {
        Ok(b) => b,
        Err(e) => return format!("{}: {e}", png.display()),
    };
    let content = match independent_rust_decode(&bytes) {
        Ok(d) if d == data => "holds the written bytes".to_string(),
        Ok(d) => format!("holds {} other bytes", d.len()),
        Err(e) => format!("does not decode: {e}"),
    };
    let meta = png_metadata(&bytes).map(|m| Value::Object(m).to_string());
    format!(
        "the PNG ({} bytes) {content}; metadata {meta:?}",
        bytes.len()
    )
}

/// Every path under `dir` whose name marks a temporary file of an encode.
fn temp_litter(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temp_litter(&p));
        } else if e.file_name().to_string_lossy().contains(".pixelrts-tmp.") {
            out.push(p);
        }
    }
    out
}

/// Crash-point test: the mount kills itself (SIGKILL, `PIXELRTS_CRASH_AT`) at each step of
/// writing and encoding a file in `encode/`; the next mount must find the file either
/// published whole (in the view, every byte) or pending in `encode/` with every byte the
/// writer's acknowledged writes put there — never published truncated, never lost — and no
/// temporary file in SOURCE.
#[test]
fn every_crash_point_leaves_the_file_published_whole_or_pending() {
    const CHUNK: usize = 64 << 10;
    let data = prng_bytes(4 * CHUNK, 21);
    // (crash point, whether the next mount must have published the file)
    let points = [
        ("write:3", false),
        ("flush", false),
        ("closed", true),
        ("encode", true),
        ("fsynced", true),
        ("renamed", true),
        ("cleaned", true),
    ];
    for (point, published_expected) in points {
        let m = Mounted::unmounted();
        m.mount_ok_env(&[], &[("PIXELRTS_CRASH_AT", point)]);
        let target = m.path("encode/f.bin");
        let chunks = data.clone();
        // Acknowledged bytes: whole chunks whose write(2) returned.
        let acked = timed(point, WAIT, move || {
            use std::io::Write;
            let mut acked = 0;
            let Ok(mut f) = File::create(&target) else {
                return acked;
            };
            for c in chunks.chunks(CHUNK) {
                if f.write_all(c).is_err() {
                    return acked;
                }
                acked += c.len();
            }
            drop(f); // the close: flush, then the encode
            acked
        });
        m.clean_up_dead_mount();
        let litter = temp_litter(&m.src);
        m.mount_ok(&[]);
        assert!(
            temp_litter(&m.src).is_empty(),
            "{point}: temporary files left in SOURCE after the next mount (before it: {litter:?})"
        );
        let published = m.src.join("f.bin.rts.png").exists();
        assert_eq!(published, published_expected, "{point}: published?");
        if published {
            let got = std::fs::read(m.path("f.bin")).unwrap();
            if got != data {
                let first = got.iter().zip(&data).position(|(a, b)| a != b);
                panic!(
                    "{point}: published with other bytes than were written: {} bytes read, \
                     {} written, first difference at {first:?}; {}",
                    got.len(),
                    data.len(),
                    describe_png(&m.src.join("f.bin.rts.png"), &data)
                );
            }
        } else {
            assert!(
                !m.path("f.bin").exists(),
                "{point}: in the view unpublished"
            );
            let pending = std::fs::read(m.path("encode/f.bin"))
                .unwrap_or_else(|e| panic!("{point}: not pending either: {e}"));
            assert!(
                pending.len() >= acked && data.starts_with(&pending),
                "{point}: pending with {} bytes, {acked} acknowledged, or other bytes",
                pending.len()
            );
            // Pending files are never published on their own, not even by this mount.
            m.unmount();
            m.mount_ok(&[]);
            assert!(
                !m.src.join("f.bin.rts.png").exists(),
                "{point}: published later"
            );
            assert!(m.path("encode/f.bin").exists(), "{point}: lost");
        }
        m.unmount();
    }
}

/// Regression (issue 13): `dd` publishes nothing before its close — not after its
/// `ftruncate`, not while it writes — and a `truncate -s` without a handle publishes nothing.
#[test]
fn nothing_is_published_before_the_writers_close() {
    let m = Mounted::new(&[]);
    let png = m.src.join("y.bin.rts.png");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.path("encode/y.bin"))
        .unwrap();
    f.set_len(0).unwrap();
    assert!(!png.exists(), "published after ftruncate");
    f.write_all_at(b"first half ", 0).unwrap();
    assert!(!png.exists(), "published while being written");
    f.write_all_at(b"second half", 11).unwrap();
    drop(f);
    assert!(png.exists(), "not published by its close");
    assert_eq!(
        std::fs::read(m.path("y.bin")).unwrap(),
        b"first half second half"
    );
    // truncate(2) on the path: no handle, no close, nothing published (pending).
    let path = std::ffi::CString::new(m.path("encode/y.bin").into_os_string().into_encoded_bytes())
        .unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 5) }, 0);
    assert_eq!(std::fs::read(m.path("encode/y.bin")).unwrap(), b"first");
    assert_eq!(
        std::fs::read(m.path("y.bin")).unwrap(),
        b"first half second half",
        "a truncate without a close published"
    );
    // `truncate -s` (open, ftruncate, close) is a writer: its close publishes.
    let out = run_limited(
        {
            let mut c = Command::new("truncate");
            c.args(["-s", "3"]).arg(m.path("encode/y.bin"));
            c
        },
        WAIT,
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read(m.path("y.bin")).unwrap(), b"fir");
    m.unmount();
}

/// The conformance tools `.ci/run` installs (`cargo install pjdfstest fsx`).
fn conformance_tool(name: &str) -> PathBuf {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin").join(name));
    if let Some(p) = cargo_bin.filter(|p| p.exists()) {
        return p;
    }
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run .ci/run, or `cargo install {name}` (pjdfstest needs libacl1-dev)")
    })
}

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// pjdfstest (the Rust port) inside `encode/`, mounted as a shared mount would be
/// (`allow_other`), with its two unprivileged users; every failing case must be listed, with
/// its reason, in `tests/conformance/pjdfstest-expected-failures.txt`, and every listed case
/// must still fail (a fixed one is removed from the list).
/// Regression (pjdfstest `open::etxtbsy`, failing now and then under load): with the kernel's
/// atomic O_TRUNC, `open(O_RDONLY|O_TRUNC)` of a running executable reached the mount's open
/// with the truncation, and the kernel dropped the file's pages and size, before it refused
/// the open with ETXTBSY: a program still loading from the file died (SIGSEGV in execve), and
/// so does any process touching a mapping of the file then (SIGBUS).
#[test]
fn an_o_trunc_open_refused_with_etxtbsy_leaves_a_running_program_whole() {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::new(&[]);
    let original = std::fs::read("/bin/sleep").unwrap();
    let prog = m.path("encode/prog");
    std::fs::write(&prog, &original).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut running = Command::new(&prog).arg("30").spawn().unwrap();
    // A second victim that is deterministic: a mapping of the file, touched after the open.
    let touch = "import mmap, sys\n\
                 f = open(sys.argv[1], 'rb')\n\
                 m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n\
                 print(sum(m[i] for i in range(0, len(m), 4096)), flush=True)\n\
                 sys.stdin.readline()\n\
                 print(sum(m[i] for i in range(0, len(m), 4096)), flush=True)\n";
    let mut mapper = Command::new("python3")
        .args(["-c", touch])
        .arg(&prog)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(mapper.stdout.take().unwrap()).lines();
    let before = lines.next().unwrap().unwrap();
    let refused = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(&prog);
    mapper.stdin.take().unwrap().write_all(b"\n").unwrap();
    let after = lines.next().map(|l| l.unwrap());
    let mapper_status = mapper.wait().unwrap();
    let still_running = running.try_wait().unwrap().is_none();
    let _ = running.kill();
    let _ = running.wait();
    assert_eq!(
        refused.err().and_then(|e| e.raw_os_error()),
        Some(libc::ETXTBSY),
        "O_TRUNC open of a running program"
    );
    assert!(
        mapper_status.success() && after.as_deref() == Some(before.as_str()),
        "a mapping of the file broke at the refused open: {mapper_status}, {before} then {after:?}"
    );
    assert!(still_running, "the program died at the refused open");
    assert!(
        std::fs::read(&prog).unwrap() == original,
        "the refused open changed the file"
    );
}

#[test]
fn pjdfstest_in_the_encode_dir_fails_only_the_documented_cases() {
    let pjdfstest = conformance_tool("pjdfstest");
    let m = Mounted::new(&["allow_other"]);
    // The unprivileged users must reach the test folder.
    let mut perms = std::fs::metadata(m._tmp.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(m._tmp.path(), perms).unwrap();
    // Its report (with a backtrace per failure) goes to a file: more than a pipe holds.
    let report_dir = tempfile::tempdir().unwrap();
    let report = report_dir.path().join("pjdfstest.txt");
    let mut c = Command::new(pjdfstest);
    c.arg("-c")
        .arg(conformance_dir().join("pjdfstest.toml"))
        .arg("-p")
        .arg(m.path("encode"))
        .current_dir(m.path("encode"))
        .stdin(Stdio::null())
        .stdout(File::create(&report).unwrap())
        .stderr(File::create(report_dir.path().join("stderr.txt")).unwrap());
    let child = c.spawn().expect("cannot run pjdfstest");
    let out = wait_output(child, Duration::from_secs(600), "pjdfstest");
    let text = std::fs::read_to_string(&report).unwrap()
        + &std::fs::read_to_string(report_dir.path().join("stderr.txt")).unwrap();
    let mut passed = 0;
    let mut failed = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(name), Some("ok"), None) if name.contains("::") => passed += 1,
            (Some(name), Some("FAILED"), None) if name.contains("::") => {
                failed.insert(name.to_string());
            }
            _ => {}
        }
    }
    assert!(
        passed > 50,
        "pjdfstest did not run ({passed} passed): {}",
        describe(&out)
    );
    let expected: std::collections::BTreeSet<String> =
        std::fs::read_to_string(conformance_dir().join("pjdfstest-expected-failures.txt"))
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
    let new: Vec<_> = failed.difference(&expected).collect();
    let fixed: Vec<_> = expected.difference(&failed).collect();
    let details = |names: &[&String]| {
        names
            .iter()
            .map(|n| {
                let at = text.find(n.as_str()).unwrap_or(0);
                text[at..].lines().take(2).collect::<Vec<_>>().join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        new.is_empty(),
        "{} pjdfstest cases fail that are not expected to:\n{}",
        new.len(),
        details(&new)
    );
    assert!(
        fixed.is_empty(),
        "{} cases listed as expected failures pass now; remove them from the list: {fixed:?}",
        fixed.len()
    );
    eprintln!(
        "pjdfstest in encode/: {passed} ok, {} expected failures",
        failed.len()
    );
}

/// fsx with every operation the mount supports, mmap reads and writes included, 3 seeds of
/// 10,000 operations each in `encode/`; after each run the published image decodes to
/// exactly what fsx left in the file.
#[test]
fn fsx_in_the_encode_dir_with_mmap() {
    let fsx = conformance_tool("fsx");
    let m = Mounted::new(&[]);
    for seed in 1..=3 {
        let name = format!("fsx{seed}.bin");
        let artifacts = tempfile::tempdir().unwrap();
        let mut c = Command::new(&fsx);
        c.args(["-N", "10000", "-S", &seed.to_string(), "-q", "-f"])
            .arg(conformance_dir().join("fsx.toml"))
            .arg("-P")
            .arg(artifacts.path())
            .arg(m.path(&format!("encode/{name}")));
        let out = run_limited(c, Duration::from_secs(600));
        assert!(out.status.success(), "fsx seed {seed}: {}", describe(&out));
        let written = std::fs::read(m.path(&format!("encode/{name}"))).unwrap();
        let published = std::fs::read(m.path(&name)).unwrap();
        assert!(
            written == published,
            "fsx seed {seed}: the image holds {} bytes, the file {} (or other bytes)",
            published.len(),
            written.len()
        );
    }
}

/// Regression (issue 13, pjdfstest's report): times set with nanoseconds read back exactly —
/// on the pending file, on the committed one, in the decoded view, and after a remount.
#[test]
fn utimens_keeps_nanoseconds_through_the_commit_and_a_remount() {
    let m = Mounted::new(&[]);
    let when = std::time::UNIX_EPOCH + Duration::new(1_577_934_245, 123_456_789);
    std::fs::write(m.path("encode/t"), b"times").unwrap();
    let f = File::options()
        .write(true)
        .open(m.path("encode/t"))
        .unwrap();
    f.set_modified(when).unwrap();
    drop(f);
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(mtime(&m.path("encode/t")), when);
    assert_eq!(mtime(&m.path("t")), when);
    m.unmount();
    m.mount_ok(&[]);
    assert_eq!(mtime(&m.path("t")), when, "after a remount");
    m.unmount();
}

/// Byte `p` of version `v` of the file that `reads_never_mix_two_versions_of_a_replaced_file`
/// replaces: every 4 KiB page differs between versions and from its neighbours.
fn versioned_byte(v: u8, p: usize) -> u8 {
    ((p / 4096) as u32)
        .wrapping_mul(31)
        .wrapping_add(u32::from(v) * 101)
        .wrapping_add((p % 4096 / 512) as u32) as u8
}

/// The one version `buf`, read at `off`, belongs to (None: a mix, or none of them).
fn version_of(buf: &[u8], off: usize, versions: u8) -> Option<u8> {
    (1..=versions).find(|&v| {
        buf.iter()
            .enumerate()
            .all(|(i, &b)| b == versioned_byte(v, off + i))
    })
}

/// `versions` versions of a `len`-byte file (`versioned_byte`) encoded beside SOURCE, both
/// payload kinds (version 2 keeps pixels = bytes), and the first installed as `f.rts.png` in
/// SOURCE: the staged PNGs and that target.
fn stage_versions(m: &Mounted, versions: u8, len: usize) -> (Vec<PathBuf>, PathBuf) {
    let staged: Vec<PathBuf> = (1..=versions)
        .map(|v| {
            let data: Vec<u8> = (0..len).map(|p| versioned_byte(v, p)).collect();
            let png = m._tmp.path().join(format!("v{v}.rts.png"));
            let extra: &[&str] = if v == 2 { &["--compress", "none"] } else { &[] };
            encode_into(&data, &png, extra);
            png
        })
        .collect();
    let target = m.src.join("f.rts.png");
    std::fs::copy(&staged[0], &target).unwrap();
    (staged, target)
}

#[test]
fn reads_never_mix_two_versions_of_a_replaced_file() {
    // The issue's torn reads: a file replaced in SOURCE (a new PNG renamed over it) while
    // readers hold it open gave reads that mixed old and new pages. Each open must serve the
    // version it opened, for every read and for mmap; a new open sees the new version at once.
    const LEN: usize = 4 << 20;
    const VERSIONS: u8 = 3;
    let m = Mounted::unmounted();
    let (staged, target) = stage_versions(&m, VERSIONS, LEN);
    m.mount_ok(&["ro", "threads=8", "cache_size=8M"]);
    let file = m.path("f");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mixed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    use std::sync::atomic::Ordering::Relaxed;
    let readers: Vec<_> = (0..5u64)
        .map(|t| {
            let (file, stop, mixed, reads, seen) = (
                file.clone(),
                stop.clone(),
                mixed.clone(),
                reads.clone(),
                seen.clone(),
            );
            std::thread::spawn(move || {
                let mut s = (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut next = move || {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s
                };
                let mut buf = vec![0u8; 1 << 20];
                while !stop.load(Relaxed) {
                    let f = File::open(&file).unwrap();
                    let mut opened = None;
                    if t == 4 {
                        // SAFETY: a read-only private map of a file nobody truncates.
                        let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
                        assert_eq!(map.len(), LEN);
                        opened = version_of(&map, 0, VERSIONS);
                        reads.fetch_add(1, Relaxed);
                        if opened.is_none() {
                            mixed.fetch_add(1, Relaxed);
                        }
                    } else {
                        for _ in 0..16 {
                            let off = (next() % (LEN - buf.len()) as u64) as usize;
                            let n = f.read_at(&mut buf, off as u64).unwrap();
                            assert_eq!(n, buf.len());
                            reads.fetch_add(1, Relaxed);
                            let v = version_of(&buf, off, VERSIONS);
                            if v.is_none() || (opened.is_some() && v != opened) {
                                mixed.fetch_add(1, Relaxed);
                            }
                            opened = opened.or(v);
                        }
                    }
                    if let Some(v) = opened {
                        seen.lock().unwrap().insert(v);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut current = 1u8;
    let mut replaced = 0;
    let mut stale_opens = 0;
    while start.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(40));
        current = current % VERSIONS + 1;
        let tmp = m.src.join("f.rts.png.new");
        std::fs::copy(&staged[current as usize - 1], &tmp).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        replaced += 1;
        // A new open right after the rename sees the new version.
        let mut head = vec![0u8; 8192];
        File::open(&file).unwrap().read_at(&mut head, 0).unwrap();
        if version_of(&head, 0, VERSIONS) != Some(current) {
            stale_opens += 1;
        }
    }
    stop.store(true, Relaxed);
    for r in readers {
        r.join().expect("a reader failed");
    }
    let (mixed, reads) = (mixed.load(Relaxed), reads.load(Relaxed));
    let seen = seen.lock().unwrap().clone();
    eprintln!("{reads} reads, {replaced} replacements, versions seen {seen:?}");
    assert_eq!(mixed, 0, "{mixed} of {reads} reads mixed versions");
    assert_eq!(
        stale_opens, 0,
        "opens after a rename that saw an older version"
    );
    assert!(
        seen.len() >= 2,
        "the readers saw only {seen:?}: the test did not test"
    );
}

#[test]
fn estale_on_open_of_a_file_replaced_in_a_tight_loop() {
    // The soak's ESTALE: an open of a name whose PNG was replaced found its inode's version
    // gone and answered ESTALE; the kernel looks the name up again once, and when another
    // replace landed between that lookup and the open, the program got the error. A local
    // filesystem never fails that open: it opens the file the lookup found. Here a replacer
    // renames new copies over the name without pause while openers open and read it whole.
    const LEN: usize = 96 << 10;
    const VERSIONS: u8 = 2;
    let m = Mounted::unmounted();
    let (staged, target) = stage_versions(&m, VERSIONS, LEN);
    m.mount_ok(&["ro", "threads=8"]);
    let file = m.path("f");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    use std::sync::atomic::Ordering::Relaxed;
    let openers: Vec<_> = (0..6)
        .map(|_| {
            let (file, stop) = (file.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut opens, mut failures, mut wrong) = (0u64, Vec::new(), 0u64);
                let mut buf = Vec::with_capacity(LEN);
                while !stop.load(Relaxed) {
                    opens += 1;
                    buf.clear();
                    match File::open(&file).and_then(|mut f| f.read_to_end(&mut buf)) {
                        Ok(_) if buf.len() == LEN && version_of(&buf, 0, VERSIONS).is_some() => {}
                        Ok(_) => wrong += 1,
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (opens, failures, wrong)
            })
        })
        .collect();
    let start = Instant::now();
    let mut replaced = 0u64;
    while start.elapsed() < Duration::from_secs(4) {
        let tmp = m.src.join("f.rts.png.new");
        std::fs::copy(&staged[(replaced % 2) as usize], &tmp).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        replaced += 1;
    }
    stop.store(true, Relaxed);
    let (mut opens, mut failures, mut wrong) = (0, Vec::new(), 0);
    for t in openers {
        let (o, f, w) = t.join().expect("an opener panicked");
        opens += o;
        failures.extend(f);
        wrong += w;
    }
    eprintln!("{opens} opens, {replaced} replacements");
    assert_eq!(
        wrong, 0,
        "{wrong} of {opens} opens read something else than one version"
    );
    assert!(
        failures.is_empty(),
        "{} of {opens} opens failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        opens > 100 && replaced > 100,
        "too few opens or replacements to test"
    );
}

/// The root's `user.pixelrts.stats` as `pixelrts stats --json` prints it.
fn mount_stats(m: &Mounted) -> Value {
    let out = pixelrts(&["stats".as_ref(), m.mp.as_os_str(), "--json".as_ref()]);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stats_on_the_mount_root_count_reads_cache_errors_and_encodes() {
    let m = Mounted::unmounted();
    let data = text_with_random_stretches(3 << 20, 7);
    encode_into(&data, &m.src.join("t.rts.png"), &["--layout", "seekable"]);
    let mut damaged = std::fs::read(m.src.join("t.rts.png")).unwrap();
    let n = damaged.len();
    damaged[n / 2] ^= 0xff; // inside the pixel data
    std::fs::write(m.src.join("damaged.rts.png"), &damaged).unwrap();
    m.mount_ok(&[]);

    let before = mount_stats(&m);
    assert_eq!(before["reads"], 0, "{before:#}");
    assert_eq!(before["read_latency_us"]["p50"], Value::Null);
    for key in ["bytes_served", "bytes_inflated"] {
        assert!(before[key].is_u64(), "{key}: {before:#}");
    }
    for key in [
        "hits",
        "misses",
        "evictions",
        "bytes_held",
        "entries",
        "budget",
    ] {
        assert!(before["cache"][key].is_u64(), "cache.{key}: {before:#}");
    }

    assert_eq!(std::fs::read(m.path("t")).unwrap(), data);
    let f = File::open(m.path("t")).unwrap();
    let after_read = mount_stats(&m);
    assert_eq!(after_read["open_files"]["decoded"], 1, "{after_read:#}");
    drop(f);
    assert!(after_read["reads"].as_u64().unwrap() >= 1, "{after_read:#}");
    assert!(
        after_read["bytes_served"].as_u64().unwrap() >= data.len() as u64,
        "{after_read:#}"
    );
    assert!(after_read["bytes_inflated"].as_u64().unwrap() > 0);
    assert!(after_read["cache"]["misses"].as_u64().unwrap() > 0);
    assert!(after_read["read_latency_us"]["p50"].as_u64().unwrap() > 0);
    // Reading it again, past the kernel's page cache (dropped for this file), hits the
    // mount's cache.
    let f = File::open(m.path("t")).unwrap();
    // SAFETY: a valid descriptor; advice only.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    let mut again_bytes = vec![0u8; data.len()];
    f.read_exact_at(&mut again_bytes, 0).unwrap();
    assert!(again_bytes == data);
    drop(f);
    let again = mount_stats(&m);
    assert!(
        again["cache"]["hits"].as_u64() > after_read["cache"]["hits"].as_u64(),
        "{again:#}"
    );

    // A damaged image: its read fails with EIO, counted by errno.
    let err = std::fs::read(m.path("damaged")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let errs = mount_stats(&m);
    assert!(errs["errors"]["EIO"].as_u64().unwrap() >= 1, "{errs:#}");

    // A file written into encode/ and closed: one encode done, none pending.
    std::fs::write(m.path("encode/new.bin"), b"encode me").unwrap();
    let enc = mount_stats(&m);
    assert_eq!(enc["encodes"]["done"], 1, "{enc:#}");
    assert_eq!(enc["encodes"]["pending"], 0, "{enc:#}");
    assert_eq!(enc["encodes"]["failed"], 0, "{enc:#}");

    // getfattr reads the same attribute (size query, then the value).
    let out = Command::new("getfattr")
        .args(["-n", "user.pixelrts.stats", "--only-values"])
        .arg(&m.mp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["reads"].as_u64() >= enc["reads"].as_u64());

    // The text form and --watch.
    let out = pixelrts(&["stats".as_ref(), m.mp.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("encodes      done 1"), "{text}");
    assert!(text.contains("EIO"), "{text}");
    let child = Command::new(bin())
        .args(["stats", "--json", "--watch", "0.2"])
        .arg(&m.mp)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = wait_output(child, WAIT, "pixelrts stats --watch");
    let samples = String::from_utf8_lossy(&out.stdout);
    assert!(samples.lines().count() >= 2, "{samples}");
    for line in samples.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }

    // Not a pixelrts mount: a clear error.
    let out = pixelrts(&["stats".as_ref(), m.src.as_os_str()]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a pixelrts mount"),
        "{}",
        describe(&out)
    );
}

/// Under systemd (`JOURNAL_STREAM` naming stderr), records go to the journal's socket with
/// structured fields; a fake journal socket stands in for journald.
#[test]
fn under_systemd_the_mount_logs_structured_records_to_the_journal() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixDatagram;
    const JOURNAL: &str = "/run/systemd/journal/socket";
    if Path::new(JOURNAL).exists() {
        eprintln!("skipped: {JOURNAL} exists (a real journald runs here), so the test cannot stand in for it");
        return;
    }
    let m = Mounted::unmounted();
    let data = text_with_random_stretches(1 << 20, 3);
    encode_into(&data, &m.src.join("t.rts.png"), &["--layout", "seekable"]);
    let mut damaged = std::fs::read(m.src.join("t.rts.png")).unwrap();
    let n = damaged.len();
    damaged[n / 2] ^= 0xff;
    std::fs::write(m.src.join("damaged.rts.png"), &damaged).unwrap();

    std::fs::create_dir_all("/run/systemd/journal").unwrap();
    struct Remove;
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(JOURNAL);
            let _ = std::fs::remove_dir("/run/systemd/journal");
            let _ = std::fs::remove_dir("/run/systemd");
        }
    }
    let sock = UnixDatagram::bind(JOURNAL).unwrap();
    let _remove = Remove;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let stderr_path = m._tmp.path().join("stderr");
    let stderr = File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    let child = Command::new(bin())
        .args(["mount", "-f"])
        .arg(&m.src)
        .arg(&m.mp)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("PIXELRTS_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    assert!(
        wait_until(WAIT, || is_mounted(&m.mp)),
        "not mounted: {}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    assert_eq!(std::fs::read(m.path("t")).unwrap(), data);
    let err = std::fs::read(m.path("damaged")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let out = pixelrts(&["umount".as_ref(), m.mp.as_os_str()]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = wait_output(child, WAIT, "pixelrts mount -f");
    assert_eq!(out.status.code(), Some(0));

    // Journal export format: FIELD=value lines, or FIELD\n<u64 length><bytes>\n.
    let mut records = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = sock.recv(&mut buf) {
        let mut fields = std::collections::HashMap::new();
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line = &rest[..line_end];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                fields.insert(
                    String::from_utf8_lossy(&line[..eq]).into_owned(),
                    String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
                );
                rest = &rest[(line_end + 1).min(rest.len())..];
            } else {
                let name = String::from_utf8_lossy(line).into_owned();
                let body = &rest[line_end + 1..];
                let len = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
                fields.insert(
                    name,
                    String::from_utf8_lossy(&body[8..8 + len]).into_owned(),
                );
                rest = &body[(8 + len + 1).min(body.len())..];
            }
        }
        if !fields.is_empty() {
            records.push(fields);
        }
    }
    let mp = std::fs::canonicalize(&m.mp).unwrap();
    let find = |words: &str| {
        records
            .iter()
            .find(|r| r.get("MESSAGE").is_some_and(|msg| msg.contains(words)))
            .unwrap_or_else(|| panic!("no record with {words:?} in {records:#?}"))
    };
    let mounted = find("mounted");
    assert_eq!(mounted["PRIORITY"], "6", "{mounted:?}"); // info
    assert_eq!(mounted["MOUNTPOINT"], mp.to_string_lossy(), "{mounted:?}");
    assert_eq!(mounted["SYSLOG_IDENTIFIER"], "pixelrts");
    let failed = records
        .iter()
        .find(|r| r.get("ERRNO").map(String::as_str) == Some("5"))
        .unwrap_or_else(|| panic!("no record with ERRNO=5 in {records:#?}"));
    assert_eq!(failed["PRIORITY"], "4", "{failed:?}"); // warning
    assert!(failed["FILE"].contains("damaged.rts.png"), "{failed:?}");
    let unmounted = find("unmounted");
    assert_eq!(unmounted["MOUNTPOINT"], mp.to_string_lossy());
    // Nothing of it went to stderr as well.
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!text.contains("mounted"), "{text}");
}

/// `-o disk_cache=DIR`: small reads of a compressed image through the mount leave its decoded
/// segments in DIR (a private folder, created); after a remount the same reads match the
/// original, and a folder others may write is refused with a clear error.
#[test]
fn disk_cache_keeps_segments_across_mounts_and_refuses_a_shared_folder() {
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
    let m = Mounted::unmounted();
    let data = text_with_random_stretches(3 << 20, 41);
    encode_into(&data, &m.src.join("t.bin.rts.png"), &["--compress", "zlib"]);
    let cache = m._tmp.path().join("segcache");
    let opt = format!("disk_cache={},ro", cache.display());
    let small_reads = |m: &Mounted| {
        let f = std::fs::File::open(m.path("t.bin")).unwrap();
        for k in 0..40u64 {
            let at = (k * 77_777) % (data.len() as u64 - 512);
            let mut buf = [0u8; 512];
            f.read_exact_at(&mut buf, at).unwrap();
            assert!(buf[..] == data[at as usize..at as usize + 512], "at {at}");
        }
    };
    m.mount_ok(&[&opt]);
    small_reads(&m);
    m.unmount();
    let mode = std::fs::metadata(&cache).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "the folder is private");
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one segment file");
    assert!(
        files[0].metadata().unwrap().blocks() > 0,
        "segments were written"
    );
    // Damage the image's pixels all over (its index and metadata stay intact): read through
    // the mount alone, some of those reads fail now; with the disk cache every one is served
    // the copy the first mount left, checked against the image's segment CRCs.
    let png = m.src.join("t.bin.rts.png");
    let mut bytes = std::fs::read(&png).unwrap();
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if &bytes[at + 4..at + 8] == b"IDAT" {
            for x in (at + 8 + 100..at + 8 + len).step_by(20_000) {
                bytes[x] ^= 0x5a;
            }
        }
        at += 12 + len;
    }
    std::fs::write(&png, &bytes).unwrap();
    m.mount_ok(&["ro"]);
    let f = std::fs::File::open(m.path("t.bin")).unwrap();
    let failed = (0..40u64)
        .filter(|k| {
            let at = (k * 77_777) % (data.len() as u64 - 512);
            f.read_exact_at(&mut [0u8; 512], at).is_err()
        })
        .count();
    drop(f);
    assert!(failed > 0, "the damage fails reads without the disk cache");
    m.unmount();
    m.mount_ok(&[&opt]);
    small_reads(&m);
    m.unmount();

    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = m.mount(&[&opt]);
    assert_clean_failure(
        &out,
        "shared disk_cache",
        "segcache",
        &["writable by others"],
    );
}
