//! The PostgreSQL store: several gateways share one database (`store = "postgres://…"`).
//!
//! Everything above this module is synchronous ([`crate::Store`], [`crate::audit::AuditTrail`]),
//! so this module owns a small tokio runtime of its own (two threads, `weir-store`) that runs
//! the connections and every query. A caller hands [`Pg::with`] a future over a pooled
//! connection and waits for it on its own thread with a plain park/unpark executor: the caller
//! may be a tokio worker of another runtime (as SQLite's calls are), since nothing here enters
//! that runtime.
//!
//! Failure is explicit and bounded: connecting gives up after [`CONNECT_TIMEOUT`], a call after
//! [`CALL_TIMEOUT`], and a connection that saw any error is dropped rather than reused (it may
//! be inside an aborted transaction). While the server is away every call fails fast with
//! [`StoreError::Postgres`]; the next call after it is back connects again, so the gateway
//! resumes by itself.
//!
//! TLS: `sslmode=disable|prefer|require` as libpq spells them (tokio-postgres's modes), with
//! rustls. The server's certificate is always verified, against the system's roots or the
//! PEM file that `sslrootcert=` names. SCRAM-SHA-256 and MD5 logins are tokio-postgres's.

pub(crate) mod schema;
mod store;
mod trail;

pub use store::PgStore;
pub use trail::PgTrail;

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

use crate::StoreError;

/// How long opening one connection to the store may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call (its queries and its transaction) may take before it fails.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections kept open while idle; more are made under load and closed after.
const MAX_IDLE: usize = 8;

/// A pool of connections to one PostgreSQL database, with the runtime that drives them.
pub struct Pg {
    rt: tokio::runtime::Runtime,
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    idle: Mutex<Vec<Arc<Client>>>,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("url", &self.shown).finish()
    }
}

fn pg_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres(e.to_string())
}

/// The URL as `tokio_postgres::Config` reads it, and the root certificates' file if it named
/// one (`sslrootcert=`, which tokio-postgres does not know).
fn split_url(url: &str) -> Result<(Config, Option<String>), StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("sslrootcert", v)) => root = Some(v.to_owned()),
            _ if !pair.is_empty() => kept.push(pair),
            _ => {}
        }
    }
    let rebuilt = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let config =
        Config::from_str(&rebuilt).map_err(|e| StoreError::Postgres(format!("store URL: {e}")))?;
    Ok((config, root))
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:****@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

fn tls_config(root: Option<&str>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::Postgres(format!("sslrootcert {path}: {e}")))?;
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| StoreError::Postgres(format!("sslrootcert {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Postgres(format!("sslrootcert {path}: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pg_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Pg {
    /// Connects to the store at `url` once (so a wrong URL or password fails at start), and
    /// applies the schema's migrations under a lock.
    pub fn open(url: &str) -> Result<Arc<Pg>, StoreError> {
        let (mut config, root) = split_url(url)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("weir");
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => None,
            _ => Some(tls_config(root.as_deref())?),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-store")
            .enable_all()
            .build()
            .map_err(StoreError::Io)?;
        let pg = Arc::new(Pg {
            rt,
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            shown: redact(url),
        });
        schema::migrate(&pg)?;
        Ok(pg)
    }

    /// The pool of the store at `url`, opened on first use and shared by everything in the
    /// process that uses that store (the store, the trail's writer and its readers). Kept
    /// for the life of the process: a runtime must not be dropped inside another's worker.
    pub fn shared(url: &str) -> Result<Arc<Pg>, StoreError> {
        static OPEN: Mutex<Vec<(String, Arc<Pg>)>> = Mutex::new(Vec::new());
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, pg)) = open.iter().find(|(u, _)| u == url) {
            return Ok(Arc::clone(pg));
        }
        let pg = Pg::open(url)?;
        open.push((url.to_owned(), Arc::clone(&pg)));
        Ok(pg)
    }

    /// The store's URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs `f` on a connection from the pool, on the store's runtime, and waits for it.
    /// The connection goes back to the pool only if the call succeeded.
    pub fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.with_timeout(CALL_TIMEOUT, f)
    }

    /// [`Pg::with`] for a call that may take longer than [`CALL_TIMEOUT`] (verifying a
    /// whole trail).
    pub fn with_timeout<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let client = self.client()?;
        let fut = f(Arc::clone(&client));
        let handle = self
            .rt
            .spawn(async move { tokio::time::timeout(limit, fut).await });
        let out = match futures_executor::block_on(handle) {
            Ok(Ok(out)) => out,
            Ok(Err(_)) => Err(StoreError::Postgres(format!(
                "the store did not answer within {} s",
                limit.as_secs()
            ))),
            Err(e) => Err(StoreError::Postgres(format!("store call: {e}"))),
        };
        if out.is_ok() && !client.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(client);
            }
        }
        out
    }

    /// Runs `f` inside one transaction (`BEGIN` … `COMMIT`); an error rolls it back (the
    /// connection is then dropped, which ends the transaction on the server too).
    pub fn transaction<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.with(|c| {
            let body = f(Arc::clone(&c));
            async move {
                c.batch_execute("BEGIN").await.map_err(pg_err)?;
                let out = body.await?;
                c.batch_execute("COMMIT").await.map_err(pg_err)?;
                Ok(out)
            }
        })
    }

    fn client(&self) -> Result<Arc<Client>, StoreError> {
        loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match next {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        let config = self.config.clone();
        let tls = self.tls.clone();
        let shown = self.shown.clone();
        let handle = self.rt.spawn(async move {
            let client = match tls {
                Some(tls) => {
                    let (client, conn) = config.connect(tls).await?;
                    // A connection that ends with an error: the next call finds the client
                    // closed and connects again; the failing call's error says why.
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client
                }
                None => {
                    let (client, conn) = config.connect(NoTls).await?;
                    // A connection that ends with an error: the next call finds the client
                    // closed and connects again; the failing call's error says why.
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client
                }
            };
            Ok::<_, tokio_postgres::Error>(client)
        });
        match futures_executor::block_on(handle) {
            Ok(Ok(c)) => Ok(Arc::new(c)),
            Ok(Err(e)) => Err(StoreError::Postgres(format!("connecting to {shown}: {e}"))),
            Err(e) => Err(StoreError::Postgres(format!("connecting to {shown}: {e}"))),
        }
    }
}

pub(crate) fn err(e: tokio_postgres::Error) -> StoreError {
    pg_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://weir:secret@db:5432/weir?sslmode=require"),
            "postgres://weir:****@db:5432/weir?sslmode=require"
        );
        assert_eq!(
            redact("postgres://weir@127.0.0.1:5/w"),
            "postgres://weir@127.0.0.1:5/w"
        );
        assert_eq!(redact("postgres://db/w"), "postgres://db/w");
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        let (c, root) =
            split_url("postgres://u@h:5/d?sslmode=require&sslrootcert=/x/ca.pem").unwrap();
        assert_eq!(root.as_deref(), Some("/x/ca.pem"));
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(c.get_dbname(), Some("d"));
    }
}
