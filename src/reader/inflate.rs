//! A small safe wrapper around the zlib C API of `libz-rs-sys`, exposing the pieces that
//! zlib's `zran.c` technique needs: `inflate(Z_BLOCK)`, `data_type`, `inflatePrime` and
//! `inflateSetDictionary` on a raw inflate stream.

use std::ffi::{c_int, CStr};

use libz_rs_sys::{
    inflate, inflateEnd, inflateInit2_, inflatePrime, inflateSetDictionary, z_stream, zlibVersion,
    Z_OK,
};

pub(crate) use libz_rs_sys::{
    Z_BLOCK, Z_BUF_ERROR, Z_DATA_ERROR, Z_MEM_ERROR, Z_NEED_DICT, Z_NO_FLUSH, Z_STREAM_END,
};

/// One inflate stream. Boxed so that the `z_stream` never moves after `inflateInit2_`.
pub(crate) struct Inflater {
    strm: Box<z_stream>,
}

/// What one call of [`Inflater::inflate`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub consumed: usize,
    pub produced: usize,
    pub ret: c_int,
}

impl Inflater {
    /// `window_bits`: 15 for a zlib stream, -15 for raw deflate.
    pub fn new(window_bits: c_int) -> Result<Self, String> {
        let mut strm = Box::<z_stream>::default();
        // SAFETY: `strm` is a valid, default-initialised z_stream (zalloc/zfree/opaque set to
        // the defaults of zlib-rs), the version string is the library's own.
        let ret = unsafe {
            inflateInit2_(
                &mut *strm,
                window_bits,
                zlibVersion(),
                std::mem::size_of::<z_stream>() as c_int,
            )
        };
        if ret != Z_OK {
            return Err(format!("inflateInit2 failed ({ret})"));
        }
        Ok(Self { strm })
    }

    /// Inserts `bits` (0..=16) bits of `value` before the next input byte.
    pub fn prime(&mut self, bits: u8, value: u8) -> Result<(), String> {
        // SAFETY: the stream was initialised in `new`.
        let ret = unsafe { inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
        if ret != Z_OK {
            return Err(format!("inflatePrime failed ({ret})"));
        }
        Ok(())
    }

    /// Sets the history window (raw inflate: any time before the first `inflate`).
    pub fn set_dictionary(&mut self, dict: &[u8]) -> Result<(), String> {
        let len = u32::try_from(dict.len()).map_err(|_| "dictionary too large".to_string())?;
        // SAFETY: the stream was initialised; `dict` is valid for `len` bytes.
        let ret = unsafe { inflateSetDictionary(&mut *self.strm, dict.as_ptr(), len) };
        if ret != Z_OK {
            return Err(format!("inflateSetDictionary failed ({ret})"));
        }
        Ok(())
    }

    /// Runs `inflate` once on `input` into `output` (both at most 4 GiB - 1).
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> Step {
        let in_len = input.len().min(u32::MAX as usize);
        let out_len = output.len().min(u32::MAX as usize);
        let strm = &mut *self.strm;
        strm.next_in = input.as_ptr();
        strm.avail_in = in_len as u32;
        strm.next_out = output.as_mut_ptr();
        strm.avail_out = out_len as u32;
        // SAFETY: next_in/next_out point to live slices of the given lengths, which outlive
        // this call; the pointers are cleared again below so nothing dangles afterwards.
        let ret = unsafe { inflate(strm, flush) };
        let step = Step {
            consumed: in_len - strm.avail_in as usize,
            produced: out_len - strm.avail_out as usize,
            ret,
        };
        strm.next_in = std::ptr::null();
        strm.avail_in = 0;
        strm.next_out = std::ptr::null_mut();
        strm.avail_out = 0;
        step
    }

    /// zlib's `data_type`: unused bits in the last input byte (`& 7`), +64 in the last
    /// block, +128 right after a block boundary or the zlib header (with `Z_BLOCK`).
    pub fn data_type(&self) -> c_int {
        self.strm.data_type
    }

    /// zlib's message for the last error, if any.
    pub fn message(&self) -> String {
        if self.strm.msg.is_null() {
            return "unknown inflate error".to_string();
        }
        // SAFETY: zlib sets `msg` to a static NUL-terminated string.
        unsafe { CStr::from_ptr(self.strm.msg) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, ended exactly once here.
        unsafe {
            inflateEnd(&mut *self.strm);
        }
    }
}
