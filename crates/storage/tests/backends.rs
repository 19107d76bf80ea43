//! Every backend passes the conformance suite; the fault wrappers do what they say; object
//! storage errors say what is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_storage::faults::Operations;
use lifeboat_storage::{
    Fault, FaultyStorage, LocalDirectory, ObjectKind, Storage, StorageError, StorageSettings,
    conformance,
};
use lifeboat_testing::S3Server;

fn s3(server: &S3Server, prefix: &str) -> Arc<dyn Storage> {
    let settings = StorageSettings {
        options: server.settings(),
        retry_timeout: Duration::from_secs(3),
    };
    lifeboat_storage::open(&server.location(prefix), &settings).unwrap()
}

#[test]
fn a_local_directory_conforms() {
    let directory = tempfile::tempdir().unwrap();
    conformance::check(Arc::new(LocalDirectory::new(
        directory.path().join("repository"),
    )));
}

#[test]
fn s3_conforms_with_and_without_a_prefix() {
    // s3s-fs checks If-None-Match and then writes, so two creators racing for one name can
    // both succeed there (AWS S3 decides atomically); every other rule holds.
    let server = S3Server::start();
    conformance::check_sequential(s3(&server, "some/prefix"));
    conformance::check_sequential(s3(&server, ""));
}

#[test]
fn fault_wrappers_conform_when_their_fault_is_slow_and_inject_the_others() {
    let directory = tempfile::tempdir().unwrap();
    let local: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.path().join("slow")));
    conformance::check(Arc::new(FaultyStorage::new(
        local,
        Fault::Slow(Duration::from_millis(1)),
    )));

    let local: Arc<dyn Storage> = Arc::new(LocalDirectory::new(directory.path().join("faults")));
    local
        .create(ObjectKind::Pack, "abcd", b"0123456789")
        .unwrap();

    let once = FaultyStorage::new(Arc::clone(&local), Fault::FailOnce);
    assert!(once.read(ObjectKind::Pack, "abcd").is_err());
    assert_eq!(once.read(ObjectKind::Pack, "abcd").unwrap(), b"0123456789");

    let always = FaultyStorage::new(Arc::clone(&local), Fault::FailAlways).on(Operations::Writes);
    assert!(always.create(ObjectKind::Pack, "efgh", b"x").is_err());
    assert!(always.create(ObjectKind::Pack, "efgh", b"x").is_err());
    assert_eq!(
        always.read(ObjectKind::Pack, "abcd").unwrap(),
        b"0123456789",
        "reads pass"
    );

    let short = FaultyStorage::new(Arc::clone(&local), Fault::ShortRead);
    assert_eq!(
        short.read_range(ObjectKind::Pack, "abcd", 2, 4).unwrap(),
        b"234"
    );

    let flipped = FaultyStorage::new(Arc::clone(&local), Fault::FlipBit).of_kind(ObjectKind::Pack);
    let data = flipped.read(ObjectKind::Pack, "abcd").unwrap();
    assert_ne!(data, b"0123456789");
    assert_eq!(
        data.iter()
            .zip(b"0123456789")
            .filter(|(a, b)| a != b)
            .count(),
        1
    );
    assert_eq!(flipped.hits(), 1);

    let slow = FaultyStorage::new(local, Fault::Slow(Duration::from_millis(50)));
    let started = Instant::now();
    slow.read(ObjectKind::Pack, "abcd").unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn wrong_credentials_are_refused_clearly() {
    let server = S3Server::start();
    let mut options = server.settings();
    options.retain(|(key, _)| key != "aws_secret_access_key");
    options.push(("aws_secret_access_key".to_string(), "wrong".to_string()));
    let settings = StorageSettings {
        options,
        retry_timeout: Duration::from_secs(3),
    };
    let storage = lifeboat_storage::open(&server.location("repo"), &settings).unwrap();
    let error = storage
        .create(ObjectKind::Config, "config", b"{}")
        .unwrap_err();
    assert!(
        matches!(error, StorageError::AccessDenied { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("check the credentials"),
        "{error}"
    );
}

#[test]
fn a_missing_bucket_is_named() {
    let server = S3Server::start();
    let settings = StorageSettings {
        options: server.settings(),
        retry_timeout: Duration::from_secs(3),
    };
    let storage = lifeboat_storage::open("s3://no-such-bucket/repo", &settings).unwrap();
    let error = storage.list(ObjectKind::Point).unwrap_err();
    assert!(matches!(error, StorageError::NoBucket { .. }), "{error}");
    assert!(
        error.to_string().contains("bucket 'no-such-bucket'"),
        "{error}"
    );
}

#[test]
fn a_dead_server_is_reported_as_unreachable_within_the_retry_bound_and_recovered_from() {
    let mut server = S3Server::start();
    let storage = s3(&server, "repo");
    storage.create(ObjectKind::Pack, "abcd", b"kept").unwrap();
    server.kill();
    let started = Instant::now();
    let error = storage.read(ObjectKind::Pack, "abcd").unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retries are bounded"
    );
    server.restart();
    assert_eq!(
        storage.read(ObjectKind::Pack, "abcd").unwrap(),
        b"kept",
        "objects survive the restart"
    );
}
