//! The HTTP API: JSON under `/api`, its OpenAPI document at `/api/openapi.json`, and
//! Prometheus metrics at `/metrics`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
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
use lifeboat_operations::{JobCommand, Refusal};

use crate::users::{AuditEntry, Identity, Role};

pub struct AppState {
    pub config: Config,
    pub store: Store,
    /// The newest `lifeboat status` and points.
    pub snapshot: crate::replication::Shared,
    /// Whether the API speaks HTTPS (session cookies are then `Secure`).
    pub tls: bool,
    /// Wakes this node's scheduler when a job is asked for.
    pub wake: Arc<tokio::sync::Notify>,
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
    /// Availability this month (UTC) since probing began, 0–1.
    pub availability_this_month: f64,
    pub sla_percent: f64,
    /// The availability this month meets the SLA.
    pub sla_met: bool,
    /// Availability per month since probing began, newest first (up to 12).
    pub months: Vec<MonthAvailability>,
}

/// A month's availability against the SLA.
#[derive(Serialize, ToSchema)]
pub struct MonthAvailability {
    /// `YYYY-MM` (UTC).
    pub month: String,
    /// 0–1, over the part of the month the region was probed.
    pub availability: f64,
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

/// A request body that is not the JSON asked for: 400, naming what is wrong.
pub(crate) fn bad_json(rejection: &JsonRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!(
            "the request body must be JSON as documented (Content-Type: application/json): {}",
            rejection.body_text()
        ),
    )
}

pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ApiError { error: message })).into_response()
}

/// The start of the month `back` months before this one (UTC), in milliseconds.
fn month_start_ms(back: u32) -> (String, i64) {
    let now = chrono::Utc::now();
    let months = now.year() * 12 + now.month0() as i32 - back as i32;
    let (year, month) = (months.div_euclid(12), months.rem_euclid(12) as u32 + 1);
    let start = chrono::Utc
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .map_or(0, |t| t.timestamp_millis());
    (format!("{year:04}-{month:02}"), start)
}

async fn region_status(
    state: &AppState,
    region: &lifeboat_config::Region,
) -> crate::Result<RegionStatus> {
    let incidents = state.store.incidents(&region.name).await?;
    let last_check = state.store.last_check(&region.name).await?;
    let since = state.store.monitored_since(&region.name).await?;
    let spans: Vec<(i64, Option<i64>)> = incidents
        .iter()
        .map(|i| (i.opened_ms, i.closed_ms))
        .collect();
    let now = now_ms();
    let mut months = Vec::new();
    let mut end = now;
    for back in 0..12 {
        let (month, start) = month_start_ms(back);
        let Some(since) = since.filter(|&since| since < end) else {
            break;
        };
        let availability = availability(&spans, start.max(since), end);
        months.push(MonthAvailability {
            month,
            availability,
            sla_met: availability * 100.0 >= region.sla_percent,
        });
        end = start;
    }
    // Over the part of this month the region was probed.
    let availability_this_month = months.first().map_or_else(
        || availability(&spans, month_start_ms(0).1, now),
        |month| month.availability,
    );
    Ok(RegionStatus {
        name: region.name.clone(),
        probe: region.probe.clone(),
        up: region.probe.as_ref().and(last_check.as_ref().map(|c| c.ok)),
        last_check,
        open_incident: incidents.into_iter().find(|i| i.closed_ms.is_none()),
        availability_this_month,
        sla_percent: region.sla_percent,
        sla_met: availability_this_month * 100.0 >= region.sla_percent,
        months,
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

/// The newest jobs (up to 200), newest first, each with the end of its output (the last
/// 4,000 characters; `GET /api/jobs/{id}` has all of it).
#[utoipa::path(get, path = "/api/jobs", responses(
    (status = 200, description = "jobs", body = Vec<Job>),
    (status = 503, description = "the state database cannot be read", body = ApiError)))]
async fn jobs(
    State(state): State<Arc<AppState>>,
    axum::Extension(identity): axum::Extension<Identity>,
) -> Response {
    match state.store.jobs(200).await {
        Ok(jobs) => Json(
            jobs.into_iter()
                .map(|job| visible(job, &identity))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `job` as `identity` may see it: what a command printed only to those with the role it
/// needed (`user add` prints a token: only admins see it).
fn visible(mut job: Job, identity: &Identity) -> Job {
    let needed = job.command.as_deref().map_or(Role::Reader, |command| {
        JobCommand::parse(command).map_or(Role::Admin, |command| command.role)
    });
    if identity.role < needed {
        job.output = None;
        job.errors = Some(format!(
            "what this command printed is shown to {} or above",
            needed.with_article()
        ));
    }
    job
}

/// One job.
#[utoipa::path(get, path = "/api/jobs/{id}",
    params(("id" = String, Path, description = "the job")),
    responses(
        (status = 200, description = "the job", body = Job),
        (status = 404, description = "no such job", body = ApiError),
        (status = 503, description = "the state database cannot be read", body = ApiError)))]
async fn job(
    State(state): State<Arc<AppState>>,
    axum::Extension(identity): axum::Extension<Identity>,
    Path(id): Path<String>,
) -> Response {
    match state.store.job(&id).await {
        Ok(Some(job)) => Json(visible(job, &identity)).into_response(),
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

/// Who makes a request: the user of its bearer token, or of its session cookie (whose
/// changes must carry the session's CSRF token, returned too), or, until a user exists, an
/// anonymous reader. An error response when it cannot be told.
async fn identify(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    changing: bool,
) -> Result<(Identity, crate::session::Csrf), Response> {
    let unavailable =
        |e: crate::ControlError| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = token {
        return match state.store.authenticate(token).await.map_err(unavailable)? {
            Some(identity) => Ok((identity, crate::session::Csrf(None))),
            None => Err(error(
                StatusCode::UNAUTHORIZED,
                "this token is not valid".to_string(),
            )),
        };
    }
    if let Some(id) = crate::session::cookie(headers)
        && let Some(session) = state
            .store
            .session(&id, now_ms())
            .await
            .map_err(unavailable)?
    {
        let echoed = headers
            .get(crate::session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if changing && echoed != Some(session.csrf.as_str()) {
            return Err(error(
                StatusCode::FORBIDDEN,
                "this change lacks the session's CSRF token (X-CSRF-Token): reload the page"
                    .to_string(),
            ));
        }
        return Ok((session.identity, crate::session::Csrf(Some(session.csrf))));
    }
    if !state.store.has_users().await.map_err(unavailable)? {
        let anonymous = Identity {
            user: "anonymous".to_string(),
            role: Role::Reader,
        };
        return Ok((anonymous, crate::session::Csrf(None)));
    }
    Err(error(
        StatusCode::UNAUTHORIZED,
        "log in, or give a token: Authorization: Bearer TOKEN (lifeboat user add makes one)"
            .to_string(),
    ))
}

/// Authentication and roles: `/metrics`, `/api/openapi.json`, the login and the
/// dashboard's files are open; every other request is identified (`identify`); reads need
/// a reader, a job asked for the role its command needs (checked by `submit`), anything
/// else an operator. Until a user exists the API only reads, anonymously.
async fn authorize(
    State(state): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let open = path == "/metrics"
        || path == "/api/openapi.json"
        || !path.starts_with("/api/")
        || (path == "/api/session" && request.method() == axum::http::Method::POST)
        || path == "/api/session/logout";
    if open {
        return next.run(request).await;
    }
    let reading = request.method() == axum::http::Method::GET;
    let headers = request.headers().clone();
    let (identity, csrf) = match identify(&state, &headers, !reading).await {
        Ok(identified) => identified,
        Err(response) => return response,
    };
    let judged_by_handler = path == "/api/jobs" && request.method() == axum::http::Method::POST;
    if !reading && !judged_by_handler && identity.role < Role::Operator {
        return forbidden(&identity, "an operator or admin");
    }
    request.extensions_mut().insert(identity);
    request.extensions_mut().insert(csrf);
    next.run(request).await
}

fn forbidden(identity: &Identity, needed: &str) -> Response {
    let (status, hint) = if identity.user == "anonymous" {
        (
            StatusCode::UNAUTHORIZED,
            ": no user exists yet, so the API only reads (lifeboat user add NAME --role operator)",
        )
    } else {
        (StatusCode::FORBIDDEN, "")
    };
    error(
        status,
        format!(
            "user '{}' is a {}: this needs {needed}{hint}",
            identity.user,
            identity.role.as_str()
        ),
    )
}

/// A command to run.
#[derive(serde::Deserialize, ToSchema)]
pub struct CommandRequest {
    /// A `lifeboat` command line without the program, e.g. `["points", "--vm", "db1"]`.
    #[schema(min_items = 1)]
    pub command: Vec<String>,
}

/// Runs a `lifeboat` command as a job on a node (what the remote CLI and the dashboard's
/// actions do). Reading commands need a reader, changes an operator, user management an
/// admin; every request is written to the audit log with its user.
#[utoipa::path(post, path = "/api/jobs", request_body = CommandRequest, responses(
    (status = 202, description = "queued", body = Job),
    (status = 400, description = "not a JSON command, or not a lifeboat command line", body = ApiError),
    (status = 401, description = "not logged in", body = ApiError),
    (status = 403, description = "the user's role is not enough, or the API does not run that command", body = ApiError),
    (status = 503, description = "the state database cannot be written", body = ApiError)))]
async fn submit(
    State(state): State<Arc<AppState>>,
    axum::Extension(identity): axum::Extension<Identity>,
    request: Result<Json<CommandRequest>, JsonRejection>,
) -> Response {
    let request = match request {
        Ok(Json(request)) => request,
        Err(rejection) => return bad_json(&rejection),
    };
    // The role comes from the command as the job's child will parse it.
    let needed = match JobCommand::parse(&request.command) {
        Ok(command) => command.role,
        Err(refusal @ (Refusal::Empty | Refusal::Usage(_))) => {
            return error(StatusCode::BAD_REQUEST, refusal.to_string());
        }
        Err(refusal) => return error(StatusCode::FORBIDDEN, refusal.to_string()),
    };
    let target = request.command.join(" ");
    if identity.role < needed {
        let _ = state
            .store
            .audit(&identity.user, "run", &target, "refused: role", now_ms())
            .await;
        return forbidden(&identity, needed.with_article());
    }
    let job = match state
        .store
        .submit(&request.command, &identity.user, now_ms())
        .await
    {
        Ok(job) => job,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if let Err(e) = state
        .store
        .audit(
            &identity.user,
            "run",
            &target,
            &format!("job {}", job.id),
            now_ms(),
        )
        .await
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    state.wake.notify_one();
    (StatusCode::ACCEPTED, Json(job)).into_response()
}

/// A VM as the dashboard lists it.
#[derive(Serialize, ToSchema)]
pub struct VmSummary {
    pub name: String,
    /// Its home region.
    pub region: String,
    /// The plans it is in.
    pub plans: Vec<String>,
    /// Its replication group, if it is replicated.
    pub group: Option<String>,
    /// Age of its newest point in the recovery region (replicated VMs).
    pub rpo_seconds: Option<f64>,
    /// Above the group's RPO threshold, or unknown while replicated.
    pub alert: bool,
    /// Written and not shipped yet.
    pub pending_bytes: Option<u64>,
}

/// Every configured VM with its replication RPO.
#[utoipa::path(get, path = "/api/vms", responses(
    (status = 200, description = "VMs", body = Vec<VmSummary>)))]
async fn vms(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot.read().await;
    let replicated = &snapshot.vms;
    let summaries: Vec<VmSummary> = state
        .config
        .vms
        .iter()
        .map(|vm| {
            let replica = replicated.iter().find(|r| r.vm == vm.name);
            VmSummary {
                name: vm.name.clone(),
                region: vm.region.clone(),
                plans: state
                    .config
                    .plans
                    .iter()
                    .filter(|p| p.groups.iter().flatten().any(|name| *name == vm.name))
                    .map(|p| p.name.clone())
                    .collect(),
                group: replica.map(|r| r.group.clone()),
                rpo_seconds: replica.and_then(|r| r.rpo_seconds),
                alert: replica.is_some_and(|r| r.alert),
                pending_bytes: replica.and_then(|r| r.pending_bytes),
            }
        })
        .collect();
    Json(summaries).into_response()
}

/// A VM's RPO over the last 24 hours (a sample every 10 s while replicated).
#[utoipa::path(get, path = "/api/vms/{name}/rpo",
    params(("name" = String, Path, description = "the VM")),
    responses(
        (status = 200, description = "samples, oldest first", body = Vec<crate::store::RpoSample>),
        (status = 404, description = "no such VM", body = ApiError),
        (status = 503, description = "the state database cannot be read", body = ApiError)))]
async fn vm_rpo(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    if !state.config.vms.iter().any(|vm| vm.name == name) {
        return error(StatusCode::NOT_FOUND, format!("there is no VM '{name}'"));
    }
    match state
        .store
        .rpo_history(&name, now_ms() - 24 * 3600 * 1000)
        .await
    {
        Ok(samples) => Json(samples).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Every recovery point of every region's active repository, newest first (read every
/// 10 s); each with its region.
#[utoipa::path(get, path = "/api/points", responses(
    (status = 200, description = "points", body = Vec<Object>)))]
async fn points(State(state): State<Arc<AppState>>) -> Response {
    Json(&state.snapshot.read().await.points).into_response()
}

/// A recovery plan.
#[derive(Serialize, ToSchema)]
pub struct PlanSummary {
    pub name: String,
    /// Groups of VMs, started in order; the VMs of a group in parallel.
    pub groups: Vec<Vec<String>>,
}

/// The configured recovery plans.
#[utoipa::path(get, path = "/api/plans", responses(
    (status = 200, description = "plans", body = Vec<PlanSummary>)))]
async fn plans(State(state): State<Arc<AppState>>) -> Response {
    Json(
        state
            .config
            .plans
            .iter()
            .map(|plan| PlanSummary {
                name: plan.name.clone(),
                groups: plan.groups.clone(),
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// Drill reports: every test failover run on this node, newest first, step by step.
#[utoipa::path(get, path = "/api/drills", responses(
    (status = 200, description = "test failover runs", body = Vec<Object>),
    (status = 503, description = "the run records cannot be read", body = ApiError)))]
async fn drills(State(state): State<Arc<AppState>>) -> Response {
    let directory = state.config.state_directory.clone();
    let runs = tokio::task::spawn_blocking(move || crate::drills::list(&directory)).await;
    match runs {
        Ok(Ok(runs)) => Json(runs).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
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
    text.push_str(&crate::metrics::jobs(&jobs));
    let snapshot = state.snapshot.read().await;
    if let Some(status) = &snapshot.status {
        text.push_str(&crate::replication::metrics(status, &snapshot.vms));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lifeboat",
        description = "Disaster recovery for QEMU/KVM virtual machines"
    ),
    paths(
        status,
        incidents,
        jobs,
        job,
        submit,
        cancel,
        audit,
        replication,
        vms,
        vm_rpo,
        points,
        plans,
        drills,
        crate::session::login,
        crate::session::current,
        crate::session::logout
    ),
    components(schemas(
        StatusReport,
        RegionStatus,
        MonthAvailability,
        Incident,
        Check,
        Job,
        crate::store::JobProgress,
        crate::store::JobStep,
        AuditEntry,
        ApiError,
        CommandRequest,
        VmSummary,
        PlanSummary,
        crate::store::RpoSample,
        crate::session::SessionInfo,
        crate::session::Login
    ))
)]
struct ApiDocument;

async fn openapi() -> Response {
    Json(ApiDocument::openapi()).into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/regions/{name}/incidents", get(incidents))
        .route("/api/jobs", get(jobs).post(submit))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/cancel", axum::routing::post(cancel))
        .route("/api/audit", get(audit))
        .route("/api/replication", get(replication))
        .route("/api/vms", get(vms))
        .route("/api/vms/{name}/rpo", get(vm_rpo))
        .route("/api/points", get(points))
        .route("/api/plans", get(plans))
        .route("/api/drills", get(drills))
        .route(
            "/api/session",
            get(crate::session::current).post(crate::session::login),
        )
        .route(
            "/api/session/logout",
            axum::routing::post(crate::session::logout),
        )
        .merge(crate::web::router())
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such resource".to_string()) })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ))
        .with_state(state)
}
