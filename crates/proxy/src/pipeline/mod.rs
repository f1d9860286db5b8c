//! The request pipeline's protocol-neutral stages, for one session: the catalog-backed
//! guards that decide a request again ([`guards`]), and admission — the write-ahead record
//! of every statement and of what its writes make sensitive ([`admit`]).
//!
//! It knows no wire format: a stage answers with verdicts or a [`Refusal`], and each
//! protocol adapter (`crate::pg` today; MySQL and MCP next) turns those into its own error.
//!
//! **Invariant (write-ahead):** nothing of a request is forwarded before [`admit`] returns
//! `Ok`: its statements' events are durable, and so are the derived sensitivity tags its
//! writes make.

use std::sync::Arc;

use tracing::warn;
use weir_audit::Event;
use weir_config::Target;
use weir_policy::{Decision, Identity, PolicySession, Verdict};

use crate::catalog::CatalogCache;
use crate::Shared;

pub(crate) mod decide;
pub(crate) mod guards;

pub(crate) use decide::Decider;

/// What every stage knows of one session, whatever its protocol.
pub(crate) struct SessionInfo {
    pub session: u64,
    /// The target's masking catalog; `None` when results are not masked (`[masking]
    /// enabled = false`).
    pub mask: Option<Arc<CatalogCache>>,
    pub target: Target,
    /// Shared copies of the names every statement event carries.
    pub identity_name: Arc<str>,
    pub target_name: Arc<str>,
    pub identity: Identity,
    pub policy: PolicySession,
    /// The audit trail keeps this target's statements as sent (`[audit] full_text_targets`),
    /// not normalized.
    pub full_text: bool,
    pub shared: Arc<Shared>,
}

/// A statement that a request carries, with its decision.
pub(crate) struct Item {
    /// How it arrived, for the trail (`query`, `parse`, `execute`, `function_call`).
    pub via: &'static str,
    pub decision: Arc<Decision>,
    /// Columns its writes make sensitive (copies of sensitive values), recorded before it
    /// is forwarded.
    pub derived: Vec<weir_mask::DerivedTag>,
}

impl Item {
    pub fn new(via: &'static str, decision: Arc<Decision>) -> Item {
        Item {
            via,
            decision,
            derived: Vec::new(),
        }
    }
}

/// Why a request that policy let through does not run. The adapter reports it as its own
/// error (PostgreSQL: SQLSTATE 58000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its events could not be recorded in the audit trail.
    Unrecorded(String),
    /// The columns it copies sensitive values into could not be marked sensitive.
    Untagged(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unrecorded(e) => write!(
                f,
                "weir: the statement was not run because it could not be recorded in the audit trail ({e})"
            ),
            Refusal::Untagged(e) => write!(
                f,
                "weir: the statement was not run because the columns it copies sensitive values into could not be marked sensitive ({e})"
            ),
        }
    }
}

/// The verdict of a request: the most severe of its statements' (deny beats approval, which
/// beats a bound, which beats allow).
pub(crate) fn overall(items: &[Item]) -> Verdict {
    items
        .iter()
        .map(|i| i.decision.overall())
        .max_by_key(|v| v.severity())
        .cloned()
        .unwrap_or(Verdict::Allow)
}

/// Admission, write-ahead: records every statement's event (and, unless the request is
/// denied, what its writes make sensitive) and waits until they are durable; then stores
/// the derived tags. On `Err` nothing of the request may run.
pub(crate) async fn admit(
    session: &SessionInfo,
    request: u64,
    items: &[Item],
    verdict: &Verdict,
) -> Result<(), Refusal> {
    let audit = &session.shared.audit;
    let mut acks = Vec::with_capacity(items.len() + 1);
    for item in items {
        let v = item.decision.overall();
        acks.push(audit.append(Event::Statement {
            session: session.session,
            request,
            identity: Arc::clone(&session.identity_name),
            target: Arc::clone(&session.target_name),
            via: item.via,
            sql: Arc::clone(if session.full_text {
                &item.decision.analysis.sql
            } else {
                &item.decision.analysis.normalized
            }),
            fingerprint: item.decision.analysis.fingerprint,
            statements: Arc::clone(&item.decision.analysis.statements),
            decision: v.label(),
            rule: v.rule().map(str::to_owned),
        }));
    }
    // What copies of sensitive values the request's writes make: on record with the
    // statements, and in the store (which every catalog reads) before anything runs.
    let derived: Vec<&weir_mask::DerivedTag> = if matches!(verdict, Verdict::Deny { .. }) {
        Vec::new()
    } else {
        items.iter().flat_map(|i| &i.derived).collect()
    };
    if !derived.is_empty() {
        acks.push(audit.append(Event::SensitivityDerived {
            session: session.session,
            request,
            identity: Arc::clone(&session.identity_name),
            target: Arc::clone(&session.target_name),
            tags: derived.iter().map(|t| t.to_string()).collect(),
        }));
    }
    let mut failure = None;
    for ack in acks {
        if let Err(e) = ack.wait().await {
            failure = Some(e);
        }
    }
    if let Some(e) = failure {
        warn!(cause = %e, "audit write failed; request refused");
        return Err(Refusal::Unrecorded(e.to_string()));
    }
    if !derived.is_empty() {
        if let Err(e) = guards::record_derived(session, items).await {
            warn!(cause = %e, "recording derived sensitivity failed; request refused");
            return Err(Refusal::Untagged(e.to_string()));
        }
    }
    Ok(())
}
