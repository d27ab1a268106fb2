//! `scripts/install.sh` staged under DESTDIR: what it installs, that a second run changes
//! nothing, that PREFIX reaches the unit's ExecStart=, and that --uninstall removes its files
//! but keeps the user's configuration and a mount helper link that is not ours.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn install(destdir: &Path, args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
        .args(args)
        .env("DESTDIR", destdir)
        .env("PIXELRTS", common::bin())
        .output()
        .expect("running scripts/install.sh");
    assert!(
        out.status.success(),
        "install.sh {args:?}: {}",
        common::describe(&out)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every path under `root` (relative), with a symlink's target.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn install_is_idempotent_and_uninstall_keeps_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::create_dir_all(d.join("etc/systemd/system")).unwrap();

    let first = install(d, &[]);
    let bin: PathBuf = d.join("usr/local/bin/pixelrts");
    assert_eq!(fs::read(&bin).unwrap(), fs::read(common::bin()).unwrap());
    assert_eq!(
        fs::read_link(d.join("sbin/mount.fuse.pixelrts")).unwrap(),
        Path::new("/usr/local/bin/pixelrts"),
        "the helper points at the installed path, not into DESTDIR"
    );
    let unit = fs::read_to_string(d.join("etc/systemd/system/pixelrts@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/pixelrts mount -f"));
    assert!(d.join("etc/pixelrts").is_dir());
    assert!(d.join("usr/local/share/pixelrts/example.conf").is_file());
    assert!(d.join("usr/local/share/pixelrts/mnt-rts.mount").is_file());
    assert!(stdout(&first).contains("installed"));

    let before = tree(d);
    let mtime = fs::metadata(&bin).unwrap().modified().unwrap();
    let second = install(d, &[]);
    assert_eq!(tree(d), before, "a second run changed the files");
    assert_eq!(fs::metadata(&bin).unwrap().modified().unwrap(), mtime);
    assert!(
        !stdout(&second).contains("installed "),
        "second run: {}",
        stdout(&second)
    );

    // Another PREFIX: the unit and the helper follow it.
    install(d, &["/opt/prt"]);
    let unit = fs::read_to_string(d.join("etc/systemd/system/pixelrts@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/prt/bin/pixelrts mount -f"),
        "{unit}"
    );
    assert_eq!(
        fs::read_link(d.join("sbin/mount.fuse.pixelrts")).unwrap(),
        Path::new("/opt/prt/bin/pixelrts")
    );
    install(d, &["--uninstall", "/opt/prt"]);
    assert!(!d.join("opt/prt/bin/pixelrts").exists());
    assert!(!d.join("opt/prt/share/pixelrts").exists());

    // Back to the default, then a user configuration and a foreign helper link.
    install(d, &[]);
    fs::write(d.join("etc/pixelrts/mnt-rts.conf"), "SOURCE=/srv/images\n").unwrap();
    install(d, &["--uninstall"]);
    let left = tree(d);
    for gone in [
        "usr/local/bin/pixelrts",
        "sbin/mount.fuse.pixelrts -> /usr/local/bin/pixelrts",
        "etc/systemd/system/pixelrts@.service",
        "usr/local/share/pixelrts/",
    ] {
        assert!(!left.iter().any(|l| l == gone), "{gone} left: {left:?}");
    }
    assert!(
        d.join("etc/pixelrts/mnt-rts.conf").is_file(),
        "configuration removed"
    );

    std::os::unix::fs::symlink("/usr/bin/other", d.join("sbin/mount.fuse.pixelrts")).unwrap();
    let out = install(d, &["--uninstall"]);
    assert!(
        fs::symlink_metadata(d.join("sbin/mount.fuse.pixelrts")).is_ok(),
        "a helper link pointing elsewhere was removed"
    );
    assert!(stdout(&out).contains("kept"), "{}", stdout(&out));
}
