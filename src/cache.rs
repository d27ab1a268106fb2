//! One LRU of decoded tiles shared by every [`Reader`](crate::reader::Reader) of every file.
//!
//! Keys name the file by identity (device, inode, size, modification time in ns) and the tile
//! index, so a replaced or rewritten file never hits tiles of its old content. Values are the
//! tile's payload bytes (Hilbert order), shared as `Arc<[u8]>`. The cache holds at most
//! `budget` bytes of tile data: inserting evicts least recently used tiles until it fits.
//!
//! A tile being decoded is *claimed* ([`TileCache::claim`]): another thread that misses the same
//! tile meanwhile waits for it ([`TileCache::wait_for`]) instead of decoding it again (under a
//! mount, the kernel's concurrent read-ahead requests often fall in one tile).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use lru::LruCache;
use serde::Serialize;

/// Default byte budget of a [`TileCache`]: 256 MiB.
pub const DEFAULT_BUDGET: u64 = 256 << 20;

/// What identifies a file's content for caching: a replaced file (new inode) or a rewritten
/// one (new size or mtime) gets a different identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileKey {
    /// The identity of an open file, from `fstat`.
    pub fn of(file: &File) -> std::io::Result<Self> {
        let m = file.metadata()?;
        Ok(FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// A cache key: file identity and tile index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileKey {
    pub file: FileKey,
    pub tile: u64,
}

/// A snapshot of the cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Tile lookups answered from the cache.
    pub hits: u64,
    /// Tile lookups that had to decode.
    pub misses: u64,
    /// Bytes of image data inflated to produce tiles (a tile, or a whole band of rows for a
    /// plain PNG).
    pub bytes_inflated: u64,
    /// Bytes handed to callers of `read_at`.
    pub bytes_served: u64,
    /// Tiles dropped to stay within the budget.
    pub evictions: u64,
    /// Tiles held now.
    pub entries: u64,
    /// Bytes of tile data held now.
    pub bytes_cached: u64,
    /// The byte budget.
    pub budget: u64,
}

struct Inner {
    lru: LruCache<TileKey, Arc<[u8]>>,
    bytes: u64,
    /// Evicted tiles nobody else holds, kept for reuse by [`TileCache::buffer`]: a fresh
    /// allocation costs a page fault per 4 KiB on first write, a fifth of the time of a
    /// sequential read through the reader (measured, 1 GiB file, one thread).
    spare: Vec<Arc<[u8]>>,
    spare_bytes: u64,
}

impl Inner {
    /// A tile that has left the LRU: its buffer becomes a spare when nobody else holds it and
    /// the spares stay within `spare_cap`; otherwise it is freed (once its holders drop it).
    fn retire(&mut self, tile: Arc<[u8]>, spare_cap: u64) {
        let len = tile.len() as u64;
        self.bytes -= len;
        if Arc::strong_count(&tile) == 1 && self.spare_bytes + len <= spare_cap {
            self.spare_bytes += len;
            self.spare.push(tile);
        }
    }
}

/// A decode in progress (see [`TileCache::claim`]).
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

/// The right to decode one tile; dropping it wakes the threads waiting for that tile.
pub struct Claim<'a> {
    cache: &'a TileCache,
    key: TileKey,
    flight: Arc<Flight>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.cache
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        *self.flight.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.flight.cv.notify_all();
    }
}

/// Bytes of evicted tiles kept for reuse, beyond the budget.
const MAX_SPARE_BYTES: u64 = 8 << 20;

/// The shared tile cache (see the module documentation).
pub struct TileCache {
    inner: Mutex<Inner>,
    in_flight: Mutex<HashMap<TileKey, Arc<Flight>>>,
    budget: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_inflated: AtomicU64,
    bytes_served: AtomicU64,
    evictions: AtomicU64,
}

impl Default for TileCache {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET)
    }
}

impl std::fmt::Debug for TileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl TileCache {
    /// A cache holding at most `budget` bytes of tiles (0 caches nothing).
    pub fn new(budget: u64) -> Self {
        TileCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                spare: Vec::new(),
                spare_bytes: 0,
            }),
            in_flight: Mutex::new(HashMap::new()),
            budget,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_inflated: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// A shared cache with `budget` bytes.
    pub fn shared(budget: u64) -> Arc<Self> {
        Arc::new(Self::new(budget))
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent LRU: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most spare buffers may hold: their share of the budget.
    fn spare_cap(&self) -> u64 {
        MAX_SPARE_BYTES.min(self.budget / 16)
    }

    /// Looks a tile up, counting a hit or a miss.
    pub fn get(&self, key: &TileKey) -> Option<Arc<[u8]>> {
        let found = self.lock().lru.get(key).cloned();
        match &found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Looks a tile up without touching the counters or the recency order.
    pub fn peek(&self, key: &TileKey) -> Option<Arc<[u8]>> {
        self.lock().lru.peek(key).cloned()
    }

    /// Inserts a tile, evicting least recently used ones until the cache — tiles and spare
    /// buffers together — is within budget. A tile larger than the whole budget is not kept.
    pub fn insert(&self, key: TileKey, tile: Arc<[u8]>) {
        let size = tile.len() as u64;
        if size > self.budget {
            return;
        }
        // Spare buffers count against the budget: `cache_size` bounds the memory the cache
        // holds, not only what it can hit.
        let spare_cap = self.spare_cap();
        let mut inner = self.lock();
        if let Some(old) = inner.lru.put(key, tile) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += size;
        while inner.bytes + inner.spare_bytes > self.budget {
            if inner.bytes + spare_cap <= self.budget {
                // The tiles are within their share: free spare buffers.
                match inner.spare.pop() {
                    Some(b) => inner.spare_bytes -= b.len() as u64,
                    None => break,
                }
                continue;
            }
            match inner.lru.pop_lru() {
                Some((_, v)) => {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    inner.retire(v, spare_cap);
                }
                None => break,
            }
        }
    }

    /// Drops a tile its reader has used up: a sequential reader went past its end, and the
    /// kernel's page cache holds those bytes now. Its buffer becomes a spare for the next
    /// decode when nobody else holds it. A large `cp` so recycles a few buffers instead of
    /// filling the cache with tiles nobody reads again, which pushed out other files' tiles
    /// and faulted in fresh memory for each.
    pub fn release(&self, key: &TileKey) {
        let spare_cap = self.spare_cap();
        let mut inner = self.lock();
        if let Some(tile) = inner.lru.pop(key) {
            inner.retire(tile, spare_cap);
        }
    }

    /// A buffer of `len` bytes to decode a tile into before [`insert`](Self::insert)ing it:
    /// an evicted tile's memory when one of that size is spare (its old contents remain:
    /// the caller overwrites every byte), otherwise a new zeroed one.
    pub fn buffer(&self, len: usize) -> Arc<[u8]> {
        {
            let mut inner = self.lock();
            if let Some(i) = inner.spare.iter().rposition(|b| b.len() == len) {
                let b = inner.spare.swap_remove(i);
                inner.spare_bytes -= len as u64;
                // Only evicted tiles nobody held go in `spare`, and `get` cannot reach them:
                // still unique.
                debug_assert_eq!(Arc::strong_count(&b), 1);
                return b;
            }
            // A new buffer: make room for it first, so that tiles being decoded (not yet
            // inserted) fit in the budget with the cached ones instead of on top of them. An
            // evicted tile of the right size that nobody holds is the buffer: once the cache
            // is full, every decode would otherwise allocate and zero fresh memory (a `cp`
            // through the mount: 7% of its CPU in memset and first-touch page faults).
            while inner.bytes + inner.spare_bytes + len as u64 > self.budget {
                if let Some(b) = inner.spare.pop() {
                    inner.spare_bytes -= b.len() as u64;
                } else if let Some((_, mut v)) = inner.lru.pop_lru() {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    inner.bytes -= v.len() as u64;
                    if v.len() == len && Arc::get_mut(&mut v).is_some() {
                        return v;
                    }
                } else {
                    break;
                }
            }
        }
        std::iter::repeat_n(0u8, len).collect()
    }

    /// Claims `key` for decoding: `None` when another thread is decoding it now (then
    /// [`wait_for`](Self::wait_for) it). The claim ends when the returned guard is dropped,
    /// whether or not the tile was inserted.
    pub fn claim(&self, key: TileKey) -> Option<Claim<'_>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&key) {
            return None;
        }
        let flight = Arc::new(Flight::default());
        map.insert(key, flight.clone());
        Some(Claim {
            cache: self,
            key,
            flight,
        })
    }

    /// Waits until nobody is decoding `key` (returns at once when nobody is).
    pub fn wait_for(&self, key: &TileKey) {
        let flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        if let Some(f) = flight {
            let mut done = f.done.lock().unwrap_or_else(|p| p.into_inner());
            while !*done {
                done = f.cv.wait(done).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Bytes held now: cached tiles and spare buffers.
    pub fn bytes_held(&self) -> u64 {
        let inner = self.lock();
        inner.bytes + inner.spare_bytes
    }

    /// Drops every tile (counters are kept).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.lru.clear();
        inner.bytes = 0;
        inner.spare.clear();
        inner.spare_bytes = 0;
    }

    pub(crate) fn add_inflated(&self, n: u64) {
        self.bytes_inflated.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_served(&self, n: u64) {
        self.bytes_served.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes_cached) = {
            let inner = self.lock();
            (inner.lru.len() as u64, inner.bytes)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes_inflated: self.bytes_inflated.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries,
            bytes_cached,
            budget: self.budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tile: u64) -> TileKey {
        TileKey {
            file: FileKey {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
            },
            tile,
        }
    }

    #[test]
    fn a_full_cache_hands_out_an_evicted_tile_as_the_next_buffer() {
        let cache = TileCache::new(4 * 1024);
        for t in 0..4 {
            let mut b = cache.buffer(1024);
            Arc::get_mut(&mut b).unwrap().fill(t as u8);
            cache.insert(key(t), b);
        }
        let oldest = cache.peek(&key(0)).unwrap();
        let oldest_ptr = oldest.as_ptr();
        drop(oldest);
        // Held by a reader: not reused, dropped from the cache all the same.
        let held = cache.peek(&key(1)).unwrap();
        let reused = cache.buffer(1024);
        assert_eq!(
            reused.as_ptr(),
            oldest_ptr,
            "the least recently used tile's memory"
        );
        assert_eq!(cache.stats().evictions, 1);
        assert!(cache.peek(&key(0)).is_none());
        cache.insert(key(4), reused);
        let fresh = cache.buffer(1024);
        assert_ne!(fresh.as_ptr(), held.as_ptr());
        assert_eq!(cache.stats().evictions, 2);
        assert_eq!(*held, [1u8; 1024][..]);
    }

    #[test]
    fn a_released_tile_leaves_the_cache_and_its_buffer_is_the_next_one() {
        let cache = TileCache::new(1 << 20);
        let mut b = cache.buffer(1024);
        Arc::get_mut(&mut b).unwrap().fill(9);
        let ptr = b.as_ptr();
        cache.insert(key(0), b);
        cache.release(&key(0));
        assert!(cache.peek(&key(0)).is_none());
        assert_eq!(cache.stats().bytes_cached, 0);
        assert_eq!(cache.buffer(1024).as_ptr(), ptr, "the released buffer");
        // Held elsewhere: dropped from the cache, not reused.
        let b = cache.buffer(1024);
        cache.insert(key(1), b);
        let held = cache.peek(&key(1)).unwrap();
        cache.release(&key(1));
        assert!(cache.peek(&key(1)).is_none());
        assert_ne!(cache.buffer(1024).as_ptr(), held.as_ptr());
    }

    #[test]
    fn spare_buffers_count_against_the_budget() {
        // The soak's memory bound: what the cache holds, spare buffers included, stays within
        // cache_size (spare buffers used to come on top, up to 8 MiB).
        let budget = 4 << 20;
        let cache = TileCache::new(budget);
        for t in 0..200 {
            let mut b = cache.buffer(256 << 10);
            Arc::get_mut(&mut b).unwrap()[0] = t as u8;
            cache.insert(key(t), b);
            assert!(
                cache.bytes_held() <= budget,
                "{} > {budget}",
                cache.bytes_held()
            );
        }
        // Evicted buffers are still reused: the last tiles came from spare memory.
        assert!(cache.stats().bytes_cached >= budget - budget / 16 - (256 << 10));
        assert!(cache.get(&key(199)).is_some() && cache.get(&key(0)).is_none());
    }
}
