//! `weir serve`: load the config, open the store, bind, run until told to stop.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use weir_config::{Config, StoreUrl};
use weir_proxy::audit::DurableSink;
use weir_proxy::Gateway;
use weir_store::{SqliteStore, Store};

pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match &config.gateway.store {
        StoreUrl::Sqlite(path) => {
            Ok(Arc::new(SqliteStore::open(path).with_context(|| {
                format!("opening store {}", path.display())
            })?))
        }
        StoreUrl::Postgres(url) => Ok(Arc::new(weir_store::pg::PgStore::over(
            weir_store::pg::Pg::shared(url)
                .with_context(|| format!("opening store {}", weir_store::pg::redact(url)))?,
        ))),
    }
}

/// The policy of `[policy]`: built-in defaults unless turned off, plus the operator's files.
pub fn load_policy(config: &Config) -> anyhow::Result<weir_policy::Policy> {
    let files = weir_policy::cedar::expand(&config.dir(), &config.policy.files)?;
    Ok(weir_policy::Policy::load_with_limits(
        config.policy.defaults,
        &config.policy.admin_group,
        &config.approvals.approvers,
        weir_policy::Limits {
            bulk_write_rows: config.policy.bulk_write_rows,
            agent_write_rows: config.policy.agent_write_rows,
            auditor_group: config.policy.auditor_group.clone(),
        },
        &files,
    )?
    .with_trusted_functions(&config.policy.trusted_functions))
}

pub fn install_crypto() {
    // One crypto backend in the tree (aws-lc-rs); installing it explicitly means no code path
    // depends on rustls guessing. An error only means it was installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The main runtime: accepting, signals, admin work. Sessions run on the gateway's own
/// worker threads (`[gateway] workers`).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The durable audit trail of `[gateway] store`, signed with `[audit] signing_key` (made on
/// first start).
pub fn open_audit(config: &Config) -> anyhow::Result<Arc<DurableSink>> {
    let signer = weir_store::audit::load_or_create_signing_key(&config.audit.signing_key)
        .with_context(|| format!("[audit] signing_key {}", config.audit.signing_key.display()))?;
    tracing::info!(public_key = %signer.public_key().to_hex(), "audit checkpoints are signed with this key");
    let path = match &config.gateway.store {
        StoreUrl::Sqlite(path) => path,
        StoreUrl::Postgres(url) => {
            // A shared store: this key's own chain, a transaction per batch on the store
            // (durable when PostgreSQL's commit returns).
            let shown = weir_store::pg::redact(url);
            let pg = weir_store::pg::Pg::shared(url)
                .with_context(|| format!("opening the audit trail in {shown}"))?;
            let trail = weir_store::pg::PgTrail::writer(
                pg,
                &signer.public_key(),
                weir_store::Clock::system().now_ms(),
            )
            .with_context(|| format!("registering this gateway's audit chain in {shown}"))?;
            return Ok(Arc::new(DurableSink::start(trail, signer)?));
        }
    };
    let mut index = weir_store::audit::AuditStore::open(path)
        .with_context(|| format!("opening the audit trail in {}", path.display()))?;
    // Batches become durable in the journal beside the store; the tables are filled behind
    // it. What an earlier run made durable but did not index (a crash) is indexed first.
    let dir = weir_store::journal::dir_for(path);
    if let Err(e) = index.index_journal(&mut weir_store::journal::Reader::new(&dir)) {
        tracing::error!(cause = %e, "the audit trail's journal could not be indexed; events stay durable in it");
    }
    let head = weir_store::audit::AuditTrail::head(&index)?;
    let journal = weir_store::journal::Journal::open(&dir, head)
        .with_context(|| format!("opening the audit trail's journal {}", dir.display()))?;
    Ok(Arc::new(DurableSink::start_journaled(
        journal, index, dir, signer,
    )?))
}

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    install_crypto();
    let store = open_store(&config)?;
    let policy = load_policy(&config)?;
    let audit = open_audit(&config)?;
    let sink = Arc::clone(&audit);
    let result = runtime()?.block_on(async move {
        let stop = shutdown_signal();
        let gateway = Gateway::bind(config, store, policy, sink).await?;
        let addr = gateway.local_addr()?;
        tracing::info!(%addr, "weir is listening for PostgreSQL clients");
        if let Some(addr) = gateway.mysql_addr() {
            tracing::info!(%addr, "weir is listening for MySQL clients");
        }
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutting down: no new connections, draining sessions");
            let _ = tx.send(true);
        });
        gateway.run(rx).await;
        Ok::<(), anyhow::Error>(())
    });
    // Every session has ended: what they recorded is written before the process exits.
    audit.close();
    tracing::info!("stopped");
    result
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (inside a
/// runtime), not when the future is first polled: call it before the listener is bound, so
/// a SIGTERM that arrives as soon as clients can connect still drains instead of killing.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
