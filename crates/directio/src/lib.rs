//! Direct file I/O: reads and writes that bypass the page cache (`O_DIRECT`).
//!
//! Lifeboat moves gigabytes that are read or written once: disk images read by a backup, packs
//! written by a backup, packs read by a restore, restored disks. On virtual machines, copying
//! those bytes through freshly allocated page-cache pages costs more CPU than compressing them,
//! and a buffered write of a whole disk followed by an fsync runs at a third of the device's
//! speed. Direct I/O needs memory, offsets and lengths aligned to [`ALIGNMENT`]; every function
//! here takes care of it and falls back to the page cache where the filesystem refuses direct
//! I/O (tmpfs, some network filesystems).
//!
//! # Entry points
//!
//! - [`write_new_file`]: creates a file with the given bytes, fsynced.
//! - [`read_range`]: reads a range of a file.
//! - [`DirectWriter`]: positional writes into an existing file from any number of threads.
//! - [`DirectReader`] (`reader.rs`): positional reads of a file read once (a raw disk image
//!   being backed up): ranges the page cache holds are copied from it, the others read
//!   directly.
//! - [`AlignedBuffer`] (`buffer.rs`): memory to read into or write from without a staging
//!   copy; large buffers ask for huge pages.
//!
//! # What this crate must not know
//!
//! Anything of Lifeboat: repositories, disk images, formats. It is plain file I/O.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

mod buffer;
mod reader;

pub use buffer::AlignedBuffer;
pub use reader::DirectReader;

/// Alignment of memory, offsets and lengths for `O_DIRECT`.
pub const ALIGNMENT: usize = 4096;

/// True when a write of `length` bytes at `offset` may go direct.
fn is_aligned(offset: u64, length: usize) -> bool {
    offset.is_multiple_of(ALIGNMENT as u64) && length.is_multiple_of(ALIGNMENT) && length > 0
}

thread_local! {
    /// Each thread's staging buffer for writes from unaligned memory.
    static STAGING: RefCell<AlignedBuffer> = RefCell::new(AlignedBuffer::default());
}

/// Calls `f` with `data` in aligned memory: `data` itself when it is aligned, else a copy
/// in this thread's staging buffer.
fn with_aligned<R>(data: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if data.as_ptr().align_offset(ALIGNMENT) == 0 {
        return f(data);
    }
    STAGING.with(|staging| {
        let mut staging = staging.borrow_mut();
        if staging.len() < data.len() {
            *staging = AlignedBuffer::new(data.len());
        }
        let aligned = &mut staging.bytes_mut()[..data.len()];
        aligned.copy_from_slice(data);
        f(aligned)
    })
}

/// Turns `O_DIRECT` off on `file`, for the unaligned rest of a write.
fn stop_direct(file: &File) -> std::io::Result<()> {
    // SAFETY: a valid descriptor; clearing O_DIRECT only changes how it reads and writes.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn is_refused(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::EINVAL)
}

/// Creates the new file `path` (it must not exist) holding `data`, and fsyncs it: the
/// aligned bulk written directly, the unaligned tail through the page cache.
pub fn write_new_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if is_refused(&error) => {
            let file = OpenOptions::new().write(true).create_new(true).open(path)?;
            file.write_all_at(data, 0)?;
            return file.sync_all();
        }
        Err(error) => return Err(error),
    };
    let aligned = data.len() / ALIGNMENT * ALIGNMENT;
    let mut written = 0;
    if aligned > 0 {
        match with_aligned(&data[..aligned], |bulk| file.write_all_at(bulk, 0)) {
            Ok(()) => written = aligned,
            Err(error) if is_refused(&error) => {}
            Err(error) => return Err(error),
        }
    }
    if written < data.len() {
        stop_direct(&file)?;
        file.write_all_at(&data[written..], written as u64)?;
    }
    file.sync_all()
}

/// Reads `length` bytes at `offset` of `file`. Ranges of at least `direct_from` bytes are
/// read directly (the aligned range around them, then moved to the front of the buffer;
/// `file` keeps `O_DIRECT` set afterwards). `None` when the file ends before the range does.
pub fn read_range(
    file: &File,
    offset: u64,
    length: usize,
    direct_from: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    if length >= direct_from {
        match read_range_direct(file, offset, length) {
            Err(error) if is_refused(&error) => stop_direct(file)?,
            other => return other,
        }
    }
    let mut data = vec![0u8; length];
    match file.read_exact_at(&mut data, offset) {
        Ok(()) => Ok(Some(data)),
        Err(error) if error.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(error) => Err(error),
    }
}

fn read_range_direct(file: &File, offset: u64, length: usize) -> std::io::Result<Option<Vec<u8>>> {
    // SAFETY: a valid descriptor; setting O_DIRECT only changes how it reads.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_DIRECT) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let aligned_start = offset / ALIGNMENT as u64 * ALIGNMENT as u64;
    let lead = (offset - aligned_start) as usize;
    let total = (lead + length).div_ceil(ALIGNMENT) * ALIGNMENT;
    let mut data: Vec<u8> = Vec::with_capacity(total + ALIGNMENT);
    let pad = data.as_ptr().align_offset(ALIGNMENT);
    let mut done = 0usize;
    while done < total {
        // SAFETY: the destination lies inside the vector's capacity (pad + total bytes),
        // and no byte is read before the kernel has written it.
        let read = unsafe {
            libc::pread(
                file.as_raw_fd(),
                data.as_mut_ptr().add(pad + done).cast(),
                total - done,
                (aligned_start + done as u64) as libc::off_t,
            )
        };
        match read {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    if done < lead + length {
        return Ok(None);
    }
    // SAFETY: the pad bytes are zeroed here and the next `done` bytes were read into.
    unsafe {
        std::ptr::write_bytes(data.as_mut_ptr(), 0, pad);
        data.set_len(pad + done);
    }
    data.copy_within(pad + lead..pad + lead + length, 0);
    data.truncate(length);
    Ok(Some(data))
}

/// Positional writes into an existing file: large aligned ones directly, the others (and
/// all of them where the filesystem refuses direct I/O) through the page cache, which
/// gathers small scattered writes far better than the device takes them one by one.
#[derive(Debug)]
pub struct DirectWriter {
    buffered: File,
    direct: Option<File>,
    direct_from: usize,
}

impl DirectWriter {
    /// Opens `path` for writing both ways; `buffered` is an open descriptor of the same
    /// file. Writes of at least `direct_from` bytes go direct.
    pub fn open(path: &Path, buffered: File, direct_from: usize) -> DirectWriter {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        DirectWriter {
            buffered,
            direct,
            direct_from,
        }
    }

    /// The page-cache descriptor (for write-back hints and fsync).
    pub fn buffered(&self) -> &File {
        &self.buffered
    }

    /// Writes `data` at `offset`; true when it went through the page cache.
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<bool> {
        if let Some(direct) = &self.direct
            && data.len() >= self.direct_from
            && is_aligned(offset, data.len())
        {
            match with_aligned(data, |aligned| direct.write_all_at(aligned, offset)) {
                Ok(()) => return Ok(false),
                Err(error) if is_refused(&error) => {}
                Err(error) => return Err(error),
            }
        }
        self.buffered.write_all_at(data, offset)?;
        Ok(true)
    }

    /// Flushes both ways of writing to stable storage.
    pub fn sync_all(&self) -> std::io::Result<()> {
        self.buffered.sync_all()
    }
}

/// Test bytes that never repeat at another 8-byte-aligned offset: each word holds its
/// index, so a read from the wrong place cannot pass for the right one.
#[cfg(test)]
fn numbered(length: usize) -> Vec<u8> {
    (0..length.div_ceil(8) as u64)
        .flat_map(u64::to_le_bytes)
        .take(length)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_hold_exactly_their_bytes_aligned_or_not() {
        let directory = tempfile::tempdir().unwrap();
        for length in [0, 1, 4095, 4096, 4097, 3 * 1024 * 1024 + 17] {
            let path = directory.path().join(format!("f{length}"));
            let data = numbered(length);
            write_new_file(&path, &data).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {length}");
            assert_eq!(
                write_new_file(&path, &data).unwrap_err().kind(),
                ErrorKind::AlreadyExists
            );
        }
    }

    #[test]
    fn ranges_read_back_at_any_offset_and_end_early_past_the_end() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("f");
        let data = numbered(3 * 1024 * 1024 + 100);
        std::fs::write(&path, &data).unwrap();
        for (offset, length) in [(0, 1 << 20), (1, 1 << 20), (4095, 2 << 20), (100, 5)] {
            let file = File::open(&path).unwrap();
            let range = read_range(&file, offset as u64, length, 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(range, &data[offset..offset + length]);
        }
        let file = File::open(&path).unwrap();
        let tail = data.len() - (1 << 20);
        assert_eq!(
            read_range(&file, tail as u64, 1 << 20, 1 << 20)
                .unwrap()
                .unwrap(),
            &data[tail..]
        );
        assert!(
            read_range(&file, tail as u64 + 1, 1 << 20, 1 << 20)
                .unwrap()
                .is_none()
        );
        assert!(
            read_range(&file, data.len() as u64, 10, 1 << 20)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn positional_writes_mix_direct_and_buffered_and_read_back() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("disk");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let writer = DirectWriter::open(&path, file, 8192);
        let block = numbered(64 * 1024);
        let unaligned_memory = &numbered(8193)[1..];
        assert!(!writer.write_at(&block, 0).unwrap() || writer.direct.is_none());
        writer.write_at(unaligned_memory, 128 * 1024).unwrap();
        assert!(writer.write_at(&block[..100], 300 * 1024 + 5).unwrap());
        writer.sync_all().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[..64 * 1024], &block[..]);
        assert_eq!(&back[128 * 1024..128 * 1024 + 8192], unaligned_memory);
        assert_eq!(&back[300 * 1024 + 5..300 * 1024 + 105], &block[..100]);
        assert!(back[64 * 1024..128 * 1024].iter().all(|&b| b == 0));
    }
}
