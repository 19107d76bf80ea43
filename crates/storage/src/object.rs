//! Object storage through the `object_store` crate: S3-compatible stores (AWS S3, MinIO,
//! Ceph RGW, Garage, …) and Azure Blob Storage.
//!
//! # Design
//!
//! * Object `kind/name` of a repository at `s3://bucket/prefix` (or `az://container/prefix`) is the key
//!   `prefix/kind-directory/name` (packs fanned out as `prefix/packs/xx/name`), the same
//!   layout as a local directory, so a repository can be copied between the two with any
//!   tool.
//! * `create` is a conditional put (`If-None-Match: *`): the object store itself refuses to
//!   overwrite, which keeps two writers from replacing each other's objects. A put is atomic:
//!   an object is either absent or whole.
//! * Every request is retried with exponential backoff, within [`RETRY_TIMEOUT`]; what
//!   still fails is an error that says whether the store refused (credentials, missing
//!   bucket) or could not be reached.
//! * Calls block the calling thread on a private tokio runtime, so the rest of Lifeboat
//!   stays synchronous; many threads may call at once (geo-sync copies in parallel).

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use crate::storage::{ObjectInfo, ObjectKind, Storage, StorageError};

/// Longest time one request is retried before the error is reported.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// Most retries of one request.
pub const MAXIMUM_RETRIES: usize = 8;

/// A repository in an S3-compatible bucket.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Key prefix of the repository inside the bucket, without slashes at either end.
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    location: String,
    bucket: String,
    service: Service,
    runtime: tokio::runtime::Runtime,
}

/// Which object service a store speaks to, for messages that tell the user what to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    S3,
    Azure,
    Other,
}

impl Service {
    fn container(self) -> &'static str {
        match self {
            Service::Azure => "container",
            _ => "bucket",
        }
    }

    fn credentials(self) -> &'static str {
        match self {
            Service::Azure => "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
            _ => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        }
    }
}

const CONNECT_TIMEOUT: &str = "5s";
const REQUEST_TIMEOUT: &str = "120s";

/// `scheme://container/prefix`, without a trailing slash.
fn location(scheme: &str, container: &str, prefix: &str) -> String {
    format!("{scheme}://{container}/{prefix}")
        .trim_end_matches('/')
        .to_string()
}

/// One of the store's settings, by its `object_store` name.
fn setting<K: std::str::FromStr>(
    location: &str,
    service: &str,
    key: &str,
) -> Result<K, StorageError> {
    key.parse().map_err(|_| StorageError::Unreachable {
        location: location.to_string(),
        operation: "configure",
        path: key.to_string(),
        detail: format!("'{key}' is not an {service} setting"),
    })
}

fn not_configured(location: &str, error: object_store::Error) -> StorageError {
    StorageError::Unreachable {
        location: location.to_string(),
        operation: "configure",
        path: String::new(),
        detail: error.to_string(),
    }
}

/// Exponential backoff from 100 ms up to 5 s between tries, within `retry_timeout`.
fn retry(retry_timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: MAXIMUM_RETRIES,
        retry_timeout,
    }
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("location", &self.location)
            .finish()
    }
}

impl ObjectStorage {
    /// A repository at `prefix` in S3 bucket `bucket`. Endpoint, region and credentials come
    /// from the standard `AWS_*` environment variables, overridden by `settings` (keys as
    /// `object_store` names them: `aws_endpoint`, `aws_access_key_id`, `aws_region`, …).
    pub fn s3(
        bucket: &str,
        prefix: &str,
        settings: &[(String, String)],
        retry_timeout: Duration,
    ) -> Result<ObjectStorage, StorageError> {
        let location = location("s3", bucket, prefix);
        // Timeouts are set as settings (not client options, which would replace the
        // environment's and the caller's client settings such as aws_allow_http).
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                CONNECT_TIMEOUT,
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                REQUEST_TIMEOUT,
            );
        for (key, value) in settings {
            builder = builder.with_config(setting(&location, "S3", key)?, value);
        }
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL")
            && std::env::var("AWS_ENDPOINT").is_err()
        {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder
            .with_retry(retry(retry_timeout))
            .build()
            .map_err(|e| not_configured(&location, e))?;
        let mut storage = ObjectStorage::from_store(Arc::new(store), bucket, prefix, location);
        storage.service = Service::S3;
        Ok(storage)
    }

    /// A repository at `prefix` in Azure Blob Storage container `container`. Account and
    /// credentials come from the standard `AZURE_*` environment variables
    /// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, …), overridden by
    /// `settings` (`azure_storage_account_name`, `azure_storage_endpoint`, …).
    pub fn azure(
        container: &str,
        prefix: &str,
        settings: &[(String, String)],
        retry_timeout: Duration,
    ) -> Result<ObjectStorage, StorageError> {
        let location = location("az", container, prefix);
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .with_config(
                AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
                CONNECT_TIMEOUT,
            )
            .with_config(
                AzureConfigKey::Client(ClientConfigKey::Timeout),
                REQUEST_TIMEOUT,
            );
        for (key, value) in settings {
            builder = builder.with_config(setting(&location, "Azure", key)?, value);
        }
        let store = builder
            .with_retry(retry(retry_timeout))
            .build()
            .map_err(|e| not_configured(&location, e))?;
        let mut storage = ObjectStorage::from_store(Arc::new(store), container, prefix, location);
        storage.service = Service::Azure;
        Ok(storage)
    }

    /// A repository in any `object_store` store (tests use the in-memory one).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        prefix: &str,
        location: String,
    ) -> ObjectStorage {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-storage")
            .enable_all()
            .build()
            .expect("a tokio runtime starts");
        ObjectStorage {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            location,
            bucket: bucket.to_string(),
            service: Service::Other,
            runtime,
        }
    }

    fn directory(&self, kind: ObjectKind) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if !self.prefix.is_empty() {
            parts.push(&self.prefix);
        }
        if kind != ObjectKind::Config {
            parts.push(kind.directory());
        }
        parts.join("/")
    }

    fn path(&self, kind: ObjectKind, name: &str) -> Path {
        let directory = self.directory(kind);
        let mut key = if directory.is_empty() {
            String::new()
        } else {
            format!("{directory}/")
        };
        if kind.is_fanned_out() {
            key.push_str(name.get(..2).unwrap_or("00"));
            key.push('/');
        }
        key.push_str(name);
        Path::from(key)
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.handle().block_on(future)
    }

    fn error(
        &self,
        kind: ObjectKind,
        name: &str,
        operation: &'static str,
        error: object_store::Error,
    ) -> StorageError {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        match error {
            object_store::Error::NotFound { .. } if no_container(&text) => self.no_bucket(),
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                location: self.location.clone(),
                kind,
                name: name.to_string(),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StorageError::AlreadyExists {
                location: self.location.clone(),
                kind,
                name: name.to_string(),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => self.access_denied(&text),
            // Listings report refusals as generic errors carrying the status and S3's code.
            _ if [
                "403 Forbidden",
                "401 Unauthorized",
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "AccessDenied",
                "AuthorizationFailure",
                "AuthenticationFailed",
            ]
            .iter()
            .any(|marker| text.contains(marker)) =>
            {
                self.access_denied(&text)
            }
            _ if no_container(&text) => self.no_bucket(),
            _ if text.contains("EntityTooLarge") || text.contains("QuotaExceeded") => {
                StorageError::NoSpace {
                    location: self.location.clone(),
                    kind,
                    name: name.to_string(),
                }
            }
            _ => StorageError::Unreachable {
                location: self.location.clone(),
                operation,
                path: self.path(kind, name).to_string(),
                detail: first_line(&text),
            },
        }
    }

    fn no_bucket(&self) -> StorageError {
        StorageError::NoBucket {
            location: self.location.clone(),
            bucket: self.bucket.clone(),
            container: self.service.container(),
        }
    }

    fn access_denied(&self, text: &str) -> StorageError {
        StorageError::AccessDenied {
            location: self.location.clone(),
            detail: first_line(text),
            credentials: self.service.credentials(),
        }
    }

    fn put(
        &self,
        kind: ObjectKind,
        name: &str,
        data: &[u8],
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let path = self.path(kind, name);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(data));
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.block_on(self.store.put_opts(&path, payload, options))
            .map(|_| ())
            .map_err(|e| self.error(kind, name, "write", e))
    }
}

/// S3 says `NoSuchBucket`, Azure `ContainerNotFound`.
fn no_container(text: &str) -> bool {
    text.contains("NoSuchBucket") || text.contains("ContainerNotFound")
}

/// Object store errors carry whole response bodies; the first line says what happened.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or(text);
    line.chars().take(600).collect()
}

impl Storage for ObjectStorage {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn create(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.put(kind, name, data, PutMode::Create)
    }

    fn replace(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.put(kind, name, data, PutMode::Overwrite)
    }

    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.path(kind, name);
        self.block_on(async {
            let result = self.store.get(&path).await?;
            result.bytes().await
        })
        .map(|bytes| bytes.to_vec())
        .map_err(|e| self.error(kind, name, "read", e))
    }

    fn read_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let path = self.path(kind, name);
        let end = offset
            .checked_add(length)
            .ok_or_else(|| StorageError::Unreachable {
                location: self.location.clone(),
                operation: "read",
                path: path.to_string(),
                detail: "range overflows".to_string(),
            })?;
        let result = self.block_on(self.store.get_range(&path, offset..end));
        match result {
            Ok(bytes) if bytes.len() as u64 == length => Ok(bytes.to_vec()),
            Ok(bytes) => Err(StorageError::ShortObject {
                location: self.location.clone(),
                kind,
                name: name.to_string(),
                offset,
                length,
                actual_bytes: offset + bytes.len() as u64,
            }),
            Err(error) => {
                let mapped = self.error(kind, name, "read", error);
                // A range past the end is refused by the store; say how long the object is.
                if let StorageError::Unreachable { .. } = mapped
                    && let Ok(meta) = self.block_on(self.store.head(&path))
                    && meta.size < end
                {
                    return Err(StorageError::ShortObject {
                        location: self.location.clone(),
                        kind,
                        name: name.to_string(),
                        offset,
                        length,
                        actual_bytes: meta.size,
                    });
                }
                Err(mapped)
            }
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        let directory = self.directory(kind);
        let prefix = if directory.is_empty() {
            None
        } else {
            Some(Path::from(directory.clone()))
        };
        let listed: Vec<object_store::ObjectMeta> = self
            .block_on(self.store.list(prefix.as_ref()).try_collect())
            .map_err(|e| self.error(kind, "", "list", e))?;
        let mut objects = Vec::new();
        for meta in listed {
            let key = meta.location.to_string();
            let relative = if directory.is_empty() {
                key.as_str()
            } else {
                match key
                    .strip_prefix(&directory)
                    .and_then(|r| r.strip_prefix('/'))
                {
                    Some(relative) => relative,
                    None => continue,
                }
            };
            let parts: Vec<&str> = relative.split('/').collect();
            let name = match (kind, parts.as_slice()) {
                (ObjectKind::Config, [name]) if *name == "config" => *name,
                (ObjectKind::Config, _) => continue,
                (kind, [_, name]) if kind.is_fanned_out() => *name,
                (kind, [name]) if !kind.is_fanned_out() => *name,
                _ => continue,
            };
            objects.push(ObjectInfo {
                name: name.to_string(),
                size_bytes: meta.size,
            });
        }
        Ok(objects)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        let path = self.path(kind, name);
        match self.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.error(kind, name, "delete", error)),
        }
    }
}
