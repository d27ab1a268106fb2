//! Extended attributes of encode-directory entries: `user.pixelrts.<key>` metadata keys.

use std::path::Path;

use serde_json::{Map, Value};

use super::{errno, lock, EncodeDir, Node};
use crate::container::Container;
use crate::error::Result;

/// The xattr namespace that maps to metadata keys.
const XATTR_PREFIX: &str = "user.pixelrts.";

/// A metadata value as xattr bytes: strings as their text, everything else as JSON.
fn xattr_value(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

impl EncodeDir {
    /// The user key behind an xattr name, or ENOTSUP for names outside `user.pixelrts.`.
    fn xattr_key<'a>(rel: &Path, name: &'a str) -> Result<&'a str> {
        match name.strip_prefix(XATTR_PREFIX) {
            Some(k) if !k.is_empty() => Ok(k),
            _ => Err(errno(rel, libc::ENOTSUP)),
        }
    }

    pub fn setxattr(&self, rel: &Path, name: &str, value: &[u8]) -> Result<()> {
        let rel = self.clean_rel(rel)?;
        let key = Self::xattr_key(&rel, name)?;
        let text = std::str::from_utf8(value).map_err(|_| errno(&rel, libc::EINVAL))?;
        if !Self::user_key_allowed(key) {
            return Err(errno(&rel, libc::EINVAL));
        }
        let node = match self.lookup(&rel)? {
            Node::File(f) => f,
            Node::Dir(_) => return Err(errno(&rel, libc::ENOTSUP)),
        };
        // Waits for a running commit: a key set meanwhile would be missing from its PNG.
        let _io = lock(&node.io);
        let mut st = lock(&node.state);
        if st.detached {
            return Err(errno(&rel, libc::ENOENT));
        }
        if !st.dirty {
            return Err(errno(&rel, libc::EROFS));
        }
        let mut xattrs = st.xattrs.clone();
        xattrs.insert(key.to_string(), Value::String(text.to_string()));
        self.store_meta(&st.rel, &xattrs, st.closed)?;
        st.xattrs = xattrs;
        Ok(())
    }

    /// Whether the encoder would store `key` as given: the format's own keys are refused (the
    /// format decides, through `metadata::build`), and so are the keys the encode directory
    /// fills in itself.
    pub(super) fn user_key_allowed(key: &str) -> bool {
        if matches!(key, "metadata" | "file_mode" | "file_mtime") {
            return false;
        }
        let probe = Value::String("\u{1}probe".into());
        let mut user = Map::new();
        user.insert(key.to_string(), probe.clone());
        let built = crate::format::metadata::build(
            1,
            crate::format::metadata::Mode::Standard,
            &user,
            "",
            0,
        );
        let stored_as = if key == "version" {
            "content_version"
        } else {
            key
        };
        built.get(stored_as) == Some(&probe)
    }

    /// For a Spooled entry, the user keys; for a Committed one, its PNG's whole metadata.
    fn xattr_map(&self, rel: &Path) -> Result<(Map<String, Value>, bool)> {
        let node = match self.lookup(rel)? {
            Node::File(f) => f,
            Node::Dir(_) => return Ok((Map::new(), false)),
        };
        let (png, xattrs) = {
            let st = lock(&node.state);
            (
                if st.dirty { None } else { st.png.clone() },
                st.xattrs.clone(),
            )
        };
        match png {
            Some(png) => Ok((Container::open(&png)?.metadata.map, true)),
            None => Ok((xattrs, false)),
        }
    }

    pub fn getxattr(&self, rel: &Path, name: &str) -> Result<Vec<u8>> {
        let rel = self.clean_rel(rel)?;
        let (map, committed) = self.xattr_map(&rel)?;
        let key = name
            .strip_prefix(XATTR_PREFIX)
            .ok_or_else(|| errno(&rel, libc::ENODATA))?;
        if committed && key == "metadata" {
            return Ok(Value::Object(map).to_string().into_bytes());
        }
        map.get(key)
            .map(xattr_value)
            .ok_or_else(|| errno(&rel, libc::ENODATA))
    }

    pub fn listxattr(&self, rel: &Path) -> Result<Vec<String>> {
        let rel = self.clean_rel(rel)?;
        let (map, committed) = self.xattr_map(&rel)?;
        let mut names: Vec<String> = map.keys().map(|k| format!("{XATTR_PREFIX}{k}")).collect();
        if committed {
            names.push(format!("{XATTR_PREFIX}metadata"));
        }
        Ok(names)
    }

    pub fn removexattr(&self, rel: &Path, name: &str) -> Result<()> {
        let rel = self.clean_rel(rel)?;
        let key = Self::xattr_key(&rel, name)?;
        let node = match self.lookup(&rel)? {
            Node::File(f) => f,
            Node::Dir(_) => return Err(errno(&rel, libc::ENODATA)),
        };
        let _io = lock(&node.io);
        let mut st = lock(&node.state);
        if st.detached {
            return Err(errno(&rel, libc::ENOENT));
        }
        if !st.dirty {
            return Err(errno(&rel, libc::EROFS));
        }
        if !st.xattrs.contains_key(key) {
            return Err(errno(&rel, libc::ENODATA));
        }
        let mut xattrs = st.xattrs.clone();
        xattrs.remove(key);
        self.store_meta(&st.rel, &xattrs, st.closed)?;
        st.xattrs = xattrs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_metadata_keys_are_refused() {
        assert!(EncodeDir::user_key_allowed("type"));
        assert!(EncodeDir::user_key_allowed("version"));
        for k in ["data_size", "format", "grid_size", "file_mode", "metadata"] {
            assert!(!EncodeDir::user_key_allowed(k), "{k}");
        }
    }
}
