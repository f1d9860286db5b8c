//! `weir approvals | approve | deny`: deciding the requests that waiting statements made.
//!
//! The CLI decides through the store the gateway watches, so a decision here releases (or
//! refuses) the statement within the gateway's poll interval, on whichever gateway holds the
//! client. Who may approve is policy (Cedar action `approve`, principal = the approver named
//! by `--as`); the decision is recorded in the audit trail before it takes effect.

use std::sync::Arc;

use weir_config::Config;
use weir_proxy::approvals::{Approver, Decider};
use weir_store::Clock;

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
            "{}  {}  {}  {}: {}  waiting {}s, {}s left  {}",
            a.id,
            a.identity,
            a.target,
            a.rule,
            a.reason,
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

/// `weir approve ID --as NAME` (`approve = true`) or `weir deny ID [--as NAME] --reason TEXT`.
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
    let by = match who {
        Some(name) => Approver::Identity(crate::policy_cmd::identity(&config, name)?),
        None => Approver::Operator(std::env::var("USER").unwrap_or_else(|_| "cli".into())),
    };
    let policy = crate::serve::load_policy(&config)?;
    let audit = crate::serve::open_audit(&config)?;
    let decider = Decider {
        config: &config,
        policy: &policy,
        store: store.as_ref(),
        audit: audit.as_ref(),
        clock: &clock,
    };
    let result = decider.decide(id, &by, approve, reason, "cli");
    audit.close();
    let a = result?;
    println!("{} {}", a.status.as_str(), a.id);
    // The Slack message that announced it shows the outcome.
    crate::serve::runtime()?
        .block_on(weir_proxy::notify::Notifier::new(&config).resolved(a, store));
    Ok(())
}

/// `weir request TARGET --for 2h --reason TEXT --as NAME`: asks for just-in-time access.
pub fn request(
    path: &std::path::Path,
    target: &str,
    duration: &str,
    reason: &str,
    who: &str,
) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    let config = Config::load(path)?;
    if config.target(target).is_none() {
        bail!("no target named {target:?} in {}", path.display());
    }
    let grant = humantime::parse_duration(duration)
        .with_context(|| format!("--for {duration:?}: expected e.g. 2h or 30m"))?;
    if grant.is_zero() {
        bail!("--for must be longer than zero");
    }
    if reason.trim().is_empty() {
        bail!("--reason is required: approvers decide on it");
    }
    let identity = crate::policy_cmd::identity(&config, who)?;
    let store = crate::serve::open_store(&config)?;
    let now = Clock::from_env().now_ms();
    let (event, new) = weir_proxy::approvals::access_request(&identity, target, grant, reason, now);
    let id = new.id.clone();
    crate::audit_cmd::record(&config, event)?;
    let stored = store.create_approval(&new)?;
    let notifier = weir_proxy::notify::Notifier::new(&config);
    if notifier.enabled() {
        // Approvers hear of it where they hear of waiting statements.
        crate::serve::runtime()?.block_on(notifier.announce(stored, Arc::clone(&store)));
    }
    println!("requested access to {target} for {} as {id}; an approver runs: weir approve {id} --as NAME", humantime::format_duration(grant));
    println!("{id}");
    Ok(())
}

/// `weir grants`: active grants, one per line, id first.
pub fn grants(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    let now = Clock::from_env().now_ms();
    for g in store.active_grants(now)? {
        let left = std::time::Duration::from_secs(g.expires_ms.saturating_sub(now) / 1000);
        println!(
            "{}  {}  {}  {} left  approved by {}  {}",
            g.id,
            g.identity,
            g.target,
            humantime::format_duration(left),
            g.approved_by,
            one_line(&g.reason, 200)
        );
    }
    Ok(())
}

/// `weir revoke GRANT`: ends a grant now; the gateway closes the sessions relying on it.
pub fn revoke(path: &std::path::Path, id: &str) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    let clock = Clock::from_env();
    let grant = store.grant(id)?.with_context(|| format!("no grant {id}"))?;
    if !grant.is_active(clock.now_ms()) {
        bail!("grant {id} has already ended");
    }
    let by = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    crate::audit_cmd::record(
        &config,
        weir_audit::Event::Grant {
            id: id.to_owned(),
            decision: "revoked".into(),
            identity: grant.identity.clone(),
            target: grant.target.clone(),
            by: Some(by.clone()),
            expires_ms: Some(grant.expires_ms),
            session: None,
        },
    )?;
    if !store.revoke_grant(id, &by, clock.now_ms())? {
        bail!("grant {id} ended before it could be revoked");
    }
    println!("revoked {id} ({} on {})", grant.identity, grant.target);
    Ok(())
}
