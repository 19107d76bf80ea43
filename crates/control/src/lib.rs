//! Lifeboat's control plane, `lifeboat serve`: region health probes that open and close
//! incidents and measure availability against each region's SLA, kept in SQL (SQLite
//! embedded, or PostgreSQL), served as a JSON API with an OpenAPI document and as
//! Prometheus metrics.
//!
//! # Layout
//!
//! * `incidents.rs` — the decisions, without I/O: when probes open and close an incident,
//!   and availability over a period.
//! * `store.rs` — the state database (one schema for SQLite and PostgreSQL).
//! * `probes.rs` — probing each region on its interval.
//! * `scheduler.rs` — `[[schedule]]`s queued once across nodes, claimed, run as `lifeboat`
//!   child processes with a heartbeat, queued again when their node dies, cancelled on
//!   request.
//! * `replication.rs` — `lifeboat --json status` read every 10 s: RPO and lag of every
//!   replicated group and VM, points per region, for `/api/replication` and `/metrics`.
//! * `users.rs` — users, roles (reader, operator, admin), API tokens (Argon2id hashes) and
//!   the audit table of actions.
//! * `api.rs` — the HTTP API (`/api/status`, `/api/regions/{name}/incidents`,
//!   `/api/openapi.json`, `/metrics`).
//!
//! # What this crate must not know
//!
//! Repositories, disks or VMs: jobs are `lifeboat` command lines run as child processes.
//! The only crate besides storage with an async runtime, and the only one that speaks
//! HTTP as a server.

/// A line on standard error for the daemon's log; a log reader that went away costs the
/// line, never the daemon (`eprintln!` panics on a closed pipe).
macro_rules! tell {
    ($($argument:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($argument)*);
    }};
}

pub mod api;
pub mod drills;
pub mod incidents;
pub mod metrics;
pub mod probes;
pub mod replication;
pub mod scheduler;
pub mod session;
pub mod store;
pub mod users;
pub mod web;

use std::sync::Arc;

use lifeboat_config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("state database: cannot {what}: {detail}")]
    Database { what: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot serve HTTP on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Runs the control plane for `config` until the process ends; calls `ready` with the
/// address it answers on and whether it speaks HTTPS.
pub fn serve(
    config: Config,
    listen: Option<std::net::SocketAddr>,
    runner: scheduler::JobRunner,
    ready: impl FnOnce(std::net::SocketAddr, bool),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ControlError::Listen {
            address: config.listen,
            source,
        })?;
    runtime.block_on(async move {
        let store = store::Store::open(&config.database).await?;
        for region in &config.regions {
            tokio::spawn(probes::watch(store.clone(), region.clone()));
        }
        let shared = Arc::new(config.clone());
        let snapshot = replication::Shared::default();
        let regions = config.regions.iter().map(|r| r.name.clone()).collect();
        tokio::spawn(replication::poll(
            runner.clone(),
            snapshot.clone(),
            store.clone(),
            regions,
        ));
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(scheduler::run(
            store.clone(),
            shared,
            runner,
            Arc::clone(&wake),
        ));
        let address = listen.unwrap_or(config.listen);
        let listener = std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ControlError::Listen { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ControlError::Listen { address, source })?;
        let tls = match &config.tls {
            Some((certificate, key)) => Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(certificate, key)
                    .await
                    .map_err(|e| {
                        ControlError::Invalid(format!(
                            "cannot use the TLS certificate {} and key {}: {e}",
                            certificate.display(),
                            key.display()
                        ))
                    })?,
            ),
            None => None,
        };
        ready(bound, tls.is_some());
        let app = api::router(Arc::new(api::AppState {
            config,
            store,
            snapshot,
            tls: tls.is_some(),
            wake,
        }))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = match tls {
            Some(tls) => {
                axum_server::from_tcp_rustls(listener, tls)
                    .map_err(|source| ControlError::Listen {
                        address: bound,
                        source,
                    })?
                    .serve(app)
                    .await
            }
            None => {
                let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| {
                    ControlError::Listen {
                        address: bound,
                        source,
                    }
                })?;
                axum::serve(listener, app).await
            }
        };
        served.map_err(|source| ControlError::Listen {
            address: bound,
            source,
        })
    })
}

/// Runs `work` on a small runtime against `config`'s database: for CLI commands that
/// manage the control plane's state (`lifeboat user add`).
pub fn with_store<T>(
    config: &Config,
    work: impl AsyncFnOnce(&store::Store) -> Result<T>,
) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ControlError::Invalid(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let store = store::Store::open(&config.database).await?;
        work(&store).await
    })
}
