//! The gateway's I/O layer: listeners, sessions, upstream connections, TLS, cancel requests.
//!
//! This is the only crate (with the `weir` binary) that touches sockets or an async runtime.
//! Everything it decides, it asks of the pure stage crates: `weir-wire` to frame and decode,
//! `weir-analyze` to analyze, `weir-policy` to decide, `weir-mask` to transform results,
//! `weir-audit` for the events it hands to an [`audit::AuditSink`].

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod baseline;
pub mod cancel;
mod catalog;
pub mod console;
pub mod failures;
pub mod grants;
pub mod http;
mod http_ops;
mod io;
pub mod live;
pub mod mcp;
mod metrics;
pub(crate) mod my;
pub mod notify;
pub mod oidc;
mod pg;
mod pipeline;
pub mod simulate;
pub mod stream;
pub mod tls;
mod track;
pub mod undo;
mod undo_http;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};
use weir_config::Config;
use weir_policy::Policy;
use weir_store::Store;

use crate::audit::AuditSink;
use crate::auth::Authenticator;
use crate::cancel::CancelRegistry;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("no [gateway] postgres_listen address is configured")]
    NoListener,
    #[error("[masking]: {0}")]
    Masking(String),
    #[error("store: {0}")]
    Store(String),
}

/// The library services every entry point calls: wire sessions, the HTTP API, MCP, and the
/// CLI's decisions. Read-only after start.
pub struct Services {
    pub config: Config,
    pub auth: Authenticator,
    pub analyzer: weir_analyze::Analyzer,
    pub policy: Policy,
    pub audit: Arc<dyn AuditSink>,
    /// Seals before-images (`crate::undo`); `None` where no target keeps them.
    pub sealer: Option<Arc<undo::Sealer>>,
    /// Keeps sealed before-images in the store, group-committed.
    pub image_writer: Option<undo::ImageWriter>,
    /// Approval requests with a waiting client, and the store they live in.
    pub approvals: Arc<approvals::Approvals>,
    /// Active access grants, and the sessions that rely on them.
    pub grants: Arc<grants::Grants>,
    /// Tells approvers about new requests (webhook, Slack).
    pub notifier: Arc<notify::Notifier>,
    /// What each identity usually does, for anomaly flags.
    pub baselines: Arc<baseline::Baselines>,
    /// The sessions open on this gateway, for operators.
    pub sessions: Arc<live::LiveSessions>,
    /// The operators signed in to the web console.
    pub console: console::Logins,
}

impl Services {
    /// Whether `who` may do `op` concerning `target` (a configured target's name); any
    /// policy failure is a no.
    pub fn may(
        &self,
        who: &weir_policy::Identity,
        op: weir_policy::Operation,
        target: &str,
    ) -> bool {
        let info = match self.config.target(target) {
            Some(t) => t.policy_info(),
            None => return false,
        };
        self.policy
            .session(who, &info)
            .is_ok_and(|s| self.policy.may_operate(&s, op))
    }

    /// The configured targets on which `who` may do `op`: asked once per target, for a
    /// list filtered by target (sessions, approvals, grants) that would otherwise build a
    /// policy session per row.
    pub fn targets_where(
        &self,
        who: &weir_policy::Identity,
        op: weir_policy::Operation,
    ) -> std::collections::HashSet<String> {
        self.config
            .targets
            .iter()
            .filter(|t| self.may(who, op, &t.name))
            .map(|t| t.name.clone())
            .collect()
    }

    /// Whether `who` may do `op` on the gateway as a whole (the resource
    /// [`weir_policy::TargetInfo::gateway`]).
    pub fn may_on_gateway(&self, who: &weir_policy::Identity, op: weir_policy::Operation) -> bool {
        self.policy
            .session(who, &weir_policy::TargetInfo::gateway())
            .is_ok_and(|s| self.policy.may_operate(&s, op))
    }

    /// Whether `who` may do `op` on the gateway or on at least one target: what the console
    /// shows them.
    pub fn may_anywhere(&self, who: &weir_policy::Identity, op: weir_policy::Operation) -> bool {
        self.may_on_gateway(who, op)
            || self
                .config
                .targets
                .iter()
                .any(|t| self.may(who, op, &t.name))
    }
}

/// What only the wire listeners use: TLS toward clients, cancel keys, failed-login counts.
pub struct FrontDoor {
    pub tls_acceptor: tokio_rustls::TlsAcceptor,
    pub cancels: CancelRegistry,
    /// Failed logins per client address, so they cannot flood the trail.
    pub failed_logins: failures::FailedLogins,
    /// The MySQL listener's connections, for KILL.
    pub mysql_threads: my::threads::Threads,
}

/// What reaching and reading the targets needs: TLS toward them, their catalogs, the masking
/// key.
pub struct Upstreams {
    /// Client TLS configuration per target name (None: plain TCP).
    pub tls: HashMap<String, Option<Arc<rustls::ClientConfig>>>,
    /// Each target's masking catalog, by target name.
    catalogs: HashMap<String, Arc<catalog::CatalogCache>>,
    /// The key of the `hash` masking strategy.
    mask_key: weir_mask::HashKey,
}

impl Upstreams {
    /// A target's catalog cache (also when masking is off: fastpath calls resolve OIDs
    /// through it).
    pub(crate) fn catalog(&self, target: &str) -> Option<&Arc<catalog::CatalogCache>> {
        self.catalogs.get(target)
    }
}

/// A gateway's shared state: the services (what `Deref` reaches, so `shared.audit` is the
/// services' trail), the front door and the upstreams. A module that needs only services
/// takes `Arc<Services>` (the HTTP API).
pub struct Shared {
    pub services: Arc<Services>,
    pub front: FrontDoor,
    pub upstreams: Upstreams,
}

impl std::ops::Deref for Shared {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl Shared {
    /// Everything a gateway's sessions share, but its listeners. `clock` is what approval
    /// deadlines, windows and grant expiry are decided by.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        policy: Policy,
        audit: Arc<dyn AuditSink>,
        clock: weir_store::Clock,
    ) -> Result<Shared, GatewayError> {
        let server_tls = tls::server_config(&config)?;
        let mut upstream_tls = HashMap::new();
        for t in &config.targets {
            upstream_tls.insert(t.name.clone(), tls::upstream_config(t)?);
        }
        // The names were checked when the configuration was loaded.
        let default_strategy = config
            .masking
            .default_strategy
            .as_deref()
            .and_then(weir_mask::Strategy::parse);
        let mut catalogs = HashMap::new();
        for t in &config.targets {
            catalogs.insert(
                t.name.clone(),
                Arc::new(catalog::CatalogCache::new(
                    t,
                    default_strategy,
                    &config.masking.clean_functions,
                )),
            );
        }
        let mask_key = mask_key(&config, store.as_ref()).map_err(GatewayError::Masking)?;
        // Loaded (or made) only where some target keeps before-images.
        let sealer = if config
            .targets
            .iter()
            .any(|t| config.audit.keeps_before_images(t))
        {
            Some(Arc::new(
                undo::Sealer::open(&config).map_err(GatewayError::Store)?,
            ))
        } else {
            None
        };
        let image_writer = match &sealer {
            Some(_) => {
                Some(undo::ImageWriter::start(Arc::clone(&store)).map_err(GatewayError::Store)?)
            }
            None => None,
        };
        let grants = Arc::new(grants::Grants::new(Arc::clone(&store), clock.clone()));
        grants
            .load()
            .map_err(|e| GatewayError::Store(format!("reading access grants: {e}")))?;
        let notifier = Arc::new(notify::Notifier::new(&config));
        let failed_logins = failures::FailedLogins::new(clock.clone());
        let baselines = Arc::new(baseline::Baselines::new(Arc::clone(&store), clock.clone()));
        let approvals = Arc::new(approvals::Approvals::new(
            Arc::clone(&store),
            clock,
            Arc::clone(&notifier),
        ));
        Ok(Shared {
            services: Arc::new(Services {
                auth: Authenticator::new(&config, store),
                approvals,
                grants,
                notifier,
                baselines,
                sessions: Default::default(),
                console: Default::default(),
                config,
                analyzer: weir_analyze::Analyzer::new(),
                policy,
                audit,
                sealer,
                image_writer,
            }),
            front: FrontDoor {
                tls_acceptor: tokio_rustls::TlsAcceptor::from(server_tls),
                cancels: CancelRegistry::default(),
                failed_logins,
                mysql_threads: Default::default(),
            },
            upstreams: Upstreams {
                tls: upstream_tls,
                catalogs,
                mask_key,
            },
        })
    }
}

/// A bound, not yet running, gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// The MySQL listener (`[gateway] mysql_listen`).
    mysql: Option<TcpListener>,
    /// The HTTP API's listener (`[gateway] http_listen`).
    http: Option<TcpListener>,
}

impl Gateway {
    pub async fn bind(
        config: Config,
        store: Arc<dyn Store>,
        policy: Policy,
        audit: Arc<dyn AuditSink>,
    ) -> Result<Gateway, GatewayError> {
        let addr = config
            .gateway
            .postgres_listen
            .ok_or(GatewayError::NoListener)?;
        let clock = weir_store::Clock::from_env();
        if clock.is_controlled() {
            warn!(
                file = ?std::env::var_os(weir_store::clock::CLOCK_FILE_ENV),
                "the gateway's clock is offset by a file (WEIR_CLOCK_FILE): for tests only"
            );
        }
        let http_addr = config.gateway.http_listen;
        let mysql_addr = config.gateway.mysql_listen;
        let shared = Arc::new(Shared::new(config, store, policy, audit, clock)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let mysql = match mysql_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| GatewayError::Bind { addr, source })?,
            ),
            None => None,
        };
        let http = match http_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| GatewayError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(Gateway {
            shared,
            listener,
            mysql,
            http,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The MySQL listener's address, when one is configured.
    pub fn mysql_addr(&self) -> Option<SocketAddr> {
        self.mysql.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accepts connections until `shutdown` turns true, then waits for open sessions to end
    /// (up to `[gateway] shutdown_timeout`).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let workers = match Workers::start(self.shared.config.gateway.workers) {
            Ok(w) => w,
            Err(e) => {
                error!(cause = %e, "cannot start worker threads");
                return;
            }
        };
        let watcher = tokio::spawn(Arc::clone(&self.shared.approvals).run());
        let baselines = tokio::spawn(Arc::clone(&self.shared.baselines).run());
        let grant_watcher =
            tokio::spawn(Arc::clone(&self.shared.grants).run(Arc::clone(&self.shared.audit)));
        // Summaries of failed-login windows that ended without another failure to carry them.
        let failure_sweeper = {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let period = std::time::Duration::from_millis(failures::WINDOW_MS);
                let mut every = tokio::time::interval(period);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    for e in shared.front.failed_logins.sweep() {
                        let _ = shared.audit.append(e);
                    }
                }
            })
        };
        // Before-images past their retention: purged (the purge is an event). Checked every
        // minute, every second on a controlled clock (tests move it).
        let purger = self.shared.sealer.as_ref().map(|_| {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let clock = shared.approvals.clock().clone();
                let period = if clock.is_controlled() { 1 } else { 60 };
                let mut every = tokio::time::interval(std::time::Duration::from_secs(period));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let s = Arc::clone(&shared);
                    let purged = tokio::task::spawn_blocking(move || {
                        undo::purge(
                            s.approvals.store().as_ref(),
                            s.audit.as_ref(),
                            &s.config,
                            s.approvals.clock().now_ms(),
                        )
                    })
                    .await;
                    match purged {
                        Ok(Ok(0)) => {}
                        Ok(Ok(n)) => info!(images = n, "purged before-images past their retention"),
                        Ok(Err(e)) => warn!(cause = %e, "purging before-images failed"),
                        Err(e) => warn!(cause = %e, "purging before-images failed"),
                    }
                }
            })
        });
        let api = self.http.map(|listener| {
            let app = http::router(Arc::clone(&self.shared.services))
                .merge(mcp::http::router(Arc::clone(&self.shared)))
                .merge(undo_http::router(Arc::clone(&self.shared)))
                .into_make_service_with_connect_info::<SocketAddr>();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = served {
                    error!(cause = %e, "the HTTP API stopped");
                }
            })
        });
        let mut next = 0usize;
        let max = self.shared.config.gateway.max_connections;
        let slots = Arc::new(Semaphore::new(max));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let (accepted, mysql) = tokio::select! {
                _ = shutdown.changed() => break,
                accepted = self.listener.accept() => (accepted, false),
                accepted = accept_opt(self.mysql.as_ref()) => (accepted, true),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        warn!(%peer, max, "connection limit reached; refusing");
                        if !mysql {
                            tokio::spawn(refuse(tcp));
                        }
                        continue;
                    };
                    let shared = Arc::clone(&self.shared);
                    // Hand the socket to the next worker: it must be registered with the
                    // worker's own I/O driver, so it travels as a std socket.
                    let Ok(std_tcp) = tcp.into_std() else {
                        continue;
                    };
                    let Some(worker) = workers.handles.get(next % workers.handles.len()) else {
                        continue;
                    };
                    next = next.wrapping_add(1);
                    tasks.spawn_on(
                        async move {
                            match tokio::net::TcpStream::from_std(std_tcp) {
                                Ok(tcp) if mysql => my::run(tcp, peer, shared).await,
                                Ok(tcp) => pg::run(tcp, peer, shared).await,
                                Err(e) => {
                                    warn!(cause = %e, "cannot register an accepted connection")
                                }
                            }
                            drop(permit);
                        },
                        worker,
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    error!(cause = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        drop(self.mysql);
        let open = tasks.len();
        if open > 0 {
            info!(open, "draining sessions");
        }
        let deadline = self.shared.config.gateway.shutdown_timeout;
        let drained = tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                left = tasks.len(),
                "shutdown timeout: closing remaining sessions"
            );
            tasks.shutdown().await;
        }
        watcher.abort();
        baselines.abort();
        self.shared.baselines.flush().await;
        grant_watcher.abort();
        failure_sweeper.abort();
        if let Some(p) = purger {
            p.abort();
        }
        for e in self.shared.front.failed_logins.drain() {
            let _ = self.shared.audit.append(e);
        }
        if let Some(api) = api {
            api.abort();
        }
        workers.stop();
    }
}

/// Accepts on a listener that may not exist (then never).
async fn accept_opt(
    l: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Tells a client over the connection limit why it is turned away, as PostgreSQL does.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let frame = weir_wire::backend::Message::error(weir_wire::backend::Fields::new(
        "FATAL",
        "53300",
        "weir: too many connections to the gateway ([gateway] max_connections)",
    ));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tcp.write_all(&frame)).await;
}

/// Session threads: one single-threaded runtime per worker, each with its own I/O driver.
/// A session lives on one worker from accept to close, so its two halves, its upstream socket
/// and its timers never cross threads (no work stealing, no cross-core wake-ups); the acceptor
/// spreads sessions round-robin.
struct Workers {
    // INVARIANT: never empty (`start` creates at least one).
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Workers {
    fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("weir-worker-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            threads.push((thread, stop));
        }
        Ok(Workers { handles, threads })
    }

    fn stop(self) {
        for (thread, stop) in self.threads {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// The key of the `hash` masking strategy: `[masking] hash_key`, the contents of
/// `hash_key_file`, or a random key made on first start and kept so masked values stay
/// stable across restarts: in a shared store (PostgreSQL), in the store, where the first
/// gateway's key is every gateway's (a value hashes the same wherever it was masked);
/// otherwise beside the store (mode 0600).
fn mask_key(config: &Config, store: &dyn Store) -> Result<weir_mask::HashKey, String> {
    if let Some(k) = &config.masking.hash_key {
        return Ok(weir_mask::HashKey::new(k.as_bytes()));
    }
    if config.masking.hash_key_file.is_none() {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| format!("making a hash key: {e}"))?;
        match store.shared_secret(MASK_KEY_SECRET, &fresh) {
            Ok(Some(key)) if !key.is_empty() => return Ok(weir_mask::HashKey::new(&key)),
            Ok(_) => {}
            Err(e) => return Err(format!("the masking hash key in the store: {e}")),
        }
    }
    let path = match &config.masking.hash_key_file {
        Some(p) => p.clone(),
        None => {
            let dir = config
                .gateway
                .store
                .state_dir(config.path.parent().unwrap_or(std::path::Path::new(".")));
            let path = dir.join("mask.key");
            if !path.exists() {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| format!("making a hash key: {e}"))?;
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                write_private(&path, &key).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            path
        }
    };
    let key = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if key.is_empty() {
        return Err(format!("{}: the hash key file is empty", path.display()));
    }
    Ok(weir_mask::HashKey::new(&key))
}

/// The name of the masking hash key among the store's shared secrets.
const MASK_KEY_SECRET: &str = "mask.hash_key";

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}
