//! [`Repository`]: an opened repository, and typed reads and writes of its objects.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use crate::blob::{BlobDecoder, chunk_from_group};
use crate::config::{Encryption, FORMAT_NAME, FORMAT_VERSION, RepositoryConfig};
use crate::crypto::{ChunkId, Crypto, MasterKeys, fill_random};
use crate::disk_index::DiskIndex;
use crate::error::{RepositoryError, Result};
use crate::garbage::GarbageRecord;
use crate::index::ChunkIndex;
use crate::key_file::KeyFile;
use crate::lease::{Lease, unix_ms};
use crate::manifest::Manifest;
use crate::pack::FinishedPack;
use crate::pack_index::{self, PackRecord};
use crate::quarantine::QuarantineRecord;
use lifeboat_storage::{ObjectKind, Storage};

/// What `init` needs to know.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// How object bodies are protected.
    pub encryption: Encryption,
    /// The password for the first key file; required with encryption.
    pub password: Option<Vec<u8>>,
    /// Chunk size for every backup into this repository.
    pub chunk_size_bytes: u32,
}

/// An object that could not be read or decoded, found while listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedObject {
    /// Its kind.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// The chunk map, plus the index files that could not be read.
#[derive(Debug, Default)]
pub struct LoadedIndex {
    /// Every readable copy of every chunk.
    pub chunks: ChunkIndex,
    /// The names of the pack index files read.
    pub files: Vec<String>,
    /// Index files that are damaged; their chunks are absent from `chunks`.
    pub damaged: Vec<DamagedObject>,
}

/// The points of a repository.
#[derive(Debug, Default)]
pub struct PointList {
    /// Readable points, oldest first.
    pub points: Vec<Manifest>,
    /// Manifests that could not be read.
    pub damaged: Vec<DamagedObject>,
}

/// An opened repository.
#[derive(Debug, Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    config: RepositoryConfig,
    crypto: Crypto,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Repository {
    /// Creates a repository in empty storage.
    pub fn init(storage: Arc<dyn Storage>, options: InitOptions) -> Result<Repository> {
        RepositoryConfig::validate_chunk_size(options.chunk_size_bytes)
            .map_err(RepositoryError::InvalidArgument)?;
        if !storage.list(ObjectKind::Config)?.is_empty() {
            return Err(RepositoryError::AlreadyInitialized {
                location: storage.location(),
            });
        }
        let mut id = [0u8; 16];
        fill_random(&mut id);
        let config = RepositoryConfig {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            repository_id: hex::encode(id),
            chunk_size_bytes: options.chunk_size_bytes,
            encryption: options.encryption,
            compression: "zstd".to_string(),
            created: now_rfc3339(),
        };
        let crypto = match options.encryption {
            Encryption::None => Crypto::unencrypted(),
            Encryption::Aes256Gcm => {
                let password = options.password.ok_or(RepositoryError::PasswordRequired {
                    location: storage.location(),
                })?;
                let keys = MasterKeys::generate();
                let key_file = KeyFile::wrap(&keys, &password, now_rfc3339());
                let mut key_name = [0u8; 16];
                fill_random(&mut key_name);
                storage.create(
                    ObjectKind::Key,
                    &hex::encode(key_name),
                    &serde_json::to_vec_pretty(&key_file).expect("key files serialize"),
                )?;
                Crypto::encrypted(&keys)
            }
        };
        // The config goes last: a repository whose init was interrupted has no config and
        // can simply be initialised again.
        let config_bytes = serde_json::to_vec_pretty(&config).expect("config serializes");
        match storage.create(ObjectKind::Config, "config", &config_bytes) {
            Err(error) if error.is_already_exists() => {
                return Err(RepositoryError::AlreadyInitialized {
                    location: storage.location(),
                });
            }
            other => other?,
        }
        Ok(Repository {
            storage,
            config,
            crypto,
        })
    }

    /// Opens an existing repository, unlocking it with `password` if it is encrypted.
    pub fn open(storage: Arc<dyn Storage>, password: Option<&[u8]>) -> Result<Repository> {
        let location = storage.location();
        let config_bytes = match storage.read(ObjectKind::Config, "config") {
            Ok(bytes) => bytes,
            Err(error) if error.is_not_found() => {
                return Err(RepositoryError::NotARepository { location });
            }
            Err(error) => return Err(error.into()),
        };
        let config: RepositoryConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
            RepositoryError::damaged(&location, ObjectKind::Config, "config", e.to_string())
        })?;
        if config.format != FORMAT_NAME {
            return Err(RepositoryError::NotARepository { location });
        }
        if config.format_version != FORMAT_VERSION {
            return Err(RepositoryError::UnsupportedVersion {
                location,
                found: config.format_version,
                supported: FORMAT_VERSION,
            });
        }
        RepositoryConfig::validate_chunk_size(config.chunk_size_bytes).map_err(|reason| {
            RepositoryError::damaged(&location, ObjectKind::Config, "config", reason)
        })?;
        let crypto = match config.encryption {
            Encryption::None => Crypto::unencrypted(),
            Encryption::Aes256Gcm => {
                let password = password.ok_or(RepositoryError::PasswordRequired {
                    location: location.clone(),
                })?;
                Crypto::encrypted(&unlock(storage.as_ref(), password)?)
            }
        };
        Ok(Repository {
            storage,
            config,
            crypto,
        })
    }

    /// Where the repository lives.
    pub fn location(&self) -> String {
        self.storage.location()
    }

    /// The repository's configuration.
    pub fn config(&self) -> &RepositoryConfig {
        &self.config
    }

    /// Sealing, opening and chunk ids for this repository.
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    /// The same repository (configuration and keys) on other storage: an exact copy of it,
    /// such as its geo copy.
    pub fn on_storage(&self, storage: Arc<dyn Storage>) -> Repository {
        Repository {
            storage,
            config: self.config.clone(),
            crypto: self.crypto.clone(),
        }
    }

    /// The backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The chunk size of disks backed up into this repository.
    pub fn chunk_size_bytes(&self) -> u32 {
        self.config.chunk_size_bytes
    }

    fn damaged(&self, kind: ObjectKind, name: &str, reason: impl Into<String>) -> RepositoryError {
        RepositoryError::damaged(self.location(), kind, name, reason)
    }

    // ----- packs -------------------------------------------------------------------

    /// Stores a finished pack durably. Storing a pack that already exists is not an error:
    /// its id is the hash of its bytes, so it is the same pack.
    pub fn write_pack(&self, pack: &FinishedPack) -> Result<PackRecord> {
        match self.storage.create(ObjectKind::Pack, &pack.id, &pack.bytes) {
            Ok(()) => {}
            Err(error) if error.is_already_exists() => {}
            Err(error) => return Err(error.into()),
        }
        Ok(PackRecord {
            pack: pack.id.clone(),
            entries: pack.entries.clone(),
        })
    }

    /// Reads one chunk, trying every known copy, preferred first. Each copy is fully
    /// checked (seal, length, hash); a copy that fails is skipped with a warning and the
    /// error of the first copy is returned if none is good.
    pub fn read_chunk(
        &self,
        index: &ChunkIndex,
        chunk: &ChunkId,
        decoder: &mut BlobDecoder,
    ) -> Result<Vec<u8>> {
        let locations = index.locations(chunk);
        if locations.is_empty() {
            return Err(RepositoryError::MissingChunk {
                location: self.location(),
                chunk: *chunk,
            });
        }
        let mut first_error = None;
        for location in locations {
            let pack = index.pack_name(location.pack);
            let result = self
                .storage
                .read_range(
                    ObjectKind::Pack,
                    pack,
                    location.blob_offset as u64,
                    location.blob_bytes as u64,
                )
                .map_err(RepositoryError::from)
                .and_then(|sealed| {
                    let damaged = |reason: String| RepositoryError::DamagedChunk {
                        location: self.location(),
                        chunk: *chunk,
                        pack: pack.to_string(),
                        offset: location.blob_offset as u64,
                        reason,
                    };
                    let group = decoder
                        .decode(&self.crypto, sealed, location.group_bytes)
                        .map_err(|e| damaged(e.to_string()))?;
                    chunk_from_group(
                        &self.crypto,
                        chunk,
                        &group,
                        location.offset_in_group,
                        location.raw_bytes,
                    )
                    .map(<[u8]>::to_vec)
                    .map_err(|e| damaged(e.to_string()))
                });
            match result {
                Ok(data) => return Ok(data),
                Err(error) => {
                    tracing::warn!(%error, "a stored copy of a chunk is unreadable");
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.expect("at least one location was tried"))
    }

    // ----- pack indexes ------------------------------------------------------------

    /// Writes a pack index naming `records`; every pack in it must already be durable.
    pub fn write_pack_index(&self, records: &[PackRecord]) -> Result<String> {
        let mut name = [0u8; 16];
        fill_random(&mut name);
        let name = hex::encode(name);
        self.storage.create(
            ObjectKind::PackIndex,
            &name,
            &pack_index::encode(&self.crypto, records),
        )?;
        Ok(name)
    }

    /// Reads one pack index.
    pub fn read_pack_index(&self, name: &str) -> Result<Vec<PackRecord>> {
        let sealed = self.storage.read(ObjectKind::PackIndex, name)?;
        pack_index::decode(&self.crypto, sealed)
            .map_err(|reason| self.damaged(ObjectKind::PackIndex, name, reason))
    }

    /// Loads every pack index into one chunk map. Damaged index files are reported in the
    /// result, not fatal: their chunks are treated as absent. An index file deleted while
    /// loading (a concurrent prune consolidating indexes) is skipped: its entries live on in
    /// the consolidated file, which is listed again until the listing is stable.
    pub fn load_index(&self) -> Result<LoadedIndex> {
        let mut loaded = LoadedIndex::default();
        let mut seen = HashSet::new();
        // A concurrent prune writes its consolidated index before deleting the old ones, so
        // at most two rounds see everything.
        for _round in 0..3 {
            let mut vanished = false;
            for object in self.storage.list(ObjectKind::PackIndex)? {
                if !seen.insert(object.name.clone()) {
                    continue;
                }
                match self.read_pack_index(&object.name) {
                    Ok(records) => {
                        for record in &records {
                            loaded.chunks.insert_record(record);
                        }
                        loaded.files.push(object.name);
                    }
                    Err(RepositoryError::Storage(error)) if error.is_not_found() => {
                        vanished = true;
                    }
                    Err(RepositoryError::Damaged { reason, .. }) => {
                        loaded.damaged.push(DamagedObject {
                            kind: ObjectKind::PackIndex,
                            name: object.name,
                            reason,
                        });
                    }
                    Err(error) => return Err(error),
                }
            }
            if !vanished {
                break;
            }
        }
        Ok(loaded)
    }

    // ----- disk indexes ------------------------------------------------------------

    /// Writes a disk index; every chunk it names must already be in a durable pack index.
    pub fn write_disk_index(&self, disk: &DiskIndex) -> Result<String> {
        let (id, sealed) = disk.encode(&self.crypto);
        match self.storage.create(ObjectKind::DiskIndex, &id, &sealed) {
            Ok(()) => {}
            // Content-addressed: an identical disk was stored before.
            Err(error) if error.is_already_exists() => {}
            Err(error) => return Err(error.into()),
        }
        Ok(id)
    }

    /// Reads a disk index.
    pub fn read_disk_index(&self, id: &str) -> Result<DiskIndex> {
        let sealed = self.storage.read(ObjectKind::DiskIndex, id)?;
        DiskIndex::decode(&self.crypto, id, sealed)
            .map_err(|reason| self.damaged(ObjectKind::DiskIndex, id, reason))
    }

    // ----- points ------------------------------------------------------------------

    /// Commits a point by writing its manifest. Every disk index it names must already be
    /// durable. After this returns, the point exists.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.storage.create(
            ObjectKind::Point,
            &manifest.point,
            &manifest.encode(&self.crypto),
        )?;
        Ok(())
    }

    /// Reads one manifest by its full id.
    pub fn read_manifest(&self, point: &str) -> Result<Manifest> {
        let sealed = match self.storage.read(ObjectKind::Point, point) {
            Ok(sealed) => sealed,
            Err(error) if error.is_not_found() => {
                return Err(RepositoryError::NoSuchPoint {
                    location: self.location(),
                    point: point.to_string(),
                });
            }
            Err(error) => return Err(error.into()),
        };
        Manifest::decode(&self.crypto, point, sealed)
            .map_err(|reason| self.damaged(ObjectKind::Point, point, reason))
    }

    /// Every point, oldest first; damaged manifests are reported, not fatal.
    pub fn list_points(&self) -> Result<PointList> {
        let mut list = PointList::default();
        for object in self.storage.list(ObjectKind::Point)? {
            match self.read_manifest(&object.name) {
                Ok(manifest) => list.points.push(manifest),
                // Forgotten between listing and reading.
                Err(RepositoryError::NoSuchPoint { .. }) => {}
                Err(RepositoryError::Damaged { reason, .. }) => list.damaged.push(DamagedObject {
                    kind: ObjectKind::Point,
                    name: object.name,
                    reason,
                }),
                Err(error) => return Err(error),
            }
        }
        list.points
            .sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.point.cmp(&b.point)));
        Ok(list)
    }

    /// Deletes a point's manifest: the point no longer exists. Its data stays until prune.
    pub fn delete_point(&self, point: &str) -> Result<()> {
        self.storage.delete(ObjectKind::Point, point)?;
        Ok(())
    }

    // ----- leases ------------------------------------------------------------------

    /// Takes the exclusive backup lease of a VM.
    pub fn lock_vm_backup(&self, vm: &str) -> Result<Lease> {
        let hash = self.crypto.name_hash("vm-backup-lease", vm.as_bytes());
        let name = format!("backup-{}", hex::encode(&hash[..8]));
        Lease::acquire(
            Arc::clone(&self.storage),
            &name,
            "backup",
            &format!("backup of VM '{vm}'"),
        )
    }

    /// Takes the lease of a geo-sync writing into this repository: one at a time, and prune
    /// (here, in the copy) waits for it like for a backup.
    pub fn lock_geo_sync(&self) -> Result<Lease> {
        Lease::acquire(
            Arc::clone(&self.storage),
            "geo-sync",
            "geo-sync",
            &format!("geo-sync into {}", self.location()),
        )
    }

    /// Takes a reader's lease (shared: each reader has its own), held by everything that
    /// reads packs for longer than a moment — restore, export (and the instant disks served
    /// from it), verify, a geo-sync's source. A prune deletes no pack recorded while a
    /// reader's lease is alive, so the chunk map a reader loaded stays true until it ends.
    /// Taken before the reader loads its chunk map. A repository that refuses the write (a
    /// read-only mount or credentials) is read without one: a prune run meanwhile from
    /// elsewhere can then make the read fail, never return wrong bytes.
    pub fn lock_read(&self, operation: &str) -> Option<Lease> {
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix);
        let name = format!("read-{}", hex::encode(suffix));
        match Lease::acquire(Arc::clone(&self.storage), &name, operation, operation) {
            Ok(lease) => Some(lease),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot take a reader's lease in {}: a prune run meanwhile could make this {operation} fail",
                    self.location()
                );
                None
            }
        }
    }

    /// Takes the repository's exclusive prune lease.
    pub fn lock_prune(&self) -> Result<Lease> {
        Lease::acquire(Arc::clone(&self.storage), "prune", "prune", "prune")
    }

    // ----- quarantine and garbage ----------------------------------------------------

    /// Records a damaged blob.
    pub fn quarantine(&self, record: &QuarantineRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
        match self
            .storage
            .create(ObjectKind::Quarantine, &record.name(), &bytes)
        {
            Err(error) if error.is_already_exists() => Ok(()),
            other => Ok(other?),
        }
    }

    /// Every quarantine record.
    pub fn list_quarantine(&self) -> Result<Vec<QuarantineRecord>> {
        let mut records = Vec::new();
        for object in self.storage.list(ObjectKind::Quarantine)? {
            let bytes = match self.storage.read(ObjectKind::Quarantine, &object.name) {
                Ok(bytes) => bytes,
                Err(error) if error.is_not_found() => continue,
                Err(error) => return Err(error.into()),
            };
            let record = serde_json::from_slice(&bytes)
                .map_err(|e| self.damaged(ObjectKind::Quarantine, &object.name, e.to_string()))?;
            records.push(record);
        }
        Ok(records)
    }

    /// Writes a garbage record (phase one of a delete); returns its name.
    pub fn write_garbage(&self, packs: Vec<String>) -> Result<String> {
        let record = GarbageRecord {
            created_unix_ms: unix_ms(SystemTime::now()),
            packs,
        };
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix);
        let name = format!("{:016}-{}", record.created_unix_ms, hex::encode(suffix));
        let bytes = serde_json::to_vec(&record).expect("records serialize");
        self.storage.create(ObjectKind::Garbage, &name, &bytes)?;
        Ok(name)
    }

    /// Every garbage record with its name.
    pub fn list_garbage(&self) -> Result<Vec<(String, GarbageRecord)>> {
        let mut records = Vec::new();
        for object in self.storage.list(ObjectKind::Garbage)? {
            let bytes = match self.storage.read(ObjectKind::Garbage, &object.name) {
                Ok(bytes) => bytes,
                Err(error) if error.is_not_found() => continue,
                Err(error) => return Err(error.into()),
            };
            let record = serde_json::from_slice(&bytes)
                .map_err(|e| self.damaged(ObjectKind::Garbage, &object.name, e.to_string()))?;
            records.push((object.name, record));
        }
        records.sort_by_key(|(_, record): &(String, GarbageRecord)| record.created_unix_ms);
        Ok(records)
    }

    /// Every quarantined copy, as (chunk, pack).
    pub fn quarantined_copies(&self) -> Result<HashSet<(ChunkId, String)>> {
        Ok(self
            .list_quarantine()?
            .into_iter()
            .filter_map(|record| Some((record.chunk_id()?, record.pack)))
            .collect())
    }

    /// The chunk map a backup may deduplicate against: every copy except quarantined ones
    /// and those in packs awaiting deletion.
    pub fn load_dedup_index(&self) -> Result<LoadedIndex> {
        let doomed: HashSet<String> = self
            .list_garbage()?
            .into_iter()
            .flat_map(|(_, record)| record.packs)
            .collect();
        self.load_index_without(&doomed)
    }

    /// The chunk map for reading: every copy except quarantined ones, copies in packs
    /// awaiting deletion tried last (a repacked chunk is read from its new pack).
    pub fn load_read_index(&self) -> Result<LoadedIndex> {
        let doomed: HashSet<String> = self
            .list_garbage()?
            .into_iter()
            .flat_map(|(_, record)| record.packs)
            .collect();
        let mut loaded = self.load_index_without(&HashSet::new())?;
        if !doomed.is_empty() {
            loaded.chunks.try_last_where(|pack| doomed.contains(pack));
        }
        Ok(loaded)
    }

    /// Every copy except quarantined ones and those in `excluded_packs`.
    fn load_index_without(&self, excluded_packs: &HashSet<String>) -> Result<LoadedIndex> {
        let mut loaded = self.load_index()?;
        let quarantined = self.quarantined_copies()?;
        if !quarantined.is_empty() || !excluded_packs.is_empty() {
            loaded.chunks.remove_where(|chunk, pack| {
                excluded_packs.contains(pack) || quarantined.contains(&(*chunk, pack.to_string()))
            });
        }
        Ok(loaded)
    }
}

/// Finds the key file that `password` opens.
fn unlock(storage: &dyn Storage, password: &[u8]) -> Result<MasterKeys> {
    let location = storage.location();
    let key_objects = storage.list(ObjectKind::Key)?;
    if key_objects.is_empty() {
        return Err(RepositoryError::damaged(
            &location,
            ObjectKind::Key,
            "keys/",
            "the repository is encrypted but has no key file",
        ));
    }
    let mut malformed = Vec::new();
    for object in key_objects {
        let bytes = storage.read(ObjectKind::Key, &object.name)?;
        let key_file: KeyFile = match serde_json::from_slice(&bytes) {
            Ok(key_file) => key_file,
            Err(error) => {
                malformed.push((object.name, error.to_string()));
                continue;
            }
        };
        match key_file.unwrap_keys(password) {
            Ok(Some(keys)) => return Ok(keys),
            Ok(None) => {}
            Err(reason) => malformed.push((object.name, reason)),
        }
    }
    if let Some((name, reason)) = malformed.into_iter().next() {
        tracing::warn!(key_file = %name, %reason, "a key file is malformed");
    }
    Err(RepositoryError::WrongPassword { location })
}
