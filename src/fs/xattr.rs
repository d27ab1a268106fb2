//! PixelRTS metadata as extended attributes.
//!
//! Every top-level metadata key `K` is `user.pixelrts.K` (a string as its text, any other value
//! as compact JSON) and the whole object is `user.pixelrts.metadata` (compact JSON). The
//! whole-object name wins over a top-level key literally called `metadata`. Keys that cannot
//! be part of an attribute name (empty, or holding a NUL byte) are only in the whole object.
//!
//! The FUSE size protocol lives here too, so it can be tested without a mount: a request with
//! size 0 asks for the size; a buffer too small gets `ERANGE`.

use serde_json::{Map, Value};

/// Prefix of every attribute this filesystem shows.
pub const PREFIX: &str = "user.pixelrts.";
/// The attribute holding the whole metadata object.
pub const WHOLE: &str = "user.pixelrts.metadata";
/// Linux refuses attribute values above 64 KiB (XATTR_SIZE_MAX); longer ones are left out so
/// that `getfattr -d` never trips over a value it cannot fetch.
pub const MAX_VALUE: usize = 65536;

/// The attributes of one metadata object, in metadata order, the whole object last.
pub fn attributes(meta: &Map<String, Value>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(meta.len() + 1);
    for (key, value) in meta {
        if key.is_empty() || key.contains('\0') || key == "metadata" {
            continue;
        }
        let bytes = value_text(value).into_bytes();
        if bytes.len() <= MAX_VALUE {
            out.push((format!("{PREFIX}{key}"), bytes));
        }
    }
    let whole = serde_json::to_string(&Value::Object(meta.clone())).unwrap_or_default();
    if whole.len() <= MAX_VALUE {
        out.push((WHOLE.to_string(), whole.into_bytes()));
    }
    out
}

/// The text of one value: a string as-is, anything else as compact JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// The value of attribute `name`, if the metadata has it.
pub fn get(meta: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    if name == WHOLE {
        return attributes(meta)
            .into_iter()
            .find(|(n, _)| n == WHOLE)
            .map(|(_, v)| v);
    }
    let key = name.strip_prefix(PREFIX)?;
    if key == "metadata" || key.is_empty() {
        return None;
    }
    let bytes = value_text(meta.get(key)?).into_bytes();
    (bytes.len() <= MAX_VALUE).then_some(bytes)
}

/// The `listxattr` payload: every name followed by a NUL byte.
pub fn list_payload<S: AsRef<str>>(names: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        out.extend_from_slice(n.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// How to answer a `getxattr`/`listxattr` request for `value` with a caller buffer of `size`.
#[derive(Debug, PartialEq, Eq)]
pub enum SizedReply<'a> {
    /// `size` was 0: report the length.
    Size(u32),
    /// The value fits.
    Data(&'a [u8]),
    /// The value does not fit in the caller's buffer: `ERANGE`.
    Range,
    /// The value is longer than the protocol can carry: `E2BIG`.
    TooBig,
}

/// Applies the size-0 probe / ERANGE rules.
pub fn sized(value: &[u8], size: u32) -> SizedReply<'_> {
    let Ok(len) = u32::try_from(value.len()) else {
        return SizedReply::TooBig;
    };
    if size == 0 {
        SizedReply::Size(len)
    } else if len > size {
        SizedReply::Range
    } else {
        SizedReply::Data(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> Map<String, Value> {
        json!({"format": "PixelRTS-2.0", "data_size": 12, "encoding": {"type": "RGBA-dense"},
               "type": "kernel", "metadata": "shadowed", "": 1})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn scalars_as_text_objects_as_json() {
        let m = meta();
        assert_eq!(get(&m, "user.pixelrts.format").unwrap(), b"PixelRTS-2.0");
        assert_eq!(get(&m, "user.pixelrts.data_size").unwrap(), b"12");
        assert_eq!(
            get(&m, "user.pixelrts.encoding").unwrap(),
            br#"{"type":"RGBA-dense"}"#
        );
        assert_eq!(get(&m, "user.pixelrts.nope"), None);
        assert_eq!(get(&m, "user.other"), None);
        assert_eq!(get(&m, "user.pixelrts."), None);
        let whole: Value = serde_json::from_slice(&get(&m, WHOLE).unwrap()).unwrap();
        assert_eq!(whole, Value::Object(m.clone()));
    }

    #[test]
    fn listing_skips_unnameable_keys_and_ends_with_whole() {
        let names: Vec<String> = attributes(&meta()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "user.pixelrts.format",
                "user.pixelrts.data_size",
                "user.pixelrts.encoding",
                "user.pixelrts.type",
                WHOLE
            ]
        );
        assert_eq!(list_payload(&["a", "bc"]), b"a\0bc\0");
    }

    #[test]
    fn size_probe_and_erange() {
        assert_eq!(sized(b"abc", 0), SizedReply::Size(3));
        assert_eq!(sized(b"abc", 2), SizedReply::Range);
        assert_eq!(sized(b"abc", 3), SizedReply::Data(b"abc"));
        assert_eq!(sized(b"", 0), SizedReply::Size(0));
    }
}
