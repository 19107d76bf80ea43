//! A storage wrapper that injects faults, for testing everything built on [`Storage`].
//!
//! Each fault applies to the operations and object kinds chosen; everything else passes
//! through to the wrapped backend unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::storage::{ObjectInfo, ObjectKind, Storage, StorageError};

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The first matching operation fails; later ones succeed.
    FailOnce,
    /// Every matching operation fails.
    FailAlways,
    /// Reads return one byte less than asked for (a backend breaking its contract).
    ShortRead,
    /// Reads return the data with one bit flipped in the middle.
    FlipBit,
    /// Every matching operation waits this long first.
    Slow(Duration),
}

/// Which operations a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operations {
    Reads,
    Writes,
    All,
}

/// A backend with faults.
#[derive(Debug)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    fault: Fault,
    operations: Operations,
    kind: Option<ObjectKind>,
    /// How many operations the fault has hit.
    hits: AtomicUsize,
}

impl FaultyStorage {
    /// Wraps `inner` with `fault` on every operation and kind.
    pub fn new(inner: Arc<dyn Storage>, fault: Fault) -> FaultyStorage {
        FaultyStorage {
            inner,
            fault,
            operations: Operations::All,
            kind: None,
            hits: AtomicUsize::new(0),
        }
    }

    /// Restricts the fault to `operations`.
    pub fn on(mut self, operations: Operations) -> FaultyStorage {
        self.operations = operations;
        self
    }

    /// Restricts the fault to objects of `kind`.
    pub fn of_kind(mut self, kind: ObjectKind) -> FaultyStorage {
        self.kind = Some(kind);
        self
    }

    /// How many operations the fault hit.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn applies(&self, kind: ObjectKind, is_read: bool) -> bool {
        let operation = match self.operations {
            Operations::All => true,
            Operations::Reads => is_read,
            Operations::Writes => !is_read,
        };
        operation && self.kind.is_none_or(|k| k == kind)
    }

    /// Applies failing and slow faults; `Ok` means go on.
    fn before(&self, kind: ObjectKind, name: &str, is_read: bool) -> Result<(), StorageError> {
        if !self.applies(kind, is_read) {
            return Ok(());
        }
        let failure = || StorageError::Unreachable {
            location: self.inner.location(),
            operation: if is_read { "read" } else { "write" },
            path: format!("{}/{name}", kind.directory()),
            detail: "injected fault".to_string(),
        };
        match self.fault {
            Fault::FailOnce => {
                if self.hits.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(failure());
                }
            }
            Fault::FailAlways => {
                self.hits.fetch_add(1, Ordering::SeqCst);
                return Err(failure());
            }
            Fault::Slow(delay) => {
                self.hits.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(delay);
            }
            Fault::ShortRead | Fault::FlipBit => {}
        }
        Ok(())
    }

    /// Applies corrupting faults to data read.
    fn after_read(&self, kind: ObjectKind, mut data: Vec<u8>) -> Vec<u8> {
        if !self.applies(kind, true) || data.is_empty() {
            return data;
        }
        match self.fault {
            Fault::ShortRead => {
                self.hits.fetch_add(1, Ordering::SeqCst);
                data.pop();
            }
            Fault::FlipBit => {
                self.hits.fetch_add(1, Ordering::SeqCst);
                let middle = data.len() / 2;
                data[middle] ^= 0x08;
            }
            _ => {}
        }
        data
    }
}

impl Storage for FaultyStorage {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.before(kind, name, false)?;
        self.inner.create(kind, name, data)
    }

    fn replace(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.before(kind, name, false)?;
        self.inner.replace(kind, name, data)
    }

    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        self.before(kind, name, true)?;
        Ok(self.after_read(kind, self.inner.read(kind, name)?))
    }

    fn read_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        self.before(kind, name, true)?;
        Ok(self.after_read(kind, self.inner.read_range(kind, name, offset, length)?))
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.before(kind, "", true)?;
        self.inner.list(kind)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        self.before(kind, name, false)?;
        self.inner.delete(kind, name)
    }
}
