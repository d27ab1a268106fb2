//! Damaged and hostile inputs: every command fails cleanly (non-zero exit, never a panic, the
//! file named on stderr with a sensible problem word), leaves no output behind, and finishes
//! quickly in bounded memory, decompression bombs included.
mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// What a measured child run produced.
struct Measured {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
    max_rss_kib: i64,
}

impl Measured {
    fn describe(&self) -> String {
        format!(
            "exit {:?} signal {:?} in {:.2?}, peak RSS {} MiB\n--- stdout ({} bytes) ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.signal,
            self.elapsed,
            self.max_rss_kib / 1024,
            self.stdout.len(),
            String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(2000)]),
            self.stderr
        )
    }
}

/// Runs `pixelrts ARGS` with stdout/stderr in files under `scratch` and returns its exit
/// status, time and peak RSS. Killed (with its process group) after 120 s.
///
/// Peak RSS: through `/usr/bin/time -f %M` when it exists. Otherwise from `wait4`'s rusage —
/// an upper bound only, because Linux carries the RSS high-water mark of the process that
/// exec'd (here the test harness, through vfork) into the child's `ru_maxrss`.
fn run_measured(args: &[OsString], scratch: &Path) -> Measured {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let so = scratch.join("stdout");
    let se = scratch.join("stderr");
    let rss_file = scratch.join("rss");
    let _ = std::fs::remove_file(&rss_file);
    let gnu_time = Path::new("/usr/bin/time");
    let mut cmd = if gnu_time.exists() {
        let mut c = Command::new(gnu_time);
        c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(bin());
        c
    } else {
        Command::new(bin())
    };
    let start = Instant::now();
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&so).unwrap())
        .stderr(std::fs::File::create(&se).unwrap())
        .process_group(0)
        .spawn()
        .expect("spawn pixelrts");
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting on our own child, with valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if start.elapsed() > Duration::from_secs(120) {
            // SAFETY: killing our own child's process group and reaping the child.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut ru);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    drop(child);
    let (mut code, mut signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else {
        (None, Some(libc::WTERMSIG(status)))
    };
    let mut max_rss_kib = ru.ru_maxrss;
    if let Ok(text) = std::fs::read_to_string(&rss_file) {
        if let Some(sig) = text
            .lines()
            .find_map(|l| l.strip_prefix("Command terminated by signal "))
        {
            signal = sig.trim().parse().ok().or(Some(-1));
            code = None;
        }
        if let Some(kib) = text.lines().last().and_then(|l| l.trim().parse().ok()) {
            max_rss_kib = kib;
        }
    }
    // Keep only the head of stdout: a successful decode to `-` can be large.
    let mut stdout = Vec::new();
    {
        use std::io::Read;
        std::fs::File::open(&so)
            .unwrap()
            .take(64 * 1024)
            .read_to_end(&mut stdout)
            .unwrap();
    }
    Measured {
        code,
        signal,
        stdout,
        stderr: std::fs::read_to_string(&se).unwrap_or_default(),
        elapsed,
        max_rss_kib,
    }
}

/// How a bad file must be treated.
struct Case {
    /// File name stem: the file is `<name>.rts.png`.
    name: &'static str,
    bytes: Vec<u8>,
    /// At least one of these must appear in stderr (case-insensitive).
    words: &'static [&'static str],
    /// `info` reads no pixels, so it can only be asked to fail when the problem is in the
    /// header or the metadata; otherwise it may succeed (or fail cleanly).
    info_must_fail: bool,
    /// Wall-clock limit per command.
    time_limit: Duration,
    /// Only `data_hash` is wrong: `decode` without `--verify` does not hash, so it may succeed
    /// (its output is then removed); `decode --verify` and `verify` must still fail.
    hash_only: bool,
}

const RSS_LIMIT_KIB: i64 = 512 * 1024;

fn check_case(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let file_name = format!("{}.rts.png", case.name);
    let file = dir.path().join(&file_name);
    std::fs::write(&file, &case.bytes).unwrap();
    let explicit_out = dir.path().join("explicit.out");

    let commands: Vec<(&str, Vec<OsString>)> = vec![
        (
            "decode (default output)",
            vec!["decode".into(), file.clone().into()],
        ),
        (
            "decode --verify (explicit output)",
            vec![
                "decode".into(),
                file.clone().into(),
                explicit_out.clone().into(),
                "--verify".into(),
            ],
        ),
        (
            "decode - (stdout)",
            vec!["decode".into(), file.clone().into(), "-".into()],
        ),
        ("verify", vec!["verify".into(), file.clone().into()]),
        ("info", vec!["info".into(), file.clone().into()]),
        (
            "info --json",
            vec!["info".into(), file.clone().into(), "--json".into()],
        ),
    ];
    for (what, args) in commands {
        // Where only the hash is wrong, a decode without --verify legitimately writes the whole
        // payload (1 GiB for the bomb): skip it, --verify and `verify` cover the case.
        if case.hash_only && args[0] == "decode" && !args.iter().any(|a| a == "--verify") {
            continue;
        }
        let what = format!("{}: {what}", case.name);
        let m = run_measured(&args, scratch.path());
        // Visible with `--nocapture`: what each command said.
        eprintln!(
            "[{what}] exit {:?} in {:.2?}, peak RSS {} MiB: {}",
            m.code,
            m.elapsed,
            m.max_rss_kib / 1024,
            m.stderr.trim_end()
        );
        assert!(
            m.signal.is_none(),
            "{what}: killed by signal: {}",
            m.describe()
        );
        assert!(
            m.elapsed <= case.time_limit,
            "{what}: took {:.2?} (limit {:?}): {}",
            m.elapsed,
            case.time_limit,
            m.describe()
        );
        assert!(
            m.max_rss_kib < RSS_LIMIT_KIB,
            "{what}: peak RSS {} MiB ≥ 512 MiB: {}",
            m.max_rss_kib / 1024,
            m.describe()
        );
        let code = m.code.unwrap();
        assert_ne!(code, 101, "{what}: panicked: {}", m.describe());
        assert!(
            !m.stderr.contains("panicked at"),
            "{what}: panic message: {}",
            m.describe()
        );
        let is_info = args[0] == "info";
        if code == 0 && is_info && !case.info_must_fail {
            continue;
        }
        let unverified_decode = args[0] == "decode" && !args.iter().any(|a| a == "--verify");
        if code == 0 && unverified_decode && case.hash_only {
            let default_out = dir.path().join(case.name);
            if default_out.exists() {
                std::fs::remove_file(default_out).unwrap();
            }
            continue;
        }
        if args[0] == "verify" && case.hash_only {
            assert_eq!(code, 1, "{what}: a hash mismatch exits 1: {}", m.describe());
        }
        assert_ne!(code, 0, "{what}: should fail: {}", m.describe());
        // README "Exit status": 4 for a damaged or unsupported image, 1 for a check that
        // failed (`verify`, `decode --verify`).
        assert!(
            code == 1 || code == 4,
            "{what}: exit code should be 4 (or 1 for a failed check): {}",
            m.describe()
        );
        // `verify` may report a mismatch (exit 1) on stdout, like `sha256sum -c`; every other
        // failure is an `error: <path>: <problem>` line on stderr.
        let report = if args[0] == "verify" && code == 1 {
            format!("{}{}", String::from_utf8_lossy(&m.stdout), m.stderr)
        } else {
            assert!(
                m.stderr.contains("error: "),
                "{what}: stderr lacks `error: `: {}",
                m.describe()
            );
            m.stderr.clone()
        };
        assert!(
            report.contains(&file_name),
            "{what}: the report does not name {file_name}: {}",
            m.describe()
        );
        // Problem words are looked for in the message without the file's path, whose
        // `.rts.png` would otherwise match "png".
        let lower = report
            .replace(file.to_str().unwrap(), "<file>")
            .replace(&file_name, "<file>")
            .to_lowercase();
        assert!(
            case.words.iter().any(|w| lower.contains(&w.to_lowercase())),
            "{what}: stderr mentions none of {:?}: {}",
            case.words,
            m.describe()
        );
        if what.contains("stdout") {
            // Nothing that could pass for a payload: at most what preceded the failure; a
            // file whose header is bad must not produce any bytes.
            if case.info_must_fail {
                assert!(
                    m.stdout.is_empty(),
                    "{what}: wrote {} bytes to stdout",
                    m.stdout.len()
                );
            }
        }
    }
    assert_eq!(
        list_dir(dir.path()),
        vec![file_name.clone()],
        "{}: files left behind",
        case.name
    );
}

// ---------------------------------------------------------------------------------------------
// Building blocks

fn meta_for(grid: u64, data_size: u64, hash: &str) -> Value {
    json!({
        "format": "PixelRTS-2.0",
        "format_version": 2,
        "grid_size": grid,
        "encoding": {"type": "RGBA-dense", "bytes_per_pixel": 4, "mapping": "Hilbert space-filling curve"},
        "offsets": {},
        "hashes": {},
        "encoding_mode": "RGBA-dense",
        "data_hash": hash,
        "data_size": data_size,
    })
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An image of `w`×`h` zero pixels of the given depth/colour type, with optional metadata.
fn zero_image(w: u32, h: u32, depth: u8, color: u8, meta: Option<&Value>, plte: bool) -> Vec<u8> {
    let channels = match color {
        0 => 1,
        2 => 3,
        3 => 1,
        4 => 2,
        6 => 4,
        _ => 4,
    };
    let row_bytes = (w as usize * channels * depth as usize).div_ceil(8);
    let raw = filter_none(&vec![0u8; row_bytes * h as usize], row_bytes);
    let mut b = PngBuilder::new().ihdr(w, h, depth, color);
    if plte {
        b = b.chunk(b"PLTE", &[0, 0, 0, 255, 255, 255]);
    }
    if let Some(m) = meta {
        b = b.metadata(m);
    }
    b.idat(&zlib(&raw)).iend()
}

/// A zlib stream that inflates to `total` zero bytes, built from one deflated 1 MiB piece
/// repeated (each piece ends with a full flush, so it stands alone). Ratio ≈ 1000:1.
fn zeros_zlib(total: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    const PIECE: usize = 1 << 20;
    let piece_of = |len: usize| -> Vec<u8> {
        let mut c = Compress::new(Compression::best(), false);
        let input = vec![0u8; len];
        let mut out = vec![0u8; len / 100 + 4096];
        let status = c.compress(&input, &mut out, FlushCompress::Full).unwrap();
        assert_eq!(status, flate2::Status::Ok);
        assert_eq!(c.total_in() as usize, len, "piece not consumed in one call");
        out.truncate(c.total_out() as usize);
        out
    };
    let full = piece_of(PIECE);
    let mut z = vec![0x78, 0xDA];
    for _ in 0..total / PIECE as u64 {
        z.extend_from_slice(&full);
    }
    let rest = (total % PIECE as u64) as usize;
    if rest > 0 {
        z.extend_from_slice(&piece_of(rest));
    }
    // Final empty stored block, then Adler-32 of `total` zeros: a = 1, b = total mod 65521.
    z.extend_from_slice(&[0x01, 0x00, 0x00, 0xFF, 0xFF]);
    let adler = (((total % 65521) as u32) << 16) | 1;
    z.extend_from_slice(&adler.to_be_bytes());
    z
}

#[test]
fn zeros_zlib_is_a_valid_stream() {
    use std::io::Read;
    let total = 3 * (1 << 20) + 12345;
    let z = zeros_zlib(total);
    let mut d = flate2::read::ZlibDecoder::new(&z[..]);
    let mut out = Vec::new();
    d.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, total);
    assert!(out.iter().all(|&b| b == 0));
}

/// Our own valid encoding of 1 MiB of pseudo-random bytes: the 512² grid is full and level 0
/// stores it, so any byte of the IDAT data is payload, a filter byte or a block header (a flip
/// in zero padding could go unnoticed by a decoder that reads only what it needs). Returns the
/// file and the (offset, length) of each IDAT chunk's data.
fn valid_encoding() -> (Vec<u8>, Vec<(usize, usize)>) {
    let data = prng_bytes(1 << 20, 99);
    let opts = pixelrts::encode::EncodeOptions {
        level: 0,
        ..Default::default()
    };
    let (png, _meta) = pixelrts::encode::encode_to_vec(&data, &opts).expect("library encode");
    let mut pos = 8;
    let mut idats = Vec::new();
    while pos + 12 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        if &png[pos + 4..pos + 8] == b"IDAT" {
            idats.push((pos + 8, len));
        }
        pos += 12 + len;
    }
    assert!(!idats.is_empty());
    (png, idats)
}

const QUICK: Duration = Duration::from_secs(20);
const PNG_WORDS: &[&str] = &["png", "signature", "corrupt", "truncated"];

// ---------------------------------------------------------------------------------------------
// The cases

#[test]
fn not_a_png() {
    check_case(Case {
        name: "not_a_png",
        bytes: b"hello, this is plain text and certainly not a PNG image\n".to_vec(),
        words: PNG_WORDS,
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn empty_file() {
    check_case(Case {
        name: "empty_file",
        bytes: Vec::new(),
        words: PNG_WORDS,
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn signature_only() {
    check_case(Case {
        name: "signature_only",
        bytes: PNG_SIG.to_vec(),
        words: &["png", "truncated", "ihdr", "corrupt", "end of file", "eof"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn truncated_in_half() {
    let (png, _) = valid_encoding();
    check_case(Case {
        name: "truncated_in_half",
        bytes: png[..png.len() / 2].to_vec(),
        words: &[
            "truncated",
            "corrupt",
            "end of file",
            "eof",
            "unexpected end",
            "missing",
            "beyond",
        ],
        info_must_fail: false,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn truncated_inside_header() {
    let (png, _) = valid_encoding();
    check_case(Case {
        name: "truncated_inside_header",
        bytes: png[..20].to_vec(),
        words: &[
            "truncated",
            "corrupt",
            "end of file",
            "eof",
            "unexpected end",
            "png",
        ],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn flipped_byte_in_idat() {
    let (mut png, idats) = valid_encoding();
    let (start, len) = idats[idats.len() / 2];
    png[start + len / 2] ^= 0x5A;
    check_case(Case {
        name: "flipped_byte_in_idat",
        bytes: png,
        words: &["crc", "checksum", "corrupt"],
        info_must_fail: false,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn flipped_byte_in_idat_with_fixed_crc() {
    // The chunk CRC is recomputed, so only the payload (Adler-32, tile CRCs, data_hash) can
    // tell: a decode must never hand out the wrong byte, even without --verify.
    let (mut png, idats) = valid_encoding();
    let (start, len) = idats[idats.len() / 2];
    png[start + len / 2] ^= 0x5A;
    let crc = chunk_crc(b"IDAT", &png[start..start + len]);
    png[start + len..start + len + 4].copy_from_slice(&crc.to_be_bytes());
    check_case(Case {
        name: "flipped_byte_in_idat_with_fixed_crc",
        bytes: png,
        words: &["crc", "checksum", "corrupt", "mismatch", "adler"],
        info_must_fail: false,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn valid_png_without_metadata() {
    check_case(Case {
        name: "valid_png_without_metadata",
        bytes: zero_image(4, 4, 8, 6, None, false),
        words: &["metadata"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn metadata_not_json() {
    let bytes = PngBuilder::new()
        .ihdr(4, 4, 8, 6)
        .chunk(
            b"tEXt",
            b"PixelRTS\0PixelRTS{\"format\":\"PixelRTS-2.0\",\"data_size\":",
        )
        .idat(&zlib(&filter_none(&[0u8; 64], 16)))
        .iend();
    check_case(Case {
        name: "metadata_not_json",
        bytes,
        words: &["metadata", "json"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn data_size_exceeds_grid() {
    let data = vec![0u8; 65];
    let meta = meta_for(4, 65, &sha256_hex(&data));
    check_case(Case {
        name: "data_size_exceeds_grid",
        bytes: zero_image(4, 4, 8, 6, Some(&meta), false),
        words: &["exceeds", "capacity", "data_size", "too large", "metadata"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn data_size_absurd() {
    let meta = meta_for(4, u64::MAX, &sha256_hex(b""));
    check_case(Case {
        name: "data_size_absurd",
        bytes: zero_image(4, 4, 8, 6, Some(&meta), false),
        words: &["exceeds", "capacity", "data_size", "too large", "metadata"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn non_square_image() {
    let meta = meta_for(8, 10, &sha256_hex(&[0u8; 10]));
    check_case(Case {
        name: "non_square_image",
        bytes: zero_image(8, 4, 8, 6, Some(&meta), false),
        words: &["square", "unsupported"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn non_power_of_two_square() {
    let meta = meta_for(12, 10, &sha256_hex(&[0u8; 10]));
    check_case(Case {
        name: "non_power_of_two_square",
        bytes: zero_image(12, 12, 8, 6, Some(&meta), false),
        words: &["power of 2", "power of two", "unsupported"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn sixteen_bit_rgba() {
    let meta = meta_for(4, 10, &sha256_hex(&[0u8; 10]));
    check_case(Case {
        name: "sixteen_bit_rgba",
        bytes: zero_image(4, 4, 16, 6, Some(&meta), false),
        words: &["bit depth", "16-bit", "16 bit", "unsupported"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn palette_png() {
    let meta = meta_for(4, 10, &sha256_hex(&[0u8; 10]));
    check_case(Case {
        name: "palette_png",
        bytes: zero_image(4, 4, 8, 3, Some(&meta), true),
        words: &["palette", "colour type", "color type", "unsupported"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn ihdr_2_pow_31_minus_1_without_data() {
    let side = (1u32 << 31) - 1;
    let meta = meta_for(side as u64, 1000, &sha256_hex(&[0u8; 1000]));
    let bytes = PngBuilder::new()
        .ihdr(side, side, 8, 6)
        .metadata(&meta)
        .iend();
    check_case(Case {
        name: "ihdr_2_pow_31_minus_1",
        bytes,
        words: &[
            "power of 2",
            "power of two",
            "unsupported",
            "too large",
            "maximum",
            "limit",
        ],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn ihdr_2_pow_30_without_data() {
    let side = 1u32 << 30;
    let meta = meta_for(side as u64, 1000, &sha256_hex(&[0u8; 1000]));
    let bytes = PngBuilder::new()
        .ihdr(side, side, 8, 6)
        .metadata(&meta)
        .iend();
    check_case(Case {
        name: "ihdr_2_pow_30",
        bytes,
        words: &["unsupported", "too large", "maximum", "limit", "exceeds"],
        info_must_fail: true,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn ihdr_2_pow_20_without_idat() {
    // The largest side we accept (4 TiB of pixels), metadata asking for 1000 bytes, no IDAT:
    // must fail at once without allocating anything image-sized.
    let side = 1u32 << 20;
    let meta = meta_for(side as u64, 1000, &sha256_hex(&[0u8; 1000]));
    let bytes = PngBuilder::new()
        .ihdr(side, side, 8, 6)
        .metadata(&meta)
        .iend();
    check_case(Case {
        name: "ihdr_2_pow_20_no_idat",
        bytes,
        words: &[
            "idat",
            "no image data",
            "truncated",
            "corrupt",
            "missing",
            "end of file",
        ],
        info_must_fail: false,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn zlib_bomb_small_data_size_huge_idat() {
    // 16384² image (1 GiB of pixels), metadata claims 1000 bytes (with a wrong hash), the IDAT
    // is a ~3 MiB zlib stream inflating to 3 GiB of zeros: far more than the image, let alone
    // the metadata, allows. Must end quickly, with bounded memory, and fail.
    let grid = 16384u32;
    let meta = meta_for(grid as u64, 1000, &sha256_hex(b"not the payload"));
    let bytes = PngBuilder::new()
        .ihdr(grid, grid, 8, 6)
        .metadata(&meta)
        .idat(&zeros_zlib(3 << 30))
        .iend();
    assert!(bytes.len() < 8 << 20, "bomb file is {} bytes", bytes.len());
    check_case(Case {
        name: "zlib_bomb_huge_idat",
        bytes,
        words: &[
            "hash mismatch",
            "limit",
            "corrupt",
            "exceed",
            "too much",
            "extra",
            "trailing",
        ],
        info_must_fail: false,
        time_limit: QUICK,
        hash_only: true,
    });
}

#[test]
fn zlib_bomb_huge_data_size_tiny_idat() {
    // 16384² image whose metadata claims the full 1 GiB, but the IDAT holds 1 MiB of zeros:
    // must fail ("truncated") quickly, without reserving the claimed size up front.
    let grid = 16384u32;
    let meta = meta_for(grid as u64, 1 << 30, &sha256_hex(b"whatever"));
    let bytes = PngBuilder::new()
        .ihdr(grid, grid, 8, 6)
        .metadata(&meta)
        .idat(&zeros_zlib(1 << 20))
        .iend();
    check_case(Case {
        name: "zlib_bomb_tiny_idat",
        bytes,
        words: &[
            "truncated",
            "corrupt",
            "end of",
            "eof",
            "short",
            "missing",
            "hash mismatch",
        ],
        info_must_fail: false,
        time_limit: QUICK,
        hash_only: false,
    });
}

#[test]
fn zlib_bomb_exact_image_of_zeros_wrong_hash() {
    // A 16384² image that is exactly 1 GiB of zero pixels (a 1 MiB file), full data_size and a
    // wrong hash: the decoder must stream it (bounded memory) and report the mismatch.
    let grid = 16384u64;
    let raw = grid * (1 + 4 * grid);
    let meta = meta_for(grid, 1 << 30, &sha256_hex(b"not zeros"));
    let bytes = PngBuilder::new()
        .ihdr(grid as u32, grid as u32, 8, 6)
        .metadata(&meta)
        .idat(&zeros_zlib(raw))
        .iend();
    check_case(Case {
        name: "zeros_1gib_wrong_hash",
        bytes,
        words: &["hash mismatch"],
        info_must_fail: false,
        time_limit: Duration::from_secs(60),
        hash_only: true,
    });
}
