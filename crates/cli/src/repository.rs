//! Opening the repository named on the command line: `--repo LOCATION`, or the active
//! repository of `--region NAME` from the configuration file.
//!
//! With `geo-read` redundancy, commands that only read (points, restore, verify, export)
//! fall back to the region's geo copy while its active repository does not answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use lifeboat_config::{Config, Redundancy};
use lifeboat_geo::{StateFile, locations, status::settings_for};
use lifeboat_repository::{ObjectKind, Repository, Storage};
use lifeboat_storage::StorageSettings;

use crate::cli::GlobalOptions;

/// Whether a command writes to the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Storage settings from the environment: `LIFEBOAT_STORAGE_RETRY_SECONDS` bounds how long a
/// failing object storage request is retried.
pub fn base_settings() -> StorageSettings {
    let mut settings = StorageSettings::default();
    if let Some(seconds) = std::env::var("LIFEBOAT_STORAGE_RETRY_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        settings.retry_timeout = Duration::from_secs(seconds);
    }
    settings
}

/// The configuration file: `--config`, or `./lifeboat.toml` when it exists.
pub fn config(global: &GlobalOptions) -> anyhow::Result<Option<Config>> {
    let path = match &global.config {
        Some(path) => path.clone(),
        None => {
            let default = PathBuf::from(lifeboat_config::DEFAULT_FILE_NAME);
            if !default.exists() {
                return Ok(None);
            }
            default
        }
    };
    Ok(Some(lifeboat_config::load(&path)?))
}

/// The configuration file, required.
pub fn required_config(global: &GlobalOptions) -> anyhow::Result<Config> {
    config(global)?.context(
        "no configuration file: pass --config FILE (or LIFEBOAT_CONFIG), or create ./lifeboat.toml",
    )
}

/// The regions a command works on: the one `--region` names, or all.
pub fn selected_regions<'a>(
    config: &'a Config,
    global: &'a GlobalOptions,
) -> impl Iterator<Item = &'a lifeboat_config::Region> {
    config.regions.iter().filter(move |region| {
        global
            .region
            .as_ref()
            .is_none_or(|name| name == &region.name)
    })
}

/// True when `storage` answers with a repository in it.
fn answers(storage: &dyn Storage) -> bool {
    storage
        .list(ObjectKind::Config)
        .is_ok_and(|objects| !objects.is_empty())
}

/// The storage of the repository the command works on.
pub fn storage(global: &GlobalOptions, access: Access) -> anyhow::Result<Arc<dyn Storage>> {
    let base = base_settings();
    if let Some(location) = &global.repository {
        return Ok(lifeboat_storage::open(location, &base)?);
    }
    let Some(region_name) = &global.region else {
        bail!(
            "no repository given: pass --repo LOCATION (or LIFEBOAT_REPO), or --region NAME with a configuration file"
        );
    };
    let config = required_config(global)?;
    let region = config.region(region_name)?;
    let state = StateFile::load(&config.state_directory)?.region(region_name);
    let places = locations(&config, region, &state);
    let active = lifeboat_storage::open(
        &places.active,
        &settings_for(&base, &places.active_settings),
    )?;
    if access == Access::Read
        && region.redundancy == Redundancy::GeoRead
        && !answers(active.as_ref())
        && let Some(standby) = &places.standby
    {
        let copy = lifeboat_storage::open(standby, &settings_for(&base, &places.standby_settings))?;
        if answers(copy.as_ref()) {
            tell!(
                "warning: region '{region_name}': {} does not answer; reading its geo copy {standby}",
                places.active
            );
            return Ok(copy);
        }
    }
    Ok(active)
}

/// The password, from --password-file or LIFEBOAT_PASSWORD; `None` if neither is given.
pub fn password(global: &GlobalOptions) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(file) = &global.password_file {
        return read_password_file(file).map(Some);
    }
    match std::env::var("LIFEBOAT_PASSWORD") {
        Ok(password) if !password.is_empty() => Ok(Some(password.into_bytes())),
        _ => Ok(None),
    }
}

/// The first line of a password file, which must not be empty.
pub fn read_password_file(file: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the password file {}", file.display()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        bail!("the password file {} is empty", file.display());
    }
    Ok(line.as_bytes().to_vec())
}

/// Opens the repository, unlocking it if encrypted.
pub fn open(global: &GlobalOptions, access: Access) -> anyhow::Result<Repository> {
    let storage = storage(global, access)?;
    let password = password(global)?;
    Ok(Repository::open(storage, password.as_deref())?)
}

/// Opens the repository at `location` with the global password.
pub fn open_location(
    global: &GlobalOptions,
    location: &str,
    settings: &StorageSettings,
) -> anyhow::Result<Repository> {
    let storage = lifeboat_storage::open(location, settings)?;
    let password = password(global)?;
    Ok(Repository::open(storage, password.as_deref())?)
}
