//! The dashboard's login: `POST /api/session` (user and password) opens a session held in
//! an HttpOnly, SameSite=Strict cookie and answers the CSRF token the page echoes in
//! `X-CSRF-Token` on every change; `GET /api/session` says who is logged in;
//! `POST /api/session/logout` ends it. Failed logins are limited per client address and
//! per user name; they are kept in the control plane's database, so every node of a
//! PostgreSQL control plane counts the same failures (`wait` decides, without I/O).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{AppState, error};
use crate::probes::now_ms;
use crate::users::{Identity, Role, SESSION_MS, Session};

/// The session cookie's name.
pub const COOKIE: &str = "lifeboat_session";
/// The header a session's changes carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Failed logins tolerated per client address and per user name within `WINDOW_MS`.
const FAILURES: usize = 5;
const WINDOW_MS: i64 = 60_000;

/// Seconds to wait before a login may be tried again, if it must: `failures` holds, for
/// each of its keys (`address:…`, `user:…`), the times of that key's failed logins within
/// the last `WINDOW_MS` before `now_ms`.
pub fn wait(failures: &[Vec<i64>], now_ms: i64) -> Option<u64> {
    failures
        .iter()
        .filter_map(|times| {
            let mut recent: Vec<i64> = times
                .iter()
                .copied()
                .filter(|&t| t > now_ms - WINDOW_MS)
                .collect();
            recent.sort_unstable();
            // The oldest of the newest FAILURES: when it ages out, one more try is allowed.
            let oldest = recent[recent.len().checked_sub(FAILURES)?];
            Some(((oldest + WINDOW_MS - now_ms).max(1000) / 1000) as u64)
        })
        .max()
}

/// The CSRF token of the request's session, when it came with a session cookie (set by
/// the authorization layer).
#[derive(Clone, Debug)]
pub struct Csrf(pub Option<String>);

/// The `Set-Cookie` value for the session `id` (empty to end it) lasting `seconds`.
fn session_cookie(id: &str, seconds: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={seconds}{secure}")
}

/// Who is logged in.
#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    pub user: String,
    pub role: Role,
    /// The token to send as `X-CSRF-Token` with every change (null without a session).
    pub csrf: Option<String>,
    /// False until a user exists: the API then only reads, anonymously.
    pub users_exist: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// The session cookie's value in `headers`, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn info(session: &Session) -> SessionInfo {
    SessionInfo {
        user: session.identity.user.clone(),
        role: session.identity.role,
        csrf: Some(session.csrf.clone()),
        users_exist: true,
    }
}

/// Logs in with a user's password; sets the session cookie.
#[utoipa::path(post, path = "/api/session", request_body = Login, responses(
    (status = 200, description = "logged in; the cookie is set", body = SessionInfo),
    (status = 400, description = "not a JSON login", body = crate::api::ApiError),
    (status = 401, description = "wrong user or password", body = crate::api::ApiError),
    (status = 429, description = "too many failed logins: wait", body = crate::api::ApiError)))]
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    login: Result<Json<Login>, JsonRejection>,
) -> Response {
    let login = match login {
        Ok(Json(login)) => login,
        Err(rejection) => return crate::api::bad_json(&rejection),
    };
    let keys = [
        format!("address:{}", client.ip()),
        format!("user:{}", login.user),
    ];
    let now = now_ms();
    let failures = match state.store.login_failures(&keys, now - WINDOW_MS).await {
        Ok(failures) => failures,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if let Some(seconds) = wait(&failures, now) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins: try again in {seconds} s"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
        return response;
    }
    let identity = match state
        .store
        .check_password(&login.user, &login.password)
        .await
    {
        Ok(identity) => identity,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let Some(identity) = identity else {
        if let Err(e) = state.store.login_failed(&keys, now, now - WINDOW_MS).await {
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        let _ = state
            .store
            .audit(
                &login.user,
                "login",
                "dashboard",
                &format!("refused from {}", client.ip()),
                now,
            )
            .await;
        return error(
            StatusCode::UNAUTHORIZED,
            "wrong user name or password".to_string(),
        );
    };
    if let Err(e) = state.store.login_succeeded(&keys).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let (id, session) = match state.store.open_session(&identity, now).await {
        Ok(opened) => opened,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let _ = state
        .store
        .audit(
            &identity.user,
            "login",
            "dashboard",
            &format!("from {}", client.ip()),
            now,
        )
        .await;
    let cookie = session_cookie(&id, SESSION_MS / 1000, state.tls);
    ([(header::SET_COOKIE, cookie)], Json(info(&session))).into_response()
}

/// Who is logged in (the session of the cookie, or the token's user).
#[utoipa::path(get, path = "/api/session", responses(
    (status = 200, description = "the user", body = SessionInfo),
    (status = 401, description = "not logged in", body = crate::api::ApiError)))]
pub async fn current(
    State(state): State<Arc<AppState>>,
    axum::Extension(identity): axum::Extension<Identity>,
    axum::Extension(Csrf(csrf)): axum::Extension<Csrf>,
) -> Response {
    let users_exist = match state.store.has_users().await {
        Ok(exist) => exist,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    Json(SessionInfo {
        user: identity.user,
        role: identity.role,
        csrf,
        users_exist,
    })
    .into_response()
}

/// Ends the cookie's session.
#[utoipa::path(post, path = "/api/session/logout", responses(
    (status = 204, description = "logged out")))]
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        let _ = state.store.close_session(&id).await;
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_cookie("", 0, state.tls))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_a_minute_then_wait_until_the_oldest_ages_out() {
        let mut alice_from_one: Vec<i64> = Vec::new();
        for i in 0..5 {
            assert_eq!(wait(&[alice_from_one.clone(), vec![]], 1_000 + i), None);
            alice_from_one.push(1_000 + i);
        }
        // Either key over the limit is enough: the address, or the user from elsewhere.
        assert_eq!(wait(&[alice_from_one.clone(), vec![]], 2_000), Some(59));
        assert_eq!(wait(&[vec![], alice_from_one.clone()], 2_000), Some(59));
        assert_eq!(wait(&[vec![], vec![]], 2_000), None);
        assert_eq!(
            wait(&[alice_from_one.clone()], 61_001),
            None,
            "the window passed"
        );
        // More than five: the wait lasts until the fifth newest ages out.
        let mut many = alice_from_one.clone();
        many.extend([30_000, 40_000]);
        assert_eq!(wait(&[many], 41_000), Some(20));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; lifeboat_session=abc123; other=1"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc123"));
        assert_eq!(cookie(&HeaderMap::new()), None);
    }
}
