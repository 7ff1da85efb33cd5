//! The anonymous visitor session: a random id in an HttpOnly, SameSite=Lax cookie (Secure behind TLS), backed by a
//! row of `sessions`; and which runs a session has opened (the runs it may vote on). A session is created only by
//! an action that succeeds (an accepted run, an opened run page), at most [`SESSIONS_PER_MINUTE`] a minute for one
//! client address. Server-side only.

use crate::context::{ClientAddr, Refusal};
use crate::db::Db;
use crate::limits::SESSIONS_PER_MINUTE;
use crate::state::AppState;

/// The cookie's name.
pub const COOKIE: &str = "loraland_session";

/// The session id in a `Cookie` header, if any.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v)
}

/// The `Set-Cookie` value for `id`.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000{secure}")
}

/// The stored session named by the cookie in `headers`, if any.
pub async fn from_headers(db: &Db, headers: &axum::http::HeaderMap) -> sqlx::Result<Option<String>> {
    let cookie = headers.get(axum::http::header::COOKIE).and_then(|v| v.to_str().ok()).and_then(from_cookie_header);
    match cookie {
        Some(id) => sqlx::query_scalar("SELECT id FROM sessions WHERE id = $1").bind(id).fetch_optional(db).await,
        None => Ok(None),
    }
}

/// This request's session: the cookie's, when it names a stored session.
pub async fn current(state: &AppState) -> Result<Option<String>, Refusal> {
    let headers: axum::http::HeaderMap = leptos_axum::extract().await.map_err(|e| Refusal::invalid(e.to_string()))?;
    from_headers(&state.db, &headers).await.map_err(Refusal::database)
}

/// This request's session, or a new one (unless this client has created too many lately) whose cookie is set on
/// the response. Call it only for an action that succeeds.
pub async fn current_or_new(state: &AppState) -> Result<String, Refusal> {
    let headers: axum::http::HeaderMap = leptos_axum::extract().await.map_err(|e| Refusal::invalid(e.to_string()))?;
    let (id, cookie) = of_headers_or_new(state, &headers, ClientAddr::current().await).await?;
    if let (Some(res), Some(value)) = (leptos::prelude::use_context::<leptos_axum::ResponseOptions>(), cookie) {
        res.append_header(axum::http::header::SET_COOKIE, value);
    }
    Ok(id)
}

/// The session the cookie in `headers` names, or a new one for `addr` (within its rate of new sessions) with the
/// `Set-Cookie` value to answer with: what [`current_or_new`] does, for a plain axum handler.
pub async fn of_headers_or_new(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    addr: ClientAddr,
) -> Result<(String, Option<axum::http::HeaderValue>), Refusal> {
    if let Some(id) = from_headers(&state.db, headers).await.map_err(Refusal::database)? {
        return Ok((id, None));
    }
    if !state.sessions.allow(addr.0) {
        return Err(Refusal::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many new visitor sessions from your address (the limit is {SESSIONS_PER_MINUTE} a minute); try \
                 again in a minute, with cookies enabled"
            ),
        ));
    }
    let id = create_session(&state.db).await.map_err(Refusal::database)?;
    let tls = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes() == b"https");
    Ok((id.clone(), axum::http::HeaderValue::from_str(&set_cookie(&id, tls)).ok()))
}

/// Notes that this request's session (created if need be) opened `run`, which lets it vote on the run. A client
/// over its rate of new sessions still sees the run; it just cannot vote.
pub async fn record_view(state: &AppState, run: &str) -> Result<(), Refusal> {
    let Ok(session) = current_or_new(state).await else { return Ok(()) };
    note_view(&state.db, &session, run).await.map_err(Refusal::database)
}

/// Stores that `session` opened `run`.
pub async fn note_view(db: &Db, session: &str, run: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO run_views (session_id, run_id, opened_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(session)
        .bind(run)
        .bind(crate::context::now_ms())
        .execute(db)
        .await?;
    Ok(())
}

/// Whether `session` has opened `run`.
pub async fn has_viewed(db: &Db, session: &str, run: &str) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM run_views WHERE session_id = $1 AND run_id = $2")
        .bind(session)
        .bind(run)
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}

/// Inserts a new session and returns its id.
pub async fn create_session(db: &Db) -> sqlx::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO sessions (id, created_at) VALUES ($1, $2)")
        .bind(&id)
        .bind(crate::context::now_ms())
        .execute(db)
        .await?;
    Ok(id)
}

/// Number of stored sessions.
pub async fn count_sessions(db: &Db) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(db).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing_and_attributes() {
        assert_eq!(from_cookie_header("a=1; loraland_session=abc; b=2"), Some("abc"));
        assert_eq!(from_cookie_header("a=1"), None);
        let c = set_cookie("abc", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && !c.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
    }

    #[tokio::test]
    async fn sessions_are_created_and_counted_and_views_recorded() {
        for (_, db) in crate::db::test_databases().await {
            assert_eq!(count_sessions(&db).await.unwrap(), 0);
            let a = create_session(&db).await.unwrap();
            let b = create_session(&db).await.unwrap();
            assert_ne!(a, b);
            assert_eq!(count_sessions(&db).await.unwrap(), 2);
            assert!(!has_viewed(&db, &a, "no-run").await.unwrap());
            // A view is stored once, however often the run is opened; an unknown run is refused by its key.
            let inputs = [("sentence".to_string(), "ok".to_string())].into();
            let req = crate::run::types::RunRequest {
                task: "glue_sst2".into(),
                inputs,
                params: Default::default(),
                panes: vec![None, None],
            };
            let run = crate::run::store::insert_run(&db, &a, &req, "p").await.unwrap();
            note_view(&db, &b, &run).await.unwrap();
            note_view(&db, &b, &run).await.unwrap();
            assert!(has_viewed(&db, &b, &run).await.unwrap());
            assert!(!has_viewed(&db, &a, &run).await.unwrap());
            assert!(note_view(&db, &b, "no-run").await.is_err(), "a foreign key holds the view to its run");
        }
    }
}
