//! `weir mcp --config weir.toml`: the MCP server over stdio, as the identity whose Weir token
//! or ID token is in `WEIR_TOKEN`. It runs the gateway's pipeline in this process (no
//! listener): tool calls reach the targets through the same policy, masking, approvals and
//! audit trail as `weir serve`, in the same store.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use weir_config::Config;

use crate::serve::{install_crypto, load_policy, open_audit, open_store, runtime};

/// The environment variable that holds the caller's token.
pub const TOKEN_ENV: &str = "WEIR_TOKEN";

pub fn run(path: &Path) -> anyhow::Result<()> {
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            anyhow!("{TOKEN_ENV} is not set: weir mcp speaks as the identity whose Weir token or ID token it holds (weir token create …)")
        })?;
    let config = Config::load(path)?;
    install_crypto();
    let store = open_store(&config)?;
    let policy = load_policy(&config)?;
    let audit = open_audit(&config)?;
    let sink: Arc<dyn weir_proxy::audit::AuditSink> = audit.clone();
    let result = runtime()?.block_on(async move {
        let shared = Arc::new(
            weir_proxy::Shared::new(config, store, policy, sink, weir_store::Clock::from_env())
                .context("starting the gateway's pipeline")?,
        );
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let caller = weir_proxy::mcp::Caller::verify(&shared, &token, local)
            .await
            .map_err(|e| anyhow!("{TOKEN_ENV} is not a valid token: {e}"))?;
        tracing::info!(identity = %caller.identity.name, kind = caller.identity.kind.as_str(), "serving MCP on stdio");
        weir_proxy::mcp::serve_stdio(shared, caller)
            .await
            .map_err(|e| anyhow!(e))
    });
    audit.close();
    result
}
