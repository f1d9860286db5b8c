//! The web console: its pages and assets (embedded, nothing from a CDN), sign-in, and the
//! cookie that carries a signed-in operator to the HTTP API.
//!
//! **Sign-in.** An operator signs in with a Weir token (or an ID token from `[identity]
//! issuer`). Weir keeps the token in memory, behind a random session id, and verifies it
//! again on every request, so a revoked or expired token signs the operator out. The cookie
//! holds only the id: `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` when the console
//! is reached over TLS (`X-Forwarded-Proto: https` from a terminating proxy, or a configured
//! `https://` `[gateway] public_url`).
//!
//! **CSRF.** Every state-changing request made with the cookie must carry the session's CSRF
//! token in `X-Weir-CSRF`, and a browser's `Origin` / `Sec-Fetch-Site`, when present, must
//! say the request comes from the console's own origin. A request with a bearer token carries
//! no ambient credential, so it needs neither.
//!
//! **What an operator sees** is policy: the console asks [`crate::Services::may`] for each
//! page, and every API call is judged again on the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use weir_policy::{Identity, Operation};

use crate::Services;

mod oidc;

/// The cookie that names a console session.
pub const COOKIE: &str = "weir_console";
/// The header a state-changing request carries the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-weir-csrf";
/// A console session ends after this long without a request…
const IDLE_MS: u64 = 30 * 60 * 1000;
/// …and after this long in any case.
const MAX_MS: u64 = 12 * 60 * 60 * 1000;
/// At most this many console sessions at once; the oldest goes first.
const MAX_SESSIONS: usize = 10_000;

/// The content security policy of every console response: nothing but the console's own
/// scripts, styles and API; no inline script, no framing, no form posting elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

struct Login {
    /// The token the operator signed in with, verified again on every request.
    token: String,
    csrf: String,
    created_ms: u64,
    last_ms: u64,
}

/// The signed-in operators, by the SHA-256 of their cookie, and the sign-ins with the
/// issuer under way.
#[derive(Default)]
pub struct Logins {
    map: Mutex<HashMap<[u8; 32], Login>>,
    sign_ins: oidc::PendingSignIns,
}

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Login>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new console session for `token`: (cookie value, CSRF token).
    fn create(&self, token: String, now_ms: u64) -> Option<(String, String)> {
        let (cookie, csrf) = (random_hex()?, random_hex()?);
        let mut map = self.lock();
        map.retain(|_, l| live(l, now_ms));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, l)| l.created_ms)
                .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            key(&cookie),
            Login {
                token,
                csrf: csrf.clone(),
                created_ms: now_ms,
                last_ms: now_ms,
            },
        );
        Some((cookie, csrf))
    }

    /// The token and CSRF token of a live console session, which this request keeps alive.
    fn touch(&self, cookie: &str, now_ms: u64) -> Option<(String, String)> {
        let mut map = self.lock();
        let k = key(cookie);
        let login = map.get_mut(&k)?;
        if !live(login, now_ms) {
            map.remove(&k);
            return None;
        }
        login.last_ms = now_ms;
        Some((login.token.clone(), login.csrf.clone()))
    }

    fn remove(&self, cookie: &str) {
        self.lock().remove(&key(cookie));
    }
}

fn live(l: &Login, now_ms: u64) -> bool {
    now_ms.saturating_sub(l.last_ms) < IDLE_MS && now_ms.saturating_sub(l.created_ms) < MAX_MS
}

/// The console session's cookie in a request, if any.
fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Why an operator's request is refused: a status and a message for the client.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

/// Whether a request is a change (a POST): changes made with the cookie need the CSRF
/// token and a same-origin browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Change,
}

/// The identity a request proves: its bearer token, or the console session its cookie
/// names (verified again now).
pub async fn operator(
    shared: &Services,
    headers: &HeaderMap,
    access: Access,
) -> Result<Identity, Refused> {
    let unauthorized = || {
        Refused(
            StatusCode::UNAUTHORIZED,
            "a valid token is required: Authorization: Bearer <token>, or sign in to the console"
                .into(),
        )
    };
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let token = v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        return shared
            .auth
            .verify_any(token.trim().as_bytes())
            .await
            .map_err(|_| unauthorized());
    }
    let cookie = cookie_of(headers).ok_or_else(unauthorized)?;
    let now = shared.approvals.clock().now_ms();
    let (token, csrf) = shared
        .console
        .touch(&cookie, now)
        .ok_or_else(unauthorized)?;
    if access == Access::Change {
        same_origin(headers)?;
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), csrf.as_bytes())) {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "refused: a console request that changes something needs its X-Weir-CSRF token"
                    .into(),
            ));
        }
    }
    match shared.auth.verify_any(token.as_bytes()).await {
        Ok(who) => Ok(who),
        Err(_) => {
            // Revoked or expired since sign-in: the console session ends with it.
            shared.console.remove(&cookie);
            Err(unauthorized())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A browser's request from another site is refused: `Sec-Fetch-Site` other than
/// same-origin / none, or an `Origin` whose host is not the request's `Host`.
fn same_origin(headers: &HeaderMap) -> Result<(), Refused> {
    let cross = |why: String| Err(Refused(StatusCode::FORBIDDEN, format!("refused: {why}")));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return cross(format!("a cross-site request (Sec-Fetch-Site: {site})"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || origin_host != host {
            return cross(format!("a request from origin {origin:?}"));
        }
    }
    Ok(())
}

/// The console's pages and sign-in routes.
pub fn router() -> Router<Arc<Services>> {
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route("/console/app.css", get(|| asset(APP_CSS, "text/css")))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/me", get(me))
        .route("/console/config", get(console_config))
        .route("/console/oidc/start", get(oidc::start))
        .route("/console/oidc/callback", get(oidc::callback))
}

/// The headers every console response carries.
pub(crate) fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

async fn index() -> Response {
    hardened(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response())
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    hardened(([(header::CONTENT_TYPE, kind)], body).into_response())
}

fn refused(r: Refused) -> Response {
    hardened((r.0, Json(json!({ "error": r.1 }))).into_response())
}

/// Whether the console is reached over TLS, so its cookie is `Secure`.
pub(crate) fn over_tls(shared: &Services, headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
        || shared
            .config
            .gateway
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

/// What the console shows the signed-in operator: who they are, the CSRF token, and what
/// policy lets them do.
fn whoami(shared: &Services, who: &Identity, csrf: &str) -> Value {
    let mut may = serde_json::Map::new();
    for op in Operation::ALL {
        may.insert(op.as_str().into(), json!(shared.may_anywhere(who, op)));
    }
    json!({
        "identity": who.name,
        "kind": who.kind.as_str(),
        "groups": who.groups,
        "csrf": csrf,
        "may": may,
        "targets": shared.config.targets.iter().map(|t| json!({
            "name": t.name,
            "engine": match t.engine {
                weir_config::Engine::Postgres => "postgres",
                weir_config::Engine::Mysql => "mysql",
            },
            "environment": t.environment.as_str(),
        })).collect::<Vec<_>>(),
    })
}

/// `POST /console/login` `{"token": "…"}`: a console session and its cookie.
async fn login(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = same_origin(&headers) {
        return refused(r);
    }
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    let bad = || {
        refused(Refused(
            StatusCode::UNAUTHORIZED,
            "sign-in failed: the token is not valid".into(),
        ))
    };
    if token.is_empty() {
        return bad();
    }
    signed_in(&shared, &headers, token, false).await
}

/// Opens a console session for `token` once it verifies: its cookie, and the operator as
/// JSON — or, after a sign-in at the issuer (`redirect`), a redirect to the console.
pub(crate) async fn signed_in(
    shared: &Services,
    headers: &HeaderMap,
    token: String,
    redirect: bool,
) -> Response {
    let bad = || {
        refused(Refused(
            StatusCode::UNAUTHORIZED,
            "sign-in failed: the token is not valid".into(),
        ))
    };
    let who = match shared.auth.verify_any(token.as_bytes()).await {
        Ok(who) => who,
        Err(e) => {
            crate::metrics::get()
                .auth_failures
                .get_or_create(&crate::metrics::ReasonLabels { reason: e.reason() })
                .inc();
            let _ = shared.audit.append(weir_audit::Event::Admin {
                actor: "console".into(),
                action: "console.sign_in_failed".into(),
                subject: e.reason().into(),
            });
            return bad();
        }
    };
    let now = shared.approvals.clock().now_ms();
    let Some((cookie, csrf)) = shared.console.create(token, now) else {
        return refused(Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a session id".into(),
        ));
    };
    tracing::info!(identity = %who.name, "console sign-in");
    let _ = shared.audit.append(weir_audit::Event::Admin {
        actor: who.name.clone(),
        action: "console.sign_in".into(),
        subject: format!("{} via {}", who.kind.as_str(), who.source),
    });
    let secure = if over_tls(shared, headers) {
        "; Secure"
    } else {
        ""
    };
    let set = format!(
        "{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        MAX_MS / 1000
    );
    let mut r = if redirect {
        let mut r = StatusCode::SEE_OTHER.into_response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/"));
        r
    } else {
        Json(whoami(shared, &who, &csrf)).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    hardened(r)
}

/// `GET /console/config`: how the sign-in page offers to sign in.
async fn console_config(State(shared): State<Arc<Services>>) -> Response {
    hardened(Json(json!({ "issuer": shared.config.identity.issuer.is_some() })).into_response())
}

/// `POST /console/logout`: ends the console session.
async fn logout(State(shared): State<Arc<Services>>, headers: HeaderMap) -> Response {
    if let Err(r) = operator(&shared, &headers, Access::Change).await {
        return refused(r);
    }
    if let Some(c) = cookie_of(&headers) {
        shared.console.remove(&c);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("weir_console=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    hardened(r)
}

/// `GET /console/me`: the signed-in operator (401 when signed out).
async fn me(State(shared): State<Arc<Services>>, headers: HeaderMap) -> Response {
    let who = match operator(&shared, &headers, Access::Read).await {
        Ok(w) => w,
        Err(r) => return refused(r),
    };
    let now = shared.approvals.clock().now_ms();
    let csrf = cookie_of(&headers)
        .and_then(|c| shared.console.touch(&c, now))
        .map(|(_, csrf)| csrf)
        .unwrap_or_default();
    hardened(Json(whoami(&shared, &who, &csrf)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_session_ends_when_idle_or_old() {
        let logins = Logins::default();
        let (cookie, csrf) = logins.create("t".into(), 0).unwrap();
        assert_eq!(logins.touch(&cookie, 1000), Some(("t".into(), csrf)));
        assert_eq!(logins.touch(&cookie, 1000 + IDLE_MS), None);
        let (cookie, _) = logins.create("t".into(), 0).unwrap();
        let mut t = 0;
        while t + IDLE_MS / 2 < MAX_MS {
            t += IDLE_MS / 2;
            assert!(logins.touch(&cookie, t).is_some());
        }
        assert_eq!(logins.touch(&cookie, MAX_MS), None);
        assert_eq!(logins.touch("other", 0), None);
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin(&h).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin(&h).is_err());
    }
}
