//! TEMPORARY compile-only stand-in for `src/fs/encode_dir.rs` (branch `spool`), with the
//! agreed API. Every operation but listing the empty root answers ENOSYS. Deleted when `main`
//! has the real module.
#![allow(dead_code, unused_variables)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::gpu::GpuMode;

#[derive(Clone, Debug, Default)]
pub struct EncodeDirOptions {
    pub threads: Option<usize>,
    pub gpu: GpuMode,
    pub level: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    Spooled,
    Committed { png: PathBuf },
    Dir,
}

#[derive(Clone, Debug)]
pub struct EntryAttr {
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub mtime: SystemTime,
    pub state: EntryState,
}

#[derive(Clone, Debug)]
pub enum Opened {
    Handle(u64),
    Committed(PathBuf),
}

pub struct EncodeDir {
    spool: PathBuf,
}

fn nosys(rel: &Path) -> Error {
    Error::io(rel, std::io::Error::from_raw_os_error(libc::ENOSYS))
}

impl EncodeDir {
    pub fn new(source: &Path, spool: &Path, opts: EncodeDirOptions) -> Result<EncodeDir> {
        Ok(EncodeDir {
            spool: spool.to_path_buf(),
        })
    }
    pub fn commit_pending(&self) -> Vec<(PathBuf, Result<()>)> {
        Vec::new()
    }
    pub fn getattr(&self, rel: &Path) -> Result<EntryAttr> {
        if rel.as_os_str().is_empty() {
            return Ok(EntryAttr {
                kind: EntryKind::Dir,
                size: 0,
                mode: 0o755,
                mtime: SystemTime::now(),
                state: EntryState::Dir,
            });
        }
        Err(Error::io(
            rel,
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ))
    }
    pub fn list(&self, rel_dir: &Path) -> Result<Vec<(OsString, EntryAttr)>> {
        Ok(Vec::new())
    }
    pub fn mkdir(&self, rel: &Path, mode: u32) -> Result<EntryAttr> {
        Err(nosys(rel))
    }
    pub fn rmdir(&self, rel: &Path) -> Result<()> {
        Err(nosys(rel))
    }
    pub fn create(&self, rel: &Path, mode: u32) -> Result<(u64, EntryAttr)> {
        Err(nosys(rel))
    }
    pub fn open(&self, rel: &Path, write: bool, truncate: bool) -> Result<Opened> {
        Err(nosys(rel))
    }
    pub fn read(&self, h: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        Err(nosys(&self.spool))
    }
    pub fn write(&self, h: u64, offset: u64, data: &[u8]) -> Result<usize> {
        Err(nosys(&self.spool))
    }
    pub fn flush(&self, h: u64) -> Result<()> {
        Err(nosys(&self.spool))
    }
    pub fn fsync(&self, h: u64) -> Result<()> {
        Err(nosys(&self.spool))
    }
    pub fn release(&self, h: u64) -> Result<()> {
        Err(nosys(&self.spool))
    }
    pub fn setattr(
        &self,
        rel: &Path,
        size: Option<u64>,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> Result<EntryAttr> {
        Err(nosys(rel))
    }
    pub fn rename(&self, from: &Path, to: &Path, noreplace: bool) -> Result<()> {
        Err(nosys(from))
    }
    pub fn unlink(&self, rel: &Path) -> Result<()> {
        Err(nosys(rel))
    }
    pub fn setxattr(&self, rel: &Path, name: &str, value: &[u8]) -> Result<()> {
        Err(nosys(rel))
    }
    pub fn getxattr(&self, rel: &Path, name: &str) -> Result<Vec<u8>> {
        Err(nosys(rel))
    }
    pub fn listxattr(&self, rel: &Path) -> Result<Vec<String>> {
        Err(nosys(rel))
    }
    pub fn removexattr(&self, rel: &Path, name: &str) -> Result<()> {
        Err(nosys(rel))
    }
}
