//! `pixelrts doctor`: what this machine offers (GPU, FUSE, CPU, cache directory) and, for
//! anything missing, exactly why.

use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::gpu::{check_kernels_compile, Gpu, GpuError, GpuInfo, GpuMode, KernelCompileCheck};

/// Everything `doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub version: &'static str,
    pub gpu: GpuSection,
    pub fuse: FuseSection,
    pub cpu: CpuSection,
    pub cache: CacheSection,
}

/// The GPU, or why none can be used.
#[derive(Clone, Debug, Serialize)]
pub struct GpuSection {
    pub usable: bool,
    pub info: Option<GpuInfo>,
    /// Why no GPU can be used (library missing, no device, initialisation error, ...).
    pub reason: Option<String>,
    /// Without a usable GPU: do the kernels compile with NVRTC alone? (An opened GPU has
    /// compiled them already; see `info.kernel_image`.)
    pub nvrtc: Option<NvrtcSection>,
}

/// NVRTC on its own, without GPU or driver: `gpu::check_kernels_compile` for [`DOCTOR_ARCHS`].
#[derive(Clone, Debug, Serialize)]
pub struct NvrtcSection {
    /// NVRTC loaded and compiled every image with all kernels.
    pub kernels_compile: bool,
    /// "compile with NVRTC 12.9 (cubin sm_90, ptx)", or why not.
    pub summary: String,
    /// The check, when NVRTC could be used.
    pub check: Option<KernelCompileCheck>,
    /// Why NVRTC could not be used ("libnvrtc.so.12 not found (...)").
    pub reason: Option<String>,
}

/// The architectures `doctor` compiles for (with the PTX): Hopper (H100/H200) only, to stay
/// fast (~0.1 s in all, against ~0.4 s for the whole `gpu::KERNEL_ARCHS`, which the tests
/// compile).
pub const DOCTOR_ARCHS: [&str; 1] = ["sm_90"];

/// Can `pixelrts mount` work?
#[derive(Clone, Debug, Serialize)]
pub struct FuseSection {
    pub usable: bool,
    pub dev_fuse_present: bool,
    pub dev_fuse_openable: bool,
    /// Why `/dev/fuse` could not be opened.
    pub dev_fuse_error: Option<String>,
    /// Where `fusermount3` is on `PATH`.
    pub fusermount3: Option<PathBuf>,
    /// `fusermount3 -V` ("fusermount3 version: 3.14.0").
    pub fusermount3_version: Option<String>,
    /// Why mounting will not work, when it will not.
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuSection {
    /// "AMD EPYC 9R14" (from `/proc/cpuinfo`).
    pub model: Option<String>,
    /// CPUs this process may run on (`std::thread::available_parallelism`).
    pub available_parallelism: usize,
    /// Processors listed in `/proc/cpuinfo`.
    pub processors: Option<usize>,
    /// Distinct (physical id, core id) pairs in `/proc/cpuinfo`.
    pub physical_cores: Option<usize>,
    /// The speed-relevant instruction set extensions present (avx2, avx512f, sha_ni, ...).
    pub features: Vec<String>,
    /// Worker threads pixelrts will use.
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct CacheSection {
    /// `$XDG_CACHE_HOME/pixelrts` or `~/.cache/pixelrts`; None when neither variable is set.
    pub path: Option<PathBuf>,
    pub exists: bool,
    /// The directory is writable, or can be created (its nearest existing parent is writable).
    pub writable: bool,
    pub note: Option<String>,
}

/// Collects the report. `threads` is the worker count the command will use (0 = one per
/// available CPU). Opening the GPU compiles its kernels, so this takes up to a second there;
/// without a GPU, NVRTC (when present) compiles them for [`DOCTOR_ARCHS`] and PTX (~0.1 s).
pub fn doctor_report(threads: usize) -> DoctorReport {
    DoctorReport {
        version: env!("CARGO_PKG_VERSION"),
        gpu: gpu_section(),
        fuse: fuse_section(),
        cpu: cpu_section(threads),
        cache: cache_section(),
    }
}

fn gpu_section() -> GpuSection {
    let opened = match Gpu::open(GpuMode::On) {
        Ok(Some(gpu)) => Ok(gpu.info().clone()),
        Ok(None) => Err("not opened".to_string()),
        Err(GpuError::Unavailable(reason)) => Err(reason),
        Err(e) => Err(e.to_string()),
    };
    match opened {
        Ok(info) => GpuSection {
            usable: true,
            info: Some(info),
            reason: None,
            nvrtc: None,
        },
        Err(reason) => GpuSection {
            usable: false,
            info: None,
            reason: Some(reason),
            nvrtc: Some(nvrtc_section()),
        },
    }
}

fn nvrtc_section() -> NvrtcSection {
    match check_kernels_compile(&DOCTOR_ARCHS) {
        Ok(check) => NvrtcSection {
            kernels_compile: check.all_compiled(),
            summary: check.summary(),
            check: Some(check),
            reason: None,
        },
        Err(reason) => NvrtcSection {
            kernels_compile: false,
            summary: "not checked (NVRTC cannot be used)".to_string(),
            check: None,
            reason: Some(reason),
        },
    }
}

/// `name` on `PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access() with a valid NUL-terminated path.
    path.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

fn fuse_section() -> FuseSection {
    let dev = Path::new("/dev/fuse");
    let dev_fuse_present = dev.exists();
    let (dev_fuse_openable, dev_fuse_error) = if dev_fuse_present {
        match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        }
    } else {
        (false, Some("/dev/fuse does not exist (no fuse kernel module, or not passed into this container)".into()))
    };
    let fusermount3 = on_path("fusermount3");
    let fusermount3_version = fusermount3.as_ref().and_then(|p| {
        let out = Command::new(p).arg("-V").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    });
    let reason = if !dev_fuse_present || !dev_fuse_openable {
        Some(format!(
            "cannot open /dev/fuse: {}",
            dev_fuse_error.as_deref().unwrap_or("unknown error")
        ))
    } else if fusermount3.is_none() {
        Some("fusermount3 is not on PATH (install fuse3)".to_string())
    } else {
        None
    };
    FuseSection {
        usable: reason.is_none(),
        dev_fuse_present,
        dev_fuse_openable,
        dev_fuse_error,
        fusermount3,
        fusermount3_version,
        reason,
    }
}

fn cpu_section(threads: usize) -> CpuSection {
    let available_parallelism = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<String> {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    };
    let model = cpuinfo.lines().find_map(|l| field(l, "model name"));
    let processors = cpuinfo
        .lines()
        .filter(|l| field(l, "processor").is_some())
        .count();
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = None;
    for line in cpuinfo.lines() {
        if let Some(v) = field(line, "physical id") {
            physical = Some(v);
        } else if let Some(v) = field(line, "core id") {
            cores.insert((physical.clone(), v));
        }
    }
    let flags: Vec<String> = cpuinfo
        .lines()
        .find_map(|l| field(l, "flags"))
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let features = [
        "sse4_2",
        "avx2",
        "avx512f",
        "avx512bw",
        "sha_ni",
        "pclmulqdq",
        "vpclmulqdq",
    ]
    .iter()
    .filter(|f| flags.iter().any(|g| g == *f))
    .map(|f| f.to_string())
    .collect();
    CpuSection {
        model,
        available_parallelism,
        processors: (processors > 0).then_some(processors),
        physical_cores: (!cores.is_empty()).then_some(cores.len()),
        features,
        threads: if threads == 0 {
            available_parallelism
        } else {
            threads
        },
    }
}

/// `$XDG_CACHE_HOME/pixelrts` (an absolute XDG_CACHE_HOME only, per the XDG spec) or
/// `$HOME/.cache/pixelrts`.
pub fn cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache"))
    })?;
    Some(base.join("pixelrts"))
}

fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access() with a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn cache_section() -> CacheSection {
    let Some(path) = cache_dir() else {
        return CacheSection {
            path: None,
            exists: false,
            writable: false,
            note: Some("neither XDG_CACHE_HOME nor HOME is set".into()),
        };
    };
    let exists = path.is_dir();
    let (writable, note) = if exists {
        let w = writable(&path);
        (w, (!w).then(|| "the directory is not writable".to_string()))
    } else {
        // Nothing is created here: check that it could be.
        match path.ancestors().skip(1).find(|p| p.is_dir()) {
            Some(parent) if writable(parent) => (
                true,
                Some(format!(
                    "does not exist yet; will be created under {}",
                    parent.display()
                )),
            ),
            Some(parent) => (
                false,
                Some(format!(
                    "does not exist and {} is not writable",
                    parent.display()
                )),
            ),
            None => (false, Some("no existing parent directory".to_string())),
        }
    };
    CacheSection {
        path: Some(path),
        exists,
        writable,
        note,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pixelrts {} doctor", self.version)?;
        writeln!(f)?;
        writeln!(f, "GPU")?;
        match (&self.gpu.info, &self.gpu.reason) {
            (Some(g), _) => {
                writeln!(f, "  device:          {}", g.name)?;
                writeln!(f, "  memory:          {} MiB", g.total_memory >> 20)?;
                writeln!(
                    f,
                    "  compute:         sm_{}{}",
                    g.compute_capability.0, g.compute_capability.1
                )?;
                writeln!(
                    f,
                    "  driver:          {} (CUDA {})",
                    g.driver_version.as_deref().unwrap_or("unknown"),
                    g.cuda_version
                )?;
                writeln!(
                    f,
                    "  nvrtc:           {} ({})",
                    g.nvrtc_version, g.nvrtc_library
                )?;
                writeln!(f, "  kernels:         {}", g.kernel_image)?;
            }
            (None, reason) => {
                writeln!(f, "  usable:          no")?;
                writeln!(
                    f,
                    "  reason:          {}",
                    reason.as_deref().unwrap_or("unknown")
                )?;
                if let Some(n) = &self.gpu.nvrtc {
                    match (&n.check, &n.reason) {
                        (Some(c), _) => writeln!(
                            f,
                            "  nvrtc:           {} ({})",
                            c.nvrtc_version, c.nvrtc_library
                        )?,
                        (None, reason) => writeln!(
                            f,
                            "  nvrtc:           {}",
                            reason.as_deref().unwrap_or("unknown")
                        )?,
                    }
                    writeln!(f, "  kernels:         {}", n.summary)?;
                    for failure in n.check.iter().flat_map(|c| c.failures()) {
                        writeln!(f, "    {}", failure.replace('\n', "\n    "))?;
                    }
                    for (target, log) in n.check.iter().flat_map(|c| c.warnings()) {
                        writeln!(f, "    {target}: {}", log.replace('\n', "\n    "))?;
                    }
                }
                writeln!(f, "  effect:          the CPU is used; --gpu on fails")?;
            }
        }
        writeln!(f)?;
        let fu = &self.fuse;
        writeln!(f, "FUSE (pixelrts mount)")?;
        writeln!(f, "  usable:          {}", yes_no(fu.usable))?;
        writeln!(
            f,
            "  /dev/fuse:       {}",
            match (fu.dev_fuse_present, fu.dev_fuse_openable) {
                (true, true) => "present, openable".to_string(),
                (true, false) => format!(
                    "present, cannot open: {}",
                    fu.dev_fuse_error.as_deref().unwrap_or("?")
                ),
                _ => "missing".to_string(),
            }
        )?;
        writeln!(
            f,
            "  fusermount3:     {}",
            match (&fu.fusermount3, &fu.fusermount3_version) {
                (Some(p), Some(v)) => format!("{} ({v})", p.display()),
                (Some(p), None) => format!("{} (version unknown)", p.display()),
                (None, _) => "not on PATH".to_string(),
            }
        )?;
        if let Some(reason) = &fu.reason {
            writeln!(f, "  reason:          {reason}")?;
        }
        writeln!(f)?;
        let c = &self.cpu;
        writeln!(f, "CPU")?;
        writeln!(
            f,
            "  model:           {}",
            c.model.as_deref().unwrap_or("unknown")
        )?;
        writeln!(
            f,
            "  cores:           {} available to this process{}{}",
            c.available_parallelism,
            c.processors
                .map(|n| format!(", {n} logical"))
                .unwrap_or_default(),
            c.physical_cores
                .map(|n| format!(", {n} physical"))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "  features:        {}",
            if c.features.is_empty() {
                "none detected".to_string()
            } else {
                c.features.join(" ")
            }
        )?;
        writeln!(f, "  threads used:    {}", c.threads)?;
        writeln!(f)?;
        let k = &self.cache;
        writeln!(f, "Cache")?;
        writeln!(
            f,
            "  directory:       {}",
            k.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into())
        )?;
        writeln!(f, "  exists:          {}", yes_no(k.exists))?;
        writeln!(f, "  writable:        {}", yes_no(k.writable))?;
        if let Some(note) = &k.note {
            writeln!(f, "  note:            {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_every_section_and_explains_a_missing_gpu() {
        let report = doctor_report(3);
        let text = report.to_string();
        println!("{text}");
        for section in [
            "GPU",
            "FUSE",
            "CPU",
            "Cache",
            "/dev/fuse",
            "fusermount3",
            "threads used:    3",
        ] {
            assert!(text.contains(section), "{section} missing from:\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        if !report.gpu.usable {
            let reason = report.gpu.reason.as_deref().unwrap();
            assert!(!reason.is_empty());
            assert!(text.contains(reason), "{text}");
            // NVRTC is reported on its own: its version and the kernels, or why not.
            let nvrtc = report.gpu.nvrtc.as_ref().unwrap();
            assert!(
                text.contains("  nvrtc:  ") && text.contains("  kernels:  "),
                "{text}"
            );
            assert!(text.contains(&nvrtc.summary), "{text}");
            assert!(json["gpu"]["nvrtc"]["kernels_compile"].is_boolean());
            match (&nvrtc.check, &nvrtc.reason) {
                (Some(check), None) => {
                    assert!(nvrtc.kernels_compile, "{text}");
                    assert!(text.contains(&format!("nvrtc:           {}", check.nvrtc_version)));
                    assert!(
                        nvrtc.summary.starts_with("compile with NVRTC "),
                        "{}",
                        nvrtc.summary
                    );
                    assert_eq!(check.images.len(), DOCTOR_ARCHS.len() + 1);
                }
                (None, Some(reason)) => {
                    assert!(
                        std::env::var("PIXELRTS_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
                        "PIXELRTS_REQUIRE_NVRTC=1 but: {reason}"
                    );
                    assert!(!nvrtc.kernels_compile);
                    assert!(reason.contains("libnvrtc"), "{reason}");
                    assert!(text.contains(reason.as_str()), "{text}");
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert!(report.gpu.nvrtc.is_none());
        }
        assert!(json["gpu"]["usable"].is_boolean());
        assert!(json["fuse"]["dev_fuse_present"].is_boolean());
        assert!(json["cpu"]["available_parallelism"].as_u64().unwrap() >= 1);
        assert_eq!(report.cpu.threads, 3);
        assert_eq!(
            doctor_report(0).cpu.threads,
            report.cpu.available_parallelism
        );
    }

    #[test]
    fn fuse_reason_is_given_when_unusable() {
        let fuse = fuse_section();
        assert_eq!(fuse.usable, fuse.reason.is_none());
    }
}
