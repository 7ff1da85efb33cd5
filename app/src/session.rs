//! The anonymous visitor session: a random id in an HttpOnly, SameSite=Lax cookie (Secure behind TLS), backed by a
//! row of `sessions`. Server-side only.

use leptos::prelude::ServerFnError;
use sqlx::SqlitePool;

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

/// This request's session: the cookie's, when it names a stored session; otherwise, with `create`, a new one whose
/// cookie is set on the response.
pub async fn current(db: &SqlitePool, create: bool) -> Result<Option<String>, ServerFnError> {
    let headers: axum::http::HeaderMap = leptos_axum::extract().await?;
    let cookie = headers.get(axum::http::header::COOKIE).and_then(|v| v.to_str().ok()).and_then(from_cookie_header);
    if let Some(id) = cookie {
        let known: Option<String> = sqlx::query_scalar("SELECT id FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(db)
            .await
            .map_err(db_err)?;
        if known.is_some() {
            return Ok(known);
        }
    }
    if !create {
        return Ok(None);
    }
    let id = crate::api::session::ssr::create_session(db).await.map_err(db_err)?;
    let tls = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes() == b"https");
    if let (Some(res), Ok(value)) = (
        leptos::prelude::use_context::<leptos_axum::ResponseOptions>(),
        axum::http::HeaderValue::from_str(&set_cookie(&id, tls)),
    ) {
        res.append_header(axum::http::header::SET_COOKIE, value);
    }
    Ok(Some(id))
}

fn db_err(e: sqlx::Error) -> ServerFnError {
    ServerFnError::new(format!("database error: {e}"))
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
}
