//! Reads of a file read once: from the page cache what it holds, directly the rest.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::{ALIGNMENT, is_aligned};

/// Positional reads of a file that is read once, front to back. A range of which the page
/// cache holds nothing is read straight from the device when memory, offset and length are
/// aligned, so a cold file costs no copy through freshly allocated page-cache pages; a
/// range the page cache holds any of (a file just written) is copied from it. Every read
/// goes through the page cache where the filesystem refuses direct I/O, where the kernel
/// cannot tell what it caches (`cachestat`, Linux 6.5), and after any failed direct read.
#[derive(Debug)]
pub struct DirectReader {
    direct: Option<File>,
}

impl DirectReader {
    /// A second, direct descriptor of `file`, which is open at `path`; none (every read
    /// through the page cache) when the filesystem refuses direct I/O, the kernel cannot
    /// tell what the page cache holds of `file`, or `path` no longer names `file`.
    pub fn open(path: &Path, file: &File) -> DirectReader {
        if cached_pages(file, 0, ALIGNMENT).is_none() {
            return DirectReader { direct: None };
        }
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .filter(|direct| match (direct.metadata(), file.metadata()) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            });
        DirectReader { direct }
    }

    /// Reads exactly `buffer.len()` bytes at `offset` of `file` (the descriptor given to
    /// [`DirectReader::open`]); `UnexpectedEof` when the file ends first.
    pub fn read_exact_at(
        &self,
        file: &File,
        buffer: &mut [u8],
        offset: u64,
    ) -> std::io::Result<()> {
        if let Some(direct) = self.direct_for(file, buffer, offset) {
            match direct.read_exact_at(buffer, offset) {
                Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Err(error),
                // Whatever else direct I/O refuses, the page cache may still serve.
                Err(_) => {}
                Ok(()) => return Ok(()),
            }
        }
        file.read_exact_at(buffer, offset)
    }

    /// The direct descriptor when this read goes direct.
    fn direct_for(&self, file: &File, buffer: &[u8], offset: u64) -> Option<&File> {
        let direct = self.direct.as_ref()?;
        let aligned =
            buffer.as_ptr().align_offset(ALIGNMENT) == 0 && is_aligned(offset, buffer.len());
        (aligned && cached_pages(file, offset, buffer.len()) == Some(0)).then_some(direct)
    }
}

/// How many pages of the range the page cache holds (`cachestat`, Linux 6.5); `None` when
/// the kernel cannot tell.
fn cached_pages(file: &File, offset: u64, length: usize) -> Option<u64> {
    /// `struct cachestat_range` of the kernel's UAPI.
    #[repr(C)]
    struct Range {
        offset: u64,
        length: u64,
    }
    /// `struct cachestat` of the kernel's UAPI.
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cached: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    // The system call's number on these architectures (`libc` does not name it for all of
    // them); elsewhere it differs or is unknown here, and every read takes the page cache.
    let number: libc::c_long = if cfg!(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )) {
        451
    } else {
        return None;
    };
    let range = Range {
        offset,
        length: length as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: a valid descriptor and two properly laid out structures that outlive the call.
    let result = unsafe {
        libc::syscall(
            number,
            file.as_raw_fd() as libc::c_uint,
            &range as *const Range,
            &mut stat as *mut Stat,
            0 as libc::c_uint,
        )
    };
    (result == 0).then_some(stat.cached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AlignedBuffer, numbered};

    /// Drops the file's clean pages from the page cache; false where that is not possible
    /// (tmpfs keeps them).
    fn evict(file: &File) -> bool {
        file.sync_all().unwrap();
        // SAFETY: a valid descriptor; the advice only drops clean cached pages.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        cached_pages(file, 0, 1 << 30) == Some(0)
    }

    #[test]
    fn reads_return_the_same_bytes_cached_or_not_aligned_or_not() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("image");
        let data = numbered(4 * 1024 * 1024 + 1000);
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let reader = DirectReader::open(&path, &file);
        let mut aligned = AlignedBuffer::new(2 * 1024 * 1024);
        for cold in [false, true] {
            if cold && !evict(&file) {
                continue;
            }
            for offset in [0usize, 12 * 1024, 1 << 20, 2 * 1024 * 1024] {
                let length = aligned.len();
                reader
                    .read_exact_at(&file, aligned.bytes_mut(), offset as u64)
                    .unwrap();
                assert_eq!(
                    aligned.bytes(),
                    &data[offset..offset + length],
                    "at {offset}"
                );
            }
            // Unaligned memory, offset and length.
            let mut plain = vec![0u8; 5000];
            reader.read_exact_at(&file, &mut plain[1..], 4097).unwrap();
            assert_eq!(&plain[1..], &data[4097..4097 + 4999]);
        }
        // The file ends inside the last aligned range.
        let tail = (data.len() / ALIGNMENT * ALIGNMENT) as u64;
        let mut end = AlignedBuffer::new(ALIGNMENT);
        let error = reader
            .read_exact_at(&file, end.bytes_mut(), tail)
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn cached_ranges_are_copied_and_cold_ones_read_directly() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("image");
        std::fs::write(&path, numbered(8 << 20)).unwrap();
        let file = File::open(&path).unwrap();
        let reader = DirectReader::open(&path, &file);
        if reader.direct.is_none() || !evict(&file) {
            // tmpfs, or a kernel before cachestat: every read goes through the page cache,
            // which the other test covers.
            return;
        }
        let mut buffer = AlignedBuffer::new(1 << 20);
        // Cold: read directly, so the page cache still holds none of it afterwards.
        assert!(reader.direct_for(&file, buffer.bytes(), 0).is_some());
        reader.read_exact_at(&file, buffer.bytes_mut(), 0).unwrap();
        assert_eq!(cached_pages(&file, 0, 1 << 20), Some(0));
        // A range the page cache holds part of goes through it.
        let mut page = [0u8; 100];
        file.read_exact_at(&mut page, 3 << 20).unwrap();
        assert!(reader.direct_for(&file, buffer.bytes(), 3 << 20).is_none());
        // Unaligned requests never go direct.
        assert!(reader.direct_for(&file, &buffer.bytes()[1..], 0).is_none());
        assert!(reader.direct_for(&file, buffer.bytes(), 512).is_none());
    }
}
