//! Memory for write payloads, recycled.
//!
//! A protected disk's journal keeps each write's bytes until they are shipped, so every
//! write needs memory of its own. Taken fresh from the allocator, that memory comes from
//! the kernel as new pages, which it zeroes on first touch: at 64 KiB writes that zeroing
//! cost more than receiving and writing the bytes together. A [`BufferPool`] keeps the
//! memory of payloads that were dropped (shipped) for the next writes, up to a limit.

use std::sync::{Arc, Mutex};

/// Payloads of whole pages up to this size are kept, by size; others are not (their memory
/// is exactly their length, so the journal's limit on its bytes bounds its memory).
const LARGEST_KEPT: usize = 1 << 20;
const PAGE: usize = 4096;

fn is_kept(length: usize) -> bool {
    length > 0 && length.is_multiple_of(PAGE) && length <= LARGEST_KEPT
}

/// Recycles payload memory, keeping at most `limit_bytes` of it unused.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Free>,
    limit_bytes: usize,
}

#[derive(Debug)]
struct Free {
    /// `by_pages[n - 1]` holds buffers of `n` pages, each fully initialized.
    by_pages: Vec<Vec<Vec<u8>>>,
    bytes: usize,
    /// Bytes of poolable payloads taken since `trimmed`.
    taken: usize,
    trimmed: std::time::Instant,
}

impl Free {
    /// Takes buffers out until at most `bytes` are kept, each time from the size with the
    /// most memory kept (never from `spare`); returns them, to be freed.
    fn shed(&mut self, bytes: usize, spare: Option<usize>) -> Vec<Vec<u8>> {
        let mut dropped = Vec::new();
        while self.bytes > bytes {
            let largest = (0..self.by_pages.len())
                .filter(|&class| Some(class) != spare && !self.by_pages[class].is_empty())
                .max_by_key(|&class| self.by_pages[class].len() * (class + 1));
            let Some(buffer) = largest.and_then(|class| self.by_pages[class].pop()) else {
                break;
            };
            self.bytes -= buffer.len();
            dropped.push(buffer);
        }
        dropped
    }
}

impl BufferPool {
    /// A pool keeping up to `limit_bytes` of unused payload memory.
    pub fn new(limit_bytes: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Free {
                by_pages: vec![Vec::new(); LARGEST_KEPT / PAGE],
                bytes: 0,
                taken: 0,
                trimmed: std::time::Instant::now(),
            }),
            limit_bytes,
        })
    }

    /// A buffer of `length` bytes, holding whatever it held before (or zeros).
    pub fn take(self: &Arc<BufferPool>, length: usize) -> Buffer {
        if !is_kept(length) {
            return Buffer::from(vec![0; length]);
        }
        let kept = {
            let mut free = self.lock();
            free.taken += length;
            let buffer = free.by_pages[length / PAGE - 1].pop();
            if buffer.is_some() {
                free.bytes -= length;
            }
            buffer
        };
        Buffer(Arc::new(Held {
            data: kept.unwrap_or_else(|| vec![0; length]),
            pool: Some(Arc::clone(self)),
        }))
    }

    /// Bytes of unused memory kept.
    pub fn kept_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Keeps `data` for the next payload of its size. When the pool is full, buffers of the
    /// size with the most memory kept make room, so that memory kept after a burst of one
    /// size does not shut out every other size for good.
    fn give_back(&self, data: Vec<u8>) {
        let class = data.len() / PAGE - 1;
        let mut free = self.lock();
        let room = self.limit_bytes.saturating_sub(data.len());
        free.shed(room, Some(class));
        if free.bytes <= room {
            free.bytes += data.len();
            free.by_pages[class].push(data);
        }
    }

    /// Once per `period`, gives back to the allocator the memory kept beyond what payloads
    /// took during the last period: after a burst, an idle disk does not hold its memory.
    pub fn trim_unused(&self, period: std::time::Duration) {
        let dropped = {
            let mut free = self.lock();
            if free.trimmed.elapsed() < period {
                return;
            }
            let working_set = free.taken;
            free.taken = 0;
            free.trimmed = std::time::Instant::now();
            free.shed(working_set, None)
        };
        // Freed outside the lock: writes do not wait for it.
        drop(dropped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        // Nothing panics while the lock is held; a poisoned pool is still consistent.
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The bytes of one write, shared without copying; the memory goes back to its pool when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Buffer(Arc<Held>);

struct Held {
    data: Vec<u8>,
    /// Set when the memory goes back to a pool (whole pages up to [`LARGEST_KEPT`]).
    pool: Option<Arc<BufferPool>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.data));
        }
    }
}

impl Buffer {
    /// The bytes to fill, while the buffer is not shared yet.
    pub fn get_mut(&mut self) -> Option<&mut [u8]> {
        Some(&mut Arc::get_mut(&mut self.0)?.data)
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.data
    }
}

impl From<Vec<u8>> for Buffer {
    /// Bytes of no pool: freed when dropped.
    fn from(data: Vec<u8>) -> Buffer {
        Buffer(Arc::new(Held { data, pool: None }))
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Buffer) -> bool {
        **self == **other
    }
}

impl Eq for Buffer {}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_taken_again_for_the_next_write_of_its_size() {
        let pool = BufferPool::new(1 << 20);
        let mut first = pool.take(65536);
        first.get_mut().expect("not shared").fill(7);
        let address = first.as_ptr();
        let shared = first.clone();
        drop(first);
        assert_eq!(pool.kept_bytes(), 0, "a clone still holds it");
        drop(shared);
        assert_eq!(pool.kept_bytes(), 65536);
        let second = pool.take(65536);
        assert_eq!(
            second.as_ptr(),
            address,
            "the same memory, not a new allocation"
        );
        assert_eq!(pool.kept_bytes(), 0);
        let other_size = pool.take(4096);
        assert_ne!(other_size.as_ptr(), address);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limit_and_only_whole_pages_up_to_a_mebibyte() {
        let pool = BufferPool::new(3 * 65536);
        let buffers: Vec<Buffer> = (0..5).map(|_| pool.take(65536)).collect();
        drop(buffers);
        assert_eq!(pool.kept_bytes(), 3 * 65536);
        let pool = BufferPool::new(64 << 20);
        for length in [0, 512, 4097, (1 << 20) + 4096] {
            let odd = pool.take(length);
            assert_eq!(odd.len(), length);
            drop(odd);
            assert_eq!(pool.kept_bytes(), 0, "{length} bytes are not kept");
        }
    }

    #[test]
    fn a_full_pool_makes_room_for_another_size_by_dropping_the_size_it_holds_most_of() {
        let pool = BufferPool::new(4 << 20);
        drop((0..4).map(|_| pool.take(1 << 20)).collect::<Vec<_>>());
        assert_eq!(
            pool.kept_bytes(),
            4 << 20,
            "a burst of 1 MiB writes fills it"
        );
        drop((0..32).map(|_| pool.take(65536)).collect::<Vec<_>>());
        assert_eq!(pool.kept_bytes(), 4 << 20);
        let small: Vec<Buffer> = (0..32).map(|_| pool.take(65536)).collect();
        assert_eq!(
            pool.kept_bytes(),
            2 << 20,
            "the 64 KiB buffers were kept, two 1 MiB ones dropped to make room for them"
        );
        drop(small);
    }

    #[test]
    fn memory_kept_beyond_what_the_last_period_took_is_given_back() {
        let pool = BufferPool::new(64 << 20);
        drop((0..8).map(|_| pool.take(65536)).collect::<Vec<_>>());
        pool.trim_unused(std::time::Duration::from_secs(3600));
        assert_eq!(pool.kept_bytes(), 8 * 65536, "not once per hour yet");
        drop((0..2).map(|_| pool.take(65536)).collect::<Vec<_>>());
        pool.trim_unused(std::time::Duration::ZERO);
        assert_eq!(
            pool.kept_bytes(),
            8 * 65536,
            "writes took that much: all kept"
        );
        drop(pool.take(65536));
        pool.trim_unused(std::time::Duration::ZERO);
        assert_eq!(pool.kept_bytes(), 65536, "one write since: one buffer kept");
        pool.trim_unused(std::time::Duration::ZERO);
        assert_eq!(pool.kept_bytes(), 0, "idle: nothing kept");
    }

    #[test]
    fn buffers_compare_by_their_bytes_and_a_shared_one_cannot_be_filled() {
        let pool = BufferPool::new(1 << 20);
        let mut pooled = pool.take(3);
        pooled
            .get_mut()
            .expect("not shared")
            .copy_from_slice(b"abc");
        assert_eq!(pooled, Buffer::from(b"abc".to_vec()));
        let mut again = pooled.clone();
        assert!(again.get_mut().is_none());
        assert_eq!(format!("{pooled:?}"), "Buffer(3 bytes)");
    }
}
