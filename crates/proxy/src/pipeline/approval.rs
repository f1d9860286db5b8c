//! The approval stage: what an approval covers, asking, waiting (until an approver decides,
//! the deadline passes, or the adapter says the client cancelled or left), withdrawing, and
//! what each outcome comes to. Protocol-neutral: the adapter shows the wait to its client
//! (a NOTICE, a progress notification) and turns a [`Refusal`] into its own error.

use std::future::Future;
use std::sync::Arc;

use tracing::{info, warn};
use weir_analyze::approval::{self as scope_of, ApprovalScope};
use weir_analyze::StatementFacts;
use weir_audit::Event;
use weir_policy::Verdict;

use super::{Item, Refusal, SessionInfo};
use crate::approvals::Outcome;

/// What asking for approval came to.
pub(crate) enum Ask {
    /// Run it: an earlier approval of the same statement covers it, or policy approved it.
    Go,
    /// Recorded as a request; the client waits for its outcome.
    Wait(Waiting),
    /// Refused: it cannot be asked (the store or the trail failed), or nobody waits
    /// (`[approvals] timeout = "0s"`).
    Refuse(Refusal),
}

/// A request that waits for an approver.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    /// The approval request's id.
    pub id: String,
    /// The rule and why (a bounded write's count), for the client.
    pub subject: String,
    pub deadline_ms: u64,
}

impl Waiting {
    /// What the client is told while it waits.
    pub fn notice(&self) -> String {
        format!(
            "weir: waiting for approval of request {} ({})",
            self.id, self.subject
        )
    }

    /// How an approver decides it.
    pub fn hint(&self) -> String {
        format!(
            "an approver runs: weir approve {} --config <weir.toml> --as <name>",
            self.id
        )
    }
}

/// What an approval of the request is for: the statements as an approver sees them (data
/// constants as `$n`, code, names, paths and settings as written; full text for `[audit]
/// full_text_targets`), the repeat key (`weir_analyze::approval`: equal only for texts that
/// differ in data constants; a key that never repeats when a parameter decides what runs),
/// and how far the approval reaches, in words.
pub(crate) fn subject(s: &SessionInfo, items: &[Item]) -> (String, String, &'static str) {
    let scopes: Vec<Option<ApprovalScope>> = items
        .iter()
        .map(|i| scope_of::scope(&i.decision.analysis.sql))
        .collect();
    let sql: Vec<&str> = items
        .iter()
        .zip(&scopes)
        .map(|(i, scope)| match scope {
            _ if s.full_text => &*i.decision.analysis.sql,
            Some(scope) => scope.shown.as_str(),
            None => &*i.decision.analysis.normalized,
        })
        .collect();
    let all: Option<Vec<&ApprovalScope>> = scopes.iter().map(Option::as_ref).collect();
    let (key, reach) = all
        .and_then(|all| scope_of::combined(&all))
        // Never the same twice: each run asks.
        .unwrap_or_else(|| {
            (
                format!("once-{}", crate::approvals::new_id()),
                scope_of::ONE_RUN,
            )
        });
    (sql.join("; "), key, reach)
}

fn event(s: &SessionInfo, id: &str, decision: &str) -> Event {
    Event::Approval {
        id: id.to_owned(),
        decision: decision.to_owned(),
        identity: s.identity.name.clone(),
        target: s.target_name.to_string(),
        session: Some(s.session),
        by: None,
        rule: None,
        note: None,
        sql: None,
        fingerprint: None,
        rode_on: None,
    }
}

/// A request that policy says needs approval: runs on an earlier approval of the same
/// statement (within `[approvals] auto_repeat_window`), or on policy's own approval
/// (`auto_approve`), or is recorded for approvers to decide. `rows` is a bounded write's
/// exact count, which an earlier approval must cover.
pub(crate) async fn ask(
    s: &SessionInfo,
    request: u64,
    items: &[Item],
    rule: &str,
    reason: &str,
    rows: Option<u64>,
) -> Ask {
    let shared = &s.shared;
    let approvals = &shared.approvals;
    let cfg = &shared.config.approvals;
    let refuse = |what: &str, e: &dyn std::fmt::Display| {
        warn!(cause = %e, "{what}");
        Ask::Refuse(Refusal::unavailable(format!(
            "weir: the statement needs approval ({rule}), and {what}: {e}"
        )))
    };
    let (sql, fingerprint, reach) = subject(s, items);
    let reason = &format!("{reason}; an approval covers {reach}");
    let now = approvals.clock().now_ms();
    let window = u64::try_from(cfg.auto_repeat_window.as_millis()).unwrap_or(u64::MAX);

    // 1. The same statement approved for the same identity and target, recently.
    if window > 0 {
        let (who, target, fp) = (
            s.identity.name.clone(),
            s.target_name.to_string(),
            fingerprint.clone(),
        );
        let since = now.saturating_sub(window);
        match approvals
            .with_store(move |st| st.recent_approval(&who, &target, &fp, since, rows.unwrap_or(0)))
            .await
        {
            Ok(Some(earlier)) => {
                let mut e = event(s, &earlier.id, "repeated");
                if let Event::Approval {
                    rode_on,
                    rule: r,
                    fingerprint: f,
                    ..
                } = &mut e
                {
                    *rode_on = Some(earlier.id.clone());
                    *r = Some(rule.to_owned());
                    *f = Some(fingerprint.clone());
                }
                return match shared.audit.append(e).wait().await {
                    Ok(()) => Ask::Go,
                    Err(e) => refuse("it could not be recorded", &e),
                };
            }
            Ok(None) => {}
            Err(e) => return refuse("the approval store cannot be read", &e),
        }
    }

    // 2. Policy approving on its own.
    let facts = items
        .iter()
        .find(|i| matches!(i.decision.overall(), Verdict::RequireApproval { .. }))
        .and_then(|i| {
            i.decision
                .verdicts
                .iter()
                .position(|v| matches!(v, Verdict::RequireApproval { .. }))
                .and_then(|k| i.decision.analysis.statements.get(k))
        });
    let auto = facts.is_some_and(|facts| {
        shared.policy.may_approve(
            &s.policy,
            &weir_policy::ApprovalFacts {
                facts,
                sensitivity: &[],
                requester: &s.identity.name,
                requester_kind: s.identity.kind.as_str(),
                rule,
                self_approval: true,
            },
            true,
        )
    });

    // 3. A request: recorded in the trail before anyone can see it.
    let id = crate::approvals::new_id();
    let timeout = u64::try_from(cfg.timeout.as_millis()).unwrap_or(u64::MAX);
    // `timeout = "0s"`, or a channel that cannot wait (MCP): nobody waits. The request stays
    // open for approvers (the timeout, else the auto-repeat window), and the client's next
    // run of the statement rides on its approval.
    let waits = timeout > 0 && !auto && s.channel.waits_for_approval();
    let deadline_ms = now.saturating_add(if timeout > 0 { timeout } else { window });
    let mut requested = event(s, &id, if auto { "auto_approved" } else { "requested" });
    if let Event::Approval {
        rule: r,
        note,
        sql: q,
        fingerprint: f,
        by,
        ..
    } = &mut requested
    {
        *r = Some(rule.to_owned());
        *note = Some(reason.to_owned());
        *q = Some(sql.clone());
        *f = Some(fingerprint.clone());
        if auto {
            *by = Some("policy".into());
        }
    }
    if let Err(e) = shared.audit.append(requested).wait().await {
        return refuse("the request could not be recorded", &e);
    }
    let new = weir_store::NewApproval {
        id: id.clone(),
        kind: weir_store::ApprovalKind::Statement,
        grant_ms: None,
        created_ms: now,
        deadline_ms,
        identity: s.identity.name.clone(),
        identity_kind: s.identity.kind.as_str().to_owned(),
        target: s.target_name.to_string(),
        session: s.session,
        fingerprint,
        statement: sql,
        rows,
        facts: {
            let all: Vec<StatementFacts> = items
                .iter()
                .flat_map(|i| i.decision.analysis.statements.iter().cloned())
                .collect();
            weir_audit::facts_json(&all).to_string()
        },
        rule: rule.to_owned(),
        reason: reason.to_owned(),
    };
    match approvals.create(new).await {
        Err(e) => return refuse("the approval request could not be stored", &e),
        Ok(stored) if !auto && shared.notifier.enabled() => {
            let notifier = Arc::clone(&shared.notifier);
            let store = Arc::clone(approvals.store());
            tokio::spawn(async move { notifier.announce(stored, store).await });
        }
        Ok(_) => {}
    }
    if auto {
        return match approvals
            .settle(&id, weir_store::ApprovalStatus::Approved, "policy")
            .await
        {
            Ok(Some((true, _))) => Ask::Go,
            Ok(_) => refuse("the automatic approval did not take", &id),
            Err(e) => refuse("the automatic approval could not be stored", &e),
        };
    }
    if !waits {
        let again = humantime::format_duration(cfg.auto_repeat_window);
        let refusal = if s.channel.waits_for_approval() {
            Refusal::denied(
                rule,
                &format!(
                    "approval required: {reason} (request {id}: once it is approved, run the statement again within {again})"
                ),
            )
        } else {
            // Not a denial: the request is open, and the same statement runs once approved.
            Refusal::approval_required(
                rule,
                format!(
                    "weir: approval required by {rule}: {reason}; request {id} waits for an approver (weir approve {id}); once it is approved, send the same statement again within {again}"
                ),
            )
        };
        return Ask::Refuse(refusal.with_request(&id));
    }
    info!(approval = %id, request, rule, "statement waits for approval");
    Ask::Wait(Waiting {
        id,
        subject: format!("{rule}: {reason}"),
        deadline_ms,
    })
}

/// Waits for the request's outcome: an approver's decision or the deadline, unless
/// `interrupt` (the client cancelled or went away, as the adapter sees it) comes first,
/// which withdraws the request. Returns the outcome, and what the interrupt said if it
/// came.
pub(crate) async fn wait<T>(
    s: &SessionInfo,
    waiting: &Waiting,
    interrupt: impl Future<Output = T>,
) -> (Outcome, Option<T>) {
    let approvals = &s.shared.approvals;
    let rx = approvals.watch(&waiting.id, waiting.deadline_ms);
    tokio::select! {
        r = rx => (r.unwrap_or_else(|_| Outcome::Failed("the approval watcher stopped".into())), None),
        why = interrupt => {
            approvals.forget(&waiting.id);
            (withdraw(s, &waiting.id).await, Some(why))
        }
    }
}

/// Withdraws a waiting request (the client cancelled or left). If a decision won the race,
/// the client still asked to stop: the statement does not run either way.
async fn withdraw(s: &SessionInfo, id: &str) -> Outcome {
    match s
        .shared
        .approvals
        .settle(id, weir_store::ApprovalStatus::Cancelled, &s.identity.name)
        .await
    {
        Ok(_) => Outcome::Cancelled,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// What an outcome comes to, on record: `Ok` runs the request, a refusal replaces it.
/// Denials were recorded by whoever denied; everything else is recorded here, before the
/// statement runs or its refusal goes out.
pub(crate) async fn conclude(
    s: &SessionInfo,
    waiting: &Waiting,
    outcome: &Outcome,
) -> Result<(), Refusal> {
    let id = &waiting.id;
    let mut record = Some(event(s, id, "released"));
    let counted = match outcome {
        Outcome::Approved { .. } => "approved",
        Outcome::Denied { .. } => "denied",
        Outcome::Expired => "timed_out",
        Outcome::Cancelled => "withdrawn",
        Outcome::Failed(_) => "failed",
    };
    crate::metrics::get()
        .approvals_decided
        .get_or_create(&crate::metrics::OutcomeLabels { outcome: counted })
        .inc();
    let verdict = match outcome {
        Outcome::Approved { by } => {
            if let Some(Event::Approval { by: b, .. }) = &mut record {
                *b = Some(by.clone());
            }
            Ok(())
        }
        Outcome::Denied { by, note } => {
            record = None;
            Err(Refusal::denied_by_approver(format!(
                "weir: approval request {id} was denied by {by}: {}",
                note.as_deref().unwrap_or("no reason given")
            ))
            .with_request(id))
        }
        Outcome::Expired => {
            record = Some(event(s, id, "expired"));
            Err(Refusal::denied_by_approver(format!(
                "weir: approval request {id} timed out: nobody approved it within {}",
                humantime::format_duration(s.shared.config.approvals.timeout)
            ))
            .with_request(id))
        }
        Outcome::Cancelled => {
            record = Some(event(s, id, "cancelled"));
            Err(Refusal::cancelled(id))
        }
        Outcome::Failed(e) => {
            record = None;
            Err(Refusal::unavailable(format!(
                "weir: approval request {id} cannot be followed, so the statement does not run: {e}"
            ))
            .with_request(id))
        }
    };
    if let Some(event) = record {
        if let Err(e) = s.shared.audit.append(event).wait().await {
            return Err(Refusal::unrecorded(&e));
        }
    }
    if verdict.is_ok() {
        info!(approval = %id, "approved; forwarding");
    }
    verdict
}
