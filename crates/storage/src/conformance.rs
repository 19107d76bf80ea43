//! The one suite every storage backend must pass.
//!
//! It states the contract of [`Storage`] as executable checks: create-if-absent, durable and
//! atomic objects, exact ranged reads that never return fewer bytes, listings per kind with
//! sizes, idempotent deletes, and exactly one winner among concurrent creators. Backends call
//! [`check`] from their tests on an empty repository location; it panics with a message
//! naming the broken rule.

use std::sync::Arc;

use crate::storage::{ObjectKind, Storage, StorageError};

fn names(storage: &dyn Storage, kind: ObjectKind) -> Vec<(String, u64)> {
    let mut listed: Vec<(String, u64)> = storage
        .list(kind)
        .unwrap_or_else(|e| panic!("listing {kind} failed: {e}"))
        .into_iter()
        .map(|o| (o.name, o.size_bytes))
        .collect();
    listed.sort();
    listed
}

/// Runs every check against `storage`, which must be empty.
pub fn check(storage: Arc<dyn Storage>) {
    check_sequential(Arc::clone(&storage));
    concurrent_creators_have_one_winner(storage);
}

/// Runs every check made from one thread against `storage`, which must be empty. For test
/// servers whose conditional writes check then write (s3s-fs), which two creators racing for
/// one name can both pass; AWS S3 and the local directory decide atomically and pass
/// [`check`].
pub fn check_sequential(storage: Arc<dyn Storage>) {
    for kind in ObjectKind::ALL {
        assert!(
            names(storage.as_ref(), kind).is_empty(),
            "a new location lists {kind} objects"
        );
    }
    creates_are_create_if_absent(storage.as_ref());
    reads_are_exact(storage.as_ref());
    listings_are_per_kind_with_sizes(storage.as_ref());
    deletes_are_idempotent(storage.as_ref());
    replace_overwrites(storage.as_ref());
    large_objects_round_trip(storage.as_ref());
    concurrent_creators_leave_one_whole_object(storage);
}

fn creates_are_create_if_absent(storage: &dyn Storage) {
    storage
        .create(ObjectKind::Point, "aa01", b"first")
        .expect("create a new object");
    let error = storage
        .create(ObjectKind::Point, "aa01", b"second")
        .expect_err("a second create of the same name must fail");
    assert!(
        error.is_already_exists(),
        "a second create fails as already existing, not: {error}"
    );
    assert_eq!(
        storage.read(ObjectKind::Point, "aa01").unwrap(),
        b"first",
        "a refused create changes nothing"
    );
    // The same name in another kind is another object.
    storage
        .create(ObjectKind::DiskIndex, "aa01", b"other kind")
        .unwrap();
    assert_eq!(storage.read(ObjectKind::Point, "aa01").unwrap(), b"first");
    // Empty objects exist too.
    storage.create(ObjectKind::Lock, "empty", b"").unwrap();
    assert_eq!(storage.read(ObjectKind::Lock, "empty").unwrap(), b"");
    // The config lives at the root.
    storage.create(ObjectKind::Config, "config", b"{}").unwrap();
    assert_eq!(
        names(storage, ObjectKind::Config),
        [("config".to_string(), 2)]
    );
}

fn reads_are_exact(storage: &dyn Storage) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    storage.create(ObjectKind::Pack, "ab12cd", &data).unwrap();
    assert_eq!(storage.read(ObjectKind::Pack, "ab12cd").unwrap(), data);
    assert_eq!(
        storage
            .read_range(ObjectKind::Pack, "ab12cd", 100, 50)
            .unwrap(),
        &data[100..150]
    );
    assert_eq!(
        storage
            .read_range(ObjectKind::Pack, "ab12cd", 9_990, 10)
            .unwrap(),
        &data[9_990..]
    );
    match storage.read_range(ObjectKind::Pack, "ab12cd", 9_990, 20) {
        Err(StorageError::ShortObject { actual_bytes, .. }) => assert_eq!(actual_bytes, 10_000),
        Err(other) => panic!("a range past the end must fail as a short object, not: {other}"),
        Ok(bytes) => panic!(
            "a range past the end must fail, not return {} bytes",
            bytes.len()
        ),
    }
    let missing = storage
        .read(ObjectKind::Pack, "ffff")
        .expect_err("reading a missing object fails");
    assert!(
        missing.is_not_found(),
        "a missing object is not found, not: {missing}"
    );
    let missing = storage
        .read_range(ObjectKind::Pack, "ffff", 0, 1)
        .expect_err("ranged read of a missing object");
    assert!(
        missing.is_not_found(),
        "a missing object is not found, not: {missing}"
    );
}

fn listings_are_per_kind_with_sizes(storage: &dyn Storage) {
    // Packs are fanned out by their first two characters; the listing hides that.
    storage.create(ObjectKind::Pack, "ef34", b"xyz").unwrap();
    assert_eq!(
        names(storage, ObjectKind::Pack),
        [("ab12cd".to_string(), 10_000), ("ef34".to_string(), 3)]
    );
    assert_eq!(names(storage, ObjectKind::Point), [("aa01".to_string(), 5)]);
    assert_eq!(
        names(storage, ObjectKind::DiskIndex),
        [("aa01".to_string(), 10)]
    );
    assert!(names(storage, ObjectKind::Garbage).is_empty());
}

fn deletes_are_idempotent(storage: &dyn Storage) {
    storage.delete(ObjectKind::Pack, "ef34").unwrap();
    storage
        .delete(ObjectKind::Pack, "ef34")
        .expect("deleting a missing object succeeds");
    assert_eq!(names(storage, ObjectKind::Pack).len(), 1);
    assert!(
        storage
            .read(ObjectKind::Pack, "ef34")
            .unwrap_err()
            .is_not_found()
    );
    // A deleted name can be created again.
    storage.create(ObjectKind::Pack, "ef34", b"again").unwrap();
    assert_eq!(storage.read(ObjectKind::Pack, "ef34").unwrap(), b"again");
}

fn replace_overwrites(storage: &dyn Storage) {
    storage.replace(ObjectKind::Lock, "lease", b"one").unwrap();
    storage
        .replace(ObjectKind::Lock, "lease", b"two, longer")
        .unwrap();
    assert_eq!(
        storage.read(ObjectKind::Lock, "lease").unwrap(),
        b"two, longer"
    );
}

fn large_objects_round_trip(storage: &dyn Storage) {
    let data: Vec<u8> = (0..(20u32 << 20) + 123)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    storage.create(ObjectKind::Pack, "99large", &data).unwrap();
    assert_eq!(
        storage.read(ObjectKind::Pack, "99large").unwrap(),
        data,
        "a 20 MiB object reads back whole"
    );
    let middle = storage
        .read_range(ObjectKind::Pack, "99large", 7 << 20, 1 << 20)
        .unwrap();
    assert_eq!(middle, &data[7 << 20..8 << 20]);
}

/// Concurrent creators of one name leave one whole object, never a mix of two.
fn concurrent_creators_leave_one_whole_object(storage: Arc<dyn Storage>) {
    let threads: Vec<_> = (0..8u8)
        .map(|number| {
            let storage = Arc::clone(&storage);
            std::thread::spawn(move || storage.create(ObjectKind::Point, "raced", &[number; 4096]))
        })
        .collect();
    for thread in threads {
        if let Err(error) = thread.join().expect("no panic") {
            assert!(
                error.is_already_exists(),
                "losers fail as already existing, not: {error}"
            );
        }
    }
    let stored = storage.read(ObjectKind::Point, "raced").unwrap();
    assert_eq!(stored.len(), 4096);
    assert!(
        stored.iter().all(|&b| b == stored[0]),
        "one creator's object, whole"
    );
}

fn concurrent_creators_have_one_winner(storage: Arc<dyn Storage>) {
    let threads: Vec<_> = (0..8u8)
        .map(|number| {
            let storage = Arc::clone(&storage);
            std::thread::spawn(move || {
                storage.create(ObjectKind::Point, "contested", &[number; 64])
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("no panic"))
        .collect();
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "exactly one of eight concurrent creators wins");
    for result in &results {
        if let Err(error) = result {
            assert!(
                error.is_already_exists(),
                "losers fail as already existing, not: {error}"
            );
        }
    }
    let stored = storage.read(ObjectKind::Point, "contested").unwrap();
    assert_eq!(stored.len(), 64);
    assert!(
        stored.iter().all(|&b| b == stored[0]),
        "the winner's object is whole, not mixed"
    );
}
