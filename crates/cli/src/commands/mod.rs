//! One file per command.

pub mod backup;
pub mod dns;
pub mod export;
pub mod failover;
pub mod forget;
pub mod geo_sync;
pub mod init;
pub mod points;
pub mod protect;
pub mod prune;
pub mod receive;
pub mod region;
pub mod restore;
pub mod serve;
pub mod status;
pub mod verify;

/// Worker threads for CPU-bound stages: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// The point a command names: an id, a prefix or `latest`, or the VM's point at a time.
pub fn named_point(
    repository: &lifeboat_repository::Repository,
    point: Option<&str>,
    vm: Option<&str>,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<lifeboat_repository::Manifest> {
    Ok(match (point, vm, at) {
        (_, Some(vm), Some(at)) => lifeboat_backup::resolve_at(repository, vm, at)?,
        (Some(point), vm, None) => lifeboat_backup::resolve_point(repository, point, vm)?,
        _ => anyhow::bail!("name a point: an id, 'latest' with --vm, or --at TIME with --vm"),
    })
}
