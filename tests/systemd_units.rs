//! The shipped systemd units (`systemd/`) pass `systemd-analyze verify`, and the service keeps
//! the contract the mount and scripts/install.sh rely on (Type=notify, the environment file, the
//! ExecStart command line).
//!
//! `systemd-analyze verify` loads the units' dependencies too, and inside a container it may
//! complain about things that have nothing to do with our files (no D-Bus, no running manager,
//! a missing system unit); its exit status is not reliable either way (an unknown directive only
//! prints a warning and still exits 0). So the verdict is: any line that names one of our unit
//! files or units fails the test, every other line is printed and ignored. A second test feeds
//! deliberately broken copies through the same check, so a change in systemd's wording that made
//! the filter blind would fail `verify_check_catches_real_mistakes` rather than pass silently.
//!
//! `service_execstart_behaves_as_type_notify` runs the unit's ExecStart= line itself, as systemd
//! would (NOTIFY_SOCKET, SIGTERM); it is skipped without /dev/fuse, fusermount3 or `pixelrts mount`.
//!
//! Without systemd-analyze the verify tests print "skipped: ..." and pass;
//! PIXELRTS_REQUIRE_SYSTEMD_ANALYZE=1 turns that skip into a failure.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
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

fn mounted(mp: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
}

/// Unmounts and kills what the test started, also when it panics.
struct MountGuard {
    mp: PathBuf,
    child: Option<std::process::Child>,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if mounted(&self.mp) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mp)
                .status();
        }
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the service's ExecStart= line the way systemd would (environment expanded, %f the mount
/// point, $NOTIFY_SOCKET set) and checks the Type=notify contract: READY=1 arrives once the mount
/// serves the decoded file, and SIGTERM (KillSignal=) unmounts and exits 0, so Restart=on-failure
/// does not restart a stopped service.
#[test]
fn service_execstart_behaves_as_type_notify() {
    let test = "service_execstart_behaves_as_type_notify";
    let skip = |why: &str| println!("{test}: skipped: {why}");
    if !Path::new("/dev/fuse").exists() {
        return skip("no /dev/fuse");
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return skip("fusermount3 not installed (Debian: fuse3)");
    }
    if !common::run(["mount", "--help"]).status.success() {
        return skip("this build has no `pixelrts mount`");
    }

    let unit = read_unit(SERVICE);
    let options = directive(&unit, "Environment")
        .iter()
        .find_map(|e| e.strip_prefix("OPTIONS="))
        .expect("Environment=OPTIONS=... default in the service")
        .to_string();
    let exec = directive(&unit, "ExecStart")[0].to_string();

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (src, mp) = (root.join("source"), root.join("mnt"));
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&mp).unwrap();
    let data = common::prng_bytes(300_000, 7);
    fs::write(root.join("x.bin"), &data).unwrap();
    common::run_ok([
        OsString::from("encode"),
        root.join("x.bin").into(),
        src.join("x.bin.rts.png").into(),
        "--no-sidecar".into(),
    ]);

    // What systemd executes: its own expansion of ${SOURCE}, %f and ${OPTIONS}.
    let argv: Vec<OsString> = exec
        .split_whitespace()
        .skip(1)
        .map(|w| match w {
            "${SOURCE}" => src.clone().into_os_string(),
            "%f" => mp.clone().into_os_string(),
            "${OPTIONS}" => options.clone().into(),
            other => other.into(),
        })
        .collect();
    let sock_path = root.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let log = fs::File::create(root.join("mount.log")).unwrap();
    let child = Command::new(common::bin())
        .args(&argv)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut guard = MountGuard {
        mp: mp.clone(),
        child: Some(child),
    };
    let log_text = || fs::read_to_string(root.join("mount.log")).unwrap_or_default();

    // Wait for the notification, failing at once if the process exits without sending it.
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let n = loop {
        match sock.recv(&mut buf) {
            Ok(n) => break n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("receiving on NOTIFY_SOCKET: {e}"),
        }
        if let Some(status) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "{argv:?} exited ({status}) without READY=1; it logged:\n{}",
                log_text()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no READY=1 within 60 s; {argv:?} logged:\n{}",
            log_text()
        );
    };
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "sd_notify message {msg:?}"
    );
    assert!(
        mounted(&mp),
        "READY=1 sent before {} was mounted",
        mp.display()
    );
    assert_eq!(
        fs::read(mp.join("x.bin")).unwrap(),
        data,
        "decoded file through the mount"
    );

    let child = guard.child.as_mut().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 30 s after SIGTERM; log:\n{}",
            log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    guard.child = None;
    assert!(
        status.success(),
        "exit after SIGTERM: {status:?}; log:\n{}",
        log_text()
    );
    assert!(!mounted(&mp), "still mounted after SIGTERM");
}
