//! Where each VM runs as primary: `<state>/vms.json`, written whole through a temporary
//! file and a rename. Each failover raises the VM's epoch, the fencing token by which the
//! side that ran it before knows it is no longer the primary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One VM's placement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The region running the VM as primary.
    pub region: String,
    /// Raised at every failover.
    pub epoch: u64,
    /// The recovery point it was started from.
    pub point: Option<String>,
    /// When it was placed there (RFC 3339).
    pub since: String,
}

/// Every VM placed by a failover; a VM absent here runs in its own region, epoch 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placements {
    pub vms: BTreeMap<String, Placement>,
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

    pub fn save(&self, directory: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
        let path = directory.join(FILE_NAME);
        let temporary = directory.join(format!(".{FILE_NAME}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).expect("placements serialize");
        std::fs::File::create(&temporary)
            .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path))
            .and_then(|()| std::fs::File::open(directory)?.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The region VM `name` runs in now (`home` unless a failover moved it).
    pub fn region_of<'a>(&'a self, name: &str, home: &'a str) -> &'a str {
        self.vms.get(name).map_or(home, |p| p.region.as_str())
    }
}
