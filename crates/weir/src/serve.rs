//! `weir serve`: load the config, open the store, bind, run until told to stop.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::watch;
use weir_config::{Config, StoreUrl};
use weir_proxy::audit::LogSink;
use weir_proxy::Gateway;
use weir_store::{SqliteStore, Store};

pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match &config.gateway.store {
        StoreUrl::Sqlite(path) => Ok(Arc::new(
            SqliteStore::open(path).with_context(|| format!("opening store {}", path.display()))?,
        )),
        StoreUrl::Postgres(_) => bail!(
            "{}: [gateway] store: the PostgreSQL store is not available in this version; use sqlite://FILE",
            config.path.display()
        ),
    }
}

/// The policy of `[policy]`: built-in defaults unless turned off, plus the operator's files.
pub fn load_policy(config: &Config) -> anyhow::Result<weir_policy::Policy> {
    let files = weir_policy::cedar::expand(&config.dir(), &config.policy.files)?;
    Ok(
        weir_policy::Policy::load(config.policy.defaults, &config.policy.admin_group, &files)?
            .with_trusted_functions(&config.policy.trusted_functions),
    )
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

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    install_crypto();
    let store = open_store(&config)?;
    let policy = load_policy(&config)?;
    runtime()?.block_on(async move {
        let gateway = Gateway::bind(config, store, policy, Arc::new(LogSink)).await?;
        let addr = gateway.local_addr()?;
        tracing::info!(%addr, "weir is listening for PostgreSQL clients");
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no new connections, draining sessions");
            let _ = tx.send(true);
        });
        gateway.run(rx).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
