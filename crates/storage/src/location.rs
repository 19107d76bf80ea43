//! Opening a repository's storage from its location string.
//!
//! | location                 | backend                                   |
//! |--------------------------|-------------------------------------------|
//! | `/srv/lifeboat/west`     | a local directory                         |
//! | `file:///srv/lifeboat`   | the same                                  |
//! | `s3://bucket/prefix`     | S3-compatible object storage              |
//! | `az://container/prefix`  | Azure Blob Storage (`azure://` too)       |

use std::sync::Arc;
use std::time::Duration;

use crate::local::LocalDirectory;
use crate::object::{ObjectStorage, RETRY_TIMEOUT};
use crate::storage::{Storage, StorageError};

/// How to reach object storage, beyond what the location says.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// `object_store` settings (`aws_endpoint`, `aws_access_key_id`, `aws_region`,
    /// `aws_allow_http`, …), applied over the `AWS_*` environment variables.
    pub options: Vec<(String, String)>,
    /// How long a failing request is retried before it is reported.
    pub retry_timeout: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            options: Vec::new(),
            retry_timeout: RETRY_TIMEOUT,
        }
    }
}

/// The backend for `location`.
pub fn open(location: &str, settings: &StorageSettings) -> Result<Arc<dyn Storage>, StorageError> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(location, "an S3 location is s3://BUCKET/PREFIX"));
        }
        return Ok(Arc::new(ObjectStorage::s3(
            bucket,
            prefix,
            &settings.options,
            settings.retry_timeout,
        )?));
    }
    for scheme in ["az://", "azure://"] {
        if let Some(rest) = location.strip_prefix(scheme) {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if container.is_empty() {
                return Err(invalid(
                    location,
                    "an Azure location is az://CONTAINER/PREFIX",
                ));
            }
            return Ok(Arc::new(ObjectStorage::azure(
                container,
                prefix,
                &settings.options,
                settings.retry_timeout,
            )?));
        }
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    if path.is_empty() {
        return Err(invalid(location, "the location is empty"));
    }
    if let Some((scheme, _)) = path.split_once("://") {
        return Err(invalid(
            location,
            &format!(
                "'{scheme}://' locations are not supported; use a directory, s3://BUCKET/PREFIX or az://CONTAINER/PREFIX"
            ),
        ));
    }
    Ok(Arc::new(LocalDirectory::new(path)))
}

fn invalid(location: &str, detail: &str) -> StorageError {
    StorageError::Unreachable {
        location: location.to_string(),
        operation: "open",
        path: String::new(),
        detail: detail.to_string(),
    }
}

/// Joins a sub-location under `location` (`/a` + `b` = `/a/b`, `s3://x/p` + `b` = `s3://x/p/b`).
pub fn join(location: &str, child: &str) -> String {
    format!(
        "{}/{}",
        location.trim_end_matches('/'),
        child.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_their_backend() {
        let settings = StorageSettings::default();
        assert_eq!(open("/tmp/x", &settings).unwrap().location(), "/tmp/x");
        assert_eq!(
            open("file:///tmp/x", &settings).unwrap().location(),
            "/tmp/x"
        );
        assert!(
            open("gs://bucket/x", &settings)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(open("s3:///x", &settings).is_err());
        assert!(open("az:///x", &settings).is_err());
        assert_eq!(join("s3://b/p/", "copies/west"), "s3://b/p/copies/west");
    }
}
