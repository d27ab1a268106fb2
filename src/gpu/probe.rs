//! Can the CUDA libraries be loaded at all? Checked with plain `dlopen` before any `cudarc`
//! function runs, because `cudarc` panics when it cannot find a library.

use std::ffi::{CStr, CString};

/// The file names `cudarc` itself tries for `lib` ("cuda", "nvrtc"), the usual runtime name
/// first. Only these names are tried: a library `cudarc` would not find is no use.
fn candidates(lib: &str) -> Vec<String> {
    let names = cudarc::get_lib_name_candidates(lib);
    // The usual runtime names (no dev symlink needed) first; all are in cudarc's own list.
    let preferred = match lib {
        "cuda" => vec!["libcuda.so.1".to_string()],
        "nvrtc" => vec!["libnvrtc.so.12".to_string(), "libnvrtc.so".to_string()],
        _ => vec![],
    };
    let mut all: Vec<String> = preferred;
    for name in names {
        if !all.contains(&name) {
            all.push(name);
        }
    }
    all
}

/// The first of `cudarc`'s candidate names for `lib` that `dlopen` (RTLD_LAZY | RTLD_LOCAL)
/// accepts, or why none did. The handle is closed again; `cudarc` opens its own.
pub(crate) fn find_library(lib: &str) -> Result<String, String> {
    #[cfg(test)]
    PROBES.with(|p| p.set(p.get() + 1));
    let names = candidates(lib);
    let mut first_error = None;
    for name in &names {
        let Ok(c_name) = CString::new(name.as_str()) else {
            continue;
        };
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is closed right away.
        // Loading runs the library's constructors, which is what cudarc would do anyway.
        unsafe {
            let handle = libc::dlopen(c_name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if !handle.is_null() {
                libc::dlclose(handle);
                return Ok(name.clone());
            }
            if first_error.is_none() {
                let err = libc::dlerror();
                if !err.is_null() {
                    first_error = Some(CStr::from_ptr(err).to_string_lossy().into_owned());
                }
            }
        }
    }
    let (what, main) = match lib {
        "cuda" => ("the CUDA driver library", "libcuda.so.1"),
        "nvrtc" => (
            "the NVRTC library (CUDA runtime compiler)",
            "libnvrtc.so.12",
        ),
        other => (other, other),
    };
    Err(format!(
        "{main} not found ({what}; dlopen: {}; {} other names tried: {})",
        first_error.unwrap_or_else(|| "no error text".to_string()),
        names.len().saturating_sub(1),
        names.iter().skip(1).cloned().collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
thread_local! {
    /// Calls of [`find_library`] on this thread (tests check that `--gpu off` makes none).
    pub(crate) static PROBES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The NVIDIA kernel module version ("550.54.15"), from `/proc/driver/nvidia/version`.
pub(crate) fn kernel_driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    let line = text.lines().next()?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024"
    let after = line.split("Kernel Module").nth(1).unwrap_or(line);
    after.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_says_which() {
        let err = find_library("pixelrts-no-such-lib").unwrap_err();
        assert!(err.contains("not found"), "{err}");
        assert!(err.contains("libpixelrts-no-such-lib.so"), "{err}");
    }

    #[test]
    fn candidates_start_with_the_runtime_name() {
        assert_eq!(candidates("cuda")[0], "libcuda.so.1");
        assert!(candidates("nvrtc").iter().any(|n| n == "libnvrtc.so"));
    }
}
