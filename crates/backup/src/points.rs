//! Naming points: full ids, unique prefixes, `latest` of a VM, or a VM's point at a
//! wall-clock time.

use lifeboat_repository::{Manifest, Repository, RepositoryError};

use crate::error::{EngineError, Result};

/// Resolves `spec` — a point id, a unique prefix of one, or `latest` (with `vm`) — to its
/// manifest. A `vm` given with an id must match the point's VM.
pub fn resolve_point(repository: &Repository, spec: &str, vm: Option<&str>) -> Result<Manifest> {
    let list = repository.list_points()?;
    let mut candidates = list
        .points
        .into_iter()
        .filter(|p| vm.is_none_or(|vm| p.vm == vm));
    if spec == "latest" {
        let Some(vm) = vm else {
            return Err(EngineError::Invalid("'latest' needs --vm NAME".to_string()));
        };
        return candidates.next_back().ok_or_else(|| {
            EngineError::Refused(format!(
                "VM '{vm}' has no recovery point in repository {}",
                repository.location()
            ))
        });
    }
    if spec.is_empty() || !spec.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(EngineError::Invalid(format!(
            "'{spec}' is not a point id: give an id (or a unique prefix) from 'lifeboat points', or 'latest' with --vm"
        )));
    }
    let spec = spec.to_ascii_lowercase();
    let mut matches: Vec<Manifest> = candidates.filter(|p| p.point.starts_with(&spec)).collect();
    match matches.len() {
        0 => Err(RepositoryError::NoSuchPoint {
            location: repository.location(),
            point: spec,
        }
        .into()),
        1 => Ok(matches.remove(0)),
        _ => Err(RepositoryError::AmbiguousPoint {
            prefix: spec,
            matches: matches
                .iter()
                .map(|p| p.point[..12].to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into()),
    }
}

/// The point of `vm` that held the VM's state at `time`: its newest point made at or before
/// `time`. A time before the VM's oldest point is refused, naming the history there is.
pub fn resolve_at(
    repository: &Repository,
    vm: &str,
    time: chrono::DateTime<chrono::Utc>,
) -> Result<Manifest> {
    let list = repository.list_points()?;
    let mut dated: Vec<(chrono::DateTime<chrono::Utc>, Manifest)> = list
        .points
        .into_iter()
        .filter(|p| p.vm == vm)
        .filter_map(|p| {
            let at = chrono::DateTime::parse_from_rfc3339(&p.time).ok()?;
            Some((at.with_timezone(&chrono::Utc), p))
        })
        .collect();
    dated.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.point.cmp(&b.1.point)));
    let Some((oldest, _)) = dated.first() else {
        return Err(EngineError::Refused(format!(
            "VM '{vm}' has no recovery point in repository {}",
            repository.location()
        )));
    };
    let oldest = oldest.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    dated
        .into_iter()
        .rev()
        .find(|(at, _)| *at <= time)
        .map(|(_, manifest)| manifest)
        .ok_or_else(|| {
            EngineError::Refused(format!(
                "VM '{vm}' has no recovery point at or before {}: its history starts at {oldest}",
                time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ))
        })
}
