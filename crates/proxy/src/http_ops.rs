//! The operators' part of the HTTP API, which the console uses: live sessions, the audit
//! trail (search, replay, verify, export), the policy simulator and access grants. Documented
//! in `docs/openapi.yaml`.
//!
//! Every route is judged by policy for the caller ([`weir_policy::Operation`]): a list shows
//! only what the caller may see, per target; an action on something the caller may not touch
//! is 403. State-changing routes are POSTs, which with the console's cookie need its CSRF
//! token ([`crate::console`]).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use weir_policy::{Identity, Operation};
use weir_store::audit::{Filter, TrailReader};

use crate::console::{operator, Access};
use crate::http::ApiError;
use crate::Services;

/// The most events one search returns.
const MAX_EVENTS: usize = 1000;

pub fn router() -> Router<Arc<Services>> {
    Router::new()
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{id}/end", post(end_session))
        .route("/v1/audit/events", get(events))
        .route("/v1/audit/verify", post(verify))
        .route("/v1/audit/export", get(export))
        .route("/v1/policy/check", post(policy_check))
        .route("/v1/grants", get(grants))
        .route("/v1/grants/{id}/revoke", post(revoke_grant))
}

fn forbidden(what: &str) -> ApiError {
    ApiError(
        StatusCode::FORBIDDEN,
        format!("policy does not let you {what}"),
    )
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn bad_request(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

/// A JSON body's string field.
fn field(body: &Value, key: &str) -> Option<String> {
    body.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))
}

/// `GET /v1/sessions`: the live sessions on this gateway the caller may see.
async fn sessions(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = operator(&shared, &headers, Access::Read).await?;
    let visible = shared.targets_where(&who, Operation::ViewSessions);
    let list: Vec<_> = shared
        .sessions
        .list()
        .into_iter()
        .filter(|s| visible.contains(&s.target))
        .collect();
    Ok(Json(json!(list)))
}

/// `POST /v1/sessions/{id}/end` `{"reason"}`: ends a live session; its client is told why.
async fn end_session(
    State(shared): State<Arc<Services>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = operator(&shared, &headers, Access::Change).await?;
    let body = json_body(&body)?;
    let Some(session) = shared.sessions.get(id) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no live session {id} on this gateway"),
        ));
    };
    if !shared.may(&who, Operation::EndSession, &session.target) {
        return Err(forbidden("end sessions on this target"));
    }
    let reason = field(&body, "reason").filter(|r| !r.trim().is_empty());
    shared
        .audit
        .append(weir_audit::Event::Admin {
            actor: who.name.clone(),
            action: "session.end".into(),
            subject: format!(
                "session {id} ({} on {}){}",
                session.identity,
                session.target,
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        })
        .wait()
        .await
        .map_err(|e| {
            internal(format!(
                "cannot record the decision, so nothing changed: {e}"
            ))
        })?;
    let told = format!(
        "weir: the session was ended by {}{}",
        who.name,
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    let ended = shared.sessions.end(id, told);
    Ok(Json(json!({ "session": id, "ended": ended })))
}

/// The trail's filters from a query string, as `weir audit search` takes them.
fn filter_of(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let time = |k: &str| -> Result<Option<i64>, ApiError> {
        s(k).map(|v| crate::audit::parse_time(&v).map_err(bad_request))
            .transpose()
    };
    Ok(Filter {
        identity: s("identity"),
        target: s("target"),
        decision: s("decision"),
        session: s("session")
            .map(|v| v.parse().map_err(|_| bad_request("session: a number")))
            .transpose()?,
        kind: s("event"),
        since_us: time("since")?,
        until_us: time("until")?,
        text: s("text"),
    })
}

/// The trail, read-side (SQLite WAL, or the PostgreSQL store: the writer goes on meanwhile).
fn trail(shared: &Services) -> Result<Box<dyn TrailReader>, ApiError> {
    crate::audit::open_reader(&shared.config.gateway.store).map_err(internal)
}

fn event_json(r: &weir_audit::chain::Record) -> Value {
    let mut v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), json!(r.seq));
        o.insert("ts_us".into(), json!(r.ts_us));
    }
    v
}

async fn audit_reader(
    shared: &Services,
    headers: &HeaderMap,
    access: Access,
) -> Result<Identity, ApiError> {
    let who = operator(shared, headers, access).await?;
    if !shared.may_on_gateway(&who, Operation::ReadAudit) {
        return Err(forbidden("read the audit trail"));
    }
    Ok(who)
}

/// `GET /v1/audit/events?identity&target&decision&session&event&since&until&text&limit&from`:
/// matching events, `seq` order. Without `from`, the newest `limit` (default 200, at most
/// 1000); with it, the first `limit` from that `seq` on. A session's replay is
/// `?session=N&from=1`.
async fn events(
    State(shared): State<Arc<Services>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    audit_reader(&shared, &headers, Access::Read).await?;
    let filter = filter_of(&q)?;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(200)
        .clamp(1, MAX_EVENTS);
    let from = q.get("from").and_then(|f| f.parse::<u64>().ok());
    let s = Arc::clone(&shared);
    let events = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let store = trail(&s)?;
        let mut out = Vec::with_capacity(limit);
        let mut take = |r: &weir_audit::chain::Record| {
            out.push(event_json(r));
            if out.len() == limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        match from {
            Some(from) => store.for_each_event(from, &filter, &mut take),
            None => store.for_each_event_newest_first(&filter, &mut take),
        }
        .map_err(internal)?;
        if from.is_none() {
            // Read newest first; shown in `seq` order.
            out.reverse();
        }
        Ok(out)
    })
    .await
    .map_err(internal)??;
    Ok(Json(json!({ "events": events })))
}

/// `POST /v1/audit/verify`: checks the whole chain and its signed checkpoints, as `weir
/// audit verify`: `{"ok": true, "events", "checkpoints"}` or `{"ok": false, "error"}`.
async fn verify(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = audit_reader(&shared, &headers, Access::Change).await?;
    let s = Arc::clone(&shared);
    let verdict = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let text = std::fs::read_to_string(&s.config.audit.signing_key)
            .map_err(|e| internal(format!("[audit] signing_key: {e}")))?;
        let key = weir_audit::chain::key_from_file_text(&text)
            .map_err(internal)?
            .public_key();
        // Every chain (one per gateway on a PostgreSQL store), each against the key it
        // registered; this gateway's own key is the one of a SQLite trail.
        let chains = trail(&s)?.verify_chains(&[key], false).map_err(internal)?;
        let per_chain: Vec<Value> = chains
            .iter()
            .filter_map(|c| {
                let chain = c.chain.as_ref()?;
                Some(match &c.verdict {
                    Ok(sum) => json!({ "chain": chain, "ok": true, "events": sum.events, "checkpoints": sum.checkpoints }),
                    Err(e) => json!({ "chain": chain, "ok": false, "error": e }),
                })
            })
            .collect();
        let mut out = match weir_store::audit::ChainVerdict::overall(&chains) {
            Ok(sum) => {
                json!({ "ok": true, "events": sum.events, "checkpoints": sum.checkpoints })
            }
            Err(e) => json!({ "ok": false, "error": e }),
        };
        if let (false, Some(o)) = (per_chain.is_empty(), out.as_object_mut()) {
            o.insert("chains".into(), Value::Array(per_chain));
        }
        Ok(out)
    })
    .await
    .map_err(internal)??;
    let ok = verdict.get("ok").and_then(Value::as_bool).unwrap_or(false);
    tracing::info!(identity = %who.name, ok, "audit trail verified from the API");
    Ok(Json(verdict))
}

/// `GET /v1/audit/export?…filters`: the matching events as JSON lines, streamed.
async fn export(
    State(shared): State<Arc<Services>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    audit_reader(&shared, &headers, Access::Read).await?;
    let filter = filter_of(&q)?;
    let store = {
        let s = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || trail(&s))
            .await
            .map_err(internal)??
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(64 * 1024);
        let result = store.for_each_event(1, &filter, &mut |r| {
            chunk.extend_from_slice(event_json(r).to_string().as_bytes());
            chunk.push(b'\n');
            if chunk.len() >= 64 * 1024 {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(64 * 1024));
                if tx.blocking_send(Ok(Bytes::from(full))).is_err() {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        let last = match result {
            Ok(()) => Ok(Bytes::from(chunk)),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let _ = tx.blocking_send(last);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"weir-audit.jsonl\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /v1/policy/check` `{"identity", "target", "sql"}`: how policy decides each
/// statement for that identity, as `weir policy check`.
async fn policy_check(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = operator(&shared, &headers, Access::Change).await?;
    if !shared.may_on_gateway(&who, Operation::SimulatePolicy) {
        return Err(forbidden("simulate policy decisions"));
    }
    let body = json_body(&body)?;
    let (Some(identity), Some(target), Some(sql)) = (
        field(&body, "identity"),
        field(&body, "target"),
        field(&body, "sql"),
    ) else {
        return Err(bad_request("identity, target and sql are required"));
    };
    let Some(t) = shared.config.target(&target).cloned() else {
        return Err(bad_request(format!("no target named {target:?}")));
    };
    let s = Arc::clone(&shared);
    let result = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let named = |n: &str| -> Result<Identity, ApiError> {
            s.auth
                .identity_named(n)
                .map_err(internal)?
                .ok_or_else(|| bad_request(format!("{n:?} is not a Weir identity")))
        };
        let them = named(&identity)?;
        let person = them.on_behalf_of.as_deref().map(named).transpose()?;
        let mysql = (t.engine == weir_config::Engine::Mysql).then(|| t.database.clone());
        let decided = crate::simulate::simulate(
            &s.policy,
            &s.analyzer,
            &them,
            person.as_ref(),
            &t.policy_info(),
            mysql.as_deref(),
            &sql,
        )
        .map_err(internal)?;
        Ok(json!({
            "identity": them.name,
            "target": t.name,
            "statements": decided.iter().map(|d| json!({
                "kind": d.kind,
                "decision": d.verdict.label(),
                "rule": d.verdict.rule(),
                "reason": match &d.verdict {
                    weir_policy::Verdict::Deny { reason, .. }
                    | weir_policy::Verdict::RequireApproval { reason, .. } => Some(reason.clone()),
                    _ => None,
                },
                "line": crate::simulate::verdict_line(&d.verdict),
            })).collect::<Vec<_>>(),
        }))
    })
    .await
    .map_err(internal)??;
    Ok(Json(result))
}

fn grant_json(g: &weir_store::Grant) -> Value {
    json!({
        "id": g.id,
        "identity": g.identity,
        "target": g.target,
        "created_ms": g.created_ms,
        "expires_ms": g.expires_ms,
        "approval": g.approval,
        "reason": g.reason,
        "approved_by": g.approved_by,
    })
}

/// `GET /v1/grants`: the access grants in force that the caller may see.
async fn grants(
    State(shared): State<Arc<Services>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = operator(&shared, &headers, Access::Read).await?;
    let now = shared.approvals.clock().now_ms();
    let all = shared
        .approvals
        .with_store(move |s| s.active_grants(now))
        .await
        .map_err(internal)?;
    let visible = shared.targets_where(&who, Operation::ViewGrants);
    Ok(Json(Value::Array(
        all.iter()
            .filter(|g| g.identity == who.name || visible.contains(&g.target))
            .map(grant_json)
            .collect(),
    )))
}

/// `POST /v1/grants/{id}/revoke`: ends a grant now; the sessions relying on it end within
/// the grant watcher's poll.
async fn revoke_grant(
    State(shared): State<Arc<Services>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = operator(&shared, &headers, Access::Change).await?;
    let key = id.clone();
    let grant = shared
        .approvals
        .with_store(move |s| s.grant(&key))
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no grant {id}")))?;
    if !shared.may(&who, Operation::RevokeGrant, &grant.target) {
        return Err(forbidden("revoke grants on this target"));
    }
    let now = shared.approvals.clock().now_ms();
    if !grant.is_active(now) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("grant {id} has already ended"),
        ));
    }
    shared
        .audit
        .append(weir_audit::Event::Grant {
            id: id.clone(),
            decision: "revoked".into(),
            identity: grant.identity.clone(),
            target: grant.target.clone(),
            by: Some(who.name.clone()),
            expires_ms: Some(grant.expires_ms),
            session: None,
        })
        .wait()
        .await
        .map_err(|e| {
            internal(format!(
                "cannot record the revocation, so nothing changed: {e}"
            ))
        })?;
    let (key, by) = (id.clone(), who.name.clone());
    let revoked = shared
        .approvals
        .with_store(move |s| s.revoke_grant(&key, &by, now))
        .await
        .map_err(internal)?;
    if !revoked {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("grant {id} ended before it could be revoked"),
        ));
    }
    Ok(Json(json!({ "id": id, "revoked": true })))
}
