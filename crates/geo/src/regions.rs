//! Which copy of a region's repository is in charge, and where the other copy is. Pure.
//!
//! A region with `geo` or `geo-read` redundancy has two locations: its *primary*
//! repository, and its *copy* in the paired region. Normally the primary is active and
//! geo-sync copies primary → copy. After a storage failover the copy is active; once the
//! old primary is back and reprotected, geo-sync copies copy → old primary.

use lifeboat_config::{Config, Region};
use serde::{Deserialize, Serialize};

use crate::state::RegionState;

/// One of a region's two repository locations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    #[default]
    Primary,
    Copy,
}

/// Where a region's repositories are, as things stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionLocations {
    /// Which side is active.
    pub active_side: Side,
    /// The repository backups and restores use.
    pub active: String,
    /// Object storage settings for the active location.
    pub active_settings: Vec<(String, String)>,
    /// Where geo-sync copies the active repository to; `None` when the region is not
    /// protected (redundancy `local`, or failed over and not yet reprotected).
    pub standby: Option<String>,
    /// Object storage settings for the standby location.
    pub standby_settings: Vec<(String, String)>,
}

/// The locations of `region` given its state.
pub fn locations(config: &Config, region: &Region, state: &RegionState) -> RegionLocations {
    // A copy lives in the paired region and is reached with that region's settings.
    let pair_settings = region
        .pair
        .as_deref()
        .and_then(|pair| config.regions.iter().find(|r| r.name == pair))
        .map(|pair| pair.storage.clone())
        .unwrap_or_default();
    match (state.active, &region.geo_copy) {
        (Side::Copy, Some(copy)) => RegionLocations {
            active_side: Side::Copy,
            active: copy.clone(),
            active_settings: pair_settings,
            standby: state.reprotected.then(|| region.repository.clone()),
            standby_settings: region.storage.clone(),
        },
        _ => RegionLocations {
            active_side: Side::Primary,
            active: region.repository.clone(),
            active_settings: region.storage.clone(),
            standby: region
                .redundancy
                .has_copy()
                .then(|| region.geo_copy.clone())
                .flatten(),
            standby_settings: pair_settings,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        lifeboat_config::parse(
            Path::new("lifeboat.toml"),
            r#"
[[region]]
name = "west"
repository = "/srv/west"
pair = "east"
redundancy = "geo"
storage = { aws_region = "west-1" }

[[region]]
name = "east"
repository = "s3://east/repo"
storage = { aws_region = "east-1" }
"#,
        )
        .unwrap()
    }

    #[test]
    fn normally_the_primary_is_active_and_copies_go_to_the_pair() {
        let config = config();
        let west = config.region("west").unwrap();
        let here = locations(&config, west, &RegionState::default());
        assert_eq!(here.active, "/srv/west");
        assert_eq!(here.standby.as_deref(), Some("s3://east/repo/copies/west"));
        assert_eq!(
            here.standby_settings,
            [("aws_region".to_string(), "east-1".to_string())]
        );
        let east = locations(
            &config,
            config.region("east").unwrap(),
            &RegionState::default(),
        );
        assert_eq!(east.standby, None, "a local region has no copy");
    }

    #[test]
    fn after_failover_the_copy_is_active_and_unprotected_until_reprotected() {
        let config = config();
        let west = config.region("west").unwrap();
        let mut state = RegionState {
            active: Side::Copy,
            epoch: 1,
            ..RegionState::default()
        };
        let failed = locations(&config, west, &state);
        assert_eq!(failed.active, "s3://east/repo/copies/west");
        assert_eq!(
            failed.active_settings,
            [("aws_region".to_string(), "east-1".to_string())]
        );
        assert_eq!(failed.standby, None);
        state.reprotected = true;
        assert_eq!(
            locations(&config, west, &state).standby.as_deref(),
            Some("/srv/west")
        );
    }
}
