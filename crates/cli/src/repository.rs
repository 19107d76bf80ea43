//! Opening the repository named on the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use lifeboat_repository::{LocalDirectory, Repository, Storage};

use crate::cli::GlobalOptions;

/// The repository's storage.
pub fn storage(global: &GlobalOptions) -> anyhow::Result<Arc<dyn Storage>> {
    let Some(path) = &global.repository else {
        bail!("no repository given: pass --repo PATH or set LIFEBOAT_REPO");
    };
    Ok(Arc::new(LocalDirectory::new(PathBuf::from(path))))
}

/// The password, from --password-file or LIFEBOAT_PASSWORD; `None` if neither is given.
pub fn password(global: &GlobalOptions) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(file) = &global.password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the password file {}", file.display()))?;
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            bail!("the password file {} is empty", file.display());
        }
        return Ok(Some(line.as_bytes().to_vec()));
    }
    match std::env::var("LIFEBOAT_PASSWORD") {
        Ok(password) if !password.is_empty() => Ok(Some(password.into_bytes())),
        _ => Ok(None),
    }
}

/// Opens the repository, unlocking it if encrypted.
pub fn open(global: &GlobalOptions) -> anyhow::Result<Repository> {
    let storage = storage(global)?;
    let password = password(global)?;
    Ok(Repository::open(storage, password.as_deref())?)
}
