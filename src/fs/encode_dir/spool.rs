//! The spool side of the encode directory: pending pickup, the meta json files, commits and
//! copy-ups.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Map, Value};

use super::{
    errno, is_not_found, lock, remove_if_exists, DirInfo, EncodeDir, FileNode, FileState, Node,
};
use crate::decode::{self, DecodeOptions};
use crate::encode::{self, EncodeOptions};
use crate::error::{Error, IoContext, Result};

pub(super) fn sync_dir(dir: &Path) {
    // Best effort, as the encoder does: a failing directory fsync on some filesystems must not
    // turn a complete commit into an error.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates the missing folders of `dir` (which must lie under `base`); returns those created,
/// deepest last, so a failed commit can remove exactly them.
pub(super) fn create_dirs(base: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = dir.to_path_buf();
    while at != base && at.symlink_metadata().is_err() {
        missing.push(at.clone());
        if !at.pop() {
            break;
        }
    }
    let mut created = Vec::new();
    for d in missing.into_iter().rev() {
        match fs::create_dir(&d) {
            Ok(()) => created.push(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_dirs(&created);
                return Err(Error::io(&d, e));
            }
        }
    }
    Ok(created)
}

fn remove_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

impl EncodeDir {
    /// Loads `SPOOL/data/<rel_dir>` recursively; returns whether it held any file. Empty spool
    /// folders are removed: directories are not remembered across mounts (see module doc).
    pub(super) fn scan_pending(
        &self,
        rel_dir: &Path,
        nodes: &mut BTreeMap<PathBuf, Node>,
    ) -> Result<bool> {
        let dir = self.data.join(rel_dir);
        let mut any = false;
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let rel = rel_dir.join(entry.file_name());
            let path = entry.path();
            if self.clean_rel(&rel).is_err() {
                tracing::warn!(
                    "{}: not a valid encode-dir name, left alone",
                    path.display()
                );
                continue;
            }
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("{}: {e}; left alone", path.display());
                    continue;
                }
            };
            if meta.is_dir() {
                let mut sub = BTreeMap::new();
                if self.scan_pending(&rel, &mut sub)? {
                    nodes.insert(
                        rel.clone(),
                        Node::Dir(DirInfo {
                            mode: meta.mode() & 0o7777,
                            mtime: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                            ctime: super::change_time(&meta),
                            uid: meta.uid(),
                            gid: meta.gid(),
                        }),
                    );
                    nodes.append(&mut sub);
                    any = true;
                } else {
                    let _ = fs::remove_dir(&path);
                }
            } else if meta.is_file() {
                let (xattrs, closed) = self.load_meta(&rel);
                // An encode this pending file's commit had started when the last mount died
                // left its temporary PNG beside the target.
                let png = self.png_path(&rel);
                if let (Some(dir), Some(name)) = (png.parent(), png.file_name()) {
                    crate::io_util::remove_stale_temps(dir, Some(name));
                }
                nodes.insert(
                    rel.clone(),
                    Node::File(Arc::new(FileNode {
                        io: Mutex::new(()),
                        state: Mutex::new(FileState {
                            rel,
                            dirty: true,
                            spool: true,
                            png: None,
                            size: meta.len(),
                            mode: meta.mode() & 0o7777,
                            mtime: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                            ctime: super::change_time(&meta),
                            uid: meta.uid(),
                            gid: meta.gid(),
                            xattrs,
                            handles: 0,
                            detached: false,
                            closed,
                        }),
                    })),
                );
                any = true;
            } else {
                tracing::warn!(
                    "{}: not a regular file or folder, left alone",
                    path.display()
                );
            }
        }
        Ok(any)
    }

    /// The user keys stored for `rel` and whether its close was recorded; a missing file
    /// means neither, a corrupt one is reported and counts as neither (the entry stays
    /// pending: the data itself is what must not be lost, nor published unfinished).
    pub(super) fn load_meta(&self, rel: &Path) -> (Map<String, Value>, bool) {
        let path = self.meta_path(rel);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => return (Map::new(), false),
            Err(e) => {
                tracing::warn!("{}: {e}; its xattrs are ignored", path.display());
                return (Map::new(), false);
            }
        };
        let parsed = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
            let xattrs = match v.get("xattrs") {
                None => Map::new(),
                Some(Value::Object(m)) if m.values().all(Value::is_string) => m.clone(),
                _ => return None,
            };
            let closed = match v.get("closed") {
                None => false,
                Some(Value::Bool(b)) => *b,
                _ => return None,
            };
            Some((xattrs, closed))
        });
        parsed.unwrap_or_else(|| {
            tracing::warn!(
                "{}: corrupt spool metadata, its xattrs are ignored and the file stays pending \
                 (the data is kept)",
                path.display()
            );
            (Map::new(), false)
        })
    }

    /// Writes `SPOOL/meta/<rel>.json` durably (or, with no keys and no recorded close,
    /// removes it).
    pub(super) fn store_meta(
        &self,
        rel: &Path,
        xattrs: &Map<String, Value>,
        closed: bool,
    ) -> Result<()> {
        let path = self.meta_path(rel);
        if xattrs.is_empty() && !closed {
            remove_if_exists(&path)?;
            if let Some(parent) = path.parent() {
                sync_dir(parent);
            }
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        let text = serde_json::json!({ "xattrs": xattrs, "closed": closed }).to_string();
        crate::io_util::write_atomically(&path, text.as_bytes(), true, true)
    }

    /// Deletes the spool data and meta of an entry (both may already be gone).
    pub(super) fn remove_spool(&self, rel: &Path) -> Result<()> {
        remove_if_exists(&self.data.join(rel))?;
        remove_if_exists(&self.meta_path(rel))
    }

    /// Encodes every Spooled entry whose close was recorded but whose encode did not finish
    /// (an earlier mount died in between). Entries never closed stay pending. Failures are
    /// returned per path and the entries stay Spooled.
    pub fn commit_pending(&self) -> Vec<(PathBuf, Result<()>)> {
        let files: Vec<(PathBuf, Arc<FileNode>)> = lock(&self.tree)
            .nodes
            .iter()
            .filter_map(|(rel, n)| match n {
                Node::File(f)
                    if {
                        let st = lock(&f.state);
                        st.dirty && st.closed
                    } =>
                {
                    Some((rel.clone(), f.clone()))
                }
                _ => None,
            })
            .collect();
        files
            .into_iter()
            .map(|(rel, f)| {
                let r = self.commit(&f);
                if let Err(e) = &r {
                    tracing::warn!("pending {}: not encoded: {e}", rel.display());
                }
                (rel, r)
            })
            .collect()
    }

    /// Encodes the entry if it is Spooled (see "Commit" in the module doc).
    pub(super) fn commit(&self, node: &Arc<FileNode>) -> Result<()> {
        let _io = lock(&node.io);
        let (rel, input, xattrs) = {
            let st = lock(&node.state);
            if !st.dirty || st.detached {
                return Ok(());
            }
            // Opened under the state lock so a concurrent directory rename cannot move the
            // path away between choosing it and opening it; the encoder reads through this
            // descriptor's /proc name, which follows the inode wherever it is renamed.
            let path = self.data.join(&st.rel);
            let f = File::open(&path).at(&path)?;
            (st.rel.clone(), f, st.xattrs.clone())
        };
        let target = self.png_path(&rel);
        let parent = target.parent().unwrap_or(&self.source).to_path_buf();
        let created = create_dirs(&self.source, &parent)?;
        let opts = EncodeOptions {
            metadata: xattrs,
            sidecar: false,
            threads: self.opts.threads,
            level: self.opts.level,
            compress: self.opts.compress,
            overwrite: true,
            fsync: true,
            record_file_attributes: true,
            gpu: self.opts.gpu,
            pool: Some(self.pool.clone()),
            ..Default::default()
        };
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", input.as_raw_fd()));
        if let Err(e) = encode::encode_file(&proc_path, &target, &opts) {
            self.encodes_failed.fetch_add(1, Ordering::Relaxed);
            // The encoder already removed its temporary file; the folders made for it go too.
            remove_dirs(&created);
            tracing::warn!(
                file = %rel.display(),
                errno = e.errno(),
                "{}: encode failed, kept in the spool: {e}",
                rel.display()
            );
            return Err(e);
        }
        if let Some(first) = created.first() {
            sync_dir(first.parent().unwrap_or(&self.source));
            for d in &created {
                sync_dir(d);
            }
        }
        self.encodes_done.fetch_add(1, Ordering::Relaxed);
        crate::failpoint::crash_point("renamed");
        let m = input.metadata().at(&self.data.join(&rel))?;

        let _tree = lock(&self.tree);
        let mut st = lock(&node.state);
        let mut png = target;
        if st.rel != rel && !st.detached {
            // A directory rename moved the entry during the encode.
            let moved = self.png_path(&st.rel);
            let r = moved
                .parent()
                .map_or(Ok(Vec::new()), |p| create_dirs(&self.source, p))
                .and_then(|_| fs::rename(&png, &moved).at(&moved));
            match r {
                Ok(()) => {
                    png = moved;
                    // Folders made for the old name and now empty would show in the view.
                    remove_dirs(&created);
                }
                Err(e) => tracing::warn!("{}: left at {}: {e}", rel.display(), png.display()),
            }
        }
        st.dirty = false;
        st.png = Some(png);
        st.size = m.len();
        st.mode = m.mode() & 0o7777;
        st.mtime = m.modified().unwrap_or_else(|_| SystemTime::now());
        st.ctime = super::change_time(&m);
        st.uid = m.uid();
        st.gid = m.gid();
        if st.handles == 0 && !st.detached {
            self.drop_spool(&mut st);
        }
        Ok(())
    }

    /// Deletes the spool copy of a committed entry (the PNG holds its bytes now).
    pub(super) fn drop_spool(&self, st: &mut FileState) {
        if let Err(e) = self.remove_spool(&st.rel) {
            // Harmless: at worst the next mount encodes the same bytes again.
            tracing::warn!("{}: spool copy not removed: {e}", st.rel.display());
        }
        st.spool = false;
        st.closed = false;
        crate::failpoint::crash_point("cleaned");
    }

    /// Gives a Committed entry with no spool file a new one: empty, or a copy-up of its bytes.
    /// The caller holds the entry's `io` lock. The state lock is not held while decoding, so
    /// listings and getattr of this entry stay quick.
    pub(super) fn spool_up(&self, node: &FileNode, empty: bool) -> Result<()> {
        let (rel, png, mode, mtime, xattrs, owner) = {
            let st = lock(&node.state);
            let png = st.png.clone().ok_or_else(|| errno(&st.rel, libc::EIO))?;
            let owner = (st.uid, st.gid);
            (
                st.rel.clone(),
                png,
                st.mode,
                st.mtime,
                st.xattrs.clone(),
                owner,
            )
        };
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("copy-up.{}.{n}", std::process::id()));
        let result = (|| -> Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .at(&tmp)?;
            if !empty {
                decode::decode_to_writer(
                    &png,
                    &mut f,
                    &DecodeOptions {
                        verify: true,
                        threads: self.opts.threads,
                        gpu: self.opts.gpu,
                        ..Default::default()
                    },
                )?;
                f.set_modified(mtime).at(&tmp)?;
            }
            // The copy belongs to the entry's owner, as the image did (set-id bits are
            // cleared by a chown, so the mode comes after it).
            let made = f.metadata().at(&tmp)?;
            if owner != (made.uid(), made.gid()) {
                std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1)).at(&tmp)?;
            }
            f.set_permissions(fs::Permissions::from_mode(mode))
                .at(&tmp)?;
            // Durable before it gets its pending name: a crash must never leave a partial copy
            // that the next mount would encode over the good PNG.
            f.sync_all().at(&tmp)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            tracing::warn!("{}: copy-up failed: {e}", rel.display());
            return Err(e);
        }
        let mut st = lock(&node.state);
        let path = self.data.join(&st.rel);
        let placed = (|| -> Result<()> {
            // Meta first, so no pending file is ever seen without its keys.
            self.store_meta(&st.rel, &xattrs, false)?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).at(parent)?;
            }
            fs::rename(&tmp, &path).at(&path)
        })();
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            let _ = self.store_meta(&st.rel, &Map::new(), false);
            return Err(e);
        }
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
        st.spool = true;
        if empty {
            st.dirty = true;
        }
        Ok(())
    }
}
