//! The shipped systemd units (`systemd/`) pass `systemd-analyze verify`, and the service keeps
//! the contract the mount and scripts/install.sh rely on (Type=notify, the environment file, the
//! ExecStart command line).
//!
//! `systemd-analyze verify` loads the units' dependencies too, and inside a container it may
//! complain about things that have nothing to do with our files (no D-Bus, no running manager,
//! a missing system unit); its exit status is not reliable either way (an unknown directive only
//! prints a warning and still exits 0). So the verdict is: any line that names one of our unit
//! files or units fails the test, every other line is printed and ignored. The last test feeds
//! deliberately broken copies through the same check, so a change in systemd's wording that made
//! the filter blind would fail here rather than pass silently.
//!
//! Without systemd-analyze the verify tests print "skipped: ..." and pass;
//! PIXELRTS_REQUIRE_SYSTEMD_ANALYZE=1 turns that skip into a failure.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SERVICE: &str = "pixelrts@.service";
/// The instance verified: `systemd-escape -p /mnt/rts`.
const INSTANCE: &str = "pixelrts@mnt-rts.service";
const MOUNT: &str = "mnt-rts.mount";
/// The path the shipped service runs (where scripts/install.sh puts the binary).
const INSTALLED_BIN: &str = "/usr/local/bin/pixelrts";

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

fn read_unit(name: &str) -> String {
    let p = systemd_dir().join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Whether `systemd-analyze` runs here; prints why not (or panics when it is required).
fn analyzer_or_skip(test: &str) -> bool {
    let reason = match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "`systemd-analyze --version` exited with {:?}",
            o.status.code()
        ),
        Err(e) => format!("systemd-analyze not found ({e}); install systemd to run this test"),
    };
    if std::env::var_os("PIXELRTS_REQUIRE_SYSTEMD_ANALYZE").is_some_and(|v| v == "1") {
        panic!("{test}: PIXELRTS_REQUIRE_SYSTEMD_ANALYZE=1 but {reason}");
    }
    println!("{test}: skipped: {reason}");
    false
}

/// Copies the units into `dir` with ExecStart pointing at the binary built for this test run
/// (verify checks that every Exec*= program exists and is executable), and the instance name
/// as a symlink to the template (verify loads an instance from its template file next to it).
fn stage_units(dir: &Path, service_text: &str, mount_text: &str) -> Vec<PathBuf> {
    let bin = common::bin();
    let bin = bin.to_str().expect("binary path is UTF-8");
    assert!(
        !bin.contains(char::is_whitespace),
        "binary path with spaces: {bin}"
    );
    assert!(
        service_text.contains(INSTALLED_BIN),
        "{SERVICE} no longer runs {INSTALLED_BIN}"
    );
    fs::write(dir.join(SERVICE), service_text.replace(INSTALLED_BIN, bin)).unwrap();
    std::os::unix::fs::symlink(SERVICE, dir.join(INSTANCE)).unwrap();
    fs::write(dir.join(MOUNT), mount_text).unwrap();
    vec![dir.join(INSTANCE), dir.join(MOUNT)]
}

/// Runs `systemd-analyze verify` on `units` and returns (exit code, the lines about our units,
/// all lines). `--man=no`: the Documentation= check would run man(1), absent from containers.
fn verify(units: &[PathBuf]) -> (Option<i32>, Vec<String>, Vec<String>) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .output()
        .expect("running systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<String> = text.lines().map(str::to_string).collect();
    // Our files are named by path (`/tmp/.../pixelrts@.service:12: ...`) or by unit name
    // (`pixelrts@mnt-rts.service: Command ... is not executable`).
    let ours: Vec<String> = all
        .iter()
        .filter(|l| [SERVICE, INSTANCE, MOUNT].iter().any(|n| l.contains(n)))
        .cloned()
        .collect();
    (out.status.code(), ours, all)
}

fn assert_clean(units: &[PathBuf]) {
    let (code, ours, all) = verify(units);
    for l in all.iter().filter(|l| !ours.contains(l)) {
        println!("ignored (not about our units): {l}");
    }
    assert!(
        ours.is_empty(),
        "systemd-analyze verify (exit {code:?}) reports problems in our units:\n{}",
        ours.join("\n")
    );
}

#[test]
fn shipped_units_verify_cleanly() {
    if !analyzer_or_skip("shipped_units_verify_cleanly") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let units = stage_units(tmp.path(), &read_unit(SERVICE), &read_unit(MOUNT));
    assert_clean(&units);
}

#[test]
fn verify_check_catches_real_mistakes() {
    if !analyzer_or_skip("verify_check_catches_real_mistakes") {
        return;
    }
    let service = read_unit(SERVICE);
    let mount = read_unit(MOUNT);
    // Each case: a description, the service text, the mount text, what must be reported.
    let cases = [
        (
            "unknown directive in the service",
            service.replace("Type=notify\n", "Type=notify\nRestartPolicy=always\n"),
            mount.clone(),
            "RestartPolicy",
        ),
        (
            "bad value for Type=",
            service.replace("Type=notify\n", "Type=notfy\n"),
            mount.clone(),
            "notfy",
        ),
        (
            "unknown directive in the mount unit",
            service.clone(),
            mount.replace("[Mount]\n", "[Mount]\nMountOptions=ro\n"),
            "MountOptions",
        ),
        (
            "Where= not matching the mount unit's name",
            service.clone(),
            mount.replace("Where=/mnt/rts\n", "Where=/mnt/other\n"),
            MOUNT,
        ),
    ];
    for (what, svc, mnt, needle) in cases {
        assert!(
            svc != service || mnt != mount,
            "{what}: the edit did not apply"
        );
        let tmp = tempfile::tempdir().unwrap();
        let units = stage_units(tmp.path(), &svc, &mnt);
        let (code, ours, all) = verify(&units);
        assert!(
            ours.iter().any(|l| l.contains(needle)),
            "{what}: not reported as a problem in our units (exit {code:?}); output:\n{}",
            all.join("\n")
        );
    }
}

/// Value of `Key=` in a unit's text (the last assignment wins, as in systemd), comments skipped.
fn directive<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn service_contract() {
    let s = read_unit(SERVICE);
    assert_eq!(
        directive(&s, "Type"),
        ["notify"],
        "Type=notify: the mount sends READY=1"
    );
    assert_eq!(directive(&s, "EnvironmentFile"), ["/etc/pixelrts/%i.conf"]);
    assert_eq!(
        directive(&s, "ExecStart"),
        [format!("{INSTALLED_BIN} mount -f ${{SOURCE}} %f -o ${{OPTIONS}}").as_str()]
    );
    assert_eq!(directive(&s, "KillSignal"), ["SIGTERM"]);
    assert_eq!(directive(&s, "Restart"), ["on-failure"]);
    assert!(
        directive(&s, "DeviceAllow").contains(&"/dev/fuse rw"),
        "/dev/fuse must stay allowed"
    );
    // A private mount namespace would hide the FUSE mount from everyone else.
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateNetwork",
        "PrivateMounts",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "MountFlags",
    ] {
        assert!(
            directive(&s, key).is_empty(),
            "{key}= puts the service in its own mount namespace, where the mount is invisible"
        );
    }

    // The example environment file sets what ExecStart uses, in EnvironmentFile= syntax.
    let conf = read_unit("example.conf");
    let assigned: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once('=').expect("KEY=VALUE line").0)
        .collect();
    assert_eq!(assigned, ["SOURCE", "OPTIONS"], "example.conf assignments");

    let m = read_unit(MOUNT);
    assert_eq!(directive(&m, "Type"), ["fuse.pixelrts"]);
    assert_eq!(directive(&m, "Where"), ["/mnt/rts"]);
}
