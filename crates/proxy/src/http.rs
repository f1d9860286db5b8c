//! The HTTP API (`[gateway] http_listen`), on [`Services`] alone: approvals for tools and people, and the endpoints
//! the webhook receiver and Slack call back. Documented in `docs/openapi.yaml`.
//!
//! Authentication: `Authorization: Bearer <token>` (a Weir token or a static identity's
//! token) for `/v1/approvals…`; the identity it proves is the approver policy judges. The
//! webhook callback and Slack's interactivity requests carry no token: they are signed
//! (see [`crate::notify`]) and name the approver, whom policy judges the same way.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use weir_store::Approval;

use crate::approvals::{Approver, DecideError, Decider};
use crate::console::Access;
use crate::notify;
use crate::Services;

pub fn router(shared: Arc<Services>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route("/v1/derived-tags", get(derived_tags))
        .route("/v1/webhook/decide", post(webhook_decide))
        .route("/v1/slack/interactivity", post(slack_interactivity))
        .merge(crate::http_ops::router())
        .merge(crate::console::router())
        .with_state(shared)
}

/// `GET /metrics`: Prometheus / OpenMetrics text, no token needed (nothing in it names an
/// identity or a statement). The pending-approvals gauge is read from the store per scrape.
async fn metrics(State(shared): State<Arc<Services>>) -> Response {
    let now = shared.approvals.clock().now_ms();
    let pending = shared
        .approvals
        .with_store(|s| s.pending_approvals())
        .await
        .ok()
        .map(|p| p.iter().filter(|a| a.deadline_ms > now).count())
        .and_then(|n| i64::try_from(n).ok());
    let body = crate::metrics::get().encode(shared.analyzer.cache_counts(), pending);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// An error as the API answers it: a status and `{"error": "…"}`.
pub(crate) struct ApiError(pub StatusCode, pub String);

impl From<crate::console::Refused> for ApiError {
    fn from(r: crate::console::Refused) -> ApiError {
        ApiError(r.0, r.1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<DecideError> for ApiError {
    fn from(e: DecideError) -> ApiError {
        let status = match &e {
            DecideError::NotFound(_) => StatusCode::NOT_FOUND,
            DecideError::Closed(_) => StatusCode::CONFLICT,
            DecideError::NotAllowed(_) => StatusCode::FORBIDDEN,
            DecideError::ReasonRequired => StatusCode::BAD_REQUEST,
            DecideError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// The identity the request proves: a bearer token, or a console session (whose changes
/// need its CSRF token).
async fn caller(
    shared: &Services,
    headers: &HeaderMap,
    access: Access,
) -> Result<weir_policy::Identity, ApiError> {
    Ok(crate::console::operator(shared, headers, access).await?)
}

async fn store<T: Send + 'static>(
    shared: &Services,
    f: impl FnOnce(&dyn weir_store::Store) -> Result<T, weir_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    shared
        .approvals
        .with_store(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn list(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&shared, &headers, Access::Read).await?;
    let now = shared.approvals.clock().now_ms();
    let pending = store(&shared, |s| s.pending_approvals()).await?;
    // Approvers (and whoever policy lets see them) see every request on the target; anyone
    // else sees their own.
    let visible = shared.targets_where(&who, weir_policy::Operation::ViewApprovals);
    Ok(Json(Value::Array(
        pending
            .iter()
            .filter(|a| a.deadline_ms > now)
            .filter(|a| a.identity == who.name || visible.contains(&a.target))
            .map(notify::approval_json)
            .collect(),
    )))
}

async fn show(
    State(shared): State<Arc<Services>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&shared, &headers, Access::Read).await?;
    let key = id.clone();
    // As in the list: the requester, and whoever may see requests on the target.
    match store(&shared, move |s| s.approval(&key)).await? {
        Some(a)
            if a.identity == who.name
                || shared.may(&who, weir_policy::Operation::ViewApprovals, &a.target) =>
        {
            Ok(Json(notify::approval_json(&a)))
        }
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no approval request {id}"),
        )),
    }
}

/// `GET /v1/derived-tags[?target=T]`: the columns marked sensitive because a write copied
/// sensitive values into them, in force (not cleared), oldest first.
async fn derived_tags(
    State(shared): State<Arc<Services>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    caller(&shared, &headers, Access::Read).await?;
    let target = q.get("target").cloned();
    let tags = store(&shared, move |s| s.derived_tags(target.as_deref(), false)).await?;
    Ok(Json(Value::Array(
        tags.iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "target": t.tag.target,
                    "column": t.tag.column,
                    "source": t.tag.source,
                    "label": t.tag.label,
                    "strategy": t.tag.strategy,
                    "identity": t.tag.identity,
                    "statement": t.tag.statement,
                    "created_ms": t.created_at_ms,
                })
            })
            .collect(),
    )))
}

/// A decision's optional body: `{"reason": "…"}`.
fn reason_of(body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })?;
    Ok(v.get("reason").and_then(Value::as_str).map(str::to_owned))
}

async fn approve(
    State(shared): State<Arc<Services>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&shared, &headers, Access::Change).await?;
    let reason = reason_of(&body)?;
    let a = decide(shared, id, Approver::Identity(who), true, reason, "http").await?;
    Ok(Json(notify::approval_json(&a)))
}

async fn deny(
    State(shared): State<Arc<Services>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&shared, &headers, Access::Change).await?;
    let reason = reason_of(&body)?;
    let a = decide(shared, id, Approver::Identity(who), false, reason, "http").await?;
    Ok(Json(notify::approval_json(&a)))
}

/// Runs a decision (store, policy, trail: blocking) off the async threads.
async fn decide(
    shared: Arc<Services>,
    id: String,
    by: Approver,
    approve: bool,
    reason: Option<String>,
    channel: &'static str,
) -> Result<Approval, DecideError> {
    let s = Arc::clone(&shared);
    let decided = tokio::task::spawn_blocking(move || {
        Decider {
            config: &s.config,
            policy: &s.policy,
            store: s.approvals.store().as_ref(),
            audit: s.audit.as_ref(),
            clock: s.approvals.clock(),
        }
        .decide(&id, &by, approve, reason.as_deref(), channel)
    })
    .await
    .unwrap_or_else(|e| Err(DecideError::Failed(e.to_string())));
    // The Slack message that announced it shows the outcome (a decision made in Slack
    // replaces it through the interaction's response_url instead).
    if let Ok(a) = &decided {
        if channel == "slack" {
            let (store, id) = (Arc::clone(shared.approvals.store()), a.id.clone());
            tokio::task::spawn_blocking(move || store.take_approval_message(&id));
        } else {
            shared.approvals.show_outcome(a);
        }
    }
    decided
}

/// The approver an outside channel names, as an identity policy can judge.
async fn named(shared: &Arc<Services>, name: String) -> Result<weir_policy::Identity, ApiError> {
    let s = Arc::clone(shared);
    let n = name.clone();
    tokio::task::spawn_blocking(move || s.auth.identity_named(&n))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| {
            ApiError(
                StatusCode::FORBIDDEN,
                format!("{name:?} is not a Weir identity"),
            )
        })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Refuses a request to a signed endpoint unless its signature holds: 404 when the endpoint
/// has no secret configured, 401 when the signature is missing, stale or wrong.
fn signed(
    shared: &Services,
    scheme: notify::Scheme,
    secret: Option<&weir_config::Secret>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let what = match scheme {
        notify::Scheme::Weir => {
            "webhook callbacks need [approvals] webhook_secret_env or webhook_secret_file"
        }
        notify::Scheme::Slack => {
            "Slack interactivity needs [approvals] slack_signing_secret_env or _file"
        }
    };
    let secret = secret
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, what.into()))?
        .read()
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("signing secret: {e}"),
            )
        })?;
    let (ts, sig) = scheme.headers();
    notify::verify(
        scheme,
        secret.as_bytes(),
        header(headers, ts),
        header(headers, sig),
        body,
        shared.approvals.clock().now_ms() / 1000,
    )
    .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, format!("request refused: {e}")))
}

/// `POST /v1/webhook/decide`, signed with the webhook secret:
/// `{"id", "decision": "approve"|"deny", "approver", "reason"}`.
async fn webhook_decide(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    signed(
        &shared,
        notify::Scheme::Weir,
        shared.config.approvals.webhook_secret.as_ref(),
        &headers,
        &body,
    )?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(id), Some(decision), Some(approver)) =
        (field("id"), field("decision"), field("approver"))
    else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "id, decision and approver are required".into(),
        ));
    };
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("decision {other:?} must be \"approve\" or \"deny\""),
            ))
        }
    };
    let who = named(&shared, approver).await?;
    let a = decide(
        shared,
        id,
        Approver::Identity(who),
        approve,
        field("reason"),
        "webhook",
    )
    .await?;
    Ok(Json(notify::approval_json(&a)))
}

/// `POST /v1/slack/interactivity`: a button pressed on a Weir message. Slack wants a quick
/// 200; the outcome replaces the message through its `response_url`.
async fn slack_interactivity(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    signed(
        &shared,
        notify::Scheme::Slack,
        shared.config.approvals.slack_signing_secret.as_ref(),
        &headers,
        &body,
    )?;
    let Some(action) = notify::parse_slack_action(&body) else {
        // Other interactions (a message shortcut, a modal) are not Weir's: acknowledge.
        return Ok(StatusCode::OK);
    };
    // Only Slack users mapped to a Weir identity decide; names in Slack are not identities.
    let outcome = match shared.config.approvals.slack_users.get(&action.user_id) {
        None => format!(
            "<@{}> is not mapped to a Weir identity ([approvals.slack_users]); request {} is unchanged",
            action.user_id, action.request
        ),
        Some(name) => match named(&shared, name.clone()).await {
            Err(e) => e.1,
            Ok(who) => {
                let reason = (!action.approve).then(|| format!("denied in Slack by {}", who.name));
                match decide(
                    Arc::clone(&shared),
                    action.request.clone(),
                    Approver::Identity(who.clone()),
                    action.approve,
                    reason,
                    "slack",
                )
                .await
                {
                    Ok(a) => format!("request {} {} by {}", a.id, a.status.as_str(), who.name),
                    Err(e) => e.to_string(),
                }
            }
        },
    };
    if let Some(url) = action.response_url {
        let notifier = Arc::clone(&shared.notifier);
        tokio::spawn(async move { notifier.slack_reply(&url, &outcome).await });
    }
    Ok(StatusCode::OK)
}
