//! The local-directory backend: one file per object.
//!
//! # Durability
//!
//! `create` writes `name` through a temporary file in the same directory, fsyncs it, then
//! hard-links it to its final name (the link fails if the name exists, which makes the
//! write create-if-absent even between processes), unlinks the temporary name and fsyncs
//! the directory. A crash at any step leaves either no object or the whole object; stray
//! temporary files (`.tmp-*`) are never listed and are removed by `prune`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use crate::storage::{ObjectInfo, ObjectKind, Storage, StorageError};

/// Prefix of temporary files; never a valid object name.
const TEMPORARY_PREFIX: &str = ".tmp-";

/// A repository stored in a directory of the local filesystem.
#[derive(Debug, Clone)]
pub struct LocalDirectory {
    /// The repository's root directory.
    root: PathBuf,
}

impl LocalDirectory {
    /// A backend rooted at `root`; the directory need not exist yet (`init` creates it).
    pub fn new(root: impl Into<PathBuf>) -> LocalDirectory {
        LocalDirectory { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn directory_of(&self, kind: ObjectKind, name: &str) -> PathBuf {
        let mut directory = self.root.join(kind.directory());
        if kind.is_fanned_out() {
            directory.push(name.get(..2).unwrap_or("00"));
        }
        directory
    }

    fn path_of(&self, kind: ObjectKind, name: &str) -> PathBuf {
        if kind == ObjectKind::Config {
            return self.root.join(name);
        }
        self.directory_of(kind, name).join(name)
    }

    fn io_error(
        &self,
        operation: &'static str,
        path: &Path,
        source: std::io::Error,
    ) -> StorageError {
        if source.kind() == ErrorKind::PermissionDenied {
            return StorageError::PermissionDenied {
                location: self.location(),
                path: path.display().to_string(),
            };
        }
        StorageError::Io {
            location: self.location(),
            operation,
            path: path.display().to_string(),
            source,
        }
    }

    fn write_error(
        &self,
        kind: ObjectKind,
        name: &str,
        operation: &'static str,
        path: &Path,
        source: std::io::Error,
    ) -> StorageError {
        if is_no_space(&source) {
            return StorageError::NoSpace {
                location: self.location(),
                kind,
                name: name.to_string(),
            };
        }
        self.io_error(operation, path, source)
    }

    /// Writes `data` to a fresh temporary file next to the final path, fsynced.
    fn write_temporary(
        &self,
        kind: ObjectKind,
        name: &str,
        directory: &Path,
        data: &[u8],
    ) -> Result<PathBuf, StorageError> {
        fs::create_dir_all(directory)
            .map_err(|e| self.write_error(kind, name, "create directory", directory, e))?;
        let temporary = directory.join(format!("{TEMPORARY_PREFIX}{}", random_suffix()));
        let result = if data.len() >= DIRECT_MINIMUM_BYTES {
            lifeboat_directio::write_new_file(&temporary, data)
        } else {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temporary)
                .and_then(|mut file| {
                    file.write_all(data)?;
                    file.sync_all()
                })
        };
        if let Err(error) = result {
            let _ = fs::remove_file(&temporary);
            return Err(self.write_error(kind, name, "write", &temporary, error));
        }
        Ok(temporary)
    }

    fn sync_directory(&self, directory: &Path) -> Result<(), StorageError> {
        File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io_error("fsync directory", directory, e))
    }
}

/// Objects and ranges at least this large (packs) are written and read with `O_DIRECT`
/// (see `lifeboat-directio`): they are written once, fsynced at once and read in large
/// ranges once by a restore; on virtual machines, copying them through the page cache
/// costs more CPU than compressing them.
const DIRECT_MINIMUM_BYTES: usize = 1024 * 1024;

fn is_no_space(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || error.kind() == ErrorKind::StorageFull
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random generator works");
    hex::encode(bytes)
}

impl Storage for LocalDirectory {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let directory = if kind == ObjectKind::Config {
            self.root.clone()
        } else {
            self.directory_of(kind, name)
        };
        let path = self.path_of(kind, name);
        let temporary = self.write_temporary(kind, name, &directory, data)?;
        let linked = fs::hard_link(&temporary, &path);
        let _ = fs::remove_file(&temporary);
        match linked {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                return Err(StorageError::AlreadyExists {
                    location: self.location(),
                    kind,
                    name: name.to_string(),
                });
            }
            Err(error) => return Err(self.write_error(kind, name, "link", &path, error)),
        }
        self.sync_directory(&directory)
    }

    fn replace(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let directory = self.directory_of(kind, name);
        let path = self.path_of(kind, name);
        let temporary = self.write_temporary(kind, name, &directory, data)?;
        if let Err(error) = fs::rename(&temporary, &path) {
            let _ = fs::remove_file(&temporary);
            return Err(self.write_error(kind, name, "rename", &path, error));
        }
        self.sync_directory(&directory)
    }

    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.path_of(kind, name);
        let mut file = File::open(&path).map_err(|e| self.map_open_error(kind, name, &path, e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| self.io_error("read", &path, e))?;
        Ok(data)
    }

    fn read_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let path = self.path_of(kind, name);
        let file = File::open(&path).map_err(|e| self.map_open_error(kind, name, &path, e))?;
        let length_usize = usize::try_from(length).map_err(|_| {
            self.io_error(
                "read",
                &path,
                std::io::Error::new(ErrorKind::InvalidInput, "range too large"),
            )
        })?;
        match lifeboat_directio::read_range(&file, offset, length_usize, DIRECT_MINIMUM_BYTES) {
            Ok(Some(data)) => Ok(data),
            Ok(None) => {
                let actual_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
                Err(StorageError::ShortObject {
                    location: self.location(),
                    kind,
                    name: name.to_string(),
                    offset,
                    length,
                    actual_bytes,
                })
            }
            Err(error) => Err(self.io_error("read", &path, error)),
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        let base = self.root.join(kind.directory());
        let mut objects = Vec::new();
        if kind == ObjectKind::Config {
            let path = self.root.join("config");
            match fs::metadata(&path) {
                Ok(metadata) => objects.push(ObjectInfo {
                    name: "config".to_string(),
                    size_bytes: metadata.len(),
                }),
                // No repository here (yet); any other failure (permissions, I/O) is said,
                // not taken for an absent repository.
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => return Err(self.io_error("list", &path, error)),
            }
            return Ok(objects);
        }
        let directories = if kind.is_fanned_out() {
            match fs::read_dir(&base) {
                Ok(entries) => entries
                    .filter_map(|entry| entry.ok())
                    .filter(|entry| entry.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|entry| entry.path())
                    .collect(),
                Err(error) if error.kind() == ErrorKind::NotFound => Vec::new(),
                Err(error) => return Err(self.io_error("list", &base, error)),
            }
        } else {
            vec![base]
        };
        for directory in directories {
            let entries = match fs::read_dir(&directory) {
                Ok(entries) => entries,
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(error) => return Err(self.io_error("list", &directory, error)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_error("list", &directory, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(TEMPORARY_PREFIX) {
                    continue;
                }
                let metadata = match entry.metadata() {
                    Ok(metadata) => metadata,
                    // Deleted between listing and stat: it is gone, so not listed.
                    Err(error) if error.kind() == ErrorKind::NotFound => continue,
                    Err(error) => return Err(self.io_error("stat", &entry.path(), error)),
                };
                if metadata.is_file() {
                    objects.push(ObjectInfo {
                        name,
                        size_bytes: metadata.len(),
                    });
                }
            }
        }
        Ok(objects)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        let path = self.path_of(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(error) => Err(self.io_error("delete", &path, error)),
        }
    }
}

impl LocalDirectory {
    fn map_open_error(
        &self,
        kind: ObjectKind,
        name: &str,
        path: &Path,
        error: std::io::Error,
    ) -> StorageError {
        if error.kind() == ErrorKind::NotFound {
            StorageError::NotFound {
                location: self.location(),
                kind,
                name: name.to_string(),
            }
        } else {
            self.io_error("open", path, error)
        }
    }

    /// Removes temporary files left by writers that crashed, if older than `minimum_age`.
    /// Returns how many were removed.
    pub fn remove_stale_temporaries(&self, minimum_age: std::time::Duration) -> usize {
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(directory) = stack.pop() {
            let Ok(entries) = fs::read_dir(&directory) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                if metadata.is_dir() {
                    stack.push(path);
                } else if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(TEMPORARY_PREFIX)
                {
                    let old_enough = metadata
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age >= minimum_age);
                    if old_enough && fs::remove_file(&path).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_objects_written_directly_read_back_whole_whatever_their_length() {
        let directory = tempfile::tempdir().unwrap();
        let storage = LocalDirectory::new(directory.path());
        for (number, length) in [1 << 20, (1 << 20) + 1, (3 << 20) + 4095, 5 << 20]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..length).map(|i| (i * 7 + number) as u8).collect();
            let name = format!("{number:064x}");
            storage.create(ObjectKind::Pack, &name, &data).unwrap();
            assert_eq!(storage.read(ObjectKind::Pack, &name).unwrap(), data);
            assert!(
                storage
                    .create(ObjectKind::Pack, &name, &data)
                    .unwrap_err()
                    .is_already_exists()
            );
        }
    }
}
