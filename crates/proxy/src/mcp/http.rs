//! `POST /mcp` (MCP's Streamable HTTP transport, stateless: no session lives in this
//! process, so any gateway can answer any request) and the protected-resource metadata an
//! MCP client reads to find where to get a token (RFC 9728).
//!
//! Every request carries `Authorization: Bearer <token>`; without a valid one the answer is
//! 401 with a `WWW-Authenticate` that points at the metadata. `Host` must be loopback or in
//! `[mcp] allowed_hosts`, and a browser's `Origin` loopback or in `[mcp] allowed_origins`
//! (DNS rebinding).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use super::{Caller, Server};
use crate::Shared;

/// Where the protected-resource metadata is served.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The MCP routes, to merge into the HTTP API's router.
pub fn router(shared: Arc<Shared>) -> Router {
    let cfg = &shared.config.mcp;
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    hosts.extend(cfg.allowed_hosts.iter().cloned());
    if let Some(host) = public_host(&shared) {
        hosts.push(host);
    }
    let mut origins: Vec<String> = vec![
        "http://localhost:*".into(),
        "http://127.0.0.1:*".into(),
        "http://[::1]:*".into(),
    ];
    origins.extend(cfg.allowed_origins.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_max_request_body_bytes(shared.config.gateway.max_message_size);
    let factory = {
        let shared = Arc::clone(&shared);
        move || {
            Ok(Server {
                shared: Arc::clone(&shared),
                caller: None,
            })
        }
    };
    let service =
        StreamableHttpService::new(factory, Arc::new(NeverSessionManager::default()), config);
    let mcp =
        Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                authenticate,
            ));
    Router::new()
        .route(METADATA_PATH, get(metadata))
        .route(&format!("{METADATA_PATH}/mcp"), get(metadata))
        .with_state(shared)
        .merge(mcp)
}

/// The gateway's base URL as clients reach it.
fn base_url(shared: &Shared) -> String {
    if let Some(url) = &shared.config.gateway.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    match shared.config.gateway.http_listen {
        Some(addr) => format!("http://{addr}"),
        None => "http://127.0.0.1".into(),
    }
}

fn public_host(shared: &Shared) -> Option<String> {
    let url = shared.config.gateway.public_url.as_deref()?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    (!host.is_empty()).then(|| host.trim_matches(['[', ']']).to_owned())
}

/// RFC 9728 protected-resource metadata: the resource is `/mcp`; tokens come from
/// `[identity] issuer` when there is one (else from `weir token create`).
async fn metadata(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let base = base_url(&shared);
    let mut doc = serde_json::Map::new();
    doc.insert("resource".into(), json!(format!("{base}/mcp")));
    doc.insert("bearer_methods_supported".into(), json!(["header"]));
    doc.insert("resource_name".into(), json!("Weir"));
    if let Some(issuer) = &shared.config.identity.issuer {
        doc.insert("authorization_servers".into(), json!([issuer]));
    }
    Json(serde_json::Value::Object(doc))
}

/// Refuses a request without a valid bearer token (401); otherwise hands the tools the
/// caller it proves.
async fn authenticate(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |c| c.0);
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let caller = match token {
        Some(token) => Caller::verify(&shared, &token, peer).await.ok(),
        None => None,
    };
    let Some(caller) = caller else {
        return unauthorized(&shared);
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn unauthorized(shared: &Shared) -> Response {
    let challenge = format!(
        "Bearer resource_metadata=\"{}{METADATA_PATH}\"",
        base_url(shared)
    );
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "a valid token is required: Authorization: Bearer <token>" })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}
