//! Every backend passes the conformance suite; the fault wrappers do what they say; object
//! storage errors say what is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_storage::faults::Operations;
use lifeboat_storage::{
    Fault, FaultyStorage, LocalDirectory, ObjectKind, Storage, StorageError, StorageSettings,
    conformance,
};
use lifeboat_testing::{AzuriteServer, ObjectServer, S3Server};

/// The storage at `location`, reached with `options`.
fn on(location: &str, options: Vec<(String, String)>) -> Arc<dyn Storage> {
    let settings = StorageSettings {
        options,
        retry_timeout: Duration::from_secs(3),
    };
    lifeboat_storage::open(location, &settings).unwrap()
}

fn s3(server: &S3Server, prefix: &str) -> Arc<dyn Storage> {
    on(&server.location(prefix), server.settings())
}

fn azure(server: &AzuriteServer, prefix: &str) -> Arc<dyn Storage> {
    on(&server.location(prefix), server.settings())
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
fn azure_blob_conforms_with_and_without_a_prefix() {
    let server = AzuriteServer::start();
    conformance::check(azure(&server, "some/prefix"));
    conformance::check(azure(&server, ""));
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

/// `options` with `key` set to `value`.
fn with(mut options: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    options.retain(|(k, _)| k != key);
    options.push((key.to_string(), value.to_string()));
    options
}

fn assert_denied(storage: Arc<dyn Storage>, credentials: &str) {
    let error = storage
        .create(ObjectKind::Config, "config", b"{}")
        .unwrap_err();
    assert!(
        matches!(error, StorageError::AccessDenied { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("check the credentials") && text.contains(credentials),
        "{error}"
    );
}

#[test]
fn wrong_credentials_are_refused_clearly() {
    let server = S3Server::start();
    let options = with(server.settings(), "aws_secret_access_key", "wrong");
    assert_denied(
        on(&server.location("repo"), options),
        "AWS_SECRET_ACCESS_KEY",
    );

    let server = AzuriteServer::start();
    // A well-formed key that is not the account's.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let options = with(server.settings(), "azure_storage_account_key", wrong);
    assert_denied(
        on(&server.location("repo"), options),
        "AZURE_STORAGE_ACCOUNT_KEY",
    );
}

#[test]
fn a_missing_bucket_or_container_is_named() {
    let server = S3Server::start();
    let storage = on("s3://no-such-bucket/repo", server.settings());
    let error = storage.list(ObjectKind::Point).unwrap_err();
    assert!(matches!(error, StorageError::NoBucket { .. }), "{error}");
    assert!(
        error.to_string().contains("bucket 'no-such-bucket'"),
        "{error}"
    );

    let server = AzuriteServer::start();
    let storage = on("az://no-such-container/repo", server.settings());
    for error in [
        storage.list(ObjectKind::Point).unwrap_err(),
        storage.create(ObjectKind::Pack, "abcd", b"x").unwrap_err(),
    ] {
        assert!(matches!(error, StorageError::NoBucket { .. }), "{error}");
        assert!(
            error.to_string().contains("container 'no-such-container'"),
            "{error}"
        );
    }
}

#[test]
fn a_dead_server_is_reported_as_unreachable_within_the_retry_bound_and_recovered_from() {
    let mut server = S3Server::start();
    let storage = s3(&server, "repo");
    dies_and_comes_back(storage, &mut server);
    let mut server = AzuriteServer::start();
    let storage = azure(&server, "repo");
    dies_and_comes_back(storage, &mut server);
}

fn dies_and_comes_back(storage: Arc<dyn Storage>, server: &mut dyn ObjectServer) {
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
