//! The HTTP API: JSON under `/api`, its OpenAPI document at `/api/openapi.json`, and
//! Prometheus metrics at `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{Datelike, TimeZone};
use lifeboat_config::Config;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::incidents::availability;
use crate::probes::now_ms;
use crate::store::{Check, Incident, Job, Store};
use crate::users::{AuditEntry, Identity, Role};

pub struct AppState {
    pub config: Config,
    pub store: Store,
    /// The newest `lifeboat status`.
    pub snapshot: crate::replication::Shared,
}

/// One region as the status page shows it.
#[derive(Serialize, ToSchema)]
pub struct RegionStatus {
    pub name: String,
    /// What is probed, if anything.
    pub probe: Option<String>,
    /// Up by the last probe; null before the first or without a probe.
    pub up: Option<bool>,
    pub last_check: Option<Check>,
    pub open_incident: Option<Incident>,
    /// Availability since the start of this month (UTC), 0–1.
    pub availability_this_month: f64,
    pub sla_percent: f64,
    /// The availability this month meets the SLA.
    pub sla_met: bool,
}

#[derive(Serialize, ToSchema)]
pub struct StatusReport {
    pub regions: Vec<RegionStatus>,
}

/// An error as JSON, naming what failed.
#[derive(Serialize, ToSchema)]
pub struct ApiError {
    pub error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ApiError { error: message })).into_response()
}

fn month_start_ms() -> i64 {
    let now = chrono::Utc::now();
    chrono::Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .map_or(0, |t| t.timestamp_millis())
}

async fn region_status(
    state: &AppState,
    region: &lifeboat_config::Region,
) -> crate::Result<RegionStatus> {
    let incidents = state.store.incidents(&region.name).await?;
    let last_check = state.store.last_check(&region.name).await?;
    let spans: Vec<(i64, Option<i64>)> = incidents
        .iter()
        .map(|i| (i.opened_ms, i.closed_ms))
        .collect();
    let availability_this_month = availability(&spans, month_start_ms(), now_ms());
    Ok(RegionStatus {
        name: region.name.clone(),
        probe: region.probe.clone(),
        up: region.probe.as_ref().and(last_check.as_ref().map(|c| c.ok)),
        last_check,
        open_incident: incidents.into_iter().find(|i| i.closed_ms.is_none()),
        availability_this_month,
        sla_percent: region.sla_percent,
        sla_met: availability_this_month * 100.0 >= region.sla_percent,
    })
}

/// The status of every configured region.
async fn region_statuses(state: &AppState) -> crate::Result<Vec<RegionStatus>> {
    let mut statuses = Vec::new();
    for region in &state.config.regions {
        statuses.push(region_status(state, region).await?);
    }
    Ok(statuses)
}

/// Every region: health, open incident, availability this month against its SLA.
#[utoipa::path(get, path = "/api/status", responses(
    (status = 200, description = "every region", body = StatusReport),
    (status = 503, description = "the state database cannot be read", body = ApiError)))]
async fn status(State(state): State<Arc<AppState>>) -> Response {
    match region_statuses(&state).await {
        Ok(regions) => Json(StatusReport { regions }).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A region's incidents, newest first.
#[utoipa::path(get, path = "/api/regions/{name}/incidents",
    params(("name" = String, Path, description = "the region")),
    responses(
        (status = 200, description = "its incidents", body = Vec<Incident>),
        (status = 404, description = "no such region", body = ApiError),
        (status = 503, description = "the state database cannot be read", body = ApiError)))]
async fn incidents(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    if state.config.region(&name).is_err() {
        return error(
            StatusCode::NOT_FOUND,
            format!("there is no region '{name}'"),
        );
    }
    match state.store.incidents(&name).await {
        Ok(incidents) => Json(incidents).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The newest jobs (up to 200), newest first.
#[utoipa::path(get, path = "/api/jobs", responses(
    (status = 200, description = "jobs", body = Vec<Job>),
    (status = 503, description = "the state database cannot be read", body = ApiError)))]
async fn jobs(State(state): State<Arc<AppState>>) -> Response {
    match state.store.jobs(200).await {
        Ok(jobs) => Json(jobs).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// One job.
#[utoipa::path(get, path = "/api/jobs/{id}",
    params(("id" = String, Path, description = "the job")),
    responses(
        (status = 200, description = "the job", body = Job),
        (status = 404, description = "no such job", body = ApiError),
        (status = 503, description = "the state database cannot be read", body = ApiError)))]
async fn job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.store.job(&id).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("there is no job '{id}'")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Cancels a job: a queued one at once, a running one within a second (its process is
/// killed).
#[utoipa::path(post, path = "/api/jobs/{id}/cancel",
    params(("id" = String, Path, description = "the job")),
    responses(
        (status = 202, description = "cancelled, or being cancelled", body = Job),
        (status = 404, description = "no such job", body = ApiError),
        (status = 503, description = "the state database cannot be written", body = ApiError)))]
async fn cancel(
    State(state): State<Arc<AppState>>,
    axum::Extension(identity): axum::Extension<Identity>,
    Path(id): Path<String>,
) -> Response {
    let (response, result) = match state.store.cancel(&id, now_ms()).await {
        Ok(Some(job)) => {
            let result = format!("job is {}", job.state);
            ((StatusCode::ACCEPTED, Json(job)).into_response(), result)
        }
        Ok(None) => (
            error(StatusCode::NOT_FOUND, format!("there is no job '{id}'")),
            "no such job".to_string(),
        ),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if let Err(e) = state
        .store
        .audit(&identity.user, "cancel job", &id, &result, now_ms())
        .await
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    response
}

/// The newest actions (up to 500), with who did them. Operators and admins only.
#[utoipa::path(get, path = "/api/audit", responses(
    (status = 200, description = "actions, newest first", body = Vec<AuditEntry>),
    (status = 403, description = "readers may not read it", body = ApiError)))]
async fn audit(
    State(state): State<Arc<AppState>>,
    axum::Extension(identity): axum::Extension<Identity>,
) -> Response {
    if identity.role < Role::Operator {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "user '{}' is a {}: the audit log needs an operator or admin",
                identity.user,
                identity.role.as_str()
            ),
        );
    }
    match state.store.audit_log(500).await {
        Ok(entries) => Json(entries).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Authentication and roles: `/metrics` and `/api/openapi.json` are open; every other
/// request carries `Authorization: Bearer TOKEN`, reads need a reader, anything else an
/// operator. Until a user exists the API only reads, anonymously.
async fn authorize(
    State(state): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if path == "/metrics" || path == "/api/openapi.json" || !path.starts_with("/api/") {
        return next.run(request).await;
    }
    let reading = request.method() == axum::http::Method::GET;
    let has_users = match state.store.has_users().await {
        Ok(has) => has,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let identity = match (has_users, token) {
        (false, _) if reading => Identity {
            user: "anonymous".to_string(),
            role: Role::Reader,
        },
        (false, _) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "no user exists yet, so the API only reads: create one with lifeboat user add NAME --role operator".to_string(),
            );
        }
        (true, None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "give a token: Authorization: Bearer TOKEN (lifeboat user add makes one)"
                    .to_string(),
            );
        }
        (true, Some(token)) => match state.store.authenticate(&token).await {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "this token is not valid".to_string(),
                );
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
    };
    if !reading && identity.role < Role::Operator {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "user '{}' is a {}: this action needs an operator or admin",
                identity.user,
                identity.role.as_str()
            ),
        );
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}

/// The newest `lifeboat status` (regions, repositories, the RPO of every replicated group
/// and VM), read every 10 s.
#[utoipa::path(get, path = "/api/replication", responses(
    (status = 200, description = "the status, with read_ms and error", body = Object)))]
async fn replication(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot.read().await.clone();
    Json(serde_json::json!({
        "read_ms": snapshot.read_ms,
        "error": snapshot.error,
        "status": snapshot.status,
    }))
    .into_response()
}

/// Prometheus text exposition.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    text.push_str("# HELP lifeboat_region_up Whether the region's last probe succeeded.\n# TYPE lifeboat_region_up gauge\n");
    let statuses = match region_statuses(&state).await {
        Ok(statuses) => statuses,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    for status in &statuses {
        if let Some(up) = status.up {
            text.push_str(&format!(
                "lifeboat_region_up{{region=\"{}\"}} {}\n",
                status.name,
                u8::from(up)
            ));
        }
    }
    text.push_str("# HELP lifeboat_region_availability_ratio Availability this month.\n# TYPE lifeboat_region_availability_ratio gauge\n");
    for status in &statuses {
        text.push_str(&format!(
            "lifeboat_region_availability_ratio{{region=\"{}\"}} {}\n",
            status.name, status.availability_this_month
        ));
    }
    text.push_str("# HELP lifeboat_region_incident_open Whether the region has an open incident.\n# TYPE lifeboat_region_incident_open gauge\n");
    for status in &statuses {
        text.push_str(&format!(
            "lifeboat_region_incident_open{{region=\"{}\"}} {}\n",
            status.name,
            u8::from(status.open_incident.is_some())
        ));
    }
    let jobs = match state.store.jobs(1000).await {
        Ok(jobs) => jobs,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    text.push_str(
        "# HELP lifeboat_jobs Recent jobs by schedule and state.\n# TYPE lifeboat_jobs gauge\n",
    );
    let mut counts: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for job in &jobs {
        *counts
            .entry((job.schedule.as_str(), job.state.as_str()))
            .or_default() += 1;
    }
    for ((schedule, job_state), count) in counts {
        text.push_str(&format!(
            "lifeboat_jobs{{schedule=\"{schedule}\",state=\"{job_state}\"}} {count}\n"
        ));
    }
    text.push_str("# HELP lifeboat_job_last_duration_seconds Duration of each schedule's newest finished job.\n# TYPE lifeboat_job_last_duration_seconds gauge\n");
    let mut seen = std::collections::BTreeSet::new();
    for job in &jobs {
        if let (Some(started), Some(finished)) = (job.started_ms, job.finished_ms)
            && seen.insert(job.schedule.as_str())
        {
            text.push_str(&format!(
                "lifeboat_job_last_duration_seconds{{schedule=\"{}\"}} {}\n",
                job.schedule,
                (finished - started) as f64 / 1000.0
            ));
        }
    }
    if let Some(status) = &state.snapshot.read().await.status {
        text.push_str(&crate::replication::metrics(status));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lifeboat",
        description = "Disaster recovery for QEMU/KVM virtual machines"
    ),
    paths(status, incidents, jobs, job, cancel, audit, replication),
    components(schemas(StatusReport, RegionStatus, Incident, Check, Job, AuditEntry, ApiError))
)]
struct ApiDocument;

async fn openapi() -> Response {
    Json(ApiDocument::openapi()).into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/regions/{name}/incidents", get(incidents))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/cancel", axum::routing::post(cancel))
        .route("/api/audit", get(audit))
        .route("/api/replication", get(replication))
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such resource".to_string()) })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ))
        .with_state(state)
}
