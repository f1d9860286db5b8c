//! Console sign-in with `[identity] issuer`: OAuth 2.0 authorization code with PKCE (S256),
//! a `state` bound to this gateway's memory and a `nonce` checked in the ID token.
//!
//! `GET /console/oidc/start` redirects the browser to the issuer's authorization endpoint;
//! the issuer sends it back to `GET /console/oidc/callback?code&state`, where Weir redeems the
//! code (with the PKCE verifier only it knows) for an ID token, verifies it as any ID token
//! (issuer, audience, signature, expiry, username claim), checks the nonce, and opens a
//! console session with it. The client is `[identity] client_id` (default: the audience), a
//! public client: no secret. The redirect URI is `[gateway] public_url` +
//! `/console/oidc/callback`, or the request's own origin when no public URL is configured;
//! the issuer accepts only the redirect URIs registered for the client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Services;

/// How long a sign-in may take at the issuer.
const PENDING_MS: u64 = 10 * 60 * 1000;
/// At most this many sign-ins under way at once.
const MAX_PENDING: usize = 1000;

struct Pending {
    verifier: String,
    nonce: String,
    redirect_uri: String,
    created_ms: u64,
}

/// Sign-ins under way, by `state`.
#[derive(Default)]
pub struct PendingSignIns {
    map: Mutex<HashMap<String, Pending>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(b64(&bytes))
}

fn page(status: StatusCode, message: &str) -> Response {
    super::hardened(
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{message}\n"),
        )
            .into_response(),
    )
}

/// Where the issuer sends the browser back.
fn redirect_uri(shared: &Services, headers: &HeaderMap) -> Option<String> {
    let origin = match &shared.config.gateway.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let host = headers.get(header::HOST)?.to_str().ok()?;
            let scheme = if super::over_tls(shared, headers) {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
    };
    Some(format!("{origin}/console/oidc/callback"))
}

fn client(issuer: &str, follow: bool) -> Result<reqwest::Client, String> {
    crate::oidc::http_client(Duration::from_secs(15), issuer, follow)
}

/// The issuer's endpoints and the client: (issuer, client id, discovery document).
async fn issuer_of(shared: &Services) -> Result<(String, String, Value), String> {
    let id = &shared.config.identity;
    let issuer = id
        .issuer
        .clone()
        .ok_or("the console signs in with tokens only: no [identity] issuer is configured")?;
    let client_id = id
        .client_id
        .clone()
        .or_else(|| id.audience.clone())
        .ok_or("[identity] client_id (or audience) is needed to sign in with the issuer")?;
    let doc = crate::oidc::discover(&client(&issuer, true)?, &issuer)
        .await
        .map_err(|e| e.to_string())?;
    Ok((issuer, client_id, doc))
}

/// `GET /console/oidc/start`: off to the issuer.
pub async fn start(State(shared): State<Arc<Services>>, headers: HeaderMap) -> Response {
    let (_, client_id, doc) = match issuer_of(&shared).await {
        Ok(x) => x,
        Err(e) => return page(StatusCode::NOT_FOUND, &e),
    };
    let Some(endpoint) = doc
        .get("authorization_endpoint")
        .and_then(Value::as_str)
        .filter(|u| weir_config::secure_url(u))
    else {
        return page(
            StatusCode::BAD_GATEWAY,
            "the issuer's discovery document names no https authorization_endpoint",
        );
    };
    let Some(redirect) = redirect_uri(&shared, &headers) else {
        return page(StatusCode::BAD_REQUEST, "no Host header");
    };
    let (Some(state), Some(verifier), Some(nonce)) = (random(), random(), random()) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let challenge = b64(&Sha256::digest(verifier.as_bytes()));
    let now = shared.approvals.clock().now_ms();
    {
        let mut map = shared
            .console
            .sign_ins
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, p| now.saturating_sub(p.created_ms) < PENDING_MS);
        // Anyone can start a sign-in: a flood pushes out the oldest ones rather than
        // locking everyone out for the pending window.
        if map.len() >= MAX_PENDING {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.created_ms)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            state.clone(),
            Pending {
                verifier,
                nonce: nonce.clone(),
                redirect_uri: redirect.clone(),
                created_ms: now,
            },
        );
    }
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("scope", "openid email groups"),
        ("state", state.as_str()),
        ("nonce", nonce.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap_or_default();
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{endpoint}{sep}{query}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    super::hardened(r)
}

/// `GET /console/oidc/callback?code&state`: the issuer's answer.
pub async fn callback(
    State(shared): State<Arc<Services>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(e) = q.get("error") {
        return page(
            StatusCode::UNAUTHORIZED,
            &format!("sign-in refused by the issuer: {e}"),
        );
    }
    let (Some(code), Some(state)) = (q.get("code"), q.get("state")) else {
        return page(StatusCode::BAD_REQUEST, "code and state are required");
    };
    // One use per state: a replayed or forged callback finds nothing.
    let pending = shared
        .console
        .sign_ins
        .map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(state);
    let now = shared.approvals.clock().now_ms();
    let Some(p) = pending.filter(|p| now.saturating_sub(p.created_ms) < PENDING_MS) else {
        return page(
            StatusCode::BAD_REQUEST,
            "this sign-in is unknown or too old; start again",
        );
    };
    let id_token = match redeem(&shared, code, &p).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(cause = %e, "console sign-in with the issuer failed");
            return page(StatusCode::UNAUTHORIZED, &format!("sign-in failed: {e}"));
        }
    };
    super::signed_in(&shared, &headers, id_token, true).await
}

/// The ID token the code is worth, its nonce checked.
async fn redeem(shared: &Services, code: &str, p: &Pending) -> Result<String, String> {
    let (issuer, client_id, doc) = issuer_of(shared).await?;
    let endpoint = doc
        .get("token_endpoint")
        .and_then(Value::as_str)
        .filter(|u| weir_config::secure_url(u))
        .ok_or("the issuer's discovery document names no https token_endpoint")?;
    let mut resp = client(&issuer, false)?
        .post(endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", p.redirect_uri.as_str()),
                ("client_id", client_id.as_str()),
                ("code_verifier", p.verifier.as_str()),
            ])
            .map_err(|e| e.to_string())?,
        )
        .send()
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    let status = resp.status();
    let body = crate::oidc::read_json_body(&mut resp).await?;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| format!("token endpoint answer: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "token endpoint answered {status}: {}",
            v.get("error").and_then(Value::as_str).unwrap_or("")
        ));
    }
    let token = v
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or("the token endpoint returned no id_token")?;
    // The signature and the rest are verified when the console session opens; the nonce
    // ties this token to this sign-in.
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the ID token's claims do not decode")?;
    if claims.get("nonce").and_then(Value::as_str) != Some(p.nonce.as_str()) {
        return Err("the ID token's nonce is not this sign-in's".into());
    }
    Ok(token.to_owned())
}
