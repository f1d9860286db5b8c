//! Weir's configuration: one TOML file, read into raw structs that reject unknown keys, then
//! validated into a [`Config`] value that is passed to whoever needs it (no global getter, so
//! tests can run many gateways in one process).
//!
//! Paths in the file (store, TLS files, password files, policy files, signing key) are relative
//! to the file's own directory, so a config works wherever it is started from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is part of the message, not a source: printed once.
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The TOML parser's message names the key, the line and the column.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("target {target}: cannot read the upstream password: {message}")]
    Credentials { target: String, message: String },
}

mod raw {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub gateway: Gateway,
        #[serde(default)]
        pub identity: Identity,
        #[serde(default)]
        pub target: Vec<Target>,
        #[serde(default)]
        pub policy: Policy,
        #[serde(default)]
        pub masking: Masking,
        #[serde(default)]
        pub approvals: Approvals,
        #[serde(default)]
        pub audit: Audit,
        #[serde(default)]
        pub mcp: Mcp,
        #[serde(default)]
        pub log: Log,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub format: Option<String>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Mcp {
        pub max_rows: Option<u64>,
        pub max_result_bytes: Option<u64>,
        pub statement_timeout: Option<String>,
        #[serde(default)]
        pub allowed_hosts: Vec<String>,
        #[serde(default)]
        pub allowed_origins: Vec<String>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Gateway {
        pub postgres_listen: Option<String>,
        pub mysql_listen: Option<String>,
        pub http_listen: Option<String>,
        pub public_url: Option<String>,
        pub store: Option<String>,
        pub tls_cert: Option<String>,
        pub tls_key: Option<String>,
        pub tls_ca: Option<String>,
        pub public_host: Option<String>,
        pub max_message_size: Option<u64>,
        pub max_connections: Option<usize>,
        pub workers: Option<usize>,
        pub connect_timeout: Option<String>,
        pub shutdown_timeout: Option<String>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Identity {
        pub issuer: Option<String>,
        pub audience: Option<String>,
        pub groups_claim: Option<String>,
        pub username_claim: Option<String>,
        #[serde(default)]
        pub claims: Vec<String>,
        pub client_id: Option<String>,
        pub scopes: Option<String>,
        pub delegation_window: Option<String>,
        #[serde(default, rename = "static")]
        pub statics: Vec<StaticIdentity>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StaticIdentity {
        pub name: String,
        pub kind: String,
        #[serde(default)]
        pub groups: Vec<String>,
        pub token: String,
        #[serde(default)]
        pub attributes: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Target {
        pub name: String,
        pub engine: String,
        pub environment: String,
        pub upstream: String,
        pub database: Option<String>,
        pub user: String,
        pub password_env: Option<String>,
        pub password_file: Option<String>,
        pub upstream_tls: Option<String>,
        pub upstream_ca: Option<String>,
        pub upstream_server_name: Option<String>,
        pub before_images: Option<bool>,
        #[serde(default)]
        pub tables: BTreeMap<String, super::TableTags>,
        #[serde(default)]
        pub columns: BTreeMap<String, super::ColumnTags>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Policy {
        #[serde(default = "yes")]
        pub defaults: bool,
        #[serde(default)]
        pub files: Vec<String>,
        pub admin_group: Option<String>,
        pub auditor_group: Option<String>,
        #[serde(default)]
        pub trusted_functions: Vec<String>,
        pub bulk_write_rows: Option<u64>,
        pub agent_write_rows: Option<u64>,
        pub taint_window: Option<String>,
    }

    impl Default for Policy {
        fn default() -> Self {
            Policy {
                defaults: true,
                files: Vec::new(),
                admin_group: None,
                auditor_group: None,
                trusted_functions: Vec::new(),
                bulk_write_rows: None,
                agent_write_rows: None,
                taint_window: None,
            }
        }
    }

    fn yes() -> bool {
        true
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Masking {
        pub enabled: Option<bool>,
        pub hash_key: Option<String>,
        pub hash_key_file: Option<String>,
        pub default_strategy: Option<String>,
        #[serde(default)]
        pub clean_functions: Vec<String>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Approvals {
        pub timeout: Option<String>,
        pub auto_repeat_window: Option<String>,
        #[serde(default)]
        pub approvers: Vec<String>,
        pub slack_webhook: Option<String>,
        pub webhook: Option<String>,
        pub webhook_secret_env: Option<String>,
        pub webhook_secret_file: Option<String>,
        pub slack_api: Option<String>,
        pub slack_channel: Option<String>,
        pub slack_bot_token_env: Option<String>,
        pub slack_bot_token_file: Option<String>,
        pub slack_signing_secret_env: Option<String>,
        pub slack_signing_secret_file: Option<String>,
        #[serde(default)]
        pub slack_users: std::collections::BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Audit {
        pub signing_key: Option<String>,
        #[serde(default)]
        pub full_text_targets: Vec<String>,
        pub checkpoint_interval: Option<String>,
        pub before_images: Option<bool>,
        pub before_image_key_file: Option<String>,
        pub before_image_retention: Option<String>,
        pub before_image_max_bytes: Option<u64>,
    }
}

/// Per-table tags (`[target.tables."schema.table"]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableTags {
    pub sensitivity: Option<String>,
    pub mask: Option<String>,
    /// The table holds untrusted input (support tickets, user-written text): an agent that
    /// reads it may have read instructions meant for it, so policy sees it as tainted.
    #[serde(default)]
    pub untrusted: bool,
}

/// Per-column tags (`[target.columns."schema.table.column"]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ColumnTags {
    pub sensitivity: Option<String>,
    pub mask: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; paths inside are resolved against its directory.
    pub path: PathBuf,
    pub gateway: Gateway,
    pub identity: IdentityConfig,
    pub targets: Vec<Target>,
    pub policy: PolicyConfig,
    pub approvals: ApprovalsConfig,
    pub audit: AuditConfig,
    pub masking: MaskingConfig,
    pub mcp: McpConfig,
    pub log: LogConfig,
}

/// How the gateway writes its log (`[log]`).
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    /// One JSON object per line (`format = "json"`) instead of plain text (`"text"`, the
    /// default). `--log-format` and `WEIR_LOG_FORMAT` take precedence.
    pub json: bool,
}

/// The MCP server's limits (`[mcp]`): what one `query` tool call may return and take.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Rows returned when the call names no `max_rows` (default 1,000); a call may ask for
    /// fewer, never for more than ten times this.
    pub max_rows: u64,
    /// The most bytes of values one result carries (default 4 MiB); the rest is cut off and
    /// `truncated` says so.
    pub max_result_bytes: u64,
    /// The statement timeout of a tool call's upstream session (default 30 s).
    pub statement_timeout: Duration,
    /// `Host` values `POST /mcp` answers besides loopback names (DNS rebinding guard).
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s `POST /mcp` answers (`scheme://host:port`); a request with any other
    /// Origin is refused. Empty: no browser origin is accepted.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub postgres_listen: Option<SocketAddr>,
    pub mysql_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// How approvers' tools reach the HTTP API (webhook callbacks): `[gateway] public_url`,
    /// else `http://` + `http_listen`.
    pub public_url: Option<String>,
    pub store: StoreUrl,
    /// Both or neither: without them a self-signed pair is made beside the store.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// What clients (`weir connect`) trust for the gateway's certificate: `[gateway] tls_ca`,
    /// a PEM file of CA certificates. `None`: the generated self-signed certificate, when
    /// `tls` is `None`; nothing otherwise.
    pub tls_ca: Option<PathBuf>,
    /// The host name or address clients reach the listeners by (`[gateway] public_host`); it
    /// must be in the gateway's certificate. `None`: the listen address (loopback when that is
    /// unspecified).
    pub public_host: Option<String>,
    pub max_message_size: usize,
    pub max_connections: usize,
    /// Session threads (default: one per CPU).
    pub workers: usize,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreUrl {
    /// Directory where Weir keeps generated files (TLS pair, keys) beside the store.
    pub fn state_dir(&self, config_dir: &Path) -> PathBuf {
        match self {
            StoreUrl::Sqlite(p) => p
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| config_dir.to_path_buf()),
            StoreUrl::Postgres(_) => config_dir.to_path_buf(),
        }
    }
}

pub use weir_vocab::IdentityKind;

#[derive(Debug, Clone)]
pub struct StaticIdentity {
    pub name: String,
    pub kind: IdentityKind,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    /// The token as written in the file; hashed by whoever checks it.
    pub token: String,
}

#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// How long after a person last signed in with an ID token their agents may act for
    /// them (`--on-behalf-of`; default 24h): someone the IdP removed cannot sign in, so their
    /// agents stop within this.
    pub delegation_window: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Where the groups are in an ID token: a claim name or a dotted path
    /// (`realm_access.roles`).
    pub groups_claim: String,
    /// The claim the PostgreSQL user name must equal (`email` by default, or `sub`, or any
    /// string claim; dotted paths allowed).
    pub username_claim: String,
    /// Claims that become identity attributes, visible to policy.
    pub claims: Vec<String>,
    /// The OAuth client `weir login` uses (a public client with the device-code grant);
    /// defaults to the audience, which is what the ID tokens it gets are issued for.
    pub client_id: Option<String>,
    /// Scopes `weir login` asks for (default `openid email offline_access`).
    pub scopes: String,
    pub statics: Vec<StaticIdentity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mysql,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Environment {
    Production,
    Staging,
    Development,
    Custom(String),
}

impl Environment {
    pub fn parse(s: &str) -> Environment {
        match s {
            "production" | "prod" => Environment::Production,
            "staging" => Environment::Staging,
            "development" | "dev" => Environment::Development,
            other => Environment::Custom(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Environment::Production => "production",
            Environment::Staging => "staging",
            Environment::Development => "development",
            Environment::Custom(s) => s,
        }
    }
}

/// How Weir protects its connection to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain TCP (the default for loopback and private networks).
    Disable,
    /// TLS without certificate verification: encrypts, does not authenticate the server.
    Require,
    /// TLS, verified against `upstream_ca`, including the host name.
    VerifyFull,
}

#[derive(Debug, Clone)]
pub enum Credential {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub engine: Engine,
    pub environment: Environment,
    /// `host:port` as written; resolved at connect time so DNS changes are followed.
    pub upstream: String,
    pub database: String,
    pub user: String,
    pub credential: Credential,
    pub upstream_tls: UpstreamTls,
    pub upstream_ca: Option<PathBuf>,
    /// Name checked against the upstream certificate; defaults to the upstream host.
    pub upstream_server_name: String,
    /// Whether UPDATE and DELETE here keep before-images, when the target says
    /// (`before_images = …` in its `[[target]]`); else `[audit] before_images` decides.
    pub before_images: Option<bool>,
    pub tables: BTreeMap<String, TableTags>,
    pub columns: BTreeMap<String, ColumnTags>,
}

impl Target {
    /// What policy needs to know about this target.
    pub fn policy_info(&self) -> weir_vocab::TargetInfo {
        weir_vocab::TargetInfo {
            name: self.name.clone(),
            environment: self.environment.as_str().to_owned(),
            sensitivity: self
                .tables
                .iter()
                .filter_map(|(table, tags)| tags.sensitivity.clone().map(|s| (table.clone(), s)))
                .collect(),
            untrusted: self
                .tables
                .iter()
                .filter(|(_, tags)| tags.untrusted)
                .map(|(table, _)| table.clone())
                .collect(),
        }
    }

    /// Reads the upstream password now (not at load time), so a rotated secret file is
    /// picked up by the next connection. The value never goes into a log or an error.
    pub fn password(&self) -> Result<String, ConfigError> {
        match &self.credential {
            Credential::Env(var) => std::env::var(var).map_err(|_| ConfigError::Credentials {
                target: self.name.clone(),
                message: format!("environment variable {var} is not set"),
            }),
            Credential::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| ConfigError::Credentials {
                    target: self.name.clone(),
                    message: format!("{}: {e}", path.display()),
                }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub defaults: bool,
    /// Glob patterns as written, resolved against the config directory.
    pub files: Vec<String>,
    /// The group allowed to read server files and run programs (default `weir-admins`).
    pub admin_group: String,
    /// The group whose members read and verify the audit trail in the console and the API
    /// (default `weir-auditors`).
    pub auditor_group: String,
    /// Functions that are not PostgreSQL built-ins but whose calls the operator vouches for
    /// (extension or application functions without side effects), as `name` or `schema.name`.
    pub trusted_functions: Vec<String>,
    /// In production an UPDATE, DELETE or MERGE that would change more rows waits for
    /// approval (default 1000; 0 turns the built-in rule off).
    pub bulk_write_rows: u64,
    /// Agents may write at most this many rows in production without approval (default 0:
    /// read-only).
    pub agent_write_rows: u64,
    /// How long an agent stays tainted after it read a table tagged `untrusted` (default 1h),
    /// across sessions and tool calls.
    pub taint_window: Duration,
}

#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    pub timeout: Duration,
    pub auto_repeat_window: Duration,
    pub approvers: Vec<String>,
    /// A Slack incoming-webhook URL: requests are posted there (with Approve/Deny buttons)
    /// when no bot token is configured.
    pub slack_webhook: Option<String>,
    /// A URL every new request is POSTed to (JSON, HMAC-SHA256 signed with the webhook
    /// secret); the receiver decides by POSTing to the callback in the payload.
    pub webhook: Option<String>,
    pub webhook_secret: Option<Secret>,
    /// The Slack Web API base (`https://slack.com/api`; tests point it at a local server).
    pub slack_api: String,
    pub slack_channel: Option<String>,
    pub slack_bot_token: Option<Secret>,
    /// Verifies Slack's interactivity requests (`X-Slack-Signature`).
    pub slack_signing_secret: Option<Secret>,
    /// Slack user id → Weir identity: who pressed the button, for policy.
    pub slack_users: std::collections::BTreeMap<String, String>,
}

/// A secret named in config and read when it is used (so a rotated file is picked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Env(String),
    File(PathBuf),
}

impl Secret {
    /// The secret's value; the error names where it was looked for, never the value.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Secret::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub signing_key: PathBuf,
    pub full_text_targets: Vec<String>,
    pub checkpoint_interval: Duration,
    /// Where UPDATE and DELETE keep before-images (for `weir undo`): `None` (the default)
    /// on production targets, `Some(true)` on every target, `Some(false)` nowhere.
    pub before_images: Option<bool>,
    /// The AES-256 key that seals before-images at rest (32 raw bytes, or 64 hex digits);
    /// generated (mode 0600) when missing.
    pub before_image_key_file: PathBuf,
    /// How long a before-image is kept; then it is purged, and the purge is recorded.
    pub before_image_retention: Duration,
    /// The most bytes of rows one statement's before-image may hold; over it the statement
    /// runs, not undoable.
    pub before_image_max_bytes: u64,
}

impl AuditConfig {
    /// Whether UPDATE and DELETE on `target` keep before-images: the target's own
    /// `before_images`, else `[audit] before_images`, else production targets do.
    pub fn keeps_before_images(&self, target: &Target) -> bool {
        target
            .before_images
            .or(self.before_images)
            .unwrap_or(target.environment == Environment::Production)
    }
}

/// The masking strategies `mask = "…"` and `[masking] default_strategy` may name.
pub const MASK_STRATEGIES: &[&str] = weir_vocab::strategy::ALL;

#[derive(Debug, Clone)]
pub struct MaskingConfig {
    pub enabled: bool,
    pub hash_key: Option<String>,
    pub hash_key_file: Option<PathBuf>,
    pub default_strategy: Option<String>,
    /// Functions whose results the operator promises carry no sensitive value although Weir
    /// cannot see what they read (`name` or `schema.name`): their computed columns are not
    /// masked for that reason alone.
    pub clean_functions: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let v = Validator { path, dir: &dir };
        v.validate(raw)
    }

    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Directory for generated state (TLS pair, signing key default).
    pub fn state_dir(&self) -> PathBuf {
        self.gateway.store.state_dir(&self.dir())
    }
}

struct Validator<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Validator<'_> {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn rel(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn addr(&self, key: &str, v: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
        v.map(|s| {
            s.parse().map_err(|_| {
                self.err(format!(
                    "[gateway] {key} = {s:?} is not an address like \"127.0.0.1:6432\""
                ))
            })
        })
        .transpose()
    }

    /// `[approvals] NAME_env` / `NAME_file`: at most one of them.
    fn secret(
        &self,
        name: &str,
        env: Option<String>,
        file: Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        match (env, file) {
            (None, None) => Ok(None),
            (Some(v), None) => Ok(Some(Secret::Env(v))),
            (None, Some(f)) => Ok(Some(Secret::File(self.rel(&f)))),
            (Some(_), Some(_)) => Err(self.err(format!(
                "[approvals]: set at most one of {name}_env or {name}_file"
            ))),
        }
    }

    fn duration(
        &self,
        key: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(&s).map_err(|e| {
                self.err(format!(
                    "{key} = {s:?} is not a duration like \"120s\" or \"1h\": {e}"
                ))
            }),
        }
    }

    fn validate(&self, raw: raw::File) -> Result<Config, ConfigError> {
        let g = raw.gateway;
        let store = match g.store.as_deref() {
            None => StoreUrl::Sqlite(self.rel("weir.db")),
            Some(url) => {
                if let Some(p) = url.strip_prefix("sqlite://") {
                    if p.is_empty() {
                        return Err(self.err("[gateway] store = \"sqlite://\" needs a file name"));
                    }
                    StoreUrl::Sqlite(self.rel(p))
                } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                    StoreUrl::Postgres(url.to_owned())
                } else {
                    return Err(self.err(format!(
                        "[gateway] store = {url:?}: expected sqlite://FILE or postgres://…"
                    )));
                }
            }
        };
        let tls = match (g.tls_cert, g.tls_key) {
            (Some(c), Some(k)) => Some((self.rel(&c), self.rel(&k))),
            (None, None) => None,
            _ => {
                return Err(
                    self.err("[gateway] tls_cert and tls_key go together: set both or neither")
                )
            }
        };
        let public_host = match g.public_host {
            None => None,
            // A DNS name, an IPv4 address, or an IPv6 address (unbracketed, as libpq takes it);
            // a port does not belong here.
            Some(h)
                if h.parse::<std::net::Ipv6Addr>().is_ok()
                    || (!h.is_empty()
                        && h.len() <= 253
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))) =>
            {
                Some(h)
            }
            Some(h) => {
                return Err(self.err(format!(
                    "[gateway] public_host = {h:?}: expected a host name or an IP address"
                )))
            }
        };
        let max_message_size = match g.max_message_size {
            None => 64 * 1024 * 1024,
            Some(n) if (1024..=1 << 30).contains(&n) => n as usize,
            Some(n) => {
                return Err(self.err(format!(
                    "[gateway] max_message_size = {n}: must be between 1024 and 1073741824 bytes"
                )))
            }
        };
        let gateway = Gateway {
            postgres_listen: self.addr("postgres_listen", g.postgres_listen)?,
            mysql_listen: self.addr("mysql_listen", g.mysql_listen)?,
            http_listen: self.addr("http_listen", g.http_listen.clone())?,
            public_url: g
                .public_url
                .or_else(|| g.http_listen.map(|a| format!("http://{a}")))
                .map(|u| u.trim_end_matches('/').to_owned()),
            store,
            tls,
            tls_ca: g.tls_ca.map(|c| self.rel(&c)),
            public_host,
            max_message_size,
            max_connections: g.max_connections.unwrap_or(10_000),
            workers: match g.workers {
                None => std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                Some(n) if (1..=1024).contains(&n) => n,
                Some(n) => {
                    return Err(self.err(format!(
                        "[gateway] workers = {n}: must be between 1 and 1024"
                    )))
                }
            },
            connect_timeout: self.duration(
                "[gateway] connect_timeout",
                g.connect_timeout,
                Duration::from_secs(10),
            )?,
            shutdown_timeout: self.duration(
                "[gateway] shutdown_timeout",
                g.shutdown_timeout,
                Duration::from_secs(30),
            )?,
        };

        let mut statics: Vec<StaticIdentity> = Vec::new();
        for s in raw.identity.statics {
            let kind = IdentityKind::parse(&s.kind).ok_or_else(|| {
                self.err(format!(
                    "[[identity.static]] {}: kind = {:?} must be human, service or agent",
                    s.name, s.kind
                ))
            })?;
            if s.name.is_empty() {
                return Err(self.err("[[identity.static]]: name must not be empty"));
            }
            if s.token.len() < 8 {
                return Err(self.err(format!(
                    "[[identity.static]] {}: token must be at least 8 characters",
                    s.name
                )));
            }
            // One name is one principal to policy; names shaped like an address belong to
            // people (the IdP's default username claim is the email).
            if kind != IdentityKind::Human && s.name.contains('@') {
                return Err(self.err(format!(
                    "[[identity.static]] {}: a {} needs a name of its own, not one shaped like a person's address",
                    s.name,
                    kind.as_str()
                )));
            }
            if statics.iter().any(|x| x.name == s.name) {
                return Err(self.err(format!(
                    "[[identity.static]] {}: name appears twice",
                    s.name
                )));
            }
            statics.push(StaticIdentity {
                name: s.name,
                kind,
                groups: s.groups,
                attributes: s.attributes,
                token: s.token,
            });
        }
        if let Some(issuer) = &raw.identity.issuer {
            if !secure_url(issuer) {
                return Err(self.err(format!(
                    "[identity] issuer {issuer:?} must be an https:// URL: its keys decide who \
                     is who, so they are fetched only over TLS (plain http only from this \
                     machine: http://127.0.0.1, http://[::1], http://localhost)"
                )));
            }
        }
        if raw.identity.issuer.is_some() && raw.identity.audience.is_none() {
            return Err(self.err(
                "[identity] issuer needs audience: ID tokens are accepted only when issued for Weir",
            ));
        }
        let identity = IdentityConfig {
            issuer: raw.identity.issuer,
            audience: raw.identity.audience.clone(),
            groups_claim: raw.identity.groups_claim.unwrap_or_else(|| "groups".into()),
            username_claim: raw
                .identity
                .username_claim
                .unwrap_or_else(|| "email".into()),
            claims: raw.identity.claims,
            client_id: raw
                .identity
                .client_id
                .or_else(|| raw.identity.audience.clone()),
            scopes: raw
                .identity
                .scopes
                .unwrap_or_else(|| "openid email offline_access".into()),
            delegation_window: self.duration(
                "[identity] delegation_window",
                raw.identity.delegation_window,
                Duration::from_secs(24 * 3600),
            )?,
            statics,
        };

        let mut targets: Vec<Target> = Vec::new();
        for t in raw.target {
            let name = t.name.clone();
            let e = |m: String| self.err(format!("[[target]] {name}: {m}"));
            if name.is_empty() {
                return Err(self.err("[[target]]: name must not be empty"));
            }
            if targets.iter().any(|x| x.name == name) {
                return Err(e("name appears twice".into()));
            }
            let engine = match t.engine.as_str() {
                "postgres" | "postgresql" => Engine::Postgres,
                "mysql" | "mariadb" => Engine::Mysql,
                other => return Err(e(format!("engine = {other:?} must be postgres or mysql"))),
            };
            let credential = match (t.password_env, t.password_file) {
                (Some(v), None) => Credential::Env(v),
                (None, Some(f)) => Credential::File(self.rel(&f)),
                _ => return Err(e("set exactly one of password_env or password_file".into())),
            };
            let upstream_tls = match t.upstream_tls.as_deref() {
                None | Some("disable") => UpstreamTls::Disable,
                Some("require") => UpstreamTls::Require,
                Some("verify-full") => UpstreamTls::VerifyFull,
                Some(o) => {
                    return Err(e(format!(
                        "upstream_tls = {o:?} must be disable, require or verify-full"
                    )))
                }
            };
            if upstream_tls == UpstreamTls::VerifyFull && t.upstream_ca.is_none() {
                return Err(e(
                    "upstream_tls = \"verify-full\" needs upstream_ca (a PEM file of trusted CAs)"
                        .into(),
                ));
            }
            let host = t
                .upstream
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                .ok_or_else(|| e(format!("upstream = {:?} must be host:port", t.upstream)))?;
            let mask_ok = |m: &Option<String>| {
                m.as_deref()
                    .is_none_or(|m| MASK_STRATEGIES.contains(&m) || m == "none")
            };
            for (key, tags) in &t.columns {
                if key.split('.').count() != 3 {
                    return Err(e(format!(
                        "columns.{key:?} must be \"schema.table.column\""
                    )));
                }
                if !mask_ok(&tags.mask) {
                    return Err(e(format!(
                        "columns.{key:?}: mask = {:?} must be one of {}, none",
                        tags.mask.as_deref().unwrap_or(""),
                        MASK_STRATEGIES.join(", ")
                    )));
                }
            }
            for (key, tags) in &t.tables {
                if key.split('.').count() != 2 {
                    return Err(e(format!("tables.{key:?} must be \"schema.table\"")));
                }
                if !mask_ok(&tags.mask) {
                    return Err(e(format!(
                        "tables.{key:?}: mask = {:?} must be one of {}, none",
                        tags.mask.as_deref().unwrap_or(""),
                        MASK_STRATEGIES.join(", ")
                    )));
                }
            }
            targets.push(Target {
                database: t.database.unwrap_or_else(|| name.clone()),
                name,
                engine,
                environment: Environment::parse(&t.environment),
                upstream: t.upstream,
                user: t.user,
                credential,
                upstream_tls,
                upstream_ca: t.upstream_ca.map(|p| self.rel(&p)),
                upstream_server_name: t.upstream_server_name.unwrap_or(host),
                before_images: t.before_images,
                tables: t.tables,
                columns: t.columns,
            });
        }

        let policy = PolicyConfig {
            defaults: raw.policy.defaults,
            files: raw.policy.files,
            admin_group: raw
                .policy
                .admin_group
                .unwrap_or_else(|| "weir-admins".into()),
            auditor_group: raw
                .policy
                .auditor_group
                .unwrap_or_else(|| "weir-auditors".into()),
            trusted_functions: raw.policy.trusted_functions,
            bulk_write_rows: raw.policy.bulk_write_rows.unwrap_or(1000),
            agent_write_rows: raw.policy.agent_write_rows.unwrap_or(0),
            taint_window: self.duration(
                "[policy] taint_window",
                raw.policy.taint_window,
                Duration::from_secs(3600),
            )?,
        };
        let a = raw.approvals;
        let approvals = ApprovalsConfig {
            timeout: self.duration("[approvals] timeout", a.timeout, Duration::from_secs(120))?,
            auto_repeat_window: self.duration(
                "[approvals] auto_repeat_window",
                a.auto_repeat_window,
                Duration::from_secs(3600),
            )?,
            approvers: if a.approvers.is_empty() {
                vec!["dba".into()]
            } else {
                a.approvers
            },
            slack_webhook: a.slack_webhook,
            webhook: a.webhook,
            webhook_secret: self.secret(
                "webhook_secret",
                a.webhook_secret_env,
                a.webhook_secret_file,
            )?,
            slack_api: a
                .slack_api
                .unwrap_or_else(|| "https://slack.com/api".into())
                .trim_end_matches('/')
                .to_owned(),
            slack_channel: a.slack_channel,
            slack_bot_token: self.secret(
                "slack_bot_token",
                a.slack_bot_token_env,
                a.slack_bot_token_file,
            )?,
            slack_signing_secret: self.secret(
                "slack_signing_secret",
                a.slack_signing_secret_env,
                a.slack_signing_secret_file,
            )?,
            slack_users: a.slack_users,
        };
        let audit = AuditConfig {
            signing_key: self.rel(raw.audit.signing_key.as_deref().unwrap_or("audit.key")),
            full_text_targets: raw.audit.full_text_targets,
            checkpoint_interval: self.duration(
                "[audit] checkpoint_interval",
                raw.audit.checkpoint_interval,
                Duration::from_secs(60),
            )?,
            before_images: raw.audit.before_images,
            before_image_key_file: self.rel(
                raw.audit
                    .before_image_key_file
                    .as_deref()
                    .unwrap_or("before-images.key"),
            ),
            before_image_retention: self.duration(
                "[audit] before_image_retention",
                raw.audit.before_image_retention,
                Duration::from_secs(7 * 24 * 3600),
            )?,
            before_image_max_bytes: raw.audit.before_image_max_bytes.unwrap_or(10 << 20),
        };
        let m = raw.masking;
        if let Some(d) = &m.default_strategy {
            if !MASK_STRATEGIES.contains(&d.as_str()) {
                return Err(self.err(format!(
                    "[masking] default_strategy = {d:?} must be one of {}",
                    MASK_STRATEGIES.join(", ")
                )));
            }
        }
        let masking = MaskingConfig {
            enabled: m.enabled.unwrap_or(true),
            hash_key: m.hash_key,
            hash_key_file: m.hash_key_file.map(|p| self.rel(&p)),
            default_strategy: m.default_strategy,
            clean_functions: m.clean_functions.iter().map(|f| f.to_lowercase()).collect(),
        };
        let mcp = McpConfig {
            max_rows: match raw.mcp.max_rows {
                Some(0) => return Err(self.err("[mcp] max_rows must be at least 1")),
                Some(n) => n,
                None => 1000,
            },
            max_result_bytes: raw.mcp.max_result_bytes.unwrap_or(4 << 20),
            statement_timeout: self.duration(
                "[mcp] statement_timeout",
                raw.mcp.statement_timeout,
                Duration::from_secs(30),
            )?,
            allowed_hosts: raw.mcp.allowed_hosts,
            allowed_origins: raw.mcp.allowed_origins,
        };
        let log = LogConfig {
            json: match raw.log.format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(self.err(format!(
                        "[log] format = {other:?}: expected \"text\" or \"json\""
                    )))
                }
            },
        };
        Ok(Config {
            path: self.path.to_path_buf(),
            gateway,
            identity,
            targets,
            policy,
            approvals,
            audit,
            masking,
            mcp,
            log,
        })
    }
}

/// A URL whose answers cannot be changed in transit: https, or plain http to this machine
/// itself (a provider beside Weir, as in tests). The issuer and every endpoint its discovery
/// document names must be one.
pub fn secure_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // No userinfo: `http://127.0.0.1@evil.example` is evil.example.
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_images_are_kept_in_production_unless_the_target_or_audit_says_otherwise() {
        let target = |name: &str, env: &str, own: &str| {
            format!(
                "[[target]]\nname = \"{name}\"\nengine = \"postgres\"\nenvironment = \"{env}\"\nupstream = \"127.0.0.1:5432\"\nuser = \"u\"\npassword_env = \"P\"\n{own}"
            )
        };
        let text = [
            target("prod", "production", ""),
            target("dev", "development", ""),
            target("hot", "production", "before_images = false\n"),
            target("kept", "staging", "before_images = true\n"),
        ]
        .concat();
        let keeps = |c: &Config, name: &str| {
            c.audit
                .keeps_before_images(c.targets.iter().find(|t| t.name == name).unwrap())
        };
        let c = Config::parse(Path::new("w.toml"), &text).unwrap();
        assert!(keeps(&c, "prod") && !keeps(&c, "dev") && !keeps(&c, "hot") && keeps(&c, "kept"));
        let c = Config::parse(
            Path::new("w.toml"),
            &format!("{text}[audit]\nbefore_images = false\n"),
        )
        .unwrap();
        assert!(!keeps(&c, "prod") && !keeps(&c, "dev") && keeps(&c, "kept"));
        let c = Config::parse(
            Path::new("w.toml"),
            &format!("{text}[audit]\nbefore_images = true\n"),
        )
        .unwrap();
        assert!(keeps(&c, "prod") && keeps(&c, "dev") && !keeps(&c, "hot"));
        assert_eq!(c.audit.before_image_max_bytes, 10 << 20);
        assert_eq!(
            c.audit.before_image_retention,
            Duration::from_secs(7 * 24 * 3600)
        );
    }

    #[test]
    fn an_issuer_is_https_or_on_this_machine() {
        for ok in [
            "https://idp.example.com",
            "https://idp.example.com/realms/corp",
            "http://127.0.0.1:8080",
            "http://localhost:9000/oidc",
            "http://[::1]:4000",
        ] {
            assert!(secure_url(ok), "{ok}");
        }
        for bad in [
            "http://idp.example.com",
            "http://127.0.0.1.evil.example",
            "http://127.0.0.1@evil.example",
            "http://localhost.evil.example/",
            "ftp://idp.example.com",
            "idp.example.com",
        ] {
            assert!(!secure_url(bad), "{bad}");
        }
        let text = "[identity]\nissuer = \"http://idp.example.com\"\naudience = \"weir\"\n";
        let err = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be an https:// URL"), "{err}");
    }

    #[test]
    fn gateway_public_host_and_client_ca() {
        let parse = |extra: &str| {
            Config::parse(
                Path::new("/etc/weir/w.toml"),
                &format!("[gateway]\npostgres_listen = \"0.0.0.0:6432\"\n{extra}"),
            )
        };
        let c = parse("public_host = \"db-gw.corp.example\"\ntls_ca = \"ca.pem\"\n").unwrap();
        assert_eq!(c.gateway.public_host.as_deref(), Some("db-gw.corp.example"));
        assert_eq!(c.gateway.tls_ca, Some(PathBuf::from("/etc/weir/ca.pem")));
        let c = parse("public_host = \"fd00::17\"\n").unwrap();
        assert_eq!(c.gateway.public_host.as_deref(), Some("fd00::17"));
        for bad in [
            "",
            "gw host",
            "gw' sslmode=disable",
            "gw\\n",
            "gw:6432",
            "[fd00::17]",
        ] {
            let err = parse(&format!("public_host = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("expected a host name or an IP address"),
                "{bad}: {err}"
            );
        }
    }

    const CONTRACT: &str = r#"
[gateway]
postgres_listen = "127.0.0.1:6432"
mysql_listen    = "127.0.0.1:3307"
http_listen     = "127.0.0.1:8080"
store           = "sqlite://weir.db"
tls_cert = "cert.pem"
tls_key  = "key.pem"

[identity]
issuer = "https://idp.example.com"
audience = "weir"
groups_claim = "groups"

[[identity.static]]
name = "alice"
kind = "human"
groups = ["developers"]
token = "alice-demo-token"

[[target]]
name = "shop"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:5432"
database = "shop"
user = "postgres"
password_env = "SHOP_DB_PASSWORD"
[target.tables."public.customers"]
sensitivity = "pii"
[target.columns."public.customers.notes"]
mask = "redact"

[policy]
defaults = true
files = ["policy/*.cedar"]

[approvals]
timeout = "120s"
auto_repeat_window = "1h"
approvers = ["dba"]

[audit]
signing_key = "audit.key"
"#;

    #[test]
    fn the_contract_example_loads() {
        let c = Config::parse(Path::new("/etc/weir/weir.toml"), CONTRACT).unwrap();
        assert_eq!(
            c.gateway.store,
            StoreUrl::Sqlite("/etc/weir/weir.db".into())
        );
        assert_eq!(c.targets[0].environment, Environment::Production);
        assert_eq!(c.targets[0].upstream_server_name, "127.0.0.1");
        assert_eq!(c.identity.statics[0].kind, IdentityKind::Human);
        assert_eq!(c.approvals.timeout, Duration::from_secs(120));
        assert_eq!(c.audit.signing_key, PathBuf::from("/etc/weir/audit.key"));
        assert_eq!(
            c.targets[0].tables["public.customers"]
                .sensitivity
                .as_deref(),
            Some("pii")
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[gateway]\npostgres_listen = \"127.0.0.1:1\"\nlisten_postgres = \"x\"\n";
        let err = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("w.toml"), "{err}");
        assert!(err.contains("listen_postgres"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_key_in_target_is_named() {
        let text = "[[target]]\nname=\"a\"\nengine=\"postgres\"\nenvironment=\"dev\"\nupstream=\"h:1\"\nuser=\"u\"\npassword_env=\"P\"\npasword_file=\"x\"\n";
        let err = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pasword_file") && err.contains("line 8"),
            "{err}"
        );
    }

    #[test]
    fn credentials_need_exactly_one_reference() {
        let text = "[[target]]\nname=\"a\"\nengine=\"postgres\"\nenvironment=\"dev\"\nupstream=\"h:1\"\nuser=\"u\"\n";
        let err = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("password_env or password_file"), "{err}");
    }

    #[test]
    fn password_is_read_from_file_without_newline() {
        let dir = std::env::temp_dir().join(format!("weir-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let text = "[[target]]\nname=\"a\"\nengine=\"postgres\"\nenvironment=\"dev\"\nupstream=\"h:1\"\nuser=\"u\"\npassword_file=\"pw\"\n";
        let c = Config::parse(&dir.join("weir.toml"), text).unwrap();
        assert_eq!(c.targets[0].password().unwrap(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
