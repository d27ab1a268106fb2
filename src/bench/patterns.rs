//! Deterministic input generators. They stream into a writer in ~1 MiB blocks, so
//! generating a file never holds more than one block in memory.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result};

/// Size of the blocks the generators write.
pub const BLOCK_SIZE: usize = 1 << 20;

/// The kind of data a benchmark encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Seeded pseudo-random bytes (SplitMix64): incompressible.
    Random,
    /// All 0x00.
    Zeros,
    /// All 0xFF.
    Ones,
    /// Byte `i` is `i mod 256`.
    Sequential,
    /// English-like lines of words from a fixed vocabulary.
    Text,
}

impl Pattern {
    pub const ALL: [Pattern; 5] = [
        Pattern::Random,
        Pattern::Zeros,
        Pattern::Ones,
        Pattern::Sequential,
        Pattern::Text,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Random => "random",
            Pattern::Zeros => "zeros",
            Pattern::Ones => "ones",
            Pattern::Sequential => "sequential",
            Pattern::Text => "text",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pattern {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Pattern::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown pattern {s:?} (expected one of: random, zeros, ones, sequential, text)"
                )
            })
    }
}

/// SplitMix64: a small, fast, well-distributed PRNG.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

const WORDS: &[&str] = &[
    "the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on",
    "are", "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had",
    "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said",
    "there", "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up",
    "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make",
    "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see", "number",
    "no", "way", "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil",
    "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part",
    "pixel", "image", "curve", "square", "file", "data", "colour", "grid", "system", "memory",
    "kernel", "boot", "archive", "signal", "network", "program", "window",
];

/// Streams English-like text: lines of 6–16 words, sentence-cased, ending in `.\n`.
struct TextGen {
    rng: SplitMix64,
    line: Vec<u8>,
    pos: usize,
}

impl TextGen {
    fn new(seed: u64) -> Self {
        TextGen {
            rng: SplitMix64::new(seed),
            line: Vec::with_capacity(160),
            pos: 0,
        }
    }

    fn refill(&mut self) {
        self.line.clear();
        self.pos = 0;
        let n = 6 + self.rng.below(11);
        for i in 0..n {
            let w = WORDS[self.rng.below(WORDS.len())].as_bytes();
            if i == 0 {
                self.line.push(w[0].to_ascii_uppercase());
                self.line.extend_from_slice(&w[1..]);
            } else {
                self.line.push(b' ');
                self.line.extend_from_slice(w);
                if i + 1 < n && self.rng.below(8) == 0 {
                    self.line.push(b',');
                }
            }
        }
        self.line.extend_from_slice(b".\n");
    }

    fn fill(&mut self, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            if self.pos == self.line.len() {
                self.refill();
            }
            let n = buf.len().min(self.line.len() - self.pos);
            buf[..n].copy_from_slice(&self.line[self.pos..self.pos + n]);
            self.pos += n;
            buf = &mut buf[n..];
        }
    }
}

/// Writes `size` bytes of `pattern` (seeded by `seed` where it matters) to `w`,
/// in blocks of at most [`BLOCK_SIZE`] bytes.
pub fn write_pattern_to<W: Write>(
    w: &mut W,
    pattern: Pattern,
    size: u64,
    seed: u64,
) -> io::Result<()> {
    let mut block = vec![0u8; BLOCK_SIZE.min(size as usize)];
    let mut rng = SplitMix64::new(seed);
    let mut text = TextGen::new(seed);
    match pattern {
        Pattern::Zeros => block.fill(0),
        Pattern::Ones => block.fill(0xFF),
        // BLOCK_SIZE is a multiple of 256, so every block starts at a multiple of 256.
        Pattern::Sequential => block.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8),
        _ => {}
    }
    let mut left = size;
    while left > 0 {
        let n = (left.min(block.len() as u64)) as usize;
        let buf = &mut block[..n];
        match pattern {
            Pattern::Random => {
                let mut chunks = buf.chunks_exact_mut(8);
                for c in &mut chunks {
                    c.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                let tail = chunks.into_remainder();
                if !tail.is_empty() {
                    let v = rng.next_u64().to_le_bytes();
                    let len = tail.len();
                    tail.copy_from_slice(&v[..len]);
                }
            }
            Pattern::Text => text.fill(buf),
            Pattern::Zeros | Pattern::Ones | Pattern::Sequential => {}
        }
        w.write_all(buf)?;
        left -= n as u64;
    }
    Ok(())
}

/// Creates (or truncates) `path` and writes `size` bytes of `pattern` to it.
pub fn write_pattern(path: &Path, pattern: Pattern, size: u64, seed: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(64 * 1024, f);
    write_pattern_to(&mut w, pattern, size, seed)
        .and_then(|()| w.flush())
        .with_context(|| format!("writing {} ({} bytes of {pattern})", path.display(), size))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(p: Pattern, size: u64, seed: u64) -> Vec<u8> {
        let mut v = Vec::new();
        write_pattern_to(&mut v, p, size, seed).unwrap();
        v
    }

    /// A writer that fails the test if handed more than one block at once.
    struct BlockCheck(u64);
    impl Write for BlockCheck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            assert!(buf.len() <= BLOCK_SIZE);
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sizes_and_blocks() {
        for p in Pattern::ALL {
            for size in [0u64, 1, 7, 255, 4096, BLOCK_SIZE as u64 + 13] {
                assert_eq!(gen(p, size, 1).len() as u64, size, "{p} {size}");
            }
            let mut c = BlockCheck(0);
            write_pattern_to(&mut c, p, 3 * BLOCK_SIZE as u64 + 5, 9).unwrap();
            assert_eq!(c.0, 3 * BLOCK_SIZE as u64 + 5);
        }
    }

    #[test]
    fn contents() {
        assert!(gen(Pattern::Zeros, 5000, 0).iter().all(|&b| b == 0));
        assert!(gen(Pattern::Ones, 5000, 0).iter().all(|&b| b == 0xFF));
        let s = gen(Pattern::Sequential, BLOCK_SIZE as u64 * 2 + 300, 0);
        assert!(s.iter().enumerate().all(|(i, &b)| b == (i % 256) as u8));
        let t = gen(Pattern::Text, 100_000, 3);
        assert!(t.is_ascii());
        assert!(t.contains(&b'\n') && t.contains(&b' '));
        let text = String::from_utf8(t).unwrap();
        assert!(text.lines().next().unwrap().ends_with('.'));
    }

    #[test]
    fn deterministic_and_seeded() {
        for p in [Pattern::Random, Pattern::Text] {
            let a = gen(p, 3 * BLOCK_SIZE as u64 / 2, 42);
            assert_eq!(a, gen(p, 3 * BLOCK_SIZE as u64 / 2, 42));
            assert_ne!(a, gen(p, 3 * BLOCK_SIZE as u64 / 2, 43));
            // A prefix of a longer stream equals the shorter stream.
            assert_eq!(&a[..1000], &gen(p, 1000, 42)[..]);
        }
        // Random bytes look random: every byte value occurs, roughly uniformly.
        let r = gen(Pattern::Random, 1 << 20, 7);
        let mut counts = [0usize; 256];
        r.iter().for_each(|&b| counts[b as usize] += 1);
        assert!(
            counts.iter().all(|&c| (3500..4700).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn parse_names() {
        for p in Pattern::ALL {
            assert_eq!(p.name().parse::<Pattern>().unwrap(), p);
        }
        assert_eq!("TEXT".parse::<Pattern>().unwrap(), Pattern::Text);
        assert!("noise".parse::<Pattern>().is_err());
    }
}
