//! The inode table of a mount: inode numbers, file handles aside. 1 is the view's root, 2 the
//! encode directory's root, then one number per (parent, name, kind) ever seen, never reused.
//! A rename in the encode directory moves the node, so an open file or a cached dentry keeps
//! its number, and children follow their parent because paths are computed by walking up.
//! Nodes are dropped when the kernel forgets them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;

use super::filesystem::{DirItem, ENCODE_ROOT, FIRST_FREE_INO, ROOT};
use super::view::{Kind, Probe};

/// Which tree a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Area {
    View,
    Encode,
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) parent: u64,
    pub(super) name: OsString,
    pub(super) kind: Kind,
    pub(super) lookups: u64,
    /// For a decoded file: the version of its PNG this inode stands for. An inode never
    /// changes content: when SOURCE gets a new PNG under the name, the name gets a new inode,
    /// and this one keeps serving the old version to whoever still has it open (so the
    /// kernel's page cache never holds pages of two versions under one inode).
    pub(super) version: Option<Arc<Probe>>,
}

#[derive(Debug, Default)]
pub(super) struct Nodes {
    pub(super) by_ino: HashMap<u64, Node>,
    pub(super) by_name: HashMap<(u64, OsString), u64>,
    pub(super) next: u64,
}

impl Nodes {
    /// The inode for (parent, name) of this kind and version, created when new or when the
    /// name now names something of another kind (the kernel treats a kind change as a stale
    /// inode) or another version of a decoded file.
    ///
    /// `counted`: the reply hands the inode to the kernel, whose reference is counted in the
    /// same step, so a FORGET of the same inode handled meanwhile on another worker cannot
    /// remove it between the two (the kernel would then hold an inode this table no longer
    /// knows: ENOENT on everything).
    pub(super) fn get_or_insert(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        version: Option<&Arc<Probe>>,
        counted: bool,
    ) -> u64 {
        let key = (parent, name.to_os_string());
        if let Some(&ino) = self.by_name.get(&key) {
            if let Some(n) = self.by_ino.get_mut(&ino).filter(|n| {
                n.kind == kind && n.version.as_ref().map(|p| p.key) == version.map(|p| p.key)
            }) {
                n.lookups += u64::from(counted);
                return ino;
            }
        }
        let ino = self.next.max(FIRST_FREE_INO);
        self.next = ino + 1;
        self.by_ino.insert(
            ino,
            Node {
                parent,
                name: name.to_os_string(),
                kind,
                lookups: u64::from(counted),
                version: version.cloned(),
            },
        );
        self.by_name.insert(key, ino);
        ino
    }

    /// Counts a reference the kernel takes on `item` (readdirplus), bringing the node back
    /// if a FORGET removed it since the listing was taken.
    pub(super) fn count_listed(&mut self, parent: u64, item: &DirItem) {
        if let Some(n) = self.by_ino.get_mut(&item.ino) {
            n.lookups += 1;
            return;
        }
        self.by_ino.insert(
            item.ino,
            Node {
                parent,
                name: item.name.clone(),
                kind: item.kind,
                lookups: 1,
                version: item.version.clone(),
            },
        );
        self.by_name
            .entry((parent, item.name.clone()))
            .or_insert(item.ino);
    }

    pub(super) fn forget(&mut self, ino: u64, count: u64) {
        if ino < FIRST_FREE_INO {
            return;
        }
        let Some(n) = self.by_ino.get_mut(&ino) else {
            return;
        };
        n.lookups = n.lookups.saturating_sub(count);
        if n.lookups == 0 {
            let key = (n.parent, n.name.clone());
            self.by_ino.remove(&ino);
            if self.by_name.get(&key) == Some(&ino) {
                self.by_name.remove(&key);
            }
        }
    }

    /// Detaches (parent, name): the node stays valid for open handles but is nameless.
    pub(super) fn unlink(&mut self, parent: u64, name: &OsStr) {
        if let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.parent = 0;
            }
        }
    }

    pub(super) fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        self.unlink(new_parent, new_name);
        if let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.parent = new_parent;
                n.name = new_name.to_os_string();
            }
            self.by_name
                .insert((new_parent, new_name.to_os_string()), ino);
        }
    }

    /// The area and path (relative to that area's root) of a node; None for unknown or
    /// detached nodes.
    pub(super) fn path(&self, ino: u64) -> Option<(Area, PathBuf)> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        // Bounded walk: a cycle (impossible by construction) cannot hang a worker.
        for _ in 0..4096 {
            match cur {
                ROOT => return Some((Area::View, join_rev(&names))),
                ENCODE_ROOT => return Some((Area::Encode, join_rev(&names))),
                _ => {
                    let n = self.by_ino.get(&cur)?;
                    names.push(&n.name);
                    cur = n.parent;
                }
            }
        }
        None
    }
}

fn join_rev(names: &[&OsStr]) -> PathBuf {
    let mut p = PathBuf::new();
    for n in names.iter().rev() {
        p.push(n);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_table_survives_renames() {
        let mut n = Nodes {
            next: FIRST_FREE_INO,
            ..Default::default()
        };
        let d = n.get_or_insert(ENCODE_ROOT, OsStr::new("d"), Kind::Dir, None, false);
        let f = n.get_or_insert(d, OsStr::new("f"), Kind::File, None, false);
        assert_eq!(n.path(f), Some((Area::Encode, PathBuf::from("d/f"))));
        n.rename(ENCODE_ROOT, OsStr::new("d"), ENCODE_ROOT, OsStr::new("e"));
        assert_eq!(n.path(f), Some((Area::Encode, PathBuf::from("e/f"))));
        assert_eq!(
            n.get_or_insert(d, OsStr::new("f"), Kind::File, None, false),
            f
        );
        // Replacing a target detaches it.
        let g = n.get_or_insert(d, OsStr::new("g"), Kind::File, None, false);
        n.rename(d, OsStr::new("f"), d, OsStr::new("g"));
        assert_eq!(n.path(g), None);
        assert_eq!(n.path(f), Some((Area::Encode, PathBuf::from("e/g"))));
        // A kind change gets a new number.
        let v = n.get_or_insert(ROOT, OsStr::new("x"), Kind::File, None, false);
        let w = n.get_or_insert(ROOT, OsStr::new("x"), Kind::Dir, None, false);
        assert_ne!(v, w);
        // Forget drops a node once its lookups are gone.
        for _ in 0..2 {
            assert_eq!(
                n.get_or_insert(ROOT, OsStr::new("x"), Kind::Dir, None, true),
                w
            );
        }
        n.forget(w, 1);
        assert!(n.path(w).is_some());
        n.forget(w, 1);
        assert!(n.path(w).is_none());
        assert_eq!(n.path(ROOT), Some((Area::View, PathBuf::new())));
    }
}
