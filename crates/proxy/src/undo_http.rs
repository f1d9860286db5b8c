//! The undo routes of the HTTP API (documented in `docs/openapi.yaml`), which the console
//! uses: a statement's undo preview, and applying it as the caller.
//!
//! - `GET /v1/audit/events/{seq}/undo`: what `weir undo SEQ` prints, masked for the caller,
//!   with the change's facts. For whoever may read the trail of the statement's target or see
//!   its approvals (auditors, approvers, admins).
//! - `POST /v1/audit/events/{seq}/undo`: runs it as the caller through the pipeline
//!   ([`crate::undo::apply`]), for whoever may see approvals on the target (approvers and
//!   admins by the built-in policy). It answers 200 with the rows restored and refused when
//!   it finished within a few seconds, or 202 with the approval request it waits for (the
//!   undo goes on in the gateway once an approver decides).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use weir_policy::Operation;

use crate::console::{operator, Access};
use crate::http::ApiError;
use crate::Shared;

/// How long an apply is waited for before the answer is 202 (waiting for approval).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/audit/events/{seq}/undo", get(preview).post(apply))
        .with_state(shared)
}

fn status(code: StatusCode, m: impl std::fmt::Display) -> ApiError {
    ApiError(code, m.to_string())
}

/// The undo of `seq`, or why there is none (409: the statement exists but cannot be undone).
async fn prepared(shared: &Arc<Shared>, seq: u64) -> Result<crate::undo::Prepared, ApiError> {
    let store_url = shared.config.gateway.store.clone();
    let sealer = shared.sealer.clone().ok_or_else(|| {
        status(
            StatusCode::CONFLICT,
            "no target keeps before-images ([audit] before_images)",
        )
    })?;
    let store = Arc::clone(shared.approvals.store());
    tokio::task::spawn_blocking(move || {
        let trail = crate::audit::open_reader(&store_url)
            .map_err(|e| status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        crate::undo::prepare(trail.as_ref(), store.as_ref(), &sealer, seq)
            .map_err(|e| status(StatusCode::CONFLICT, e))
    })
    .await
    .map_err(|e| status(StatusCode::INTERNAL_SERVER_ERROR, e))?
}

async fn preview(
    State(shared): State<Arc<Shared>>,
    Path(seq): Path<u64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = operator(&shared.services, &headers, Access::Read).await?;
    let p = prepared(&shared, seq).await?;
    if !(shared.may(&who, Operation::ReadAudit, &p.target)
        || shared.may(&who, Operation::ViewApprovals, &p.target))
    {
        return Err(status(
            StatusCode::FORBIDDEN,
            "policy does not let you read the trail of this target",
        ));
    }
    let session = shared
        .config
        .target(&p.target)
        .and_then(|t| shared.policy.session(&who, &t.policy_info()).ok());
    let table = p.image.table.clone();
    let labels = p.image.sensitive.clone();
    let shown = |column: &str| match (&session, labels.get(column)) {
        (Some(s), Some(label)) => shared
            .policy
            .may_unmask(s, &format!("{table}.{column}"), label),
        _ => false,
    };
    Ok(Json(json!({
        "seq": p.statement_seq,
        "change": p.change,
        "target": p.target,
        "table": p.image.table,
        "kind": p.image.kind,
        "rows": p.image.rows.len(),
        "key": p.image.key,
        "sql": p.script(&shown),
        "may_apply": shared.may(&who, Operation::ViewApprovals, &p.target),
    }))
    .into_response())
}

async fn apply(
    State(shared): State<Arc<Shared>>,
    Path(seq): Path<u64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = operator(&shared.services, &headers, Access::Change).await?;
    let p = prepared(&shared, seq).await?;
    if !shared.may(&who, Operation::ViewApprovals, &p.target) {
        return Err(status(
            StatusCode::FORBIDDEN,
            "policy does not let you apply undos on this target",
        ));
    }
    let (waiting_tx, mut waiting_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let task = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            crate::undo::apply(&shared, &who, &p, move |notice| {
                let _ = waiting_tx.send(notice);
            })
            .await
        })
    };
    let mut task = std::pin::pin!(task);
    let deadline = tokio::time::sleep(ANSWER_WITHIN);
    let mut deadline = std::pin::pin!(deadline);
    let mut waiting: Option<String> = None;
    loop {
        tokio::select! {
            done = &mut task => {
                let done = done.map_err(|e| status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
                return match done {
                    Ok(a) => Ok(Json(json!({
                        "seq": seq,
                        "status": if a.refused == 0 { "applied" } else { "partial" },
                        "restored": a.restored,
                        "refused": a.refused,
                    }))
                    .into_response()),
                    Err(e) => Err(status(StatusCode::CONFLICT, e)),
                };
            }
            Some(notice) = waiting_rx.recv() => {
                if waiting.is_none() && notice.contains("waiting for approval") {
                    waiting = Some(notice);
                    // Decided by someone else, later: answer now.
                    break;
                }
            }
            () = &mut deadline => break,
        }
    }
    let request = waiting
        .as_deref()
        .and_then(|n| n.split("request ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_owned);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "seq": seq,
            "status": "waiting",
            "approval": request,
            "notice": waiting,
        })),
    )
        .into_response())
}
