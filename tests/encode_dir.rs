//! The encode directory core (`pixelrts::fs::encode_dir`) on real files, without FUSE.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pixelrts::container::Container;
use pixelrts::decode::decode_to_vec;
use pixelrts::fs::encode_dir::{EncodeDir, EncodeDirOptions, EntryKind, EntryState, Opened};
use serde_json::Value;

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn opts() -> EncodeDirOptions {
    EncodeDirOptions {
        threads: Some(1),
        ..Default::default()
    }
}

/// SOURCE in a tempdir with the spool at its default place inside SOURCE.
struct Setup {
    _tmp: tempfile::TempDir,
    source: PathBuf,
    spool: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        fs::create_dir(&source).unwrap();
        let spool = source.join(".pixelrts-spool");
        Setup {
            _tmp: tmp,
            source,
            spool,
        }
    }

    fn open(&self) -> EncodeDir {
        EncodeDir::new(&self.source, &self.spool, opts()).unwrap()
    }

    fn png(&self, rel: &str) -> PathBuf {
        self.source.join(format!("{rel}.rts.png"))
    }

    fn decoded(&self, rel: &str) -> Vec<u8> {
        decode_to_vec(&fs::read(self.png(rel)).unwrap()).unwrap()
    }

    fn metadata(&self, rel: &str) -> serde_json::Map<String, Value> {
        Container::open(&self.png(rel)).unwrap().metadata.map
    }
}

fn sample(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|i| {
            if i % 5000 < 2000 {
                (i % 251) as u8
            } else {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            }
        })
        .collect()
}

/// Writes a whole file through create/write/flush/release.
fn put(d: &EncodeDir, rel: &str, data: &[u8]) {
    let (h, _) = d.create(p(rel), 0o644).unwrap();
    for (i, chunk) in data.chunks(100_000).enumerate() {
        assert_eq!(
            d.write(h, (i * 100_000) as u64, chunk).unwrap(),
            chunk.len()
        );
    }
    d.flush(h).unwrap();
    d.release(h).unwrap();
}

fn handle(o: Opened) -> u64 {
    match o {
        Opened::Handle(h) => h,
        other => panic!("expected a handle, got {other:?}"),
    }
}

/// Files directly in `dir` (not recursing), for "nothing left behind" checks.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn encode_dir_is_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<EncodeDir>();
}

#[test]
fn writes_at_offsets_truncate_append_then_flush_encodes() {
    let s = Setup::new();
    let d = s.open();
    let (h, attr) = d.create(p("a.bin"), 0o640).unwrap();
    assert_eq!(attr.kind, EntryKind::File);
    assert_eq!(attr.state, EntryState::Spooled);
    assert_eq!(attr.mode, 0o640);

    let mut want = vec![0u8; 300_000];
    // Out of order and sparse: a hole stays zero.
    let tail = sample(50_000, 1);
    d.write(h, 250_000, &tail).unwrap();
    want[250_000..].copy_from_slice(&tail);
    let head = sample(10_000, 2);
    d.write(h, 0, &head).unwrap();
    want[..10_000].copy_from_slice(&head);
    // Truncate then append.
    d.setattr(p("a.bin"), Some(280_000), None, None).unwrap();
    want.truncate(280_000);
    let more = sample(12_345, 3);
    d.write(h, 280_000, &more).unwrap();
    want.extend_from_slice(&more);

    d.setxattr(p("a.bin"), "user.pixelrts.type", b"kernel")
        .unwrap();
    d.setxattr(p("a.bin"), "user.pixelrts.note", b"x y")
        .unwrap();
    d.removexattr(p("a.bin"), "user.pixelrts.note").unwrap();
    assert_eq!(
        d.getxattr(p("a.bin"), "user.pixelrts.type").unwrap(),
        b"kernel"
    );
    assert_eq!(
        d.listxattr(p("a.bin")).unwrap(),
        vec!["user.pixelrts.type".to_string()]
    );

    // Reads see the spool.
    let mut buf = vec![0u8; 20_000];
    assert_eq!(d.read(h, 5_000, &mut buf).unwrap(), 20_000);
    assert_eq!(buf, want[5_000..25_000]);
    assert_eq!(d.getattr(p("a.bin")).unwrap().size, want.len() as u64);

    d.flush(h).unwrap();
    assert_eq!(s.decoded("a.bin"), want);
    let meta = s.metadata("a.bin");
    assert_eq!(meta["type"], "kernel");
    assert!(meta.get("note").is_none());
    assert_eq!(meta["file_mode"], 0o640);
    assert!(meta["file_mtime"].as_i64().unwrap() > 0);
    assert!(meta.get("sidecar").is_none());
    assert!(!s.source.join("a.bin.rts.png.meta.json").exists());

    let attr = d.getattr(p("a.bin")).unwrap();
    assert_eq!(
        attr.state,
        EntryState::Committed {
            png: s.png("a.bin")
        }
    );
    // The spool copy lives while the handle is open, and goes with the last release.
    assert!(s.spool.join("data/a.bin").exists());
    d.release(h).unwrap();
    assert!(!s.spool.join("data/a.bin").exists());
    assert!(!s.spool.join("meta/a.bin.json").exists());
    let attr = d.getattr(p("a.bin")).unwrap();
    assert_eq!(attr.size, want.len() as u64);
    assert_eq!(attr.mode, 0o640);
    // Committed entries answer xattrs from the PNG, and are read-only there.
    assert_eq!(
        d.getxattr(p("a.bin"), "user.pixelrts.type").unwrap(),
        b"kernel"
    );
    assert_eq!(
        d.getxattr(p("a.bin"), "user.pixelrts.data_size").unwrap(),
        want.len().to_string().as_bytes()
    );
    let list = d.listxattr(p("a.bin")).unwrap();
    assert!(list.contains(&"user.pixelrts.metadata".to_string()));
    assert!(list.contains(&"user.pixelrts.file_mode".to_string()));
    let err = d
        .setxattr(p("a.bin"), "user.pixelrts.type", b"x")
        .unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
    assert_eq!(
        d.removexattr(p("a.bin"), "user.pixelrts.type")
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    // A read-only open of a committed entry points at the PNG.
    assert_eq!(
        d.open(p("a.bin"), false, false).unwrap(),
        Opened::Committed(s.png("a.bin"))
    );
    // Flushing again without changes encodes nothing (the PNG is untouched).
    let mtime = fs::metadata(s.png("a.bin")).unwrap().modified().unwrap();
    let h = handle(d.open(p("a.bin"), true, false).unwrap());
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(
        fs::metadata(s.png("a.bin")).unwrap().modified().unwrap(),
        mtime
    );
}

#[test]
fn empty_file_and_nested_folders_encode() {
    let s = Setup::new();
    let d = s.open();
    d.mkdir(p("a"), 0o755).unwrap();
    d.mkdir(p("a/b"), 0o700).unwrap();
    assert_eq!(d.getattr(p("a/b")).unwrap().mode, 0o700);
    let (h, _) = d.create(p("a/b/empty"), 0o600).unwrap();
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("a/b/empty"), Vec::<u8>::new());
    let listing = d.list(p("a/b")).unwrap();
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].0, "empty");
    assert_eq!(listing[0].1.size, 0);
    let root: Vec<_> = d.list(p("")).unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(root, vec!["a"]);
    // The spool never ends up in a commit, nor in the listing.
    assert!(!s.source.join(".pixelrts-spool.rts.png").exists());
}

#[test]
fn rsync_pattern_temp_name_attributes_rename() {
    let s = Setup::new();
    let d = s.open();
    d.mkdir(p("dir"), 0o755).unwrap();
    let data = sample(200_000, 9);
    put(&d, "dir/.x.AbCdEf", &data);
    assert!(s.png("dir/.x.AbCdEf").exists());
    assert_ne!(s.metadata("dir/.x.AbCdEf")["file_mode"], 0o751);
    // A reader that has the PNG open keeps reading it while the metadata is rewritten.
    let opened = d.open(p("dir/.x.AbCdEf"), false, false).unwrap();
    let Opened::Committed(png) = opened else {
        panic!("read-only open of a committed entry: {opened:?}")
    };
    let reader = pixelrts::reader::Reader::open(&png, &Default::default()).unwrap();
    // rsync sets mtime (with sub-second precision) and mode after close, before the rename.
    let when = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let attr = d
        .setattr(
            p("dir/.x.AbCdEf"),
            None,
            Some(0o751),
            Some(when + Duration::from_nanos(250_000_000)),
        )
        .unwrap();
    assert_eq!(attr.mtime, when + Duration::from_nanos(250_000_000));
    let attr = d
        .setattr(p("dir/.x.AbCdEf"), None, None, Some(when))
        .unwrap();
    assert_eq!(attr.mode, 0o751);
    assert_eq!(attr.mtime, when);
    d.rename(p("dir/.x.AbCdEf"), p("dir/x"), false).unwrap();
    assert!(s.png("dir/x").exists());
    assert_eq!(names(&s.source.join("dir")), vec!["x.rts.png"]);
    assert_eq!(s.decoded("dir/x"), data);
    let mut buf = vec![0u8; 5000];
    reader.read_exact_at(150_000, &mut buf).unwrap();
    assert_eq!(buf, data[150_000..155_000]);
    // The decoded view shows the recorded attributes: they are the ones rsync set.
    let meta = s.metadata("dir/x");
    assert_eq!(meta["file_mode"], 0o751);
    assert_eq!(meta["file_mtime"], 1_500_000_000);
    assert_eq!(meta["data_size"], data.len());
    // chmod/utimens of a committed entry went to the PNG itself.
    let m = fs::metadata(s.png("dir/x")).unwrap();
    assert_eq!(m.modified().unwrap(), when);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(m.permissions().mode() & 0o7777, 0o751);
    let attr = d.getattr(p("dir/x")).unwrap();
    assert_eq!(attr.mode, 0o751);
    assert_eq!(attr.mtime, when);
    assert_eq!(
        d.getattr(p("dir/.x.AbCdEf")).unwrap_err().errno(),
        libc::ENOENT
    );
}

#[test]
fn attributes_set_while_spooled_are_recorded() {
    let s = Setup::new();
    let d = s.open();
    let (h, _) = d.create(p("f"), 0o644).unwrap();
    d.write(h, 0, b"hello").unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    d.setattr(p("f"), None, Some(0o600), Some(when)).unwrap();
    d.flush(h).unwrap();
    d.release(h).unwrap();
    let meta = s.metadata("f");
    assert_eq!(meta["file_mode"], 0o600);
    assert_eq!(meta["file_mtime"], 1_234_567_890);
    assert_eq!(s.decoded("f"), b"hello");
}

#[test]
fn copy_up_and_truncating_open_of_committed_entries() {
    let s = Setup::new();
    let d = s.open();
    let data = sample(300_000, 4);
    put(&d, "c", &data);
    d.setxattr(p("c"), "user.pixelrts.type", b"x").unwrap_err();

    // Copy-up: the decoded bytes are in the new spool file; patch the middle.
    let h = handle(d.open(p("c"), true, false).unwrap());
    assert_eq!(d.getattr(p("c")).unwrap().size, data.len() as u64);
    let mut buf = vec![0u8; 1000];
    assert_eq!(d.read(h, 123_456, &mut buf).unwrap(), 1000);
    assert_eq!(buf, data[123_456..124_456]);
    d.write(h, 100_000, b"PATCH").unwrap();
    assert_eq!(d.getattr(p("c")).unwrap().state, EntryState::Spooled);
    d.flush(h).unwrap();
    d.release(h).unwrap();
    let mut want = data.clone();
    want[100_000..100_005].copy_from_slice(b"PATCH");
    assert_eq!(s.decoded("c"), want);
    assert!(!s.spool.join("data/c").exists());
    assert_eq!(names(&s.spool.join("tmp")), Vec::<String>::new());

    // Truncating open: a new empty file.
    let h = handle(d.open(p("c"), true, true).unwrap());
    assert_eq!(d.getattr(p("c")).unwrap().size, 0);
    d.write(h, 0, b"short").unwrap();
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("c"), b"short");

    // `truncate -s` with no handle open publishes nothing: the file is pending until a handle
    // that writes it is closed (a truncate while it is open counts as its writing).
    let attr = d.setattr(p("c"), Some(3), None, None).unwrap();
    assert_eq!(attr.size, 3);
    assert_eq!(attr.state, EntryState::Spooled);
    assert_eq!(s.decoded("c"), b"short");
    let h = handle(d.open(p("c"), true, false).unwrap());
    let attr = d.setattr(p("c"), Some(10), None, None).unwrap();
    assert_eq!(attr.size, 10);
    assert_eq!(s.decoded("c"), b"short");
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("c"), b"sho\0\0\0\0\0\0\0");
}

/// A write open of a committed entry copies it up only when the handle is used: `O_TRUNC`
/// (an open, then a truncate to 0, as the kernel sends it) decodes nothing; an unlink or a
/// rename over the entry leaves an unused handle the bytes it opened.
#[test]
fn a_write_open_copies_up_only_when_the_handle_is_used() {
    let s = Setup::new();
    let d = s.open();
    let data = sample(300_000, 6);
    put(&d, "c", &data);

    let h = handle(d.open(p("c"), true, false).unwrap());
    assert!(!s.spool.join("data/c").exists(), "copied up at the open");
    assert_eq!(d.getattr(p("c")).unwrap().size, data.len() as u64);
    d.setattr(p("c"), Some(0), None, None).unwrap();
    assert_eq!(fs::metadata(s.spool.join("data/c")).unwrap().len(), 0);
    d.write(h, 0, b"new").unwrap();
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("c"), b"new");

    // Unlinked, then read through a handle that had not used its file yet.
    let h = handle(d.open(p("c"), true, false).unwrap());
    d.unlink(p("c")).unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(d.read(h, 0, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"new");
    d.release(h).unwrap();

    // Replaced by a rename, likewise.
    put(&d, "e", &data);
    let h = handle(d.open(p("e"), true, false).unwrap());
    put(&d, "f", b"other");
    d.rename(p("f"), p("e"), false).unwrap();
    let mut buf = vec![0u8; data.len()];
    assert_eq!(d.read(h, 0, &mut buf).unwrap(), data.len());
    assert!(buf == data, "the replaced file's bytes");
    d.release(h).unwrap();
    assert_eq!(s.decoded("e"), b"other");
    assert_eq!(names(&s.spool.join("tmp")), Vec::<String>::new());
}

#[test]
fn rename_cases() {
    let s = Setup::new();
    let d = s.open();
    // Committed over committed: the PNG replaces the other one.
    put(&d, "a", b"AAAA");
    put(&d, "b", b"BB");
    d.rename(p("a"), p("b"), false).unwrap();
    assert_eq!(s.decoded("b"), b"AAAA");
    assert!(!s.png("a").exists());
    assert_eq!(d.getattr(p("a")).unwrap_err().errno(), libc::ENOENT);

    // Spooled over committed: the old PNG stays until the moved entry commits.
    let (h, _) = d.create(p("s"), 0o644).unwrap();
    d.write(h, 0, b"spooled").unwrap();
    d.setxattr(p("s"), "user.pixelrts.k", b"v").unwrap();
    d.rename(p("s"), p("b"), false).unwrap();
    assert_eq!(d.getattr(p("b")).unwrap().state, EntryState::Spooled);
    assert_eq!(s.decoded("b"), b"AAAA");
    assert!(s.spool.join("data/b").exists());
    assert!(s.spool.join("meta/b.json").exists());
    assert!(!s.spool.join("data/s").exists());
    assert!(!s.spool.join("meta/s.json").exists());
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("b"), b"spooled");
    assert_eq!(s.metadata("b")["k"], "v");
    assert!(!s.png("s").exists());

    // Spooled over spooled: the target's spool data and meta go.
    let (h1, _) = d.create(p("p"), 0o644).unwrap();
    d.write(h1, 0, b"one").unwrap();
    let (h2, _) = d.create(p("q"), 0o644).unwrap();
    d.write(h2, 0, b"two").unwrap();
    d.setxattr(p("q"), "user.pixelrts.k", b"q").unwrap();
    d.rename(p("p"), p("q"), false).unwrap();
    assert!(!s.spool.join("meta/q.json").exists());
    d.flush(h1).unwrap();
    d.flush(h2).unwrap(); // the replaced entry: nothing to encode
    d.release(h1).unwrap();
    d.release(h2).unwrap();
    assert_eq!(s.decoded("q"), b"one");
    assert!(!s.png("p").exists());
    assert!(s.metadata("q").get("k").is_none());

    // Rewritten after a commit, then renamed: no stale PNG under the old name.
    let h = handle(d.open(p("q"), true, true).unwrap());
    d.write(h, 0, b"three").unwrap();
    d.rename(p("q"), p("r"), false).unwrap();
    assert!(!s.png("q").exists());
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("r"), b"three");

    // noreplace, kinds.
    d.mkdir(p("d"), 0o755).unwrap();
    d.mkdir(p("e"), 0o755).unwrap();
    put(&d, "e/in", b"in");
    assert_eq!(
        d.rename(p("r"), p("b"), true).unwrap_err().errno(),
        libc::EEXIST
    );
    assert_eq!(
        d.rename(p("r"), p("d"), false).unwrap_err().errno(),
        libc::EISDIR
    );
    assert_eq!(
        d.rename(p("d"), p("r"), false).unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(
        d.rename(p("d"), p("e"), false).unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    assert_eq!(
        d.rename(p("e"), p("e/sub"), false).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        d.rename(p("nope"), p("x"), false).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        d.rename(p("r"), p("nodir/x"), false).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        d.rename(p("r"), p("b/x"), false).unwrap_err().errno(),
        libc::ENOTDIR
    );
    d.rename(p("r"), p("r"), false).unwrap();

    // Directory rename: committed PNGs and spooled files move along; over an empty dir.
    let (h, _) = d.create(p("e/spooled"), 0o644).unwrap();
    d.write(h, 0, b"later").unwrap();
    d.mkdir(p("e/deeper"), 0o755).unwrap();
    put(&d, "e/deeper/z", b"zz");
    d.rename(p("e"), p("d"), false).unwrap();
    assert_eq!(d.getattr(p("e")).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(s.decoded("d/in"), b"in");
    assert_eq!(s.decoded("d/deeper/z"), b"zz");
    assert!(!s.png("e/in").exists());
    assert!(!s.png("e/deeper/z").exists());
    assert!(!s.source.join("e").exists());
    assert_eq!(
        d.getattr(p("d/spooled")).unwrap().state,
        EntryState::Spooled
    );
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("d/spooled"), b"later");
    let mut listed: Vec<_> = d.list(p("d")).unwrap().into_iter().map(|e| e.0).collect();
    listed.sort();
    assert_eq!(listed, vec!["deeper", "in", "spooled"]);
}

#[test]
fn unlink_and_rmdir() {
    let s = Setup::new();
    let d = s.open();
    d.mkdir(p("d"), 0o755).unwrap();
    put(&d, "d/committed", b"keep me");
    let (h, _) = d.create(p("d/spooled"), 0o644).unwrap();
    d.write(h, 0, b"drop me").unwrap();
    d.setxattr(p("d/spooled"), "user.pixelrts.k", b"v").unwrap();
    assert_eq!(d.rmdir(p("d")).unwrap_err().errno(), libc::ENOTEMPTY);
    assert_eq!(d.unlink(p("d")).unwrap_err().errno(), libc::EISDIR);
    assert_eq!(
        d.rmdir(p("d/committed")).unwrap_err().errno(),
        libc::ENOTDIR
    );

    d.unlink(p("d/spooled")).unwrap();
    assert!(!s.spool.join("data/d/spooled").exists());
    assert!(!s.spool.join("meta/d/spooled.json").exists());
    // The open handle still works, and its flush encodes nothing.
    let mut buf = [0u8; 7];
    assert_eq!(d.read(h, 0, &mut buf).unwrap(), 7);
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert!(!s.png("d/spooled").exists());

    d.unlink(p("d/committed")).unwrap();
    assert_eq!(s.decoded("d/committed"), b"keep me");
    assert_eq!(
        d.getattr(p("d/committed")).unwrap_err().errno(),
        libc::ENOENT
    );
    d.rmdir(p("d")).unwrap();
    assert_eq!(d.getattr(p("d")).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(d.unlink(p("d/x")).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(d.rmdir(p("")).unwrap_err().errno(), libc::EBUSY);
    // Errors for missing parents and existing names.
    assert_eq!(
        d.create(p("no/such"), 0o644).unwrap_err().errno(),
        libc::ENOENT
    );
    put(&d, "f", b"f");
    assert_eq!(d.mkdir(p("f"), 0o755).unwrap_err().errno(), libc::EEXIST);
    assert_eq!(d.create(p("f"), 0o644).unwrap_err().errno(), libc::EEXIST);
    assert_eq!(
        d.create(p("f/x"), 0o644).unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(d.list(p("f")).unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(
        d.open(p(""), false, false).unwrap_err().errno(),
        libc::EISDIR
    );
}

#[test]
fn bad_paths_and_xattr_names() {
    let s = Setup::new();
    let d = s.open();
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../x",
        ".pixelrts-spool/data/x",
        ".pixelrts-x",
    ] {
        assert_eq!(
            d.create(p(bad), 0o644).unwrap_err().errno(),
            libc::EINVAL,
            "{bad}"
        );
        assert_eq!(
            d.mkdir(p(bad), 0o755).unwrap_err().errno(),
            libc::EINVAL,
            "{bad}"
        );
        assert_eq!(
            d.getattr(p(bad)).unwrap_err().errno(),
            libc::EINVAL,
            "{bad}"
        );
        assert_eq!(
            d.rename(p(bad), p("y"), false).unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            d.rename(p("y"), p(bad), false).unwrap_err().errno(),
            libc::EINVAL
        );
    }
    assert_eq!(
        d.read(12345, 0, &mut [0u8; 4]).unwrap_err().errno(),
        libc::EBADF
    );
    let (h, _) = d.create(p("x"), 0o644).unwrap();
    for name in ["user.other", "security.selinux", "user.pixelrts."] {
        assert_eq!(
            d.setxattr(p("x"), name, b"v").unwrap_err().errno(),
            libc::ENOTSUP
        );
    }
    for key in ["data_size", "file_mode", "metadata", "grid_size"] {
        let name = format!("user.pixelrts.{key}");
        assert_eq!(
            d.setxattr(p("x"), &name, b"1").unwrap_err().errno(),
            libc::EINVAL
        );
    }
    assert_eq!(
        d.setxattr(p("x"), "user.pixelrts.k", &[0xff, 0xfe])
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        d.getxattr(p("x"), "user.pixelrts.none")
            .unwrap_err()
            .errno(),
        libc::ENODATA
    );
    assert_eq!(
        d.removexattr(p("x"), "user.pixelrts.none")
            .unwrap_err()
            .errno(),
        libc::ENODATA
    );
    let mut buf = [7u8; 8];
    assert_eq!(d.read(h, 100, &mut buf).unwrap(), 0);
    assert_eq!(
        d.read(h, u64::MAX - 2, &mut buf).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        d.write(h, u64::MAX - 2, b"abcd").unwrap_err().errno(),
        libc::EFBIG
    );
    let ro = handle(d.open(p("x"), false, false).unwrap());
    assert_eq!(d.write(ro, 0, b"no").unwrap_err().errno(), libc::EBADF);
    d.release(ro).unwrap();
    d.release(h).unwrap();
    assert_eq!(d.release(h).unwrap_err().errno(), libc::EBADF);
}

#[test]
fn reopen_picks_up_pending_spool_files() {
    let s = Setup::new();
    let data = sample(150_000, 5);
    {
        let d = s.open();
        d.mkdir(p("sub"), 0o755).unwrap();
        d.mkdir(p("empty"), 0o755).unwrap();
        // Closed without a flush (a crash, or a flush that never came): pending.
        let (h, _) = d.create(p("sub/pending"), 0o604).unwrap();
        d.write(h, 0, &data).unwrap();
        d.setxattr(p("sub/pending"), "user.pixelrts.type", b"disk")
            .unwrap();
        d.fsync(h).unwrap();
        d.release(h).unwrap();
        let (h, _) = d.create(p("corrupt-meta"), 0o644).unwrap();
        d.write(h, 0, b"still here").unwrap();
        d.setxattr(p("corrupt-meta"), "user.pixelrts.a", b"b")
            .unwrap();
        d.release(h).unwrap();
        assert_eq!(
            d.getattr(p("sub/pending")).unwrap().state,
            EntryState::Spooled
        );
    }
    fs::write(s.spool.join("meta/corrupt-meta.json"), b"{not json").unwrap();
    // Leftovers of an interrupted copy-up are not pending files.
    fs::write(s.spool.join("tmp/copy-up.1.0"), b"partial").unwrap();

    let d = s.open();
    let attr = d.getattr(p("sub/pending")).unwrap();
    assert_eq!(attr.state, EntryState::Spooled);
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(attr.mode, 0o604);
    assert_eq!(
        d.getxattr(p("sub/pending"), "user.pixelrts.type").unwrap(),
        b"disk"
    );
    assert_eq!(
        d.getattr(p("corrupt-meta")).unwrap().state,
        EntryState::Spooled
    );
    // Empty folders are not remembered.
    assert_eq!(d.getattr(p("empty")).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(names(&s.spool.join("tmp")), Vec::<String>::new());

    // Never closed: pending, never published on their own.
    assert!(d.commit_pending().is_empty());
    assert!(!s.png("sub/pending").exists());
    assert!(!s.png("corrupt-meta").exists());
    drop(d);

    // A close reached and recorded, the encode not finished (the mount died during it): the
    // record is what a flush writes before encoding.
    fs::write(
        s.spool.join("meta/sub/pending.json"),
        br#"{"xattrs":{"type":"disk"},"closed":true}"#,
    )
    .unwrap();
    let d = s.open();
    let results = d.commit_pending();
    let paths: Vec<_> = results.iter().map(|r| r.0.clone()).collect();
    assert_eq!(paths, vec![PathBuf::from("sub/pending")]);
    for (path, r) in &results {
        assert!(r.is_ok(), "{}: {:?}", path.display(), r);
    }
    assert!(!s.png("corrupt-meta").exists());
    assert_eq!(s.decoded("sub/pending"), data);
    let meta = s.metadata("sub/pending");
    assert_eq!(meta["type"], "disk");
    assert_eq!(meta["file_mode"], 0o604);
    assert!(!s.spool.join("data/sub/pending").exists());
    assert!(d.commit_pending().is_empty());
    assert!(matches!(
        d.getattr(p("sub/pending")).unwrap().state,
        EntryState::Committed { .. }
    ));
    // A pending file is published by a handle that writes it, and by nothing less: a
    // read-write open closed without a change publishes nothing.
    let h = handle(d.open(p("corrupt-meta"), true, false).unwrap());
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert!(!s.png("corrupt-meta").exists());
    let h = handle(d.open(p("corrupt-meta"), true, false).unwrap());
    d.write(h, 10, b"!").unwrap();
    d.flush(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(s.decoded("corrupt-meta"), b"still here!");
    // A new mount no longer lists committed entries.
    drop(d);
    let d = s.open();
    assert!(d.list(p("")).unwrap().is_empty());
}

#[test]
fn many_threads_write_different_files() {
    let s = Setup::new();
    let d = Arc::new(s.open());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let rel = format!("t{t}");
                let data = sample(100_000 + 7919 * t as usize, t);
                let (h, _) = d.create(Path::new(&rel), 0o644).unwrap();
                // Small writes, back to front, interleaved with other threads' work.
                let chunks: Vec<_> = data.chunks(4096).enumerate().collect();
                for (i, c) in chunks.into_iter().rev() {
                    d.write(h, (i * 4096) as u64, c).unwrap();
                    d.getattr(Path::new(&rel)).unwrap();
                }
                d.flush(h).unwrap();
                d.release(h).unwrap();
                data
            })
        })
        .collect();
    for (t, th) in threads.into_iter().enumerate() {
        let data = th.join().unwrap();
        assert_eq!(s.decoded(&format!("t{t}")), data);
    }
    assert_eq!(d.list(p("")).unwrap().len(), 8);
}

#[test]
fn long_encode_blocks_neither_other_files_nor_a_rename_of_its_folder() {
    let s = Setup::new();
    let d = Arc::new(s.open());
    d.mkdir(p("big"), 0o755).unwrap();
    let data = sample(6 << 20, 11);
    let (h, _) = d.create(p("big/file"), 0o644).unwrap();
    d.write(h, 0, &data).unwrap();
    let encoder = {
        let d = d.clone();
        std::thread::spawn(move || {
            d.flush(h).unwrap();
            d.release(h).unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    // Other files, listings and the encoding file's attributes do not wait for the encode.
    put(&d, "small", b"small");
    assert_eq!(d.getattr(p("big/file")).unwrap().size, data.len() as u64);
    assert_eq!(d.list(p("")).unwrap().len(), 2);
    // Moving the folder during the encode: the PNG ends up under the new name (whichever
    // finishes first).
    d.rename(p("big"), p("moved"), false).unwrap();
    if encoder.is_finished() {
        eprintln!("note: the encode finished before the other operations; timing not checked");
    }
    encoder.join().unwrap();
    assert_eq!(s.decoded("small"), b"small");
    assert_eq!(s.decoded("moved/file"), data);
    assert!(!s.source.join("big").exists());
    assert_eq!(
        d.getattr(p("moved/file")).unwrap().state,
        EntryState::Committed {
            png: s.png("moved/file")
        }
    );
}

/// A mount made for a test, lazily unmounted however the test ends.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &mut Command) -> bool {
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

/// An encode failure in SOURCE is reported by flush with the real errno, and nothing is lost.
fn check_failure_keeps_everything(source: &Path, spool: &Path, want_errno: i32) {
    let d = EncodeDir::new(source, spool, opts()).unwrap();
    let before = names(source);
    d.mkdir(p("dir"), 0o755).unwrap();
    let data = sample(1 << 20, 77);
    let (h, _) = d.create(p("dir/big"), 0o644).unwrap();
    d.write(h, 0, &data).unwrap();
    d.setxattr(p("dir/big"), "user.pixelrts.type", b"precious")
        .unwrap();
    let err = d.flush(h).unwrap_err();
    assert_eq!(err.errno(), want_errno, "{err}");
    d.release(h).unwrap();
    // Nothing new in SOURCE: no temporary file, not even the folder made for the commit.
    assert_eq!(names(source), before);
    // The entry is still there, Spooled, with its bytes and keys.
    let attr = d.getattr(p("dir/big")).unwrap();
    assert_eq!(attr.state, EntryState::Spooled);
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(fs::read(spool.join("data/dir/big")).unwrap(), data);
    assert_eq!(
        d.getxattr(p("dir/big"), "user.pixelrts.type").unwrap(),
        b"precious"
    );
    let h = handle(d.open(p("dir/big"), false, false).unwrap());
    let mut buf = vec![0u8; data.len()];
    assert_eq!(d.read(h, 0, &mut buf).unwrap(), data.len());
    assert_eq!(buf, data);
    d.release(h).unwrap();
    let results = d.commit_pending();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].1.as_ref().unwrap_err().errno(), want_errno);
    assert_eq!(names(source), before);
    drop(d);
    // Still pending for the next mount.
    let d = EncodeDir::new(source, spool, opts()).unwrap();
    assert_eq!(d.getattr(p("dir/big")).unwrap().state, EntryState::Spooled);
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn encode_failure_on_full_source_keeps_spool() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    fs::create_dir(&source).unwrap();
    if !run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&source))
    {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    }
    let _guard = MountGuard(source.clone());
    check_failure_keeps_everything(&source, &tmp.path().join("spool"), libc::ENOSPC);
}

#[test]
fn encode_failure_on_read_only_source_keeps_spool() {
    if !is_root() {
        eprintln!("skipped: needs root to bind-mount");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    let source = tmp.path().join("source");
    fs::create_dir(&real).unwrap();
    fs::create_dir(&source).unwrap();
    fs::write(real.join("existing.txt"), b"x").unwrap();
    if !run(Command::new("mount").arg("--bind").arg(&real).arg(&source)) {
        eprintln!("skipped: cannot bind-mount");
        return;
    }
    let _guard = MountGuard(source.clone());
    if !run(Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&source))
    {
        eprintln!("skipped: cannot remount read-only");
        return;
    }
    check_failure_keeps_everything(&source, &tmp.path().join("spool"), libc::EROFS);
}

#[test]
fn mtime_of_spooled_entries_follows_writes() {
    let s = Setup::new();
    let d = s.open();
    let (h, _) = d.create(p("m"), 0o644).unwrap();
    let old = UNIX_EPOCH + Duration::from_secs(1000);
    d.setattr(p("m"), None, None, Some(old)).unwrap();
    assert_eq!(d.getattr(p("m")).unwrap().mtime, old);
    d.write(h, 0, b"new").unwrap();
    assert!(d.getattr(p("m")).unwrap().mtime > SystemTime::now() - Duration::from_secs(60));
    d.release(h).unwrap();
}
