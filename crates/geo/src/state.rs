//! The state file (`<state directory>/regions.json`): which side of each region is active.
//!
//! It is small, written whole through a temporary file and a rename, and fsynced, so a
//! crash leaves the old state or the new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{GeoError, Result};
use crate::regions::Side;

/// What Lifeboat remembers about one region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Which side is active.
    pub active: Side,
    /// Incremented at every failover: a fencing token for whoever writes the region.
    pub epoch: u64,
    /// After a failover: the old primary has been brought back as the new copy.
    pub reprotected: bool,
    /// When the last failover happened (RFC 3339).
    pub failed_over_at: Option<String>,
}

/// The state of every region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub regions: BTreeMap<String, RegionState>,
}

fn path_in(directory: &Path) -> PathBuf {
    directory.join("regions.json")
}

impl StateFile {
    /// Reads the state; a missing file is the initial state (every primary active).
    pub fn load(directory: &Path) -> Result<StateFile> {
        let path = path_in(directory);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| GeoError::State {
                path: path.display().to_string(),
                action: "read",
                detail: e.to_string(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(error) => Err(GeoError::State {
                path: path.display().to_string(),
                action: "read",
                detail: error.to_string(),
            }),
        }
    }

    /// Writes the state durably.
    pub fn save(&self, directory: &Path) -> Result<()> {
        let path = path_in(directory);
        let failed = |detail: String| GeoError::State {
            path: path.display().to_string(),
            action: "write",
            detail,
        };
        std::fs::create_dir_all(directory).map_err(|e| failed(e.to_string()))?;
        let temporary = directory.join(".regions.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        let written = std::fs::File::create(&temporary)
            .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path))
            .and_then(|()| std::fs::File::open(directory)?.sync_all());
        written.map_err(|e| failed(e.to_string()))
    }

    /// The state of region `name`.
    pub fn region(&self, name: &str) -> RegionState {
        self.regions.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_starts_with_primaries_active() {
        let directory = tempfile::tempdir().unwrap();
        let mut state = StateFile::load(directory.path()).unwrap();
        assert_eq!(state.region("west").active, Side::Primary);
        state.regions.insert(
            "west".to_string(),
            RegionState {
                active: Side::Copy,
                epoch: 3,
                reprotected: false,
                failed_over_at: Some("now".to_string()),
            },
        );
        state.save(directory.path()).unwrap();
        assert_eq!(StateFile::load(directory.path()).unwrap(), state);
    }
}
