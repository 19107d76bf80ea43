//! Users, roles and API tokens.
//!
//! A token is `lb_<id>_<secret>`; the database keeps its id, a random salt and the Argon2id
//! hash of the secret, never the secret. Roles are ordered: a reader reads, an operator
//! also acts (cancels jobs, and later fails over, forgets, prunes), an admin also manages
//! users. Every action is written to the `audit` table with the user who did it.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::{Store, failed, new_id};
use crate::{ControlError, Result};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

fn hash(secret: &[u8], salt: &[u8]) -> Vec<u8> {
    let params = argon2::Params::new(19 * 1024, 2, 1, Some(32)).expect("valid parameters");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = vec![0u8; 32];
    argon
        .hash_password_into(secret, salt, &mut out)
        .expect("a 16-byte salt and 32-byte output are valid");
    out
}

impl Store {
    /// Creates `name` with `role` (or changes its role) and returns a new token for it.
    pub async fn add_user(&self, name: &str, role: Role, now_ms: i64) -> Result<String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Err(ControlError::Invalid(format!(
                "user name '{name}': use letters, digits and . _ - @"
            )));
        }
        sqlx::query(
            "INSERT INTO users (name, role, created_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET role = excluded.role",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map_err(failed("add a user"))?;
        let id = new_id();
        let mut secret = [0u8; 24];
        let mut salt = [0u8; 16];
        getrandom::fill(&mut secret).expect("the system has randomness");
        getrandom::fill(&mut salt).expect("the system has randomness");
        let secret = hex::encode(secret);
        sqlx::query(
            "INSERT INTO tokens (id, name, salt, hash, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(hex::encode(salt))
        .bind(hex::encode(hash(secret.as_bytes(), &salt)))
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map_err(failed("add a token"))?;
        Ok(format!("lb_{id}_{secret}"))
    }

    /// Whether any user exists (until one does, the API only reads).
    pub async fn has_users(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await
            .map_err(failed("count users"))?;
        Ok(row.try_get::<i64, _>(0).map_err(failed("count users"))? > 0)
    }

    /// The user a token belongs to, if it is valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>> {
        let Some((id, secret)) = token
            .strip_prefix("lb_")
            .and_then(|rest| rest.split_once('_'))
        else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT tokens.salt, tokens.hash, users.name, users.role FROM tokens \
             JOIN users ON users.name = tokens.name WHERE tokens.id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(failed("read a token"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let read = |index: usize| {
            row.try_get::<String, _>(index)
                .map_err(failed("read a token"))
        };
        let (salt, expected, user, role) = (read(0)?, read(1)?, read(2)?, read(3)?);
        let Ok(salt) = hex::decode(salt) else {
            return Ok(None);
        };
        let secret = secret.to_string();
        let computed = tokio::task::spawn_blocking(move || hash(secret.as_bytes(), &salt))
            .await
            .unwrap_or_default();
        if hex::encode(computed) != expected {
            return Ok(None);
        }
        Ok(Role::parse(&role).map(|role| Identity { user, role }))
    }

    /// Records an action of `actor`.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        result: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (id, time_ms, actor, action, target, result) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_id())
        .bind(now_ms)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(result)
        .execute(self.pool())
        .await
        .map_err(failed("write the audit log"))?;
        Ok(())
    }

    /// The newest `limit` audit entries.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT time_ms, actor, action, target, result FROM audit ORDER BY time_ms DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(failed("read the audit log"))?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    time_ms: row.try_get(0)?,
                    actor: row.try_get(1)?,
                    action: row.try_get(2)?,
                    target: row.try_get(3)?,
                    result: row.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(failed("read the audit log"))
    }
}

/// An action on record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
}
