//! VM disk images: what format an image is, reading it for backup (bytes, allocation,
//! change information), and writing a restored image.
//!
//! # Layout
//!
//! * `format.rs` — formats and their names (`vhd` is qemu's `vpc`).
//! * `inspect.rs` — `qemu-img info` and `qemu-img check`.
//! * `source.rs` — [`SourceDisk`]: locked reading, data ranges, dirty ranges.
//! * `target.rs` — [`TargetDisk`]: a restored image, renamed into place when complete.
//! * `bitmap.rs` — qcow2 persistent dirty bitmaps (change tracking).
//! * `qemu_nbd.rs` — a private `qemu-nbd` per image for formats other than raw.
//! * `lock.rs` — qemu-compatible locks for raw images read directly.
//!
//! # What this crate must not know
//!
//! Repositories, chunks, points, encryption. It reads and writes disks.

pub mod bitmap;
pub mod error;
pub mod format;
pub mod inspect;
pub mod lock;
pub mod qemu_nbd;
pub mod source;
pub mod target;

pub use error::{DiskError, Result};
pub use format::{Format, restored_file_name};
pub use inspect::{BitmapInfo, ImageInfo, inspect};
pub use source::{FileState, Range, SourceDisk};
pub use target::TargetDisk;
