//! Memory for write payloads, recycled.
//!
//! A protected disk's journal keeps each write's bytes until they are shipped, so every
//! write needs memory of its own. Taken fresh from the allocator, that memory comes from
//! the kernel as new pages, which it zeroes on first touch: at 64 KiB writes that zeroing
//! cost more than receiving and writing the bytes together. A [`BufferPool`] keeps the
//! memory of payloads that were dropped (shipped) for the next writes, up to a limit.

use std::sync::{Arc, Mutex};

/// Payloads are kept in classes of whole pages up to this size; larger ones are not kept.
const LARGEST_KEPT: usize = 1 << 20;
const PAGE: usize = 4096;

/// Recycles payload memory, keeping at most `limit_bytes` of it unused.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Free>,
    limit_bytes: usize,
}

#[derive(Debug, Default)]
struct Free {
    /// `by_pages[n - 1]` holds buffers of `n` pages, each fully initialized.
    by_pages: Vec<Vec<Vec<u8>>>,
    bytes: usize,
}

impl BufferPool {
    /// A pool keeping up to `limit_bytes` of unused payload memory.
    pub fn new(limit_bytes: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Free {
                by_pages: vec![Vec::new(); LARGEST_KEPT / PAGE],
                bytes: 0,
            }),
            limit_bytes,
        })
    }

    /// A buffer of `length` bytes, holding whatever it held before (or zeros).
    pub fn take(self: &Arc<BufferPool>, length: usize) -> Buffer {
        let pages = length.div_ceil(PAGE).max(1);
        let kept = if pages * PAGE <= LARGEST_KEPT {
            let mut free = self.lock();
            let buffer = free.by_pages[pages - 1].pop();
            if let Some(buffer) = &buffer {
                free.bytes -= buffer.len();
            }
            buffer
        } else {
            None
        };
        let data = match kept {
            Some(data) => data,
            None if pages * PAGE <= LARGEST_KEPT => vec![0; pages * PAGE],
            None => vec![0; length],
        };
        Buffer(Arc::new(Held {
            data,
            length,
            pool: Some(Arc::clone(self)),
        }))
    }

    /// Bytes of unused memory kept.
    pub fn kept_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn give_back(&self, data: Vec<u8>) {
        let pages = data.len() / PAGE;
        if !data.len().is_multiple_of(PAGE) || pages == 0 || data.len() > LARGEST_KEPT {
            return;
        }
        let mut free = self.lock();
        if free.bytes + data.len() <= self.limit_bytes {
            free.bytes += data.len();
            free.by_pages[pages - 1].push(data);
        }
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
    /// Whole pages when pooled; the payload is the first `length` bytes.
    data: Vec<u8>,
    length: usize,
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
        let held = Arc::get_mut(&mut self.0)?;
        Some(&mut held.data[..held.length])
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.data[..self.0.length]
    }
}

impl From<Vec<u8>> for Buffer {
    /// Bytes of no pool: freed when dropped.
    fn from(data: Vec<u8>) -> Buffer {
        let length = data.len();
        Buffer(Arc::new(Held {
            data,
            length,
            pool: None,
        }))
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
        let second = pool.take(65000);
        assert_eq!(second.len(), 65000);
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
    fn the_pool_keeps_no_more_than_its_limit_nor_buffers_larger_than_a_mebibyte() {
        let pool = BufferPool::new(3 * 65536);
        let buffers: Vec<Buffer> = (0..5).map(|_| pool.take(65536)).collect();
        drop(buffers);
        assert_eq!(pool.kept_bytes(), 3 * 65536);
        let pool = BufferPool::new(64 << 20);
        let large = pool.take((1 << 20) + 1);
        assert_eq!(large.len(), (1 << 20) + 1);
        drop(large);
        assert_eq!(pool.kept_bytes(), 0);
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
