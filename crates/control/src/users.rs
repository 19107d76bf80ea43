//! Users, roles, API tokens, passwords and web sessions.
//!
//! A token is `lb_<id>_<secret>`; the database keeps its id, a random salt and the Argon2id
//! hash of the secret, never the secret. A verified token is remembered (by its BLAKE3
//! hash) for a minute, so a client making many requests pays for Argon2 once a minute.
//! A user may also have a password (Argon2id, for the dashboard's login); a login makes a
//! session: a random id in an HttpOnly cookie (the database keeps its hash) and a CSRF
//! token that every request of that session that changes something must echo. Roles are ordered: a reader reads, an operator
//! also acts (cancels jobs, and later fails over, forgets, prunes), an admin also manages
//! users. Every action is written to the `audit` table with the user who did it.

use serde::Serialize;
use sqlx::Row;

use crate::store::{Store, failed, new_id, random_hex};
use crate::{ControlError, Result};

pub use lifeboat_operations::Role;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

/// How long a verified token is remembered.
const TOKEN_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a web session lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// A web session: who, and the CSRF token its changes must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub identity: Identity,
    pub csrf: String,
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        let secret = random_hex(24);
        let (salt, hashed) = salted_hash(&secret).await?;
        sqlx::query(
            "INSERT INTO tokens (id, name, salt, hash, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(salt)
        .bind(hashed)
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map_err(failed("add a token"))?;
        Ok(format!("lb_{id}_{secret}"))
    }

    /// Whether any user exists (until one does, the API only reads). Users are never
    /// removed, so once true it is remembered.
    pub async fn has_users(&self) -> Result<bool> {
        if self
            .memory()
            .users_exist
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(true);
        }
        let row = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await
            .map_err(failed("count users"))?;
        let exist = row.try_get::<i64, _>(0).map_err(failed("count users"))? > 0;
        if exist {
            self.memory()
                .users_exist
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(exist)
    }

    /// The user a token belongs to, if it is valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>> {
        let key = blake3::hash(token.as_bytes());
        if let Some((identity, at)) = self
            .memory()
            .tokens
            .lock()
            .expect("never poisoned")
            .get(&key)
            && at.elapsed() < TOKEN_MEMORY
        {
            return Ok(Some(identity.clone()));
        }
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
        if !verify(secret, &salt, &expected).await {
            return Ok(None);
        }
        let identity = Role::parse(&role).map(|role| Identity { user, role });
        if let Some(identity) = &identity {
            let mut tokens = self.memory().tokens.lock().expect("never poisoned");
            tokens.retain(|_, (_, at)| at.elapsed() < TOKEN_MEMORY);
            tokens.insert(key, (identity.clone(), std::time::Instant::now()));
        }
        Ok(identity)
    }

    /// Sets `name`'s password (for the dashboard's login).
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        if password.chars().count() < 8 {
            return Err(ControlError::Invalid(
                "a password needs at least 8 characters".to_string(),
            ));
        }
        let (salt, hashed) = salted_hash(password).await?;
        let updated =
            sqlx::query("UPDATE users SET password_salt = $1, password_hash = $2 WHERE name = $3")
                .bind(salt)
                .bind(hashed)
                .bind(name)
                .execute(self.pool())
                .await
                .map_err(failed("set a password"))?;
        if updated.rows_affected() == 0 {
            return Err(ControlError::Invalid(format!("there is no user '{name}'")));
        }
        Ok(())
    }

    /// The user, if `password` is theirs.
    pub async fn check_password(&self, name: &str, password: &str) -> Result<Option<Identity>> {
        let row =
            sqlx::query("SELECT password_salt, password_hash, role FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await
                .map_err(failed("read a user"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let read = |index: usize| {
            row.try_get::<Option<String>, _>(index)
                .map_err(failed("read a user"))
        };
        let (Some(salt), Some(expected), Some(role)) = (read(0)?, read(1)?, read(2)?) else {
            return Ok(None);
        };
        if !verify(password, &salt, &expected).await {
            return Ok(None);
        }
        Ok(Role::parse(&role).map(|role| Identity {
            user: name.to_string(),
            role,
        }))
    }

    /// Opens a web session for `identity`; returns its id (for the cookie) and the
    /// session.
    pub async fn open_session(
        &self,
        identity: &Identity,
        now_ms: i64,
    ) -> Result<(String, Session)> {
        let id = random_hex(32);
        let csrf = random_hex(16);
        sqlx::query("DELETE FROM sessions WHERE expires_ms < $1")
            .bind(now_ms)
            .execute(self.pool())
            .await
            .map_err(failed("drop old sessions"))?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, name, csrf, expires_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(blake3::hash(id.as_bytes()).to_hex().to_string())
        .bind(&identity.user)
        .bind(&csrf)
        .bind(now_ms + SESSION_MS)
        .execute(self.pool())
        .await
        .map_err(failed("open a session"))?;
        Ok((
            id,
            Session {
                identity: identity.clone(),
                csrf,
            },
        ))
    }

    /// The live session with cookie `id`, if any.
    pub async fn session(&self, id: &str, now_ms: i64) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT users.name, users.role, sessions.csrf FROM sessions \
             JOIN users ON users.name = sessions.name WHERE sessions.id_hash = $1 AND sessions.expires_ms > $2",
        )
        .bind(blake3::hash(id.as_bytes()).to_hex().to_string())
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await
        .map_err(failed("read a session"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let read = |index: usize| {
            row.try_get::<String, _>(index)
                .map_err(failed("read a session"))
        };
        let (user, role, csrf) = (read(0)?, read(1)?, read(2)?);
        Ok(Role::parse(&role).map(|role| Session {
            identity: Identity { user, role },
            csrf,
        }))
    }

    /// Ends the session with cookie `id`.
    pub async fn close_session(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(blake3::hash(id.as_bytes()).to_hex().to_string())
            .execute(self.pool())
            .await
            .map_err(failed("close a session"))?;
        Ok(())
    }

    /// The times of the failed logins of each of `keys` (`address:…`, `user:…`) since
    /// `since_ms`, in the order of `keys`: every node of the control plane sees them all.
    pub async fn login_failures(&self, keys: &[String], since_ms: i64) -> Result<Vec<Vec<i64>>> {
        let mut failures = Vec::with_capacity(keys.len());
        for key in keys {
            let rows = sqlx::query(
                "SELECT time_ms FROM login_failures WHERE subject = $1 AND time_ms > $2",
            )
            .bind(key)
            .bind(since_ms)
            .fetch_all(self.pool())
            .await
            .map_err(failed("read the failed logins"))?;
            failures.push(
                rows.iter()
                    .map(|row| row.try_get::<i64, _>(0))
                    .collect::<std::result::Result<Vec<i64>, _>>()
                    .map_err(failed("read the failed logins"))?,
            );
        }
        Ok(failures)
    }

    /// Records a failed login of each of `keys` at `now_ms`, forgetting those from before
    /// `forget_before_ms` (of every key: the table holds only the limiter's window).
    pub async fn login_failed(
        &self,
        keys: &[String],
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE time_ms <= $1")
            .bind(forget_before_ms)
            .execute(self.pool())
            .await
            .map_err(failed("forget old failed logins"))?;
        for key in keys {
            sqlx::query("INSERT INTO login_failures (subject, time_ms) VALUES ($1, $2)")
                .bind(key)
                .bind(now_ms)
                .execute(self.pool())
                .await
                .map_err(failed("record a failed login"))?;
        }
        Ok(())
    }

    /// Forgets the failed logins of `keys` after a successful one.
    pub async fn login_succeeded(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            sqlx::query("DELETE FROM login_failures WHERE subject = $1")
                .bind(key)
                .execute(self.pool())
                .await
                .map_err(failed("forget failed logins"))?;
        }
        Ok(())
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

/// A new random salt and the Argon2id hash of `secret` with it, both in hex (off the async
/// threads).
async fn salted_hash(secret: &str) -> Result<(String, String)> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the system has randomness");
    let secret = secret.to_string();
    let hashed = tokio::task::spawn_blocking(move || hash(secret.as_bytes(), &salt))
        .await
        .map_err(|e| ControlError::Invalid(format!("cannot hash a secret: {e}")))?;
    Ok((hex::encode(salt), hex::encode(hashed)))
}

/// Whether `secret` hashes, with the hex `salt`, to the hex `expected` (Argon2id, off the
/// async threads).
async fn verify(secret: &str, salt: &str, expected: &str) -> bool {
    let (Ok(salt), Ok(expected)) = (hex::decode(salt), hex::decode(expected)) else {
        return false;
    };
    let secret = secret.to_string();
    let computed = tokio::task::spawn_blocking(move || hash(secret.as_bytes(), &salt))
        .await
        .unwrap_or_default();
    same(&computed, &expected)
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
