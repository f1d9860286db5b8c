//! `weir approvals | approve | deny`: deciding the requests that waiting statements made.
//!
//! The CLI decides through the store the gateway watches, so a decision here releases (or
//! refuses) the statement within the gateway's poll interval, on whichever gateway holds the
//! client. Who may approve is policy (Cedar action `approve`, principal = the approver named
//! by `--as`); the decision is recorded in the audit trail before it takes effect.

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
    Ok(())
}
