//! `pixelrts completions SHELL` and `pixelrts man DIR`: shell completions and man pages, both
//! generated from the clap definitions, so they never drift from `--help`. scripts/install.sh
//! installs what these write.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

use super::{exit, Cli};

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Folder to write pixelrts.1, pixelrts-SUBCOMMAND.1 and mount.fuse.pixelrts.8 into
    /// (created if needed).
    dir: PathBuf,
}

/// The helper's name, as mount(8) runs it.
const HELPER: &str = "mount.fuse.pixelrts";

pub fn cmd_completions(a: CompletionsArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut Cli::command(), "pixelrts", &mut out);
    out.flush().context("writing to standard output")?;
    Ok(exit::OK)
}

pub fn cmd_man(a: ManArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    for path in write_man_pages(&a.dir)? {
        println!("{}", path.display());
    }
    Ok(exit::OK)
}

/// Writes every page into `dir`; returns their paths.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // The mount page lists the -o options in their own section (as the helper's page does);
    // `--help` has them under -o instead.
    let mut top = Cli::command()
        .disable_help_subcommand(true)
        .mut_subcommand("mount", |c| {
            c.mut_arg("options", |a| {
                a.long_help("Mount options, comma-separated; repeatable, later ones win (see MOUNT OPTIONS).")
            })
            // clap_mangen renders an option with only a short name as `[-o ]`, without its
            // value: the synopsis is written out instead.
            .override_usage("pixelrts mount [-o OPTIONS]... [-f|--foreground] [-v|--verbose]... SOURCE MOUNTPOINT")
        });
    top.build();
    let mut pages = vec![(Man::new(top.clone()), true)];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push((Man::new(sub.clone()), false));
    }
    let mut written = Vec::new();
    for (man, is_top) in pages {
        let path = dir.join(man.get_filename());
        let mut page = Vec::new();
        render_page(&man, is_top, is_top, &mut page)?;
        if man.get_filename() == "pixelrts-mount.1" {
            page.extend(mount_options_section().render().as_bytes());
        }
        page.extend(exit_status_section().render().as_bytes());
        page.extend(see_also(is_top).render().as_bytes());
        write_file(&path, &page)?;
        written.push(path);
    }
    let helper = dir.join(format!("{HELPER}.8"));
    write_file(&helper, &helper_page()?)?;
    written.push(helper);
    Ok(written)
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// clap_mangen's sections, with the after-help text (examples) under EXAMPLES instead of
/// EXTRA, and on the top page without it (it is the exit status table, rendered below); the
/// VERSION section only for a command that has a version (clap_mangen panics otherwise).
fn render_page(man: &Man, is_top: bool, has_version: bool, w: &mut Vec<u8>) -> anyhow::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    if is_top {
        man.render_subcommands_section(w)?;
    } else {
        let mut extra = Vec::new();
        man.render_extra_section(&mut extra)?;
        let extra = String::from_utf8_lossy(&extra).replace(".SH EXTRA", ".SH EXAMPLES");
        if extra.lines().count() > 1 {
            w.extend(extra.as_bytes());
        }
    }
    if has_version {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// One `.TP` paragraph per item.
fn tagged_list(heading: &str, intro: Option<&str>, items: &[(String, &str)]) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", [heading]);
    if let Some(text) = intro {
        roff.text([roman(text)]);
    }
    for (tag, text) in items {
        roff.control("TP", []);
        roff.text([bold(tag.as_str())]);
        roff.text([roman(*text)]);
    }
    roff
}

fn exit_status_section() -> Roff {
    let items: Vec<(String, &str)> = exit::TABLE
        .iter()
        .map(|(code, what)| (code.to_string(), *what))
        .collect();
    tagged_list("EXIT STATUS", None, &items)
}

fn mount_options_section() -> Roff {
    let items: Vec<(String, &str)> = pixelrts::fs::OPTION_DOCS
        .iter()
        .map(|(name, what)| (name.to_string(), *what))
        .collect();
    tagged_list(
        "MOUNT OPTIONS",
        Some("Given with -o as a comma-separated list (repeatable; later ones win), or in the options field of an fstab line."),
        &items,
    )
}

fn see_also(is_top: bool) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    let mut refs = vec!["pixelrts(1)".to_string()];
    if is_top {
        refs.clear();
        let top = Cli::command();
        for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
            refs.push(format!("pixelrts-{}(1)", sub.get_name()));
        }
    }
    refs.push(format!("{HELPER}(8)"));
    refs.push("mount(8)".into());
    refs.push("fstab(5)".into());
    roff.text([roman(refs.join(", "))]);
    roff
}

/// mount.fuse.pixelrts(8): the helper mount(8) runs for `-t fuse.pixelrts` and fstab lines.
fn helper_page() -> anyhow::Result<Vec<u8>> {
    use clap::{Arg, ArgAction, Command};
    let cmd = Command::new(HELPER)
        .version(env!("CARGO_PKG_VERSION"))
        // Written out: clap_mangen shows short-only options as `[-o ]` (see write_man_pages).
        .override_usage(format!(
            "{HELPER} SOURCE MOUNTPOINT [-o OPTIONS]... [-f] [-n] [-s] [-v]..."
        ))
        .about("mount helper for PixelRTS image folders (mount -t fuse.pixelrts)")
        .long_about(
            "mount(8) runs this helper for `mount -t fuse.pixelrts SOURCE MOUNTPOINT` and for fstab \
             lines of type fuse.pixelrts. It mounts SOURCE, a folder of .rts.png images, on \
             MOUNTPOINT: each image appears as the file it holds, decoded as it is read, and \
             files written into MOUNTPOINT/encode/ are encoded into SOURCE when closed. It returns \
             once the mount is usable and serves in the background; it is the pixelrts binary \
             itself, installed as a link named mount.fuse.pixelrts (pixelrts mount does the same).",
        )
        .arg(Arg::new("SOURCE").required(true).help("Folder holding the .rts.png files."))
        .arg(Arg::new("MOUNTPOINT").required(true).help("Folder to mount on."))
        .arg(
            Arg::new("options")
                .short('o')
                .value_name("OPTIONS")
                .action(ArgAction::Append)
                .help("Mount options, comma-separated (see MOUNT OPTIONS)."),
        )
        .arg(
            Arg::new("fake")
                .short('f')
                .action(ArgAction::SetTrue)
                .help("Check SOURCE, MOUNTPOINT and the options, but do not mount (mount(8)'s --fake)."),
        )
        .arg(
            Arg::new("no-mtab")
                .short('n')
                .action(ArgAction::SetTrue)
                .help("Accepted from mount(8) and ignored (there is no mtab to write)."),
        )
        .arg(
            Arg::new("sloppy")
                .short('s')
                .action(ArgAction::SetTrue)
                .help("Accepted from mount(8) and ignored."),
        )
        .arg(
            Arg::new("verbose")
                .short('v')
                .action(ArgAction::Count)
                .help("More logging."),
        )
        .after_help(
            "Examples:\n  mount -t fuse.pixelrts /srv/images /mnt/rts -o ro,allow_other\n  \
             # /etc/fstab:\n  /srv/images  /mnt/rts  fuse.pixelrts  allow_other,nofail  0  0\n  \
             umount /mnt/rts",
        );
    let man = Man::new(cmd).section("8");
    let mut page = Vec::new();
    render_page(&man, false, true, &mut page)?;
    page.extend(mount_options_section().render().as_bytes());
    page.extend(exit_status_section().render().as_bytes());
    let mut refs = Roff::new();
    refs.control("SH", ["SEE ALSO"]);
    refs.text([roman(
        "pixelrts(1), pixelrts-mount(1), mount(8), fstab(5), fusermount3(1)",
    )]);
    page.extend(refs.render().as_bytes());
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_and_the_helper_get_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "pixelrts.1",
            "pixelrts-encode.1",
            "pixelrts-mount.1",
            "pixelrts-completions.1",
            "mount.fuse.pixelrts.8",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.contains("bench-gpu")),
            "hidden commands have no page: {names:?}"
        );
        let helper = std::fs::read_to_string(dir.path().join("mount.fuse.pixelrts.8")).unwrap();
        for (name, _) in pixelrts::fs::OPTION_DOCS {
            assert!(
                helper.contains(&name.replace('-', "\\-")),
                "{name} not in the helper's page"
            );
        }
        assert!(
            helper.contains(".SH \"EXIT STATUS\"") || helper.contains(".SH EXIT STATUS"),
            "{helper}"
        );
    }

    /// clap_mangen wrote `[-o ]` (no value, a stray space) for options with only a short name.
    #[test]
    fn the_mount_synopses_show_what_o_takes() {
        let dir = tempfile::tempdir().unwrap();
        write_man_pages(dir.path()).unwrap();
        for page in ["pixelrts-mount.1", "mount.fuse.pixelrts.8"] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            let synopsis = text
                .split(".SH SYNOPSIS")
                .nth(1)
                .and_then(|rest| rest.split(".SH ").next())
                .unwrap_or_else(|| panic!("{page} has no SYNOPSIS:\n{text}"));
            assert!(synopsis.contains("OPTIONS"), "{page}: {synopsis}");
            assert!(!synopsis.contains(" ]"), "{page}: {synopsis}");
        }
    }
}
