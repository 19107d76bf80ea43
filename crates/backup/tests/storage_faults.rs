//! The engine on storage that misbehaves: every fault ends in an error naming what failed,
//! never in a listed point that cannot be restored or in wrong bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_backup::{BackupOptions, NoProgress, RestoreOptions, backup, restore, verify};
use lifeboat_repository::{Encryption, InitOptions, ObjectKind, Repository, Storage};
use lifeboat_storage::faults::Operations;
use lifeboat_storage::{Fault, FaultyStorage, LocalDirectory};

/// A raw disk of incompressible data, 3 MiB.
fn disk(directory: &Path) -> PathBuf {
    let path = directory.join("disk.raw");
    let mut data = vec![0u8; 3 << 20];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for byte in data.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(&path, data).unwrap();
    path
}

fn repository(storage: Arc<dyn Storage>) -> Repository {
    let options = InitOptions {
        encryption: Encryption::None,
        password: None,
        chunk_size_bytes: 65536,
    };
    match Repository::init(Arc::clone(&storage), options) {
        Ok(repository) => repository,
        Err(_) => Repository::open(storage, None).unwrap(),
    }
}

fn faulty(inner: &Arc<dyn Storage>, fault: Fault, operations: Operations) -> Arc<dyn Storage> {
    Arc::new(
        FaultyStorage::new(Arc::clone(inner), fault)
            .on(operations)
            .of_kind(ObjectKind::Pack),
    )
}

fn options(disk: &Path) -> BackupOptions {
    let mut options = BackupOptions::new("vm", vec![disk.to_path_buf()]);
    options.threads = 2;
    options
}

#[test]
fn a_failed_pack_write_fails_the_backup_and_lists_no_point() {
    let directory = tempfile::tempdir().unwrap();
    let disk = disk(directory.path());
    let local: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.path().join("repo")));
    repository(Arc::clone(&local));
    for fault in [Fault::FailOnce, Fault::FailAlways] {
        let broken = repository(faulty(&local, fault, Operations::Writes));
        let error = backup(&broken, &options(&disk), &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("injected fault") && error.contains("packs/"),
            "{error}"
        );
        assert!(
            repository(Arc::clone(&local))
                .list_points()
                .unwrap()
                .points
                .is_empty()
        );
    }
    // The storage recovers: the next backup works and restores.
    let healthy = repository(Arc::clone(&local));
    backup(&healthy, &options(&disk), &NoProgress).unwrap();
    assert_eq!(
        verify(&healthy, true, 2, &NoProgress).unwrap().damage.len(),
        0
    );
}

#[test]
fn flipped_bits_and_short_reads_are_refused_by_restore_and_found_by_verify() {
    let directory = tempfile::tempdir().unwrap();
    let disk = disk(directory.path());
    let local: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.path().join("repo")));
    let point = backup(
        &repository(Arc::clone(&local)),
        &options(&disk),
        &NoProgress,
    )
    .unwrap()
    .point;
    for (number, fault) in [Fault::FlipBit, Fault::ShortRead].into_iter().enumerate() {
        let broken = repository(faulty(&local, fault, Operations::Reads));
        let manifest = broken.read_manifest(&point).unwrap();
        let target = directory.path().join(format!("restored-{number}"));
        let restore_options = RestoreOptions {
            target_directory: target.clone(),
            format: None,
            threads: 2,
        };
        let error = restore(&broken, &manifest, &restore_options, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&point) && error.contains("damaged"),
            "{fault:?}: {error}"
        );
        assert!(
            !target.join("disk.raw").exists(),
            "{fault:?}: no file under the disk's name"
        );
        let report = verify(&broken, true, 2, &NoProgress).unwrap();
        assert!(
            !report.damage.is_empty(),
            "{fault:?}: verify finds the damage"
        );
    }
}

#[test]
fn a_slow_storage_only_slows_things_down() {
    let directory = tempfile::tempdir().unwrap();
    let disk = disk(directory.path());
    let local: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.path().join("repo")));
    let slow = repository(Arc::new(FaultyStorage::new(
        Arc::clone(&local),
        Fault::Slow(std::time::Duration::from_millis(20)),
    )));
    let report = backup(&slow, &options(&disk), &NoProgress).unwrap();
    let manifest = slow.read_manifest(&report.point).unwrap();
    let target = directory.path().join("restored");
    let restore_options = RestoreOptions {
        target_directory: target.clone(),
        format: None,
        threads: 2,
    };
    restore(&slow, &manifest, &restore_options, &NoProgress).unwrap();
    assert_eq!(
        std::fs::read(target.join("disk.raw")).unwrap(),
        std::fs::read(&disk).unwrap()
    );
}
