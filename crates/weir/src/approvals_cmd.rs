//! `weir approvals | approve | deny`: deciding the requests that waiting statements made.
//!
//! The CLI decides through the store the gateway watches, so a decision here releases (or
//! refuses) the statement within the gateway's poll interval, on whichever gateway holds the
//! client. Who may approve is policy (Cedar action `approve`, principal = the approver named
//! by `--as`); the decision is recorded in the audit trail before it takes effect.

use anyhow::{bail, Context};
use weir_audit::Event;
use weir_config::Config;
use weir_store::{Approval, ApprovalStatus, Clock};

/// Pending requests, one per line, id first.
pub fn list(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    let now = Clock::from_env().now_ms();
    for a in store
        .pending_approvals()?
        .into_iter()
        .filter(|a| a.deadline_ms > now)
    {
        let waited = now.saturating_sub(a.created_ms) / 1000;
        let left = a.deadline_ms.saturating_sub(now) / 1000;
        println!(
            "{}  {}  {}  {}  waiting {}s, {}s left  {}",
            a.id,
            a.identity,
            a.target,
            a.rule,
            waited,
            left,
            one_line(&a.statement, 200)
        );
    }
    Ok(())
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// `weir approve ID --as NAME` (`approve = true`) or `weir deny ID --as NAME --reason TEXT`.
pub fn decide(
    path: &std::path::Path,
    id: &str,
    who: Option<&str>,
    reason: Option<&str>,
    approve: bool,
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    let clock = Clock::from_env();
    let request = store
        .approval(id)?
        .with_context(|| format!("no approval request {id}"))?;
    ensure_pending(&request, clock.now_ms())?;
    let by = match who {
        Some(name) => name.to_owned(),
        None if approve => {
            bail!("--as NAME is required: whether NAME may approve {id} is decided by policy")
        }
        // Refusing is always allowed (it only stops a statement); it is recorded under the
        // operator's login name.
        None => std::env::var("USER").unwrap_or_else(|_| "cli".into()),
    };
    if approve {
        may_approve(&config, &request, &by)?;
    } else if reason.is_none_or(|r| r.trim().is_empty()) {
        bail!("--reason is required to deny: the waiting client is told why");
    }
    let decision = if approve { "approved" } else { "denied" };
    crate::audit_cmd::record(
        &config,
        Event::Approval {
            id: request.id.clone(),
            decision: decision.into(),
            identity: request.identity.clone(),
            target: request.target.clone(),
            session: Some(request.session),
            by: Some(by.clone()),
            rule: Some(request.rule.clone()),
            note: reason.map(str::to_owned),
            sql: None,
            fingerprint: None,
            rode_on: None,
        },
    )?;
    let to = if approve {
        ApprovalStatus::Approved
    } else {
        ApprovalStatus::Denied
    };
    match store.decide_approval(id, to, &by, reason, clock.now_ms())? {
        Some((true, _)) => {
            println!("{decision} {id}");
            Ok(())
        }
        Some((false, now)) => bail!(
            "request {id} was {} before this decision took effect{}",
            now.status.as_str(),
            now.decided_by
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default()
        ),
        None => bail!("no approval request {id}"),
    }
}

fn ensure_pending(a: &Approval, now_ms: u64) -> anyhow::Result<()> {
    match a.status {
        ApprovalStatus::Pending if now_ms >= a.deadline_ms => {
            bail!("request {} timed out: its client no longer waits", a.id)
        }
        ApprovalStatus::Pending => Ok(()),
        ApprovalStatus::Cancelled => {
            bail!("request {} was cancelled: its client stopped waiting", a.id)
        }
        other => bail!(
            "request {} is already {}{}",
            a.id,
            other.as_str(),
            a.decided_by
                .as_ref()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default()
        ),
    }
}

/// Policy's answer to "may `by` approve `request`?".
fn may_approve(config: &Config, request: &Approval, by: &str) -> anyhow::Result<()> {
    let approver = crate::policy_cmd::identity(config, by)?;
    let target = config
        .target(&request.target)
        .with_context(|| {
            format!(
                "request {}: no target named {:?}",
                request.id, request.target
            )
        })?
        .policy_info();
    let policy = crate::serve::load_policy(config)?;
    let session = policy.session(&approver, &target)?;
    // The statement as recorded (normalized statements parse: constants are `$n`).
    let analysis = weir_analyze::Analyzer::new().analyze(request.statement.as_bytes());
    let unknown = weir_analyze::StatementFacts::new(weir_analyze::StatementKind::Unknown);
    let facts = analysis
        .as_ref()
        .ok()
        .and_then(|a| a.statements.first().cloned())
        .unwrap_or(unknown);
    let allowed = policy.may_approve(
        &session,
        &weir_policy::ApprovalFacts {
            facts: &facts,
            sensitivity: &[],
            requester: &request.identity,
            requester_kind: &request.identity_kind,
            rule: &request.rule,
            self_approval: approver.name == request.identity,
        },
        false,
    );
    if !allowed {
        if approver.name == request.identity {
            bail!(
                "{by} may not approve {}: it is {by}'s own request, and no policy lets {by} approve their own",
                request.id
            );
        }
        bail!(
            "{by} may not approve {}: no policy permits it (the built-in rule lets human members of [approvals] approvers approve others' requests)",
            request.id
        );
    }
    Ok(())
}
