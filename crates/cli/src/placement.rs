//! Where each VM runs: `<state>/vms.json`, written whole through a temporary file and a
//! rename, under an advisory lock so that VMs started together do not lose each other's
//! records. Each failover raises the VM's epoch, the fencing token by which the side that
//! ran it before knows it is no longer the primary. Test copies are kept apart: they never
//! change where a VM runs as primary.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One VM's placement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The region running the VM (as primary, or as a test copy).
    pub region: String,
    /// Raised at every failover.
    pub epoch: u64,
    /// The recovery point it was started from.
    pub point: Option<String>,
    /// When it was placed there (RFC 3339).
    pub since: String,
    /// Started on overlays over the point's export (hydrated in the background).
    #[serde(default)]
    pub instant: bool,
    /// The run that placed it (a resumed run keeps the epoch it raised).
    #[serde(default)]
    pub run: Option<String>,
    /// The failover was committed: the VM keeps its disks; no other point can be chosen.
    #[serde(default)]
    pub committed: bool,
    /// Its disk files there, in boot order.
    #[serde(default)]
    pub disks: Vec<std::path::PathBuf>,
    /// The capture group replicating it home (after a reprotect), if any.
    #[serde(default)]
    pub capture: Option<String>,
}

/// Every VM placed by a failover; a VM absent here runs in its own region, epoch 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placements {
    pub vms: BTreeMap<String, Placement>,
    /// Test copies running now, by VM.
    #[serde(default)]
    pub tests: BTreeMap<String, Placement>,
}

const FILE_NAME: &str = "vms.json";

impl Placements {
    pub fn load(directory: &Path) -> anyhow::Result<Placements> {
        let path = directory.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a VM placement file", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Placements::default()),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, directory: &Path) -> anyhow::Result<()> {
        let path = directory.join(FILE_NAME);
        let temporary = directory.join(format!(".{FILE_NAME}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).expect("placements serialize");
        std::fs::File::create(&temporary)
            .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path))
            .and_then(|()| std::fs::File::open(directory)?.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Loads, changes and saves the placements under the lock; returns what `change` did.
    pub fn update<T>(
        directory: &Path,
        change: impl FnOnce(&mut Placements) -> T,
    ) -> anyhow::Result<T> {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
        let lock_path = directory.join(format!(".{FILE_NAME}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        // SAFETY: flock on a descriptor owned here; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot lock {}", lock_path.display()));
        }
        let mut placements = Placements::load(directory)?;
        let result = change(&mut placements);
        placements.save(directory)?;
        Ok(result)
    }

    /// The region VM `name` runs in now (`home` unless a failover moved it).
    pub fn region_of<'a>(&'a self, name: &str, home: &'a str) -> &'a str {
        self.vms.get(name).map_or(home, |p| p.region.as_str())
    }
}
