//! IDAT framing shared by both layouts: a byte stream cut into chunks of one fixed size (the
//! last one shorter), so stream offsets map to file offsets arithmetically.

use std::io::{self, Write};

use crate::format::png::chunk_crc;

/// Cuts a byte stream into IDAT chunks of a fixed size (the last one shorter).
pub struct IdatWriter<'w, W: Write> {
    pub out: &'w mut W,
    chunk: Vec<u8>,
    chunk_size: usize,
}

impl<'w, W: Write> IdatWriter<'w, W> {
    pub fn new(out: &'w mut W, chunk_size: usize) -> Self {
        IdatWriter {
            out,
            chunk: Vec::with_capacity(chunk_size),
            chunk_size,
        }
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = (self.chunk_size - self.chunk.len()).min(data.len());
            self.chunk.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.chunk.len() == self.chunk_size {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    pub fn flush_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.out
            .write_all(&(self.chunk.len() as u32).to_be_bytes())?;
        self.out.write_all(b"IDAT")?;
        self.out.write_all(&self.chunk)?;
        self.out
            .write_all(&chunk_crc(b"IDAT", &self.chunk).to_be_bytes())?;
        self.chunk.clear();
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.flush_chunk()
    }
}
