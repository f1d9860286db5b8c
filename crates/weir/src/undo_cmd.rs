//! `weir undo SEQ`: the SQL that reverses an UPDATE or DELETE from its before-image
//! (`weir_proxy::undo`), printed masked for the identity named by `--as`, or applied through
//! the gateway's pipeline as that identity (`--apply`): policy action `undo`, approval as
//! policy says, one transaction, never over a row that changed since.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use weir_config::Config;

use crate::serve::{install_crypto, load_policy, open_audit, open_store, runtime};

pub fn run(path: &Path, seq: u64, who: Option<&str>, apply: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    install_crypto();
    let store = open_store(&config)?;
    let (_, trail) = crate::audit_cmd::open(path)?;
    let sealer = weir_proxy::undo::Sealer::open(&config).map_err(|e| anyhow!(e))?;
    let prepared = weir_proxy::undo::prepare(trail.as_ref(), store.as_ref(), &sealer, seq)
        .map_err(|e| anyhow!("cannot undo: {e}"))?;
    let identity = who
        .map(|name| crate::policy_cmd::identity(&config, name))
        .transpose()?;
    let policy = load_policy(&config)?;
    let target = config.target(&prepared.target).with_context(|| {
        format!(
            "cannot undo: target {:?} is not in {}",
            prepared.target,
            path.display()
        )
    })?;
    let session = identity
        .as_ref()
        .map(|who| policy.session(who, &target.policy_info()))
        .transpose()?;
    let table = prepared.image.table.clone();
    let labels = prepared.image.sensitive.clone();
    let shown = |column: &str| -> bool {
        match (&session, labels.get(column)) {
            (Some(s), Some(label)) => policy.may_unmask(s, &format!("{table}.{column}"), label),
            _ => false,
        }
    };
    if !apply {
        print!("{}", prepared.script(&shown));
        return Ok(());
    }
    let Some(identity) = identity else {
        bail!("--apply needs --as NAME: the undo runs as that identity, through policy");
    };
    let audit = open_audit(&config)?;
    let sink: Arc<dyn weir_proxy::audit::AuditSink> = audit.clone();
    let result = runtime()?.block_on(async move {
        let shared = Arc::new(
            weir_proxy::Shared::new(config, store, policy, sink, weir_store::Clock::from_env())
                .context("starting the gateway's pipeline")?,
        );
        let approvals = Arc::clone(&shared.approvals);
        let watcher = tokio::spawn(approvals.run());
        let applied = weir_proxy::undo::apply(&shared, &identity, &prepared, |n| {
            eprintln!("{n}");
        })
        .await;
        watcher.abort();
        applied.map_err(|e| anyhow!("cannot undo: {e}"))
    });
    audit.close();
    let applied = result?;
    println!(
        "restored {} row(s), refused {} (changed since the undone statement)",
        applied.restored, applied.refused
    );
    if applied.refused > 0 {
        bail!(
            "{} row(s) were not restored: they changed since event {seq}, and an undo never overwrites a newer value",
            applied.refused
        );
    }
    Ok(())
}
