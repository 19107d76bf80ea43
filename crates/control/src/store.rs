//! The control plane's state in SQL: embedded SQLite by default, PostgreSQL to share it
//! between nodes (one schema, through sqlx's `Any` driver). Times are Unix milliseconds.
//!
//! ```sql
//! incidents (id TEXT PRIMARY KEY, region TEXT, opened_ms BIGINT, closed_ms BIGINT NULL, reason TEXT)
//! region_checks (region TEXT PRIMARY KEY, checked_ms BIGINT, ok INTEGER, detail TEXT)
//! users (name TEXT PRIMARY KEY, role TEXT, created_ms BIGINT)
//! tokens (id TEXT PRIMARY KEY, name TEXT, salt TEXT, hash TEXT, created_ms BIGINT)
//! audit (id TEXT PRIMARY KEY, time_ms BIGINT, actor TEXT, action TEXT, target TEXT, result TEXT)
//! jobs (id TEXT PRIMARY KEY, schedule TEXT, due_ms BIGINT, state TEXT, node TEXT NULL,
//!       attempt BIGINT, created_ms BIGINT, started_ms BIGINT NULL, heartbeat_ms BIGINT NULL,
//!       finished_ms BIGINT NULL, output TEXT NULL, UNIQUE (schedule, due_ms),
//!       command TEXT NULL, actor TEXT NULL, exit_code BIGINT NULL, progress TEXT NULL,
//!       errors TEXT NULL)
//! sessions (id_hash TEXT PRIMARY KEY, name TEXT, csrf TEXT, expires_ms BIGINT)
//! monitored (region TEXT PRIMARY KEY, since_ms BIGINT)
//! rpo_samples (vm TEXT, slot BIGINT, time_ms BIGINT, rpo_seconds DOUBLE PRECISION,
//!              PRIMARY KEY (vm, slot))
//! ```
//!
//! Columns added after a table was first made (`jobs.command` …, `users.password_*`) are
//! added to older databases when the store opens.
//!
//! A job runs either a schedule's command (`schedule` names it) or a command asked for
//! through the API (`schedule` empty, `command` its arguments as JSON, `actor` who asked).
//!
//! A job exists once per schedule and due moment (the unique key): of several nodes
//! enqueuing it, one succeeds. A node claims a queued job with an update that only
//! succeeds while it is still queued; it keeps the job's heartbeat fresh while it runs, and
//! a job whose heartbeat went stale (its node died) is queued again for another node.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::{ControlError, Result};

const SCHEMA: [&str; 11] = [
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, salt TEXT NOT NULL, \
     hash TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, time_ms BIGINT NOT NULL, actor TEXT NOT NULL, \
     action TEXT NOT NULL, target TEXT NOT NULL, result TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, schedule TEXT NOT NULL, due_ms BIGINT NOT NULL, \
     state TEXT NOT NULL, node TEXT, attempt BIGINT NOT NULL, created_ms BIGINT NOT NULL, started_ms BIGINT, \
     heartbeat_ms BIGINT, finished_ms BIGINT, output TEXT, UNIQUE (schedule, due_ms))",
    "CREATE TABLE IF NOT EXISTS incidents (id TEXT PRIMARY KEY, region TEXT NOT NULL, \
     opened_ms BIGINT NOT NULL, closed_ms BIGINT, reason TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS region_checks (region TEXT PRIMARY KEY, checked_ms BIGINT NOT NULL, \
     ok INTEGER NOT NULL, detail TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (id_hash TEXT PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL, \
     expires_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS monitored (region TEXT PRIMARY KEY, since_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rpo_samples (vm TEXT NOT NULL, slot BIGINT NOT NULL, time_ms BIGINT NOT NULL, \
     rpo_seconds DOUBLE PRECISION NOT NULL, PRIMARY KEY (vm, slot))",
    "CREATE TABLE IF NOT EXISTS login_failures (subject TEXT NOT NULL, time_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS login_failures_by_subject ON login_failures (subject, time_ms)",
];

/// Columns added to tables after their first release: (table, column, type).
const ADDED_COLUMNS: [(&str, &str, &str); 7] = [
    ("jobs", "command", "TEXT"),
    ("jobs", "actor", "TEXT"),
    ("jobs", "exit_code", "BIGINT"),
    ("jobs", "progress", "TEXT"),
    ("jobs", "errors", "TEXT"),
    ("users", "password_salt", "TEXT"),
    ("users", "password_hash", "TEXT"),
];

/// The columns of a job, in the order `job()` reads them.
const JOB_COLUMNS: &str = "id, schedule, due_ms, state, node, attempt, created_ms, started_ms, \
     heartbeat_ms, finished_ms, output, command, actor, exit_code, progress, errors";
/// The same for lists: only the end of each output (`LISTED_OUTPUT` characters).
const JOB_LIST_COLUMNS: &str = "id, schedule, due_ms, state, node, attempt, created_ms, started_ms, \
     heartbeat_ms, finished_ms, CASE WHEN length(output) > 4000 THEN substr(output, length(output) - 3999) \
     ELSE output END, command, actor, exit_code, progress, errors";

/// An incident of a region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: String,
    pub region: String,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    pub reason: String,
}

/// The last probe of a region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Check {
    pub checked_ms: i64,
    pub ok: bool,
    pub detail: String,
}

/// A run of a schedule.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    pub schedule: String,
    pub due_ms: i64,
    /// `queued`, `running`, `cancel-requested`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// The node running or that ran it.
    pub node: Option<String>,
    /// Runs started (more than one when a node died while running it).
    pub attempt: i64,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub heartbeat_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// What the command printed on standard output (its end, when long).
    pub output: Option<String>,
    /// A command asked for through the API: its arguments; null for a schedule's job.
    pub command: Option<Vec<String>>,
    /// Who asked for it (null for a schedule's job).
    pub actor: Option<String>,
    /// The command's exit status once it ended (null when killed or not run).
    pub exit_code: Option<i64>,
    /// The newest progress the command reported.
    pub progress: Option<JobProgress>,
    /// The end of what the command printed on standard error.
    pub errors: Option<String>,
}

/// How a job ended.
#[derive(Clone, Debug, Default)]
pub struct JobEnd {
    /// `succeeded`, `failed` or `cancelled`.
    pub state: &'static str,
    pub output: String,
    pub errors: String,
    pub exit_code: Option<i64>,
    pub progress: Option<JobProgress>,
}

/// How far a running job is.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobProgress {
    pub done: u64,
    pub total: u64,
    /// `bytes` or `steps`.
    pub unit: String,
    /// The phase or step under way.
    pub message: String,
    /// For failovers and other plan runs: every step and its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<JobStep>>,
}

/// A step of a plan run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobStep {
    pub name: String,
    /// `pending`, `running`, `waiting`, `done` or `failed`.
    pub state: String,
    pub detail: Option<String>,
}

impl From<&lifeboat_orchestration::StepRecord> for JobStep {
    fn from(step: &lifeboat_orchestration::StepRecord) -> JobStep {
        JobStep {
            name: step.action.to_string(),
            state: serde_json::to_value(step.state)
                .ok()
                .and_then(|state| state.as_str().map(str::to_string))
                .unwrap_or_default(),
            detail: step.detail.clone(),
        }
    }
}

fn job(row: &sqlx::any::AnyRow) -> Result<Job, sqlx::Error> {
    let command: Option<String> = row.try_get(11)?;
    let progress: Option<String> = row.try_get(14)?;
    Ok(Job {
        id: row.try_get(0)?,
        schedule: row.try_get(1)?,
        due_ms: row.try_get(2)?,
        state: row.try_get(3)?,
        node: row.try_get(4)?,
        attempt: row.try_get(5)?,
        created_ms: row.try_get(6)?,
        started_ms: row.try_get(7)?,
        heartbeat_ms: row.try_get(8)?,
        finished_ms: row.try_get(9)?,
        output: row.try_get(10)?,
        command: command.and_then(|c| serde_json::from_str(&c).ok()),
        actor: row.try_get(12)?,
        exit_code: row.try_get(13)?,
        progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
        errors: row.try_get(15)?,
    })
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    memory: std::sync::Arc<Memory>,
}

/// What a node remembers to spare the database (see `users.rs`).
#[derive(Default)]
pub(crate) struct Memory {
    pub users_exist: std::sync::atomic::AtomicBool,
    #[allow(clippy::type_complexity)]
    pub tokens: std::sync::Mutex<
        std::collections::HashMap<blake3::Hash, (crate::users::Identity, std::time::Instant)>,
    >,
}

pub(crate) fn failed(what: &str) -> impl Fn(sqlx::Error) -> ControlError + '_ {
    move |error| ControlError::Database {
        what: what.to_string(),
        detail: error.to_string(),
    }
}

/// `bytes` random bytes, in hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the system has randomness");
    hex::encode(buffer)
}

pub(crate) fn new_id() -> String {
    random_hex(8)
}

impl Store {
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Connects to `url` and creates the schema if needed (and, for SQLite, the database
    /// file's directory).
    pub async fn open(url: &str) -> Result<Store> {
        if let Some(parent) = url
            .strip_prefix("sqlite://")
            .map(std::path::Path::new)
            .and_then(|p| p.parent())
        {
            let _ = std::fs::create_dir_all(parent);
        }
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .map_err(|error| ControlError::Database {
                what: format!("connect to {}", without_password(url)),
                detail: connect_advice(&error),
            })?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(failed("create the schema"))?;
        }
        for (table, column, kind) in ADDED_COLUMNS {
            let present = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {column} FROM {table} LIMIT 1"
            )))
            .fetch_optional(&pool)
            .await
            .is_ok();
            if !present {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {kind}"
                )))
                .execute(&pool)
                .await
                .map_err(failed("add a column to the schema"))?;
            }
        }
        Ok(Store {
            pool,
            memory: Default::default(),
        })
    }

    /// Queues the run of `schedule` due at `due_ms`, unless it exists; true if queued now.
    pub async fn enqueue(&self, schedule: &str, due_ms: i64, now_ms: i64) -> Result<bool> {
        let result = sqlx::query(
            "INSERT INTO jobs (id, schedule, due_ms, state, node, attempt, created_ms) \
             VALUES ($1, $2, $3, 'queued', NULL, 0, $4) ON CONFLICT (schedule, due_ms) DO NOTHING",
        )
        .bind(new_id())
        .bind(schedule)
        .bind(due_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(failed("queue a job"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Claims the oldest queued job for `node`, if any.
    pub async fn claim(&self, node: &str, now_ms: i64) -> Result<Option<Job>> {
        let candidates =
            sqlx::query("SELECT id FROM jobs WHERE state = 'queued' ORDER BY due_ms LIMIT 4")
                .fetch_all(&self.pool)
                .await
                .map_err(failed("find queued jobs"))?;
        for row in candidates {
            let id: String = row.try_get(0).map_err(failed("find queued jobs"))?;
            let claimed = sqlx::query(
                "UPDATE jobs SET state = 'running', node = $1, attempt = attempt + 1, started_ms = $2, \
                 heartbeat_ms = $2 WHERE id = $3 AND state = 'queued'",
            )
            .bind(node)
            .bind(now_ms)
            .bind(&id)
            .execute(&self.pool)
            .await
            .map_err(failed("claim a job"))?;
            if claimed.rows_affected() == 1 {
                return self.job(&id).await;
            }
        }
        Ok(None)
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed("read a job"))?;
        row.map(|row| job(&row))
            .transpose()
            .map_err(failed("read a job"))
    }

    /// The newest `limit` jobs, each with the last 4,000 characters of its output (the
    /// whole of it is in `job`).
    pub async fn jobs(&self, limit: i64) -> Result<Vec<Job>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_LIST_COLUMNS} FROM jobs ORDER BY created_ms DESC, due_ms DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("read jobs"))?;
        rows.iter()
            .map(job)
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed("read jobs"))
    }

    /// Queues `command` (a `lifeboat` command line without the program) asked for by
    /// `actor`; returns the job.
    pub async fn submit(&self, command: &[String], actor: &str, now_ms: i64) -> Result<Job> {
        let id = new_id();
        let arguments = serde_json::to_string(command).expect("strings serialize");
        // Unique with the empty schedule by its due moment: a millisecond later if taken.
        for due in now_ms..now_ms + 1000 {
            let inserted = sqlx::query(
                "INSERT INTO jobs (id, schedule, due_ms, state, node, attempt, created_ms, command, actor) \
                 VALUES ($1, '', $2, 'queued', NULL, 0, $3, $4, $5) ON CONFLICT (schedule, due_ms) DO NOTHING",
            )
            .bind(&id)
            .bind(due)
            .bind(now_ms)
            .bind(&arguments)
            .bind(actor)
            .execute(&self.pool)
            .await
            .map_err(failed("queue a job"))?;
            if inserted.rows_affected() == 1 {
                return self
                    .job(&id)
                    .await?
                    .ok_or_else(|| ControlError::Invalid(format!("job {id} vanished")));
            }
        }
        Err(ControlError::Invalid(
            "too many jobs asked for at once: try again".to_string(),
        ))
    }

    /// Keeps a running job's heartbeat (and progress, if any) fresh; returns its state (to
    /// see a cancellation), or `None` when this run (`node`, `attempt`) is no longer the
    /// job's: its heartbeat went stale (the node stalled) and it was queued again, for this
    /// or another node to run anew.
    pub async fn heartbeat(
        &self,
        id: &str,
        node: &str,
        attempt: i64,
        now_ms: i64,
        progress: Option<&JobProgress>,
    ) -> Result<Option<String>> {
        let progress = progress.map(|p| serde_json::to_string(p).expect("progress serializes"));
        let row = sqlx::query(
            "UPDATE jobs SET heartbeat_ms = $1, progress = COALESCE($2, progress) WHERE id = $3 AND node = $4 \
             AND attempt = $5 RETURNING state",
        )
        .bind(now_ms)
        .bind(progress)
        .bind(id)
        .bind(node)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed("refresh a job"))?;
        row.map(|row| row.try_get::<String, _>(0))
            .transpose()
            .map_err(failed("refresh a job"))
    }

    /// Records how a job ended.
    pub async fn finish(
        &self,
        id: &str,
        node: &str,
        attempt: i64,
        end: &JobEnd,
        now_ms: i64,
    ) -> Result<()> {
        let progress = end
            .progress
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("progress serializes"));
        sqlx::query(
            "UPDATE jobs SET state = $1, output = $2, errors = $3, exit_code = $4, \
             progress = COALESCE($5, progress), finished_ms = $6 WHERE id = $7 AND node = $8 AND attempt = $9",
        )
        .bind(end.state)
        .bind(&end.output)
        .bind(&end.errors)
        .bind(end.exit_code)
        .bind(progress)
        .bind(now_ms)
        .bind(id)
        .bind(node)
        .bind(attempt)
        .execute(&self.pool)
        .await
        .map_err(failed("finish a job"))?;
        Ok(())
    }

    /// Queues again the running jobs whose node stopped refreshing them before
    /// `stale_before_ms`, and ends as cancelled those whose cancellation was asked for
    /// (a cancelled job never runs again); returns how many were queued again. Either way
    /// the job is no longer the stalled node's: its next heartbeat tells it to stop.
    pub async fn requeue_stale(&self, stale_before_ms: i64) -> Result<u64> {
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', node = NULL, finished_ms = $1, \
             errors = 'cancelled; its node stopped answering before it stopped the job' \
             WHERE state = 'cancel-requested' AND heartbeat_ms < $1",
        )
        .bind(stale_before_ms)
        .execute(&self.pool)
        .await
        .map_err(failed("end cancelled jobs"))?;
        let result = sqlx::query(
            "UPDATE jobs SET state = 'queued', node = NULL WHERE state = 'running' \
             AND heartbeat_ms < $1",
        )
        .bind(stale_before_ms)
        .execute(&self.pool)
        .await
        .map_err(failed("requeue jobs"))?;
        Ok(result.rows_affected())
    }

    /// Asks for a job to be cancelled: a queued one is at once, a running one by its node.
    pub async fn cancel(&self, id: &str, now_ms: i64) -> Result<Option<Job>> {
        sqlx::query("UPDATE jobs SET state = 'cancelled', finished_ms = $1 WHERE id = $2 AND state = 'queued'")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(failed("cancel a job"))?;
        sqlx::query(
            "UPDATE jobs SET state = 'cancel-requested' WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(failed("cancel a job"))?;
        self.job(id).await
    }

    pub async fn open_incident(
        &self,
        region: &str,
        opened_ms: i64,
        reason: &str,
    ) -> Result<String> {
        let id = new_id();
        sqlx::query("INSERT INTO incidents (id, region, opened_ms, closed_ms, reason) VALUES ($1, $2, $3, NULL, $4)")
            .bind(&id)
            .bind(region)
            .bind(opened_ms)
            .bind(reason)
            .execute(&self.pool)
            .await
            .map_err(failed("record an incident"))?;
        Ok(id)
    }

    pub async fn close_incidents(&self, region: &str, closed_ms: i64) -> Result<()> {
        sqlx::query("UPDATE incidents SET closed_ms = $1 WHERE region = $2 AND closed_ms IS NULL")
            .bind(closed_ms)
            .bind(region)
            .execute(&self.pool)
            .await
            .map_err(failed("close an incident"))?;
        Ok(())
    }

    /// A region's incidents, newest first.
    pub async fn incidents(&self, region: &str) -> Result<Vec<Incident>> {
        let rows = sqlx::query(
            "SELECT id, region, opened_ms, closed_ms, reason FROM incidents WHERE region = $1 ORDER BY opened_ms DESC",
        )
        .bind(region)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("read incidents"))?;
        rows.iter()
            .map(|row| {
                Ok(Incident {
                    id: row.try_get(0)?,
                    region: row.try_get(1)?,
                    opened_ms: row.try_get(2)?,
                    closed_ms: row.try_get(3)?,
                    reason: row.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(failed("read incidents"))
    }

    pub async fn record_check(&self, region: &str, check: &Check) -> Result<()> {
        sqlx::query(
            "INSERT INTO region_checks (region, checked_ms, ok, detail) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (region) DO UPDATE SET checked_ms = excluded.checked_ms, ok = excluded.ok, detail = excluded.detail",
        )
        .bind(region)
        .bind(check.checked_ms)
        .bind(i32::from(check.ok))
        .bind(&check.detail)
        .execute(&self.pool)
        .await
        .map_err(failed("record a probe"))?;
        Ok(())
    }

    pub async fn last_check(&self, region: &str) -> Result<Option<Check>> {
        let row = sqlx::query("SELECT checked_ms, ok, detail FROM region_checks WHERE region = $1")
            .bind(region)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("read a probe"))?;
        row.map(|row| {
            Ok(Check {
                checked_ms: row.try_get(0)?,
                ok: row.try_get::<i32, _>(1)? != 0,
                detail: row.try_get(2)?,
            })
        })
        .transpose()
        .map_err(failed("read a probe"))
    }
}

impl Store {
    /// Notes that `region` is probed from `since_ms` on, unless it was before.
    pub async fn monitor(&self, region: &str, since_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO monitored (region, since_ms) VALUES ($1, $2) ON CONFLICT (region) DO NOTHING",
        )
        .bind(region)
        .bind(since_ms)
        .execute(&self.pool)
        .await
        .map_err(failed("record a probed region"))?;
        Ok(())
    }

    /// Since when `region` has been probed, if it has.
    pub async fn monitored_since(&self, region: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT since_ms FROM monitored WHERE region = $1")
            .bind(region)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed("read a probed region"))?;
        row.map(|row| row.try_get(0))
            .transpose()
            .map_err(failed("read a probed region"))
    }

    /// Records `vm`'s RPO at `time_ms`: one sample per VM and 10 s, whichever node
    /// records it first.
    pub async fn record_rpo(&self, vm: &str, time_ms: i64, rpo_seconds: f64) -> Result<()> {
        sqlx::query(
            "INSERT INTO rpo_samples (vm, slot, time_ms, rpo_seconds) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (vm, slot) DO NOTHING",
        )
        .bind(vm)
        .bind(time_ms / RPO_SLOT_MS)
        .bind(time_ms)
        .bind(rpo_seconds)
        .execute(&self.pool)
        .await
        .map_err(failed("record an RPO sample"))?;
        Ok(())
    }

    /// `vm`'s RPO samples since `since_ms`, oldest first.
    pub async fn rpo_history(&self, vm: &str, since_ms: i64) -> Result<Vec<RpoSample>> {
        let rows = sqlx::query(
            "SELECT time_ms, rpo_seconds FROM rpo_samples WHERE vm = $1 AND time_ms >= $2 ORDER BY time_ms",
        )
        .bind(vm)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("read RPO samples"))?;
        rows.iter()
            .map(|row| {
                Ok(RpoSample {
                    time_ms: row.try_get(0)?,
                    rpo_seconds: row.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(failed("read RPO samples"))
    }

    /// Drops RPO samples older than `before_ms`.
    pub async fn forget_rpo(&self, before_ms: i64) -> Result<()> {
        sqlx::query("DELETE FROM rpo_samples WHERE time_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(failed("drop old RPO samples"))?;
        Ok(())
    }
}

/// One RPO sample slot, in milliseconds.
const RPO_SLOT_MS: i64 = 10_000;

/// A VM's RPO at a moment.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RpoSample {
    pub time_ms: i64,
    pub rpo_seconds: f64,
}

/// `url` with its password, if any, replaced by `***`: connection errors are logged and
/// shown, and must not carry it.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// What failed, with what to check: TLS failures name the settings that govern them.
fn connect_advice(error: &sqlx::Error) -> String {
    let detail = error.to_string();
    let tls = matches!(error, sqlx::Error::Tls(_))
        || detail.contains("certificate")
        || detail.contains("TLS")
        || detail.contains("SSL")
        || detail.contains("no encryption");
    if tls {
        format!(
            "{detail} (TLS: check the URL's sslmode and that [settings] database_ca names \
             the PEM file of the CA that signed the server's certificate)"
        )
    } else {
        format!("{detail} (check the server's address, that it runs, and the credentials)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        assert_eq!(
            without_password("postgres://ops:s3cr%40t@db.example:5432/lifeboat?sslmode=require"),
            "postgres://ops:***@db.example:5432/lifeboat?sslmode=require"
        );
        assert_eq!(
            without_password("postgres://ops@db/lifeboat"),
            "postgres://ops@db/lifeboat"
        );
        assert_eq!(
            without_password("sqlite:///var/lib/lifeboat/state.db"),
            "sqlite:///var/lib/lifeboat/state.db"
        );
        assert_eq!(
            without_password("postgres://ops:p@ss@db/x"),
            "postgres://ops:***@db/x"
        );
    }

    /// Runs `test` on a store in a fresh SQLite database.
    fn with_store(test: impl AsyncFnOnce(Store)) {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/state.db?mode=rwc", directory.path().display());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { test(Store::open(&url).await.unwrap()).await });
    }

    #[test]
    fn lists_carry_the_end_of_each_output_and_a_job_all_of_it() {
        with_store(async |store| {
            let job = store
                .submit(&["points".to_string()], "alice", 1_000)
                .await
                .unwrap();
            let claimed = store.claim("node-a", 1_001).await.unwrap().unwrap();
            assert_eq!(claimed.id, job.id);
            let output = format!("{}END", "x".repeat(10_000));
            let end = JobEnd {
                state: "succeeded",
                output: output.clone(),
                exit_code: Some(0),
                ..JobEnd::default()
            };
            store
                .finish(&job.id, "node-a", claimed.attempt, &end, 1_002)
                .await
                .unwrap();
            let listed = store.jobs(10).await.unwrap();
            let listed_output = listed[0].output.as_deref().unwrap();
            assert_eq!(listed_output.len(), 4000);
            assert!(listed_output.ends_with("END"));
            let whole = store.job(&job.id).await.unwrap().unwrap();
            assert_eq!(whole.output.as_deref(), Some(output.as_str()));
            assert_eq!(whole.actor.as_deref(), Some("alice"));
            assert_eq!(whole.command, Some(vec!["points".to_string()]));
            assert_eq!(whole.exit_code, Some(0));
        });
    }

    #[test]
    fn a_run_whose_job_was_queued_again_is_told_so_and_cannot_finish_it() {
        with_store(async |store| {
            let job = store
                .submit(&["points".to_string()], "alice", 1_000)
                .await
                .unwrap();
            let first = store.claim("node-a", 1_001).await.unwrap().unwrap();
            let beat = |attempt, now| store.heartbeat(&job.id, "node-a", attempt, now, None);
            assert_eq!(
                beat(first.attempt, 1_002).await.unwrap().as_deref(),
                Some("running")
            );
            // node-a stalls; its job is queued again and claimed anew (by node-a itself, here).
            assert_eq!(store.requeue_stale(10_000).await.unwrap(), 1);
            assert_eq!(beat(first.attempt, 10_001).await.unwrap(), None);
            let second = store.claim("node-a", 10_002).await.unwrap().unwrap();
            assert_eq!(second.attempt, first.attempt + 1);
            assert_eq!(
                beat(first.attempt, 10_003).await.unwrap(),
                None,
                "the stale run"
            );
            assert_eq!(
                beat(second.attempt, 10_003).await.unwrap().as_deref(),
                Some("running")
            );
            // The stale run's end does not overwrite the new run's state.
            let end = JobEnd {
                state: "failed",
                ..JobEnd::default()
            };
            store
                .finish(&job.id, "node-a", first.attempt, &end, 10_004)
                .await
                .unwrap();
            assert_eq!(store.job(&job.id).await.unwrap().unwrap().state, "running");
        });
    }

    #[test]
    fn a_job_cancelled_while_its_node_stalls_never_runs_again() {
        with_store(async |store| {
            let job = store
                .submit(&["points".to_string()], "alice", 1_000)
                .await
                .unwrap();
            let first = store.claim("node-a", 1_001).await.unwrap().unwrap();
            let cancelled = store.cancel(&job.id, 1_002).await.unwrap().unwrap();
            assert_eq!(cancelled.state, "cancel-requested");
            // node-a stalls before it stops the job: the job ends cancelled, not queued.
            assert_eq!(store.requeue_stale(10_000).await.unwrap(), 0);
            let ended = store.job(&job.id).await.unwrap().unwrap();
            assert_eq!(ended.state, "cancelled");
            assert!(ended.finished_ms.is_some());
            assert!(store.claim("node-b", 10_001).await.unwrap().is_none());
            assert!(store.claim("node-a", 10_002).await.unwrap().is_none());
            // The stalled run is told the job is not its own, and cannot end it otherwise.
            let beat = store.heartbeat(&job.id, "node-a", first.attempt, 10_003, None);
            assert_eq!(beat.await.unwrap(), None);
            let end = JobEnd {
                state: "succeeded",
                ..JobEnd::default()
            };
            store
                .finish(&job.id, "node-a", first.attempt, &end, 10_004)
                .await
                .unwrap();
            assert_eq!(
                store.job(&job.id).await.unwrap().unwrap().state,
                "cancelled"
            );
        });
    }
}
