//! `weir tags | tags clear`: the columns Weir marked sensitive because a write copied
//! sensitive values into them (derived sensitivity), and an operator's review of them.
//!
//! A derived tag masks its column in every session, for every identity, on every gateway
//! sharing the store (each reads the store's tags within a second), until it is cleared
//! here. Clearing is recorded in the audit trail before it takes effect.

use anyhow::{bail, Context};
use weir_config::Config;
use weir_store::Clock;

/// One line per tag in force (every tag with `all`), id first.
pub fn list(path: &std::path::Path, target: Option<&str>, all: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    for t in store.derived_tags(target, all)? {
        let cleared = match (&t.cleared_by, t.cleared_at_ms) {
            (Some(by), Some(_)) => format!("  cleared by {by}"),
            _ => String::new(),
        };
        println!(
            "{}  {}  {} <- {} ({}, {})  by {}{}  {}",
            t.id,
            t.tag.target,
            t.tag.column,
            t.tag.source,
            t.tag.label,
            t.tag.strategy,
            t.tag.identity,
            cleared,
            t.tag
                .statement
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

/// `weir tags clear ID`: the column is no longer masked for this tag's reason.
pub fn clear(path: &std::path::Path, id: &str, reason: Option<&str>) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    let n: i64 = id
        .parse()
        .with_context(|| format!("{id:?} is not a tag id (weir tags lists them)"))?;
    let Some(tag) = store
        .derived_tags(None, true)?
        .into_iter()
        .find(|t| t.id == n)
    else {
        bail!("no derived tag {id}");
    };
    if tag.cleared_at_ms.is_some() {
        bail!("derived tag {id} is already cleared");
    }
    let by = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let subject = match reason {
        Some(r) => format!("{id} {} {}: {r}", tag.tag.target, tag.tag.column),
        None => format!("{id} {} {}", tag.tag.target, tag.tag.column),
    };
    crate::audit_cmd::record(
        &config,
        weir_audit::Event::Admin {
            actor: by.clone(),
            action: "tag.clear".into(),
            subject,
        },
    )?;
    match store.clear_derived_tag(n, &by, Clock::from_env().now_ms())? {
        Some((true, _)) => {
            println!("cleared {id} ({} {})", tag.tag.target, tag.tag.column);
            Ok(())
        }
        _ => bail!("derived tag {id} was cleared by someone else meanwhile"),
    }
}
