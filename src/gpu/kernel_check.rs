//! Do the kernels compile? Checked with NVRTC alone: NVRTC is a plain compiler library, so this
//! needs neither a GPU nor the CUDA driver (no `cuInit`, `libcuda` is never loaded).
//!
//! The kernels are built exactly as [`super::Gpu::open`] builds them (the same
//! `compile_cubin` / `compile_ptx` of the CUDA module), for each architecture of [`KERNEL_ARCHS`]
//! that this NVRTC supports and as PTX, and every image must contain the three kernels.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use cudarc::nvrtc;
use serde::Serialize;

use super::cuda::{compile_cubin, compile_ptx, nvrtc_version, panic_message};
use super::{kernels, probe};

/// The CUBIN architectures checked: Volta, Turing, Ampere (A100, consumer), Ada, Hopper
/// (H100/H200), Blackwell (B200, consumer). Those this NVRTC does not know are skipped.
pub const KERNEL_ARCHS: [&str; 8] = [
    "sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120",
];

/// The kernels every image must contain.
pub const KERNEL_NAMES: [&str; 3] = [kernels::SCATTER, kernels::GATHER, kernels::COLOUR];

/// What happened to one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Compiled, and holds all kernels.
    Ok,
    /// NVRTC failed, or a kernel is missing from the image.
    Failed,
    /// This NVRTC does not support the architecture (`nvrtcGetSupportedArchs`).
    Skipped,
}

/// One compiled image: a CUBIN for one architecture, or the PTX.
#[derive(Clone, Debug, Serialize)]
pub struct KernelImageCheck {
    /// "sm_90" (CUBIN) or "ptx".
    pub target: String,
    pub status: ImageStatus,
    /// Size of the image in bytes (0 unless compiled).
    pub bytes: usize,
    /// Compile time in seconds.
    pub seconds: f64,
    /// Kernels not found in the image.
    pub missing_kernels: Vec<String>,
    /// Why it failed (NVRTC's error and log) or was skipped.
    pub error: Option<String>,
    /// NVRTC's log of a successful compilation: warnings, normally empty. (Not available
    /// for the PTX, which is built by `cudarc::nvrtc::compile_ptx`.)
    pub log: String,
}

/// The result of [`check_kernels_compile`].
#[derive(Clone, Debug, Serialize)]
pub struct KernelCompileCheck {
    /// The NVRTC library that loaded ("libnvrtc.so.12").
    pub nvrtc_library: String,
    /// NVRTC's version ("12.9").
    pub nvrtc_version: String,
    /// The CUBIN architectures this NVRTC supports ("sm_50", …), or None when it cannot say.
    pub supported_archs: Option<Vec<String>>,
    /// The CUBINs in the order asked for, then the PTX.
    pub images: Vec<KernelImageCheck>,
}

impl KernelCompileCheck {
    /// Every image that was not skipped compiled and holds all kernels, and at least one
    /// CUBIN and the PTX did.
    pub fn all_compiled(&self) -> bool {
        let ok = |ptx: bool| {
            self.images
                .iter()
                .any(|i| i.status == ImageStatus::Ok && (i.target == "ptx") == ptx)
        };
        self.failures().is_empty() && ok(true) && ok(false)
    }

    /// "sm_80: <error>" for each failed image.
    pub fn failures(&self) -> Vec<String> {
        self.images
            .iter()
            .filter(|i| i.status == ImageStatus::Failed)
            .map(|i| format!("{}: {}", i.target, i.error.as_deref().unwrap_or("failed")))
            .collect()
    }

    /// `Ok` when [`all_compiled`](Self::all_compiled), else every failure with NVRTC's log.
    pub fn ensure_compiled(&self) -> Result<(), String> {
        if self.all_compiled() {
            return Ok(());
        }
        let failures = self.failures();
        Err(if failures.is_empty() {
            format!("nothing compiled: {}", self.summary())
        } else {
            format!(
                "the kernels do not compile with NVRTC {}:\n{}",
                self.nvrtc_version,
                failures.join("\n")
            )
        })
    }

    /// Images with a non-empty NVRTC log: (target, log).
    pub fn warnings(&self) -> Vec<(&str, &str)> {
        self.images
            .iter()
            .filter(|i| !i.log.is_empty())
            .map(|i| (i.target.as_str(), i.log.as_str()))
            .collect()
    }

    /// One line: "compile with NVRTC 12.9 (cubin sm_70 sm_80 sm_90, ptx)", or what failed.
    pub fn summary(&self) -> String {
        let with = |status: ImageStatus| -> Vec<&str> {
            self.images
                .iter()
                .filter(|i| i.status == status)
                .map(|i| i.target.as_str())
                .collect()
        };
        let (ok, failed, skipped) = (
            with(ImageStatus::Ok),
            with(ImageStatus::Failed),
            with(ImageStatus::Skipped),
        );
        let cubins: Vec<&str> = ok.iter().copied().filter(|t| *t != "ptx").collect();
        let mut built = Vec::new();
        if !cubins.is_empty() {
            built.push(format!("cubin {}", cubins.join(" ")));
        }
        if ok.contains(&"ptx") {
            built.push("ptx".to_string());
        }
        let built = if built.is_empty() {
            "nothing".to_string()
        } else {
            built.join(", ")
        };
        let mut line = if failed.is_empty() && self.all_compiled() {
            format!("compile with NVRTC {} ({built})", self.nvrtc_version)
        } else if failed.is_empty() {
            format!("NVRTC {} built {built}", self.nvrtc_version)
        } else {
            format!(
                "FAIL with NVRTC {}: {} (built: {built})",
                self.nvrtc_version,
                failed.join(" ")
            )
        };
        if !skipped.is_empty() {
            line.push_str(&format!(
                "; not supported by this NVRTC: {}",
                skipped.join(" ")
            ));
        }
        let warned = self.warnings().len();
        if warned > 0 {
            line.push_str(&format!("; NVRTC warnings for {warned} image(s)"));
        }
        line
    }

    /// Total compile time in seconds.
    pub fn seconds(&self) -> f64 {
        self.images.iter().map(|i| i.seconds).sum()
    }
}

/// Compiles the kernels with NVRTC for each of `archs` ("sm_90"; see [`KERNEL_ARCHS`]) that
/// this NVRTC supports, and as PTX, without touching the CUDA driver. `Err` only when NVRTC
/// cannot be used at all (not found, or it panicked); compile failures are in the images.
pub fn check_kernels_compile(archs: &[&str]) -> Result<KernelCompileCheck, String> {
    check_source_compiles(&kernels::source(), archs)
}

/// [`check_kernels_compile`] for any CUDA source (tests feed it broken source).
#[doc(hidden)]
pub fn check_source_compiles(src: &str, archs: &[&str]) -> Result<KernelCompileCheck, String> {
    let nvrtc_library = probe::find_library("nvrtc")?;
    catch_unwind(AssertUnwindSafe(|| check(src, archs, nvrtc_library)))
        .unwrap_or_else(|payload| Err(format!("NVRTC panicked: {}", panic_message(payload))))
}

fn check(src: &str, archs: &[&str], nvrtc_library: String) -> Result<KernelCompileCheck, String> {
    let (major, minor) = nvrtc_version()?;
    let supported = supported_archs();
    let mut images = Vec::with_capacity(archs.len() + 1);
    for &arch in archs {
        let number = arch.strip_prefix("sm_").and_then(|n| n.parse::<i32>().ok());
        if let (Some(list), Some(n)) = (&supported, number) {
            if !list.contains(&n) {
                images.push(skipped(arch));
                continue;
            }
        }
        let clock = Instant::now();
        let result = compile_cubin(src, arch);
        let seconds = clock.elapsed().as_secs_f64();
        images.push(match result {
            Ok(cubin) => {
                let missing = missing_kernels(&cubin.image, |name| {
                    let mut symbol = name.as_bytes().to_vec();
                    symbol.push(0); // a NUL-terminated entry of the ELF string table
                    symbol
                });
                image(arch, seconds, Ok((cubin.image.len(), missing)), &cubin.log)
            }
            Err(e) => image(arch, seconds, Err(e), ""),
        });
    }
    let clock = Instant::now();
    let result = compile_ptx(src);
    let seconds = clock.elapsed().as_secs_f64();
    images.push(match result {
        Ok(ptx) => {
            let text = ptx_text(&ptx);
            let missing = missing_kernels(text.as_bytes(), |name| {
                format!(".entry {name}(").into_bytes()
            });
            image("ptx", seconds, Ok((text.len(), missing)), "")
        }
        Err(e) => image("ptx", seconds, Err(e), ""),
    });
    Ok(KernelCompileCheck {
        nvrtc_library,
        nvrtc_version: format!("{major}.{minor}"),
        supported_archs: supported.map(|l| l.iter().map(|n| format!("sm_{n}")).collect()),
        images,
    })
}

/// `Ok((bytes, missing kernels))` of a compiled image, or why there is none.
fn image(
    target: &str,
    seconds: f64,
    result: Result<(usize, Vec<String>), String>,
    log: &str,
) -> KernelImageCheck {
    let (status, bytes, missing_kernels, error) = match result {
        Ok((bytes, missing)) if missing.is_empty() => (ImageStatus::Ok, bytes, missing, None),
        Ok((bytes, missing)) => {
            let error = format!("kernels missing from the image: {}", missing.join(", "));
            (ImageStatus::Failed, bytes, missing, Some(error))
        }
        Err(e) => (ImageStatus::Failed, 0, vec![], Some(e)),
    };
    KernelImageCheck {
        target: target.to_string(),
        status,
        bytes,
        seconds,
        missing_kernels,
        error,
        log: log.to_string(),
    }
}

/// An architecture this NVRTC does not support.
fn skipped(target: &str) -> KernelImageCheck {
    KernelImageCheck {
        target: target.to_string(),
        status: ImageStatus::Skipped,
        bytes: 0,
        seconds: 0.0,
        missing_kernels: vec![],
        error: Some("not supported by this NVRTC".to_string()),
        log: String::new(),
    }
}

fn missing_kernels(image: &[u8], needle: impl Fn(&str) -> Vec<u8>) -> Vec<String> {
    KERNEL_NAMES
        .iter()
        .filter(|name| {
            let needle = needle(name);
            !image.windows(needle.len()).any(|w| w == needle.as_slice())
        })
        .map(|name| name.to_string())
        .collect()
}

fn ptx_text(ptx: &nvrtc::Ptx) -> String {
    match ptx.as_bytes() {
        Some(bytes) => {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        }
        None => ptx.to_src(),
    }
}

/// `nvrtcGetSupportedArchs` (50, 52, …, 90, 100, …), or None when this NVRTC cannot say.
fn supported_archs() -> Option<Vec<i32>> {
    catch_unwind(|| {
        let mut n = 0i32;
        // SAFETY: plain out-parameter calls into the loaded NVRTC; the buffer holds `n` ints.
        unsafe {
            nvrtc::sys::nvrtcGetNumSupportedArchs(&mut n)
                .result()
                .ok()?;
            let mut list = vec![0i32; usize::try_from(n).ok()?];
            nvrtc::sys::nvrtcGetSupportedArchs(list.as_mut_ptr())
                .result()
                .ok()?;
            Some(list)
        }
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernels_are_named() {
        let image = b"\0pixelrts_scatter_tiles\0pixelrts_gather_tiles_x\0";
        let missing = missing_kernels(image, |n| {
            let mut v = n.as_bytes().to_vec();
            v.push(0);
            v
        });
        assert_eq!(missing, vec![kernels::GATHER, kernels::COLOUR]);
        let ptx =
            ".visible .entry pixelrts_scatter_tiles(\n.visible .entry pixelrts_gather_tiles(\n\
                   .visible .entry pixelrts_code_colour(";
        assert!(
            missing_kernels(ptx.as_bytes(), |n| format!(".entry {n}(").into_bytes()).is_empty()
        );
    }

    #[test]
    fn summary_and_failures() {
        let ok = |t: &str| image(t, 0.1, Ok((100, vec![])), "");
        let mut check = KernelCompileCheck {
            nvrtc_library: "libnvrtc.so.12".into(),
            nvrtc_version: "12.9".into(),
            supported_archs: None,
            images: vec![ok("sm_80"), skipped("sm_120"), ok("sm_90"), ok("ptx")],
        };
        assert!(check.all_compiled());
        assert_eq!(
            check.summary(),
            "compile with NVRTC 12.9 (cubin sm_80 sm_90, ptx); not supported by this NVRTC: sm_120"
        );
        check.images[2] = image("sm_90", 0.1, Ok((100, vec![kernels::COLOUR.into()])), "");
        assert!(!check.all_compiled());
        let err = check.ensure_compiled().unwrap_err();
        assert!(
            err.contains("sm_90: kernels missing from the image: pixelrts_code_colour"),
            "{err}"
        );
        assert!(
            check.summary().starts_with("FAIL with NVRTC 12.9: sm_90"),
            "{}",
            check.summary()
        );
    }
}
