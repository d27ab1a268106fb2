//! `pixelrts encode|decode IN... --output-dir DIR` (batches) and the exit statuses of the
//! command line (README "Exit status").

mod common;

use std::path::Path;

use common::{describe, handmade_pixelrts, prng_bytes, run, PngBuilder};
use serde_json::Value;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn summary(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

fn by_input<'a>(rows: &'a [Value], input: &Path) -> &'a Value {
    let want = input.to_string_lossy();
    rows.iter()
        .find(|r| r["input"].as_str() == Some(&*want))
        .unwrap_or_else(|| panic!("no row for {want} in {rows:#?}"))
}

#[test]
fn a_batch_encodes_every_file_mirrors_folders_and_refuses_a_same_named_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let mut files = Vec::new();
    for (i, rel) in ["a.bin", "b.txt", "sub/c.bin", "sub/deeper/d.bin"]
        .iter()
        .enumerate()
    {
        let data = prng_bytes(1000 + 3000 * i, i as u64);
        std::fs::write(src.join(rel), &data).unwrap();
        files.push((rel.to_string(), data));
    }
    // A big one, split inside the pool while the small ones spread across it.
    let big = prng_bytes(6 << 20, 99);
    std::fs::write(src.join("big.img"), &big).unwrap();
    files.push(("big.img".into(), big));
    // An explicit input named like one inside the folder: both want out/a.bin.rts.png.
    let other = dir.path().join("a.bin");
    std::fs::write(&other, b"not the same a.bin").unwrap();
    let missing = dir.path().join("missing.bin");
    let out = dir.path().join("out");

    let o = run([
        "encode".as_ref(),
        "-r".as_ref(),
        src.as_os_str(),
        other.as_os_str(),
        missing.as_os_str(),
        "--output-dir".as_ref(),
        out.as_os_str(),
        "--threads".as_ref(),
        "2".as_ref(),
    ]);
    // Two failed, the rest were done: the batch's own status.
    assert_eq!(o.status.code(), Some(6), "{}", describe(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("encoded 5 of 7 files"), "{stderr}");
    assert!(stderr.contains("missing.bin"), "{stderr}");

    let rows = summary(&out.join("batch_summary.json"));
    assert_eq!(rows.len(), 7);
    // In the order given (the folder walked in name order), whatever order they ran in.
    let inputs: Vec<&str> = rows.iter().map(|r| r["input"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = ["a.bin", "b.txt", "big.img", "sub/c.bin", "sub/deeper/d.bin"]
        .iter()
        .map(|r| src.join(r).to_string_lossy().into_owned())
        .collect();
    expected.push(other.to_string_lossy().into_owned());
    expected.push(missing.to_string_lossy().into_owned());
    assert_eq!(inputs, expected);

    let clash = by_input(&rows, &other);
    assert_eq!(clash["status"], "error");
    let why = clash["error"].as_str().unwrap();
    assert!(
        why.contains(&*src.join("a.bin").to_string_lossy()) && why.contains("not encoded"),
        "{why}"
    );
    assert_eq!(by_input(&rows, &missing)["status"], "error");
    assert!(clash["size"].is_null() && clash["hash"].is_null());

    for (rel, data) in &files {
        let row = by_input(&rows, &src.join(rel));
        assert_eq!(row["status"], "ok", "{row}");
        assert_eq!(row["error"], Value::Null);
        assert_eq!(row["size"], data.len() as u64);
        assert_eq!(row["hash"], sha256_hex(data));
        let png = out.join(format!("{rel}.rts.png"));
        assert_eq!(row["output"], png.to_string_lossy().as_ref());
        // The image is a PixelRTS file any decoder reads.
        assert_eq!(
            &common::independent_rust_decode(&std::fs::read(&png).unwrap()).unwrap(),
            data,
            "{rel}"
        );
    }
    // The first a.bin's image holds the folder's a.bin, not the later input's bytes.
    let kept = common::independent_rust_decode(&std::fs::read(out.join("a.bin.rts.png")).unwrap())
        .unwrap();
    assert_eq!(kept, files[0].1);

    // Decoding the output folder back: the tree, byte for byte, verified.
    let back = dir.path().join("back");
    let summary_file = dir.path().join("decoded.json");
    let o = run([
        "decode".as_ref(),
        "-r".as_ref(),
        out.as_os_str(),
        "--output-dir".as_ref(),
        back.as_os_str(),
        "--summary".as_ref(),
        summary_file.as_os_str(),
        "--verify".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    for (rel, data) in &files {
        assert_eq!(&std::fs::read(back.join(rel)).unwrap(), data, "{rel}");
    }
    let rows = summary(&summary_file);
    assert_eq!(rows.len(), files.len());
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:#?}");
    assert!(
        !back.join("batch_summary.json").exists(),
        "--summary names where the summary goes"
    );
}

#[test]
fn a_batch_goes_on_past_a_damaged_image_and_an_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.rts.png");
    std::fs::write(&good, handmade_pixelrts(b"good bytes")).unwrap();
    let damaged = dir.path().join("damaged.rts.png");
    let mut bytes = handmade_pixelrts(&prng_bytes(5000, 1));
    let n = bytes.len();
    bytes[n - 40] ^= 0x55; // inside the IDAT data: a CRC error
    std::fs::write(&damaged, &bytes).unwrap();
    let taken = dir.path().join("taken.rts.png");
    std::fs::write(&taken, handmade_pixelrts(b"taken")).unwrap();
    std::fs::write(dir.path().join("taken"), b"the user's own file").unwrap();

    // Three inputs: a batch, outputs beside the inputs, no summary unless asked.
    let o = run([
        "decode".as_ref(),
        good.as_os_str(),
        damaged.as_os_str(),
        taken.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", describe(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("damaged.rts.png"), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.path().join("good")).unwrap(),
        b"good bytes"
    );
    assert!(!dir.path().join("damaged").exists(), "nothing half-written");
    assert_eq!(
        std::fs::read(dir.path().join("taken")).unwrap(),
        b"the user's own file"
    );
    assert!(!dir.path().join("batch_summary.json").exists());
}

#[test]
fn one_or_two_paths_keep_the_single_file_form_and_a_folder_asks_for_r() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, b"single").unwrap();
    let named = dir.path().join("named.rts.png");
    let o = run(["encode".as_ref(), input.as_os_str(), named.as_os_str()]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(named.exists());
    // A second path that is an existing non-image is a second input, not an output to replace
    // (`encode a.bin b.bin` meant as a batch), even with --force.
    let second = dir.path().join("second.bin");
    std::fs::write(&second, b"keep me").unwrap();
    let o = run([
        "encode".as_ref(),
        input.as_os_str(),
        second.as_os_str(),
        "--force".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--output-dir"));
    assert_eq!(std::fs::read(&second).unwrap(), b"keep me");
    let o = run([
        "decode".as_ref(),
        named.as_os_str(),
        named.as_os_str(),
        "--force".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));

    let o = run(["encode".as_ref(), dir.path().as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("add -r"),
        "{}",
        describe(&o)
    );
}

/// Each kind of failure has its own status (README "Exit status", `pixelrts --help`).
#[test]
fn every_kind_of_failure_has_its_documented_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let status = |args: &[&std::ffi::OsStr]| {
        let o = run(args);
        (o.status.code(), describe(&o))
    };

    // 2: usage.
    let (code, d) = status(&["encode".as_ref(), "--level".as_ref(), "12".as_ref()]);
    assert_eq!(code, Some(2), "{d}");
    // 3: I/O — a missing input.
    let (code, d) = status(&["decode".as_ref(), p("nothere.rts.png").as_os_str()]);
    assert_eq!(code, Some(3), "{d}");
    assert!(d.contains("nothere.rts.png"), "{d}");
    // 4: corrupt input — not a PNG.
    std::fs::write(p("junk.rts.png"), b"no png here").unwrap();
    let (code, d) = status(&["decode".as_ref(), p("junk.rts.png").as_os_str()]);
    assert_eq!(code, Some(4), "{d}");
    let (code, d) = status(&["info".as_ref(), p("junk.rts.png").as_os_str()]);
    assert_eq!(code, Some(4), "{d}");
    // 5: the output exists.
    std::fs::write(p("x.bin"), b"x").unwrap();
    std::fs::write(p("x.bin.rts.png"), b"someone's file").unwrap();
    let (code, d) = status(&["encode".as_ref(), p("x.bin").as_os_str()]);
    assert_eq!(code, Some(5), "{d}");
    assert_eq!(
        std::fs::read(p("x.bin.rts.png")).unwrap(),
        b"someone's file"
    );
    // 1: a check that failed — the pixels hold other bytes than data_hash says.
    let data = b"these are the stored bytes";
    let grid = common::expected_grid(data.len() as u64);
    let mut meta = common::reference_metadata(grid, data);
    meta["data_hash"] = sha256_hex(b"something else").into();
    let forged = PngBuilder::new()
        .ihdr(grid as u32, grid as u32, 8, 6)
        .metadata(&meta)
        .idat(&common::zlib(&common::filter_none(
            &common::hilbert_scatter(data, grid),
            4 * grid as usize,
        )))
        .iend();
    std::fs::write(p("forged.rts.png"), forged).unwrap();
    let (code, d) = status(&[
        "decode".as_ref(),
        p("forged.rts.png").as_os_str(),
        "--verify".as_ref(),
    ]);
    assert_eq!(code, Some(1), "{d}");
    assert!(
        !p("forged").exists(),
        "a failed verification publishes nothing"
    );
    let (code, d) = status(&["verify".as_ref(), p("forged.rts.png").as_os_str()]);
    assert_eq!(code, Some(1), "{d}");
    // 32: the mount failed (here: the mount point does not exist).
    let (code, d) = status(&[
        "mount".as_ref(),
        dir.path().as_os_str(),
        p("no-such-mountpoint").as_os_str(),
    ]);
    assert_eq!(code, Some(32), "{d}");
    // 2 again for a bad -o option, before anything is mounted.
    let (code, d) = status(&[
        "mount".as_ref(),
        dir.path().as_os_str(),
        dir.path().as_os_str(),
        "-o".as_ref(),
        "cache_size=lots".as_ref(),
    ]);
    assert_eq!(code, Some(2), "{d}");
}

/// A batch writing to a disk that fills up: the files that fit are complete images, the rest
/// fail with ENOSPC one by one (no partial image, no temporary file left), the batch exits 6
/// and the summary says which.
#[test]
fn a_full_disk_fails_the_files_that_do_not_fit_and_leaves_no_partial_image() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut files = Vec::new();
    for i in 0..4u64 {
        let data = prng_bytes(700 << 10, 100 + i); // random: stored, about 700 KiB an image
        std::fs::write(src.join(format!("f{i}.bin")), &data).unwrap();
        files.push(data);
    }
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let _disk = common::SysMount::new(&out, "1600k");
    let summary_file = dir.path().join("summary.json");
    let o = run([
        "encode".as_ref(),
        "-r".as_ref(),
        src.as_os_str(),
        "--output-dir".as_ref(),
        out.as_os_str(),
        "--summary".as_ref(),
        summary_file.as_os_str(),
        "--no-sidecar".as_ref(),
        "--threads".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", describe(&o));
    let rows = summary(&summary_file);
    let failed: Vec<&Value> = rows.iter().filter(|r| r["status"] == "error").collect();
    assert!(!failed.is_empty() && failed.len() < 4, "{rows:#?}");
    for r in &failed {
        let why = r["error"].as_str().unwrap();
        assert!(why.contains("No space left"), "{why}");
    }
    // What is there is whole: every file in the folder is a complete image of its input.
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let i: usize = name
            .strip_prefix('f')
            .and_then(|n| n.strip_suffix(".bin.rts.png"))
            .unwrap_or_else(|| panic!("{name}: left in the output folder"))
            .parse()
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            common::independent_rust_decode(&bytes).unwrap(),
            files[i],
            "{name}"
        );
    }
}

/// Names in `dir` that are temporary files of an encode or decode.
fn temporaries(dir: &Path) -> Vec<String> {
    common::list_dir(dir)
        .into_iter()
        .filter(|n| n.contains(".pixelrts-tmp."))
        .collect()
}

/// `pixelrts ARGS…` killed (SIGKILL) by its crash point `point` after writing an image under
/// its temporary name, before the rename.
fn run_killed_at(point: &str, args: &[&std::ffi::OsStr]) {
    let o = std::process::Command::new(common::bin())
        .args(args)
        .env(pixelrts::failpoint::ENV, point)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "{}", describe(&o));
}

/// A run killed mid-way (`kill -9`, a power cut) left its temporary file beside the output
/// for good: the next run to the same place now removes it — a single encode or decode the
/// ones for its output, a batch every one in its output folders — as long as the process that
/// wrote it is gone.
#[test]
fn temporaries_of_a_killed_run_are_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.bin");
    let data = prng_bytes(300 << 10, 7);
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let png = out.join("a.rts.png");
    let encode: [&std::ffi::OsStr; 4] = [
        "encode".as_ref(),
        input.as_os_str(),
        png.as_os_str(),
        "--no-sidecar".as_ref(),
    ];

    run_killed_at("encode", &encode);
    assert_eq!(temporaries(&out).len(), 1, "{:?}", common::list_dir(&out));
    assert!(!png.exists());
    common::run_ok(encode);
    assert_eq!(common::list_dir(&out), ["a.rts.png"]);

    // A decode's leftover (its process gone: a child already reaped), and one of a process
    // still running, which stays.
    let decoded = out.join("a.bin");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let stale = out.join(format!(".a.bin.pixelrts-tmp.{gone_pid}.0"));
    let live = out.join(format!(".a.bin.pixelrts-tmp.{}.0", std::process::id()));
    std::fs::write(&stale, b"half a file").unwrap();
    std::fs::write(&live, b"being written").unwrap();
    common::run_ok(["decode".as_ref(), png.as_os_str(), decoded.as_os_str()]);
    assert_eq!(std::fs::read(&decoded).unwrap(), data);
    assert!(!stale.exists());
    assert!(live.exists());
    std::fs::remove_file(&live).unwrap();

    // A batch killed at its second image's rename, then run again.
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join(format!("f{i}.bin")), prng_bytes(200 << 10, i)).unwrap();
    }
    let batch_out = dir.path().join("batch");
    let batch: [&std::ffi::OsStr; 8] = [
        "encode".as_ref(),
        "-r".as_ref(),
        src.as_os_str(),
        "--output-dir".as_ref(),
        batch_out.as_os_str(),
        "--no-sidecar".as_ref(),
        "--threads".as_ref(),
        "1".as_ref(),
    ];
    run_killed_at("encode:2", &batch);
    assert_eq!(
        temporaries(&batch_out).len(),
        1,
        "{:?}",
        common::list_dir(&batch_out)
    );
    let mut again = batch.to_vec();
    again.push("--force".as_ref());
    common::run_ok(again);
    assert_eq!(
        common::list_dir(&batch_out),
        [
            "batch_summary.json",
            "f0.bin.rts.png",
            "f1.bin.rts.png",
            "f2.bin.rts.png"
        ]
    );
}
