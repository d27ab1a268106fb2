//! `pixelrts mount`, `pixelrts umount`, and the mount(8) helper conventions.
//!
//! Without `-f` the command re-executes itself with `-f` in a new session, stdio on /dev/null
//! (or stderr appended to `$PIXELRTS_LOG_FILE`), and a pipe named by `PIXELRTS_READY_FD`: the
//! child writes `READY` once the mount is usable, or `ERROR <message>`; the parent exits 0
//! only on `READY`. Re-executing instead of forking keeps fork() away from a process that
//! already runs threads.
//!
//! In the foreground, SIGTERM, SIGINT and SIGHUP are blocked before any thread starts and
//! taken with sigwait(): the filesystem is unmounted (lazily if it is busy) and the process
//! exits 0. An unmount from outside (`fusermount3 -u`) ends the session thread, which raises
//! SIGUSR1 to wake the same loop.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use pixelrts::fs::{self, MountOptions};

use super::exit;

/// Environment variable naming the readiness pipe of a background mount.
const READY_FD_ENV: &str = "PIXELRTS_READY_FD";
/// Environment variable: append the background mount process's log here.
const LOG_FILE_ENV: &str = "PIXELRTS_LOG_FILE";
/// argv[0] under which mount(8) runs us directly.
const HELPER_NAME: &str = "mount.fuse.pixelrts";
/// How long to wait for the session to end after unmounting.
const SESSION_END_WAIT: Duration = Duration::from_secs(10);
/// How long open files may keep a lazily detached mount alive after SIGTERM.
const BUSY_EXIT_WAIT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Folder holding the .rts.png files.
    pub source: PathBuf,
    /// Folder to mount on.
    pub mountpoint: PathBuf,
    /// Mount options, comma-separated; repeatable (--help lists them).
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append, long_help = options_help())]
    pub options: Vec<String>,
    /// Stay in the foreground (default: return once mounted, serve in the background).
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
}

/// `-o`'s long help: every option from [`fs::OPTION_DOCS`].
fn options_help() -> String {
    let mut s = String::from("Mount options, comma-separated; repeatable (later ones win):");
    for (name, what) in fs::OPTION_DOCS {
        s.push_str(&format!("\n  {name}\n      {what}"));
    }
    s
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where the filesystem is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even if files are open (the mount goes away once they are closed).
    #[arg(short = 'z', long = "lazy")]
    pub lazy: bool,
}

/// A mount request in the mount(8) / mount.fuse3 calling convention.
#[derive(Debug, PartialEq, Eq)]
pub struct HelperCall {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    /// mount(8)'s `-f`: do everything but the mount itself.
    pub fake: bool,
    /// `-f` given to `pixelrts SOURCE MP`: stay in the foreground.
    pub foreground: bool,
    pub verbose: u8,
}

/// Recognises the helper conventions; None for ordinary command lines. A first argument that
/// is not an option nor a subcommand (`is_subcommand`, asked last: it builds the whole command
/// line definition) and is followed by a second positional argument means the `pixelrts SOURCE
/// MOUNTPOINT -o OPTS` convention of mount.fuse3.
pub fn helper_call(
    args: &[OsString],
    is_subcommand: impl Fn(&str) -> bool,
) -> Option<Result<HelperCall, String>> {
    let argv0 = args.first()?;
    let as_helper = Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == OsStr::new(HELPER_NAME));
    if !as_helper {
        let first = args.get(1)?.to_str().unwrap_or("");
        let second = args.get(2)?;
        // A mistyped subcommand (`pixelrts encod a b`) is not a mount: the convention needs a
        // SOURCE that looks like a path.
        let looks_like_path = first.contains('/') || Path::new(&args[1]).exists();
        if first.starts_with('-')
            || !looks_like_path
            || second.to_string_lossy().starts_with('-')
            || is_subcommand(first)
        {
            return None;
        }
    }
    Some(parse_helper(&args[1..], as_helper))
}

fn parse_helper(args: &[OsString], as_helper: bool) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut foreground, mut verbose) = (false, false, 0u8);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => options.push(
                it.next()
                    .ok_or("-o needs a value")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            // mount(8) adds the type when the helper is run for a subtype; it is ours.
            "-t" => {
                it.next().ok_or("-t needs a value")?;
            }
            "-f" if as_helper => fake = true,
            "-f" | "--foreground" => foreground = true,
            "-n" | "-s" => {}
            "-v" => verbose = verbose.saturating_add(1),
            _ if s.starts_with("-o") => options.push(s[2..].to_string()),
            _ if s.starts_with('-') => return Err(format!("unknown flag {s:?}")),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    match <[PathBuf; 2]>::try_from(positional) {
        Ok([source, mountpoint]) => Ok(HelperCall {
            source,
            mountpoint,
            options,
            fake,
            foreground,
            verbose,
        }),
        Err(p) => Err(format!(
            "expected SOURCE MOUNTPOINT [-o OPTIONS], got {} positional argument(s)",
            p.len()
        )),
    }
}

/// Runs a helper-convention mount (after logging is set up).
pub fn run_helper(call: HelperCall) -> anyhow::Result<i32> {
    if call.fake {
        let opts = MountOptions::parse(&call.options)?;
        fs::validate(&call.source, &call.mountpoint, &opts)?;
        return Ok(0);
    }
    cmd_mount(
        MountArgs {
            source: call.source,
            mountpoint: call.mountpoint,
            options: call.options,
            foreground: call.foreground,
        },
        call.verbose,
    )
}

/// `pixelrts mount`.
pub fn cmd_mount(a: MountArgs, verbose: u8) -> anyhow::Result<i32> {
    let opts = MountOptions::parse(&a.options)?;
    if a.foreground {
        return foreground(&a, &opts);
    }
    // Cheap checks here give the user the error without a second process.
    fs::validate(&a.source, &a.mountpoint, &opts)?;
    background(&a, verbose)
}

/// `pixelrts umount`.
pub fn cmd_umount(a: UmountArgs) -> anyhow::Result<i32> {
    fs::unmount(&a.mountpoint, a.lazy).map_err(|e| exit::Coded {
        code: exit::MOUNT_FAILED,
        message: format!("cannot unmount: {e}"),
    })?;
    Ok(0)
}

fn background(a: &MountArgs, verbose: u8) -> anyhow::Result<i32> {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the readiness pipe");
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (mut read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let exe = std::env::current_exe().context("finding the pixelrts executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount");
    for _ in 0..verbose {
        cmd.arg("-v");
    }
    cmd.arg(&a.source).arg(&a.mountpoint);
    for o in &a.options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("-f");
    cmd.env(READY_FD_ENV, fds[1].to_string());
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    match std::env::var_os(LOG_FILE_ENV) {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .with_context(|| format!("{LOG_FILE_ENV}={}", Path::new(&p).display()))?;
            cmd.stderr(f);
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    let wfd = fds[1];
    // SAFETY: only async-signal-safe calls (setsid, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Descriptors the caller leaked to us (a pipe of a shell or test harness) must
            // not be held open by a daemon for its whole life.
            let wfd = wfd as libc::c_uint;
            if wfd > 3 {
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    wfd - 1,
                    0 as libc::c_uint,
                );
            }
            libc::syscall(
                libc::SYS_close_range,
                wfd + 1,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            );
            let wfd = wfd as RawFd;
            let flags = libc::fcntl(wfd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(wfd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount process")?;
    drop(write_end);
    let mut msg = String::new();
    let read = read_end.read_to_string(&mut msg);
    if msg.starts_with("READY") {
        // The child serves on in its own session; it is not waited for.
        return Ok(0);
    }
    let status = child.wait().ok();
    // Only the message crosses the pipe; the options were checked here before the child
    // started, so whatever the child met is a mount failure.
    let failed = |message: String| {
        anyhow::Error::from(exit::Coded {
            code: exit::MOUNT_FAILED,
            message,
        })
    };
    if let Some(err) = msg.strip_prefix("ERROR ") {
        return Err(failed(err.trim_end().to_string()));
    }
    if let Err(e) = read {
        return Err(failed(format!("reading from the mount process: {e}")));
    }
    Err(failed(format!(
        "the mount process ended before the mount was ready ({}); set {LOG_FILE_ENV}=FILE or run with -f to see its log",
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "status unknown".into())
    )))
}

/// The readiness pipe handed down by a background parent, if any.
fn take_ready_fd() -> Option<std::fs::File> {
    let v = std::env::var(READY_FD_ENV).ok()?;
    std::env::remove_var(READY_FD_ENV);
    let fd: RawFd = v.parse().ok()?;
    // SAFETY: F_GETFD only checks that the descriptor is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // Not for children (fusermount3, encoders).
    // SAFETY: fd is open (checked above) and handed to us by the parent.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(std::fs::File::from_raw_fd(fd))
    }
}

/// Sends a message to systemd when run as a Type=notify service.
fn sd_notify(msg: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
    }
}

/// Blocks the signals the main thread waits for; must run before any thread starts so every
/// thread inherits the mask and only sigwait() sees them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn foreground(a: &MountArgs, opts: &MountOptions) -> anyhow::Result<i32> {
    let set = block_signals();
    let mut ready = take_ready_fd();
    let on_end = || {
        // SAFETY: kill on our own pid; wakes the sigwait loop below.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGUSR1);
        }
    };
    let mut mounted = match fs::mount(&a.source, &a.mountpoint, opts, on_end) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(
                mountpoint = %a.mountpoint.display(),
                source_dir = %a.source.display(),
                "mount failed: {e}"
            );
            if let Some(f) = ready.as_mut() {
                let _ = write!(f, "ERROR {e}");
            }
            return Err(e.into());
        }
    };
    let mp = mounted.mountpoint().to_path_buf();
    tracing::info!(
        mountpoint = %mp.display(),
        source_dir = %a.source.display(),
        "mounted {} on {}",
        a.source.display(),
        mp.display()
    );
    if let Some(mut f) = ready.take() {
        let _ = f.write_all(b"READY\n");
        // Detached from the caller's folder so it never keeps a filesystem busy; every path
        // in use is absolute by now.
        let _ = std::env::set_current_dir("/");
    }
    sd_notify("READY=1");
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid signal set; `sig` receives the signal number.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        if r != 0 {
            continue;
        }
        match sig {
            libc::SIGUSR1 => {
                // The session ended by itself (unmounted from outside); its thread raised
                // the signal as its last act, so it is about to finish.
                match mounted.join_timeout(SESSION_END_WAIT) {
                    None => continue,
                    Some(r) => {
                        sd_notify("STOPPING=1");
                        r.with_context(|| format!("serving {}", mp.display()))?;
                        tracing::info!(mountpoint = %mp.display(), "unmounted {}", mp.display());
                        return Ok(0);
                    }
                }
            }
            _ => {
                tracing::info!(mountpoint = %mp.display(), "signal {sig}: unmounting {}", mp.display());
                sd_notify("STOPPING=1");
                let mut wait = SESSION_END_WAIT;
                if let Err(e) = fs::unmount(&mp, false) {
                    tracing::warn!("{e}; detaching lazily");
                    if let Err(e) = fs::unmount(&mp, true) {
                        // Already gone (e.g. unmounted at the same moment): nothing to do.
                        tracing::warn!("{e}");
                    }
                    // Detached but busy: the session lasts as long as files stay open. Exiting
                    // ends it (open files then fail with ENOTCONN); spooled data stays in the
                    // spool for the next mount.
                    wait = BUSY_EXIT_WAIT;
                }
                match mounted.join_timeout(wait) {
                    Some(Err(e)) => tracing::warn!("session ended with: {e}"),
                    None => tracing::warn!(
                        "{}: still in use after unmounting; exiting anyway",
                        mp.display()
                    ),
                    Some(Ok(())) => {}
                }
                tracing::info!(mountpoint = %mp.display(), "unmounted {}", mp.display());
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[OsString]) -> Option<Result<HelperCall, String>> {
        helper_call(args, super::super::is_subcommand)
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_helper_conventions() {
        assert!(call(&os(&["pixelrts", "decode", "a", "b"])).is_none());
        assert!(call(&os(&["pixelrts", "--help"])).is_none());
        assert!(call(&os(&["pixelrts", "x"])).is_none());
        assert!(call(&os(&["pixelrts", "encod", "a", "b"])).is_none());
        let c = call(&os(&["pixelrts", "/s", "/m", "-o", "ro,allow_other"]))
            .unwrap()
            .unwrap();
        assert_eq!(c.source, Path::new("/s"));
        assert_eq!(c.options, ["ro,allow_other"]);
        assert!(!c.fake);
        let c = call(&os(&[
            "/sbin/mount.fuse.pixelrts",
            "/s",
            "/m",
            "-n",
            "-f",
            "-o",
            "rw",
            "-t",
            "fuse.pixelrts",
        ]))
        .unwrap()
        .unwrap();
        assert!(c.fake && !c.foreground);
        let e = call(&os(&["mount.fuse.pixelrts", "/s"])).unwrap();
        assert!(e.unwrap_err().contains("SOURCE MOUNTPOINT"));
        let e = call(&os(&["pixelrts", "/s", "/m", "-x"])).unwrap();
        assert!(e.unwrap_err().contains("-x"));
    }
}
