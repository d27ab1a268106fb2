//! Rename of files and directories in the encode directory (cases in the module doc).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};

use super::spool::{create_dirs, sync_dir};
use super::{errno, lock, remove_if_exists, EncodeDir, FileNode, Node, Tree};
use crate::error::{Error, IoContext, Result};

impl EncodeDir {
    pub fn rename(&self, from: &Path, to: &Path, noreplace: bool) -> Result<()> {
        let from = self.clean_rel(from)?;
        let to = self.clean_rel(to)?;
        if from.as_os_str().is_empty() || to.as_os_str().is_empty() {
            return Err(errno(&from, libc::EBUSY));
        }
        // File renames hold the io locks of both files, so neither is mid-encode (a commit
        // landing under the old name after the rename would undo it). Lookup, lock, then check
        // that nothing changed meanwhile, else start again.
        loop {
            let (a, b) = {
                let tree = lock(&self.tree);
                let a = match tree.nodes.get(&from) {
                    Some(Node::File(f)) => Some(f.clone()),
                    Some(Node::Dir(_)) => None,
                    None => return Err(Self::missing(&tree, &from)),
                };
                let b = match tree.nodes.get(&to) {
                    Some(Node::File(f)) => Some(f.clone()),
                    _ => None,
                };
                (a, b)
            };
            let mut files: Vec<&Arc<FileNode>> = a.iter().chain(b.iter()).collect();
            files.sort_by_key(|f| Arc::as_ptr(f) as usize);
            files.dedup_by_key(|f| Arc::as_ptr(f) as usize);
            let _guards: Vec<MutexGuard<'_, ()>> = files.iter().map(|f| lock(&f.io)).collect();
            // A replaced file's open handles keep its bytes: see `unlink`.
            if let Some(b) = &b {
                self.attach_deferred_handles(b)?;
            }
            let mut tree = lock(&self.tree);
            let same = |rel: &Path, want: &Option<Arc<FileNode>>| match (tree.nodes.get(rel), want)
            {
                (Some(Node::File(f)), Some(w)) => Arc::ptr_eq(f, w),
                (Some(Node::File(_)), None) => false,
                (_, Some(_)) => false,
                (_, None) => true,
            };
            if !same(&from, &a) || !same(&to, &b) {
                continue;
            }
            return self.rename_locked(&mut tree, &from, &to, noreplace);
        }
    }

    fn rename_locked(
        &self,
        tree: &mut Tree,
        from: &Path,
        to: &Path,
        noreplace: bool,
    ) -> Result<()> {
        let src = tree
            .nodes
            .get(from)
            .cloned()
            .ok_or_else(|| Self::missing(tree, from))?;
        Self::check_parent(tree, to)?;
        if from == to {
            return Ok(());
        }
        let dst = tree.nodes.get(to).cloned();
        if dst.is_some() && noreplace {
            return Err(errno(to, libc::EEXIST));
        }
        match (&src, &dst) {
            (Node::File(f), dst) => {
                let dst = match dst {
                    Some(Node::Dir(_)) => return Err(errno(to, libc::EISDIR)),
                    Some(Node::File(t)) => Some(t.clone()),
                    None => None,
                };
                self.rename_file(f, dst.as_ref(), from, to)?;
            }
            (Node::Dir(_), dst) => {
                if to.starts_with(from) {
                    return Err(errno(to, libc::EINVAL));
                }
                match dst {
                    Some(Node::File(_)) => return Err(errno(to, libc::ENOTDIR)),
                    Some(Node::Dir(_)) if Self::has_children(tree, to) => {
                        return Err(errno(to, libc::ENOTEMPTY))
                    }
                    _ => {}
                }
                self.rename_dir(tree, from, to)?;
            }
        }
        tree.nodes.remove(to);
        if let Some(n) = tree.nodes.remove(from) {
            tree.nodes.insert(to.to_path_buf(), n);
        }
        Self::touch_parent(tree, from);
        Self::touch_parent(tree, to);
        Ok(())
    }

    /// Moves a file entry's PNG (if any), spool data and meta; drops the replaced entry `dst`.
    fn rename_file(
        &self,
        f: &Arc<FileNode>,
        dst: Option<&Arc<FileNode>>,
        from: &Path,
        to: &Path,
    ) -> Result<()> {
        let mut st = lock(&f.state);
        let mut dst_st = dst.map(|d| lock(&d.state));
        // The PNG first: it is the step most likely to fail (SOURCE read-only), and nothing has
        // changed yet when it does.
        let mut new_png = None;
        if let Some(png) = &st.png {
            let target = self.png_path(to);
            if let Some(parent) = target.parent() {
                create_dirs(&self.source, parent)?;
            }
            fs::rename(png, &target).at(&target)?;
            if let Some(parent) = target.parent() {
                sync_dir(parent);
            }
            new_png = Some(target);
        }
        let spool_moved = (|| -> Result<()> {
            let (src_data, dst_data) = (self.data.join(from), self.data.join(to));
            if st.spool {
                if let Some(parent) = dst_data.parent() {
                    fs::create_dir_all(parent).at(parent)?;
                }
                fs::rename(&src_data, &dst_data).at(&dst_data)?;
            } else if dst_st.as_ref().is_some_and(|d| d.spool) {
                remove_if_exists(&dst_data)?;
            }
            let (src_meta, dst_meta) = (self.meta_path(from), self.meta_path(to));
            if src_meta.exists() {
                if let Some(parent) = dst_meta.parent() {
                    fs::create_dir_all(parent).at(parent)?;
                }
                fs::rename(&src_meta, &dst_meta).at(&dst_meta)
            } else {
                remove_if_exists(&dst_meta)
            }
        })();
        if let Err(e) = spool_moved {
            if let (Some(old), Some(new)) = (&st.png, &new_png) {
                let _ = fs::rename(new, old);
            }
            return Err(e);
        }
        // Durable, like the rename of a local file after fsync of its folders.
        for p in [self.data.join(from), self.data.join(to), self.meta_path(to)] {
            if let Some(parent) = p.parent() {
                sync_dir(parent);
            }
        }
        if let Some(p) = new_png {
            st.png = Some(p);
        }
        st.rel = to.to_path_buf();
        if let Some(d) = dst_st.as_mut() {
            d.spool = false;
            d.detached = true;
        }
        Ok(())
    }

    /// Moves a directory's spool folders and the PNGs of its committed descendants, and
    /// re-keys the descendants (the caller moves the directory's own node).
    fn rename_dir(&self, tree: &mut Tree, from: &Path, to: &Path) -> Result<()> {
        for (base, what) in [(&self.data, "data"), (&self.meta, "meta")] {
            let (src, dst) = (base.join(from), base.join(to));
            if src.exists() {
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent).at(parent)?;
                }
                // An empty target folder is replaced by rename(2) itself.
                fs::rename(&src, &dst).map_err(|e| {
                    tracing::warn!("encode dir rename: spool {what} folder not moved");
                    Error::io(&dst, e)
                })?;
            } else if dst.exists() {
                let _ = fs::remove_dir_all(&dst);
            }
        }
        let descendants: Vec<PathBuf> = tree
            .nodes
            .range(from.to_path_buf()..)
            .skip(1)
            .take_while(|(k, _)| k.starts_with(from))
            .map(|(k, _)| k.clone())
            .collect();
        // SOURCE folders that PNGs were moved out of: emptied ones would linger in the view.
        let source_from = self.source.join(from);
        let mut emptied = BTreeSet::new();
        for old in descendants {
            let Ok(suffix) = old.strip_prefix(from) else {
                continue;
            };
            let new = to.join(suffix);
            let Some(node) = tree.nodes.remove(&old) else {
                continue;
            };
            if let Node::File(f) = &node {
                let mut st = lock(&f.state);
                st.rel = new.clone();
                if let Some(png) = st.png.clone() {
                    let target = self.png_path(&new);
                    let moved = target
                        .parent()
                        .map_or(Ok(Vec::new()), |p| create_dirs(&self.source, p))
                        .and_then(|_| fs::rename(&png, &target).at(&target));
                    match moved {
                        Ok(()) => {
                            let mut dir = png.parent().map(Path::to_path_buf);
                            while let Some(d) = dir.filter(|d| d.starts_with(&source_from)) {
                                dir = d.parent().map(Path::to_path_buf);
                                emptied.insert(d);
                            }
                            st.png = Some(target);
                        }
                        // The entry keeps pointing at where its PNG really is.
                        Err(e) => tracing::warn!("{}: PNG not moved: {e}", png.display()),
                    }
                }
            }
            tree.nodes.insert(new, node);
        }
        // Deepest first (component order puts a folder before its contents); only empty
        // folders go, so anything else the user keeps there stays.
        for d in emptied.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::dir;
    use super::*;

    #[test]
    fn descendants_follow_their_directory() {
        let (_t, d) = dir();
        d.mkdir(Path::new("a"), 0o755).unwrap();
        d.mkdir(Path::new("a-b"), 0o755).unwrap();
        d.mkdir(Path::new("a/c"), 0o755).unwrap();
        let tree = lock(&d.tree);
        assert!(EncodeDir::has_children(&tree, Path::new("a")));
        assert!(!EncodeDir::has_children(&tree, Path::new("a-b")));
        assert!(!EncodeDir::has_children(&tree, Path::new("a/c")));
    }
}
