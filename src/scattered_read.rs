//! Many small reads of one file at scattered offsets in one system call (io_uring), for a
//! segment whose stream bytes lie on a hundred scanlines of the PNG: one `pread` each costs a
//! system call per row when the PNG is cached, and a device round trip per row, one after
//! another, when it is not. Each thread keeps its own ring; where io_uring is not available
//! (old kernels, seccomp, `io_uring_disabled`), or with `PIXELRTS_IO_URING=0` in the
//! environment, the caller reads one span at a time.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use io_uring::{opcode, types, IoUring};

/// Reads submitted per `io_uring_enter` at most (a segment's rows fit: a 256-pixel tile has
/// 256, and a segment touches one or two tiles' worth).
const RING_ENTRIES: u32 = 256;
/// Bytes one batch reads at most, and so the most each thread's staging buffer holds (a
/// compressed segment's rows are ~33 KiB in the OS image, at most a little over its 128 KiB).
const MAX_BATCH_BYTES: usize = 256 << 10;

/// `PIXELRTS_IO_URING=0` turns io_uring off (to compare, or where it misbehaves).
fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("PIXELRTS_IO_URING").is_none_or(|v| v != "0"))
}

/// A thread's ring and the buffer the kernel reads into. The reads land in this buffer, not
/// the caller's, and are copied out once complete: should the ring fail with reads still in
/// flight, the ring and its buffer are leaked rather than freed under the kernel's writes.
struct Ring {
    ring: IoUring,
    staging: Vec<u8>,
}

thread_local! {
    /// Outer None: not set up yet; inner None: io_uring is not available on this thread.
    static RING: RefCell<Option<Option<Ring>>> = const { RefCell::new(None) };
}

/// One read: fill `buf` from `offset`.
pub struct Read<'a> {
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// Fills every read, or returns the first error (a read past the end of the file is
/// `UnexpectedEof`). `None`: io_uring is not available here, or the reads are too many or too
/// large for one batch; nothing was read.
pub fn read_all(file: &File, reads: &mut [Read<'_>]) -> Option<io::Result<()>> {
    let total: usize = reads.iter().map(|r| r.buf.len()).sum();
    if !enabled() || reads.len() > RING_ENTRIES as usize || total > MAX_BATCH_BYTES {
        return None;
    }
    RING.with_borrow_mut(|slot| {
        let ring = slot
            .get_or_insert_with(|| match IoUring::new(RING_ENTRIES) {
                Ok(ring) => Some(Ring {
                    ring,
                    staging: Vec::new(),
                }),
                Err(e) => {
                    tracing::debug!("io_uring not available, reading one row at a time: {e}");
                    None
                }
            })
            .as_mut()?;
        let result = ring.read(file, reads, total);
        if let Err(Failed::RingBroken(_)) = &result {
            // Reads may still be in flight into the staging buffer: never free it.
            if let Some(broken) = slot.take().flatten() {
                std::mem::forget(broken);
            }
            *slot = Some(None);
        }
        Some(result.map_err(Failed::into_io))
    })
}

enum Failed {
    /// A read failed; the ring is fine.
    Read(io::Error),
    /// `io_uring_enter` itself failed: the ring is not used again.
    RingBroken(io::Error),
}

impl Failed {
    fn into_io(self) -> io::Error {
        match self {
            Failed::Read(e) | Failed::RingBroken(e) => e,
        }
    }
}

impl Ring {
    fn read(&mut self, file: &File, reads: &mut [Read<'_>], total: usize) -> Result<(), Failed> {
        if self.staging.len() < total {
            self.staging.resize(total, 0);
        }
        let fd = types::Fd(file.as_raw_fd());
        let base = self.staging.as_mut_ptr();
        {
            let mut sq = self.ring.submission();
            let mut at = 0usize;
            for (i, r) in reads.iter().enumerate() {
                // SAFETY: `at + len <= total <= staging.len()`.
                let dst = unsafe { base.add(at) };
                let entry = opcode::Read::new(fd, dst, r.buf.len() as u32)
                    .offset(r.offset)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the staging buffer outlives every read: it is only freed with the
                // ring, and a broken ring is leaked (see `read_all`).
                unsafe { sq.push(&entry) }.expect("at most RING_ENTRIES reads per batch");
                at += r.buf.len();
            }
        }
        let mut done = [0u32; RING_ENTRIES as usize];
        let mut first_error = None;
        let mut pending = reads.len();
        while pending > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => return Err(Failed::RingBroken(e)),
            }
            for cqe in self.ring.completion() {
                pending -= 1;
                match cqe.result() {
                    n if n >= 0 => done[cqe.user_data() as usize] = n as u32,
                    err => {
                        first_error.get_or_insert(io::Error::from_raw_os_error(-err));
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(Failed::Read(e));
        }
        let mut at = 0usize;
        for (r, &n) in reads.iter_mut().zip(&done) {
            let len = r.buf.len();
            let n = n as usize;
            r.buf[..n].copy_from_slice(&self.staging[at..at + n]);
            if n < len {
                // A short read (end of file, or the page cache returned part): finish it.
                use std::os::unix::fs::FileExt;
                file.read_exact_at(&mut r.buf[n..], r.offset + n as u64)
                    .map_err(Failed::Read)?;
            }
            at += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn scattered_reads_fill_every_buffer_and_report_reads_past_the_end() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        // As many reads as the ring holds, of odd sizes and offsets.
        let spans: Vec<(u64, usize)> = (0..256)
            .map(|i| ((i * 1637 % 990_000) as u64, 1 + (i * 37 % 900)))
            .collect();
        let mut bufs: Vec<Vec<u8>> = spans.iter().map(|&(_, n)| vec![0; n]).collect();
        let mut reads: Vec<Read> = spans
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(offset, _), buf)| Read { offset, buf })
            .collect();
        let Some(result) = read_all(&f, &mut reads) else {
            eprintln!("skipped: io_uring is not available on this machine");
            return;
        };
        result.unwrap();
        for (&(at, n), buf) in spans.iter().zip(&bufs) {
            assert_eq!(
                &buf[..],
                &data[at as usize..at as usize + n],
                "read at {at}"
            );
        }
        let mut past = vec![0u8; 10];
        let mut reads = [Read {
            offset: 999_995,
            buf: &mut past,
        }];
        let e = read_all(&f, &mut reads).unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
