//! The control plane's state in SQL: embedded SQLite by default, PostgreSQL to share it
//! between nodes (one schema, through sqlx's `Any` driver). Times are Unix milliseconds.
//!
//! ```sql
//! incidents (id TEXT PRIMARY KEY, region TEXT, opened_ms BIGINT, closed_ms BIGINT NULL, reason TEXT)
//! region_checks (region TEXT PRIMARY KEY, checked_ms BIGINT, ok INTEGER, detail TEXT)
//! ```

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::{ControlError, Result};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS incidents (id TEXT PRIMARY KEY, region TEXT NOT NULL, \
     opened_ms BIGINT NOT NULL, closed_ms BIGINT, reason TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS region_checks (region TEXT PRIMARY KEY, checked_ms BIGINT NOT NULL, \
     ok INTEGER NOT NULL, detail TEXT NOT NULL)",
];

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

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

fn failed(what: &str) -> impl Fn(sqlx::Error) -> ControlError + '_ {
    move |error| ControlError::Database {
        what: what.to_string(),
        detail: error.to_string(),
    }
}

impl Store {
    /// Connects to `url` and creates the schema if needed.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .map_err(|error| ControlError::Database {
                what: format!("connect to {url}"),
                detail: error.to_string(),
            })?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(failed("create the schema"))?;
        }
        Ok(Store { pool })
    }

    pub async fn open_incident(
        &self,
        region: &str,
        opened_ms: i64,
        reason: &str,
    ) -> Result<String> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the system has randomness");
        let id = hex::encode(id);
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
