//! The MySQL adapter: one client connection of the MySQL listener, first byte to last.
//!
//! Stages: greeting → TLS (SSLRequest) → handshake response → the token, asked for with
//! `mysql_clear_password` (only over TLS or from loopback, as the PostgreSQL side asks for a
//! cleartext password) → the upstream session, logged in with the target's credentials →
//! commands. Every command is read whole and answered whole before the next: MySQL's
//! protocol is strictly request–response.
//!
//! Commands: COM_QUERY goes through the pipeline (MySQL analysis, decide, guards, admit —
//! write-ahead: a pure read is forwarded while its events flush and its answer read only
//! once they are durable; anything else is forwarded after —, approval, the row bound's
//! bracket) and its results through the result stage ([`results`]). COM_INIT_DB and
//! COM_FIELD_LIST are decided as the statements they stand for (`USE db`, `SHOW COLUMNS`).
//! The binary protocol: COM_STMT_PREPARE is analyzed and decided (a denial never reaches the
//! server), COM_STMT_EXECUTE is decided again from that analysis and runs like a text, its
//! binary rows masked; FETCH, RESET, SEND_LONG_DATA and CLOSE name statements Weir saw
//! prepared (any other id gets 1243, MariaDB's "last prepared" id is resolved by Weir).
//! COM_PING, COM_QUIT, COM_RESET_CONNECTION and COM_SET_OPTION are handled; every other
//! command (COM_CHANGE_USER, replication, bulk execute, …) is refused: fail closed.

pub(crate) mod catalog;
pub(crate) mod conn;
mod prepared;
mod results;
pub(crate) mod threads;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{info, warn, Instrument};
use weir_analyze::mysql::Mode;
use weir_analyze::{Scope, StatementKind};
use weir_audit::Event;
use weir_config::{Engine, Target};
use weir_policy::{Decision, Verdict};
use weir_wire::mysql::{
    cap, com, status, AuthSwitch, ErrPacket, First, Handshake, HandshakeResponse, OkPacket,
};

use self::conn::{Conn, ConnError};
use self::prepared::{unknown_statement, with_id, Prepared};
use crate::pipeline::approval::{self, Ask};
use crate::pipeline::write_ahead::{Durability, TxPosition};
use crate::pipeline::{self, Channel, Decider, Item, Refusal, RefusalKind, SessionInfo};
use crate::stream::Stream;
use crate::Shared;

/// What Weir tells clients it is before it has seen a target's server.
const DEFAULT_VERSION: &str = "8.0.35-weir";

/// The version the MySQL targets' server announces, which Weir repeats in its greeting:
/// clients adapt to it (collations, the `5.5.5-` prefix of MariaDB), and the greeting comes
/// before the client names its target. Learned once, from the first MySQL target's greeting.
static SERVER_VERSION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

async fn server_version(shared: &Shared) -> String {
    let known = SERVER_VERSION
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(v) = known {
        return v;
    }
    let first = shared
        .config
        .targets
        .iter()
        .find(|t| t.engine == Engine::Mysql);
    let probed = match first {
        Some(t) => upstream::server_version(t, shared.config.gateway.max_message_size).await,
        None => None,
    };
    match probed {
        Some(v) => {
            let v = format!("{v}-weir");
            *SERVER_VERSION.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.clone());
            v
        }
        None => DEFAULT_VERSION.to_owned(),
    }
}
/// utf8mb4_general_ci: known to MySQL and MariaDB alike.
const CHARSET: u8 = 45;
/// Most columns a result may declare (MySQL's own limit).
const MAX_COLUMNS: usize = 4096;

/// A session-ending error, told to the client as an ERR packet when it still listens.
#[derive(Debug)]
struct Fatal {
    code: u16,
    sqlstate: &'static str,
    message: String,
}

impl Fatal {
    fn new(code: u16, sqlstate: &'static str, message: impl Into<String>) -> Fatal {
        Fatal {
            code,
            sqlstate,
            message: message.into(),
        }
    }

    fn protocol(e: impl std::fmt::Display) -> Fatal {
        Fatal::new(1043, "08S01", format!("weir: protocol violation: {e}"))
    }

    fn packet(&self) -> Vec<u8> {
        ErrPacket::new(self.code, self.sqlstate, &self.message).encode()
    }
}

impl From<ConnError> for Fatal {
    fn from(e: ConnError) -> Fatal {
        match e {
            ConnError::Closed => Fatal::new(2013, "HY000", "connection closed"),
            other => Fatal::protocol(other),
        }
    }
}

/// A pipeline refusal as MySQL reports it: 1227 (42000) for a denial, 1317 (70100) for a
/// withdrawn request, 1105 (HY000) when Weir could not run it safely.
fn refusal_packet(r: &Refusal) -> Vec<u8> {
    let (code, state) = match r.kind {
        RefusalKind::Denied => (1227, "42000"),
        RefusalKind::Cancelled => (1317, "70100"),
        RefusalKind::Unavailable => (1105, "HY000"),
    };
    let mut message = r.message.clone();
    if let (Some(id), false) = (&r.request, r.message.contains("request")) {
        message.push_str(&format!(" (approval request {id})"));
    }
    ErrPacket::new(code, state, &message).encode()
}

/// Runs one connection of the MySQL listener.
pub(crate) async fn run(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    run_stream(Stream::Plain(tcp), peer, shared, Channel::Wire).await
}

/// Runs one in-process client of the MySQL adapter (the MCP server's tool calls on a MySQL
/// target): the same session as over the listener, on one end of a pipe.
pub(crate) async fn run_pipe(
    pipe: tokio::io::DuplexStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    channel: Channel,
) {
    run_stream(Stream::Pipe(pipe), peer, shared, channel).await
}

async fn run_stream(stream: Stream, peer: SocketAddr, shared: Arc<Shared>, channel: Channel) {
    let session = crate::pg::NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let name = match channel {
        Channel::Wire => "mysql",
        other => other.as_str(),
    };
    let span = tracing::info_span!("session", id = session, peer = %peer, channel = name, identity = tracing::field::Empty, target = tracing::field::Empty);
    async move {
        let max = shared.config.gateway.max_message_size;
        let mut client = Conn::new(stream, max);
        if let Err(f) = start(&mut client, peer, session, &shared, channel).await {
            info!(code = f.code, message = %f.message, "session refused");
            let _ = client.send(&f.packet()).await;
            client.shutdown().await;
        }
    }
    .instrument(span)
    .await
}

/// A nonce of printable bytes (clients treat it as a C string).
fn nonce() -> Result<Vec<u8>, Fatal> {
    let mut n = [0u8; 20];
    getrandom::fill(&mut n).map_err(|e| Fatal::new(1105, "HY000", format!("weir: {e}")))?;
    Ok(n.iter().map(|b| b % 94 + 33).collect())
}

async fn start(
    client: &mut Conn,
    peer: SocketAddr,
    session: u64,
    shared: &Arc<Shared>,
    channel: Channel,
) -> Result<(), Fatal> {
    let deadline = tokio::time::Instant::now() + shared.config.gateway.connect_timeout;
    let within =
        |what: &'static str| move |_| Fatal::new(2013, "HY000", format!("weir: {what} timed out"));
    let server_caps = upstream::FORWARDED_CAPS | cap::SSL | cap::CONNECT_ATTRS;
    let hello = Handshake {
        server_version: server_version(shared).await.into_bytes(),
        connection_id: u32::try_from(session % u64::from(u32::MAX)).unwrap_or(0),
        auth_data: nonce()?,
        capabilities: server_caps,
        charset: CHARSET,
        status: status::AUTOCOMMIT,
        auth_plugin: b"mysql_native_password".to_vec(),
    };
    client.seq = 0;
    client.send(&hello.encode()).await?;
    let mut first = tokio::time::timeout_at(deadline, client.read_exact_packet())
        .await
        .map_err(within("the handshake"))??;
    if HandshakeResponse::is_ssl_request(&first) {
        if client.buffered() > 0 {
            return Err(Fatal::protocol("bytes after the SSL request"));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut client.stream, Stream::Closed) else {
            return Err(Fatal::protocol("a second SSL request"));
        };
        let tls = tokio::time::timeout_at(deadline, shared.front.tls_acceptor.accept(tcp))
            .await
            .map_err(within("the TLS handshake"))?
            .map_err(|e| Fatal::protocol(format!("TLS handshake failed: {e}")))?;
        client.stream = Stream::Server(Box::new(tls));
        first = tokio::time::timeout_at(deadline, client.read())
            .await
            .map_err(within("the handshake"))??;
    }
    let response = HandshakeResponse::decode(&first).map_err(Fatal::protocol)?;
    let user = String::from_utf8_lossy(&response.user).into_owned();
    if user.is_empty() {
        return Err(Fatal::new(
            1045,
            "28000",
            "weir: no user name given: connect with -u <identity>",
        ));
    }
    let database = response
        .database
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .ok_or_else(|| {
            Fatal::new(
                1046,
                "3D000",
                "weir: no database given: the database name picks the target",
            )
        })?;
    let target = shared.config.target(&database).cloned().ok_or_else(|| {
        Fatal::new(
            1049,
            "42000",
            format!("weir: no target named \"{database}\""),
        )
    })?;
    if target.engine != Engine::Mysql {
        return Err(Fatal::new(
            1049,
            "42000",
            format!("weir: target \"{database}\" is not a MySQL target"),
        ));
    }
    if !client.stream.is_private() && !peer.ip().is_loopback() {
        return Err(Fatal::new(
            1045,
            "28000",
            "weir: connections from other hosts must use TLS (--ssl)",
        ));
    }
    if response.capabilities & cap::PLUGIN_AUTH == 0 {
        return Err(Fatal::new(
            1045,
            "28000",
            "weir: the client must support authentication plugins",
        ));
    }
    // The token itself is the password: asked for in clear (the channel is private or
    // loopback), as the PostgreSQL listener asks for a cleartext password.
    let token = if response.auth_plugin.as_deref() == Some(b"mysql_clear_password") {
        response.auth_response.clone()
    } else if client_name(&response) == Some(b"libmysql".as_slice()) {
        // MySQL's own client library refuses the cleartext plugin unless told otherwise;
        // it is asked through caching_sha2_password's full authentication, which over TLS
        // is the password as typed (a scramble could not be checked against a token stored
        // as a hash). Without TLS that would need the server's RSA key: refused.
        if !client.stream.is_tls() {
            return Err(Fatal::new(
                1045,
                "28000",
                "weir: this client sends its password in clear only over TLS: connect with --ssl-mode=REQUIRED",
            ));
        }
        let switch = AuthSwitch {
            plugin: b"caching_sha2_password".to_vec(),
            data: nonce()?,
        };
        client.send(&switch.encode()).await?;
        let _scramble = tokio::time::timeout_at(deadline, client.read())
            .await
            .map_err(within("authentication"))??;
        // AuthMoreData: "perform full authentication".
        client.send(&[0x01, 0x04]).await?;
        tokio::time::timeout_at(deadline, client.read())
            .await
            .map_err(within("authentication"))??
    } else {
        let switch = AuthSwitch {
            plugin: b"mysql_clear_password".to_vec(),
            data: Vec::new(),
        };
        client.send(&switch.encode()).await?;
        tokio::time::timeout_at(deadline, client.read())
            .await
            .map_err(within("authentication"))??
    };
    let token = token.strip_suffix(&[0]).unwrap_or(&token);
    let (identity, token_id) = match shared.auth.verify(&user, token).await {
        Ok(v) => v,
        Err(e) => {
            pipeline::login_failed(shared, peer, &user, &database, &e).await;
            return Err(Fatal::new(
                1045,
                "28000",
                format!("Access denied for user '{user}' (weir: the password must be a valid Weir token or ID token for this identity)"),
            ));
        }
    };
    // From here on every log line of the session names who and where (the JSON log
    // carries the span's fields).
    tracing::Span::current()
        .record("identity", identity.name.as_str())
        .record("target", target.name.as_str());
    let (person, person_token) = match &identity.on_behalf_of {
        Some(name) => match shared.auth.person(name) {
            Ok((p, token)) => (Some(p), token),
            Err(e) => {
                return Err(Fatal::new(
                    1045,
                    "28000",
                    format!("Access denied for user '{user}' (weir: {e})"),
                ))
            }
        },
        None => (None, None),
    };
    let mut up = upstream::connect(
        &target,
        shared.upstreams.tls.get(&target.name).cloned().flatten(),
        response.capabilities,
        CHARSET,
        shared.config.gateway.max_message_size,
        shared.config.gateway.connect_timeout,
    )
    .await
    .map_err(|e| {
        crate::metrics::upstream_connect_failed(&target.name);
        warn!(target = %target.name, cause = %e, "cannot open the upstream session");
        // 1105 (ER_UNKNOWN_ERROR), a server code: 2003 is the client library's own code
        // for "cannot connect", and libmariadb reports a server that sends a 2xxx code
        // during authentication as "Received malformed packet".
        Fatal::new(
            1105,
            "HY000",
            format!(
                "weir: cannot connect to target \"{}\"; the gateway log has the cause",
                target.name
            ),
        )
    })?;

    let end = Arc::new(crate::grants::SessionEnd::default());
    if let Some(id) = token_id {
        shared.grants.token_session(id, session, &end);
    }
    if let Some(id) = person_token {
        shared.grants.depend_on_token(id, session, &end);
    }
    let tls = client.stream.is_tls();
    info!(identity = %identity.name, kind = identity.kind.as_str(), target = %target.name, tls, upstream_version = %up.server_version, upstream_connection = up.connection_id, "session started");
    // Weir's own query of the session's lexing mode is on record before it runs, with the
    // session's opening (one flush for both).
    let mode_recorded = shared.audit.append(mode_statement(session, &target));
    pipeline::session_opened(
        shared,
        pipeline::Opening {
            session,
            identity: &identity,
            target: &target,
            peer,
            tls,
            channel,
        },
    )
    .await
    .map_err(|r| Fatal::new(1105, "HY000", r.message))?;
    mode_recorded.wait().await.map_err(|e| {
        Fatal::new(
            1105,
            "HY000",
            format!("weir: cannot record Weir's own statement, so the session is refused: {e}"),
        )
    })?;
    let mode = read_mode(&mut up.conn, &target).await?;
    if channel == Channel::Mcp {
        // `[mcp] statement_timeout`, as the server bounds a statement: MariaDB's
        // max_statement_time (seconds), MySQL's max_execution_time (ms, SELECT only).
        let ms = shared.config.mcp.statement_timeout.as_millis().max(1);
        let sql = if up.server_version.contains("MariaDB") {
            format!("SET SESSION max_statement_time = {:.3}", ms as f64 / 1000.0)
        } else {
            format!("SET SESSION max_execution_time = {ms}")
        };
        shared
            .audit
            .append(pipeline::own_statement(
                session,
                &target.name,
                "session",
                &sql,
                "weir.mcp-statement-timeout",
            ))
            .wait()
            .await
            .map_err(|e| {
                Fatal::new(
                    1105,
                    "HY000",
                    format!(
                        "weir: cannot record Weir's own statement, so the session is refused: {e}"
                    ),
                )
            })?;
        upstream::query(&mut up.conn, &sql).await.map_err(|e| {
            Fatal::new(
                1105,
                "HY000",
                format!("weir: cannot bound the session's statements: {e}"),
            )
        })?;
    }

    let info = SessionInfo::open(
        shared,
        session,
        channel,
        &target,
        identity,
        person,
        Some(peer),
        &end,
    )
    .await
    .map_err(|e| Fatal::new(1105, "HY000", e.to_string()))?;
    let ok = OkPacket {
        status: up.status,
        ..OkPacket::default()
    };
    let up_connection = up.connection_id;
    client.send(&ok.encode()).await?;
    let mut s = Session {
        decider: Decider::new(Scope::new(&target.user, None)),
        scope: Scope::new(&target.user, None),
        info,
        end,
        up: up.conn,
        mode,
        mode_stale: false,
        status: up.status,
        requests: 0,
        prepared: HashMap::new(),
        last_prepared: None,
        kill_mapped: false,
        opened_cursor: None,
        diagnostics_sensitive: false,
    };
    shared.front.mysql_threads.register(
        session,
        &s.info.identity_name,
        &s.info.target_name,
        up_connection,
    );
    let reason = s.serve(client).await;
    shared.front.mysql_threads.remove(session);
    let (reason, fatal) = match reason {
        Ok(why) => (why.to_owned(), None),
        Err(f) => (f.message.clone(), Some(f)),
    };
    if let Some(f) = &fatal {
        let _ = client.send(&f.packet()).await;
    }
    client.shutdown().await;
    s.up.seq = 0;
    let _ = s.up.send(&[com::QUIT]).await;
    s.up.shutdown().await;
    info!(reason = %reason, "session ended");
    pipeline::session_closed(&s.info, s.requests, reason).await;
    Ok(())
}

/// The `_client_name` connection attribute (`libmysql`, `libmariadb`, `pymysql`, …).
fn client_name(r: &HandshakeResponse) -> Option<&[u8]> {
    let mut attrs = weir_wire::mysql::Reader::new(r.attributes.as_deref()?);
    while !attrs.is_empty() {
        let key = attrs.lenenc().ok()?;
        let value = attrs.lenenc().ok()?;
        if key == b"_client_name" {
            return Some(value);
        }
    }
    None
}

/// What Weir reads of a session before it analyzes anything in it: how the server will
/// read text (`sql_mode`) and in which character set.
const MODE_QUERY: &str = "SELECT @@SESSION.sql_mode, @@SESSION.character_set_client";

/// Weir's query of a session's mode, as the trail records it.
fn mode_statement(session: u64, target: &Target) -> Event {
    pipeline::own_statement(
        session,
        &target.name,
        "session",
        MODE_QUERY,
        "weir.session-mode",
    )
}

/// Reads the session's lexing mode from the server (the oracle). A character set in which
/// a multibyte character can hold a backslash or quote byte ends the session.
async fn read_mode(up: &mut Conn, target: &Target) -> Result<Mode, Fatal> {
    let rows = upstream::query(up, MODE_QUERY).await.map_err(|e| {
        Fatal::new(
            1105,
            "HY000",
            format!("weir: cannot read the session's sql_mode: {e}"),
        )
    })?;
    let row = rows.rows.first().cloned().unwrap_or_default();
    let sql_mode = row.first().cloned().flatten().unwrap_or_default();
    let charset = row.get(1).cloned().flatten().unwrap_or_default();
    if weir_analyze::mysql::unsafe_charset(&charset) {
        return Err(Fatal::new(
            1227,
            "42000",
            format!("weir: denied by {}: the session's character set {charset} can hide a quote or backslash inside a multibyte character", weir_analyze::lexing::RULE),
        ));
    }
    Ok(Mode::new(&target.database).with_sql_mode(&sql_mode))
}

/// One MySQL session after login.
struct Session {
    info: SessionInfo,
    decider: Decider,
    /// Names are qualified by the MySQL analyzer (with the target's database); the scope
    /// only carries them through unchanged.
    scope: Scope,
    end: Arc<crate::grants::SessionEnd>,
    up: Conn,
    mode: Mode,
    /// The session's `sql_mode` may have changed: read it again before the next statement.
    mode_stale: bool,
    /// The server status of the last answer (`SERVER_STATUS_IN_TRANS`, …).
    status: u16,
    requests: u64,
    /// Server-side prepared statements, by the server's statement id.
    prepared: HashMap<u32, Prepared>,
    /// The id of the last statement prepared, if that PREPARE succeeded (MariaDB's
    /// "last prepared" id, `u32::MAX`, means this one).
    last_prepared: Option<u32>,
    /// The request is a KILL Weir mapped to one of the identity's own connections.
    kill_mapped: bool,
    /// A cursor the last execution opened: that execution's request and its columns'
    /// treatment.
    opened_cursor: Option<(u64, Arc<[results::Field]>)>,
    /// What SHOW WARNINGS would show may quote sensitive values (`results::Request`).
    diagnostics_sensitive: bool,
}

/// Who may see clear text, as this session's policy says.
struct SessionUnmask<'a>(&'a SessionInfo);

impl results::MayUnmask for SessionUnmask<'_> {
    fn may_unmask(&self, column: &str, label: &str) -> bool {
        self.0.may_unmask(column, label)
    }
}

impl Session {
    /// Commands until the client quits (Ok) or the session must end (Err).
    async fn serve(&mut self, client: &mut Conn) -> Result<&'static str, Fatal> {
        loop {
            let packet = tokio::select! {
                p = client.read() => match p {
                    Ok(p) => p,
                    Err(ConnError::Closed) => return Ok("client closed the connection"),
                    Err(e) => return Err(e.into()),
                },
                why = self.end.ended() => return Err(Fatal::new(1927, "70100", why)),
            };
            let Some((&command, body)) = packet.split_first() else {
                return Err(Fatal::protocol("an empty command"));
            };
            match command {
                com::QUIT => return Ok("client quit"),
                com::PING => client.send(&OkPacket::default().encode()).await?,
                com::QUERY => self.query(client, body.to_vec(), &packet, "query").await?,
                com::INIT_DB => {
                    let db = String::from_utf8_lossy(body).replace('`', "``");
                    let sql = format!("USE `{db}`");
                    self.query(client, sql.into_bytes(), &packet, "init_db")
                        .await?
                }
                com::FIELD_LIST => {
                    let table = body.split(|b| *b == 0).next().unwrap_or_default();
                    let table = String::from_utf8_lossy(table).replace('`', "``");
                    let sql = format!("SHOW COLUMNS FROM `{table}`");
                    self.query(client, sql.into_bytes(), &packet, "field_list")
                        .await?
                }
                com::RESET_CONNECTION => {
                    self.passthrough(client, &packet).await?;
                    self.decider = Decider::new(self.scope.clone());
                    self.mode_stale = true;
                    // The server drops the session's prepared statements; so does Weir.
                    self.prepared.clear();
                    self.last_prepared = None;
                }
                com::SET_OPTION => self.passthrough(client, &packet).await?,
                com::STMT_PREPARE => self.prepare(client, body, &packet).await?,
                com::STMT_EXECUTE => self.execute(client, packet).await?,
                com::STMT_FETCH => self.fetch(client, packet).await?,
                com::STMT_RESET => {
                    match self.statement(&packet) {
                        Some((id, _)) => {
                            if let Some(p) = self.prepared.get_mut(&id) {
                                p.cursor = None;
                            }
                            self.passthrough(client, &with_id(&packet, id)).await?
                        }
                        None => client.send(&unknown_statement(&packet, "mysqld_stmt_reset").encode()).await?,
                    }
                }
                // Neither answers. Long data is a parameter's value: data, never code.
                com::STMT_SEND_LONG_DATA => {
                    if let Some((id, _)) = self.statement(&packet) {
                        self.up.seq = 0;
                        self.up.send(&with_id(&packet, id)).await.map_err(upstream_failed)?;
                    }
                }
                com::STMT_CLOSE => {
                    if let Some((id, _)) = self.statement(&packet) {
                        self.prepared.remove(&id);
                        if self.last_prepared == Some(id) {
                            self.last_prepared = None;
                        }
                        self.up.seq = 0;
                        self.up.send(&with_id(&packet, id)).await.map_err(upstream_failed)?;
                    }
                }
                com::CHANGE_USER => {
                    return Err(Fatal::new(
                        1227,
                        "42000",
                        "weir: denied by weir.protocol.change-user: a session keeps the identity it logged in with; connect again",
                    ))
                }
                other => {
                    client
                        .send(
                            &ErrPacket::new(
                                1047,
                                "08S01",
                                &format!("weir: command 0x{other:02x} is not supported through the gateway"),
                            )
                            .encode(),
                        )
                        .await?
                }
            }
        }
    }

    /// A command Weir relays without deciding anything (it runs no statement): one answer.
    async fn passthrough(&mut self, client: &mut Conn, packet: &[u8]) -> Result<(), Fatal> {
        self.up.seq = 0;
        self.up.send(packet).await.map_err(upstream_failed)?;
        let answer = self.up.read().await.map_err(upstream_failed)?;
        if let Ok(ok) = OkPacket::decode(&answer) {
            self.status = ok.status;
        }
        client.send(&answer).await?;
        Ok(())
    }

    /// Reads the session's mode again when something may have changed it.
    async fn refresh_mode(&mut self) -> Result<(), Fatal> {
        if !self.mode_stale {
            return Ok(());
        }
        self.info
            .shared
            .audit
            .append(mode_statement(self.info.session, &self.info.target))
            .wait()
            .await
            .map_err(|e| {
                Fatal::new(
                    1105,
                    "HY000",
                    format!("weir: cannot record Weir's own statement: {e}"),
                )
            })?;
        self.mode = read_mode(&mut self.up, &self.info.target).await?;
        self.mode_stale = false;
        Ok(())
    }

    /// A statement text: decided, recorded, and run (or refused).
    async fn query(
        &mut self,
        client: &mut Conn,
        text: Vec<u8>,
        packet: &[u8],
        via: &'static str,
    ) -> Result<(), Fatal> {
        self.refresh_mode().await?;
        let analyzed = self.info.shared.analyzer.analyze_mysql(&text, &self.mode);
        if let Some(kill) = analyzed.as_ref().ok().and_then(|a| self.kill(a)) {
            // The KILL runs on the server's id of the caller's own connection.
            let mut mapped = vec![com::QUERY];
            mapped.extend_from_slice(kill.as_bytes());
            self.kill_mapped = true;
            let done = self.run(client, analyzed, &text, &mapped, via).await;
            self.kill_mapped = false;
            return done;
        }
        self.run(client, analyzed, &text, packet, via).await
    }

    /// A text that is one KILL of one of this identity's connections on this target: the
    /// statement to run instead, naming the server's id.
    fn kill(&self, analysis: &weir_analyze::Analysis) -> Option<String> {
        let [only] = &analysis.statements[..] else {
            return None;
        };
        let (what, id) = only.name.as_deref()?.split_once(' ')?;
        if only.node != "Kill" || !matches!(what, "query" | "connection") {
            return None;
        }
        let id = id.parse().ok()?;
        let upstream = self.info.shared.front.mysql_threads.resolve(
            id,
            &self.info.identity_name,
            &self.info.target_name,
        )?;
        Some(format!("KILL {} {upstream}", what.to_uppercase()))
    }

    /// The items of one request: decided, with the MySQL target's own rules and the guards.
    async fn decide(
        &mut self,
        analyzed: Result<Arc<weir_analyze::Analysis>, weir_analyze::AnalyzeError>,
        text: &[u8],
        via: &'static str,
    ) -> Vec<Item> {
        let decision = self
            .decider
            .decide_analyzed(&self.info, &self.end, analyzed, text);
        let _ = self.decider.take_pending();
        let decision = own_database_only(decision, &self.info.target.database, self.kill_mapped);
        let mut items = vec![Item::new(via, decision)];
        pipeline::guards::guard_state_sinks(&self.info, &mut items).await;
        pipeline::guards::guard_copies(&self.info, &self.scope, &mut items).await;
        items
    }

    /// Decides, records and runs (or refuses) one request: a text, or a prepared
    /// statement's execution (`packet` is what goes to the server).
    async fn run(
        &mut self,
        client: &mut Conn,
        analyzed: Result<Arc<weir_analyze::Analysis>, weir_analyze::AnalyzeError>,
        text: &[u8],
        packet: &[u8],
        via: &'static str,
    ) -> Result<(), Fatal> {
        self.requests += 1;
        let id = self.requests;
        let items = self.decide(analyzed, text, via).await;
        let verdict = pipeline::overall(&items);
        // Write-ahead as on the PostgreSQL side: a pure read that runs now may be forwarded
        // while its events flush (its answer is held until they are durable); anything
        // else waits for them first. `Other`: MySQL's writes never overlap, in a
        // transaction or not.
        let runs_now = matches!(verdict, Verdict::Allow).then_some(TxPosition::Other);
        let durability = match pipeline::admit(&self.info, id, &items, &verdict, runs_now).await {
            Ok(d) => d,
            Err(refusal) => {
                client.send(&refusal_packet(&refusal)).await?;
                return Ok(());
            }
        };
        match verdict {
            Verdict::Allow => self.forward(client, id, &items, packet, durability).await,
            Verdict::Deny { rule, reason } => {
                client
                    .send(&refusal_packet(&Refusal::denied(&rule, &reason)))
                    .await?;
                Ok(())
            }
            Verdict::RequireApproval { rule, reason } => {
                self.approval(client, id, &items, packet, &rule, &reason, None)
                    .await
            }
            Verdict::AllowBounded { rows, rule } => {
                self.bounded(client, id, &items, packet, rows, &rule).await
            }
        }
    }

    /// Forwards a decided, recorded command and relays its answers through the result
    /// stage; then the completion event.
    /// With a `durability`, the request's events are still flushing: the answer is read
    /// only once they are durable (it waits in the socket meanwhile), and if they fail it
    /// never reaches the client: an error, and the session ends.
    async fn forward(
        &mut self,
        client: &mut Conn,
        id: u64,
        items: &[Item],
        packet: &[u8],
        durability: Option<Durability>,
    ) -> Result<(), Fatal> {
        let shared = Arc::clone(&self.info.shared);
        let catalog = match &self.info.mask {
            Some(cache) => {
                if let Err(e) = cache.ensure(&shared, &self.info.target).await {
                    warn!(cause = %e, "cannot load the masking catalog; unknown tables are masked");
                }
                Some(cache.snapshot())
            }
            None => None,
        };
        // A MySQL request is one text: one item, its statements in order.
        let statements = items
            .first()
            .map(|i| Arc::clone(&i.decision.analysis.statements))
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let started = std::time::Instant::now();
        self.up.seq = 0;
        self.up.send(packet).await.map_err(upstream_failed)?;
        if let Some(durability) = durability {
            if let Err(e) = durability.wait().await {
                warn!(cause = %e, "an overlapped statement's event failed; its answer is withheld and the session closed");
                return Err(Fatal::new(
                    1105,
                    "58000",
                    format!("weir: the statement was not recorded in the audit trail ({e}), so its result is withheld; the session is closed"),
                ));
            }
            self.info.write_ahead.confirmed(id);
        }
        let unmask = SessionUnmask(&self.info);
        let req = results::Request {
            statements: &statements,
            catalog: catalog.as_deref(),
            database: &self.info.target.database,
            key: &shared.upstreams.mask_key,
            unmask: &unmask,
            max_columns: MAX_COLUMNS,
            field_list: items.first().is_some_and(|i| i.via == "field_list"),
            binary: items.first().is_some_and(|i| i.via == "execute"),
            diagnostics_sensitive: self.diagnostics_sensitive,
        };
        let mut outcome = results::relay(&mut self.up, client, &req)
            .await
            .map_err(relay_failed)?;
        self.opened_cursor = outcome.cursor.take().map(|c| (id, c));
        self.diagnostics_sensitive = outcome.diagnostics_sensitive;
        self.after(&statements, &outcome);
        pipeline::completed(
            &self.info,
            pipeline::Completion {
                request: id,
                tags: outcome.tags,
                rows: outcome.rows.max(outcome.affected),
                started,
                sqlstate: outcome.error.map(|(_, s)| s),
                masked: outcome.masked.iter().map(|m| m.to_string()).collect(),
            },
        );
        Ok(())
    }

    /// What an answered request changes in Weir's view of the session.
    fn after(&mut self, statements: &[weir_analyze::StatementFacts], outcome: &results::Outcome) {
        self.status = outcome.status;
        let ddl = statements
            .iter()
            .any(|f| matches!(f.kind, StatementKind::Ddl | StatementKind::Drop));
        if ddl || outcome.unknown_table {
            if let Some(cache) = &self.info.mask {
                cache.invalidate();
            }
        }
        // The server reports NO_BACKSLASH_ESCAPES in every status; a SET of sql_mode, or
        // code Weir cannot see, may change the rest of it.
        let reported = outcome.status & status::NO_BACKSLASH_ESCAPES != 0;
        if reported != self.mode.no_backslash_escapes
            || statements.iter().any(|f| {
                matches!(
                    f.setting.as_deref(),
                    Some(
                        "sql_mode"
                            | "*"
                            | "names"
                            | "charset"
                            | "character_set_client"
                            | "character_set_connection"
                            | "collation_connection"
                    )
                ) || f.unknown_effect
                    || !f.user_functions.is_empty()
            })
        {
            self.mode_stale = true;
        }
    }

    /// A request that needs approval: run at once (an earlier approval covers it), held
    /// until an approver decides (the client waits; one that leaves withdraws it), or
    /// refused.
    #[allow(clippy::too_many_arguments)]
    async fn approval(
        &mut self,
        client: &mut Conn,
        id: u64,
        items: &[Item],
        packet: &[u8],
        rule: &str,
        reason: &str,
        rows: Option<u64>,
    ) -> Result<(), Fatal> {
        match approval::ask(&self.info, id, items, rule, reason, rows).await {
            Ask::Go => self.forward(client, id, items, packet, None).await,
            Ask::Refuse(refusal) => {
                client.send(&refusal_packet(&refusal)).await?;
                Ok(())
            }
            Ask::Wait(waiting) => {
                info!(request = %waiting.id, "statement waits for approval");
                let (outcome, left) = approval::wait(&self.info, &waiting, client.closed()).await;
                let concluded = approval::conclude(&self.info, &waiting, &outcome).await;
                if left.is_some() {
                    return Err(Fatal::new(
                        2013,
                        "HY000",
                        "client left while waiting for approval",
                    ));
                }
                match concluded {
                    Ok(()) => self.forward(client, id, items, packet, None).await,
                    Err(refusal) => {
                        client.send(&refusal_packet(&refusal)).await?;
                        Ok(())
                    }
                }
            }
        }
    }

    /// One of Weir's own statements on the upstream session (a bracket's).
    async fn own(&mut self, sql: &str) -> Result<u16, Fatal> {
        upstream::query(&mut self.up, sql)
            .await
            .map(|r| r.status)
            .map_err(|e| {
                Fatal::new(
                    1105,
                    "HY000",
                    format!("weir: the row-bound bracket failed: {e}"),
                )
            })
    }

    /// Undoes a bracket: back to its savepoint (released), or its transaction rolled back.
    async fn undo_bracket(&mut self, in_tx: bool) -> Result<u16, Fatal> {
        if in_tx {
            self.own("ROLLBACK TO SAVEPOINT weir_row_bound").await?;
            self.own("RELEASE SAVEPOINT weir_row_bound").await
        } else {
            self.own("ROLLBACK").await
        }
    }

    /// A write under a row bound runs inside Weir's own transaction (or a savepoint in the
    /// client's): within the bound it is committed (released) and the client gets its OK;
    /// over it, it is rolled back and waits for approval with the exact count.
    async fn bounded(
        &mut self,
        client: &mut Conn,
        id: u64,
        items: &[Item],
        packet: &[u8],
        limit: u64,
        rule: &str,
    ) -> Result<(), Fatal> {
        let facts: Vec<&weir_analyze::StatementFacts> = items
            .iter()
            .flat_map(|i| i.decision.analysis.statements.iter())
            .collect();
        let [only] = facts.as_slice() else {
            let reason = format!(
                "a write bounded to {limit} rows ({rule}) cannot be counted in a request with several statements"
            );
            return self
                .approval(client, id, items, packet, rule, &reason, None)
                .await;
        };
        let kind = only.kind.as_str().to_uppercase();
        // In the client's transaction, or with autocommit off (where the write opens one that
        // the client may still roll back): a savepoint; else Weir's own transaction.
        let in_tx = self.status & status::IN_TRANS != 0 || self.status & status::AUTOCOMMIT == 0;
        self.own(if in_tx {
            "SAVEPOINT weir_row_bound"
        } else {
            "START TRANSACTION"
        })
        .await?;
        let started = std::time::Instant::now();
        self.up.seq = 0;
        self.up.send(packet).await.map_err(upstream_failed)?;
        let first = self.up.read().await.map_err(upstream_failed)?;
        match First::classify(&first).map_err(Fatal::protocol)? {
            First::Ok => {
                let mut ok = OkPacket::decode(&first).map_err(Fatal::protocol)?;
                if ok.affected_rows > limit {
                    self.undo_bracket(in_tx).await?;
                    let reason = format!(
                        "this {kind} would change {} rows, more than the {} allowed ({rule})",
                        crate::pg::group_digits(ok.affected_rows),
                        crate::pg::group_digits(limit),
                    );
                    info!(rows = ok.affected_rows, limit, "bounded write over its bound; rolled back");
                    return self
                        .approval(client, id, items, packet, rule, &reason, Some(ok.affected_rows))
                        .await;
                }
                let closed = self
                    .own(if in_tx {
                        "RELEASE SAVEPOINT weir_row_bound"
                    } else {
                        "COMMIT"
                    })
                    .await?;
                ok.status = closed;
                self.status = closed;
                client.send(&ok.encode()).await?;
                pipeline::completed(
                    &self.info,
                    pipeline::Completion {
                        request: id,
                        tags: vec![format!("OK {}", ok.affected_rows)],
                        rows: ok.affected_rows,
                        started,
                        sqlstate: None,
                        masked: Vec::new(),
                    },
                );
                Ok(())
            }
            First::Err => {
                let e = ErrPacket::decode(&first).map_err(Fatal::protocol)?;
                self.undo_bracket(in_tx).await?;
                // The server's own words, with quoted values withheld as in any result.
                let masked = ErrPacket::new(e.code, &e.sqlstate(), &withhold_quoted(&e.message));
                client.send(&masked.encode()).await?;
                pipeline::completed(
                    &self.info,
                    pipeline::Completion {
                        request: id,
                        tags: Vec::new(),
                        rows: 0,
                        started,
                        sqlstate: Some(e.sqlstate()),
                        masked: Vec::new(),
                    },
                );
                Ok(())
            }
            // A bounded write that returns rows (DELETE … RETURNING) or asks for a file:
            // Weir cannot hold its answers, so the session ends and the server rolls back.
            _ => Err(Fatal::new(
                1227,
                "42000",
                "weir: a bounded write that returns rows cannot be counted; the session ends and its transaction is rolled back",
            )),
        }
    }
}

/// Every quoted part of a server message, withheld.
fn withhold_quoted(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('\'').enumerate() {
        if i > 0 {
            out.push('\'');
        }
        out.push_str(if i % 2 == 1 { "****" } else { part });
    }
    out
}

fn upstream_failed(e: ConnError) -> Fatal {
    Fatal::new(
        2013,
        "HY000",
        format!("weir: lost the upstream session: {e}"),
    )
}

fn relay_failed(e: ConnError) -> Fatal {
    Fatal::new(
        2013,
        "HY000",
        format!("weir: relaying the answer failed: {e}"),
    )
}

/// A MySQL target reaches only its own database: a statement that names another (a table,
/// a stored function, `USE`) is denied ([`weir_analyze::mysql::foreign_name`]).
fn own_database_only(decision: Arc<Decision>, db: &str, kill_mapped: bool) -> Arc<Decision> {
    let foreign = |f: &weir_analyze::StatementFacts| weir_analyze::mysql::foreign_name(f, db);
    // Every session of a target shares one upstream user, so what the server shows of "the
    // user's own" threads is every identity's: their statements (with their constants) in
    // the process list, and KILL of their connections.
    let shared_user = |f: &weir_analyze::StatementFacts| -> Option<(&'static str, &'static str)> {
        let lists = f.node == "ShowProcessList"
            || f.tables_read
                .iter()
                .any(|t| t.eq_ignore_ascii_case("information_schema.processlist"));
        if lists {
            return Some((
                "weir.mysql-processlist",
                "the process list shows the statements of every identity on this target (they share one upstream user)",
            ));
        }
        (f.node == "Kill" && !kill_mapped).then_some((
            "weir.mysql-kill",
            "KILL reaches only your own connections on this target: that id is not one of them (Weir maps the ids, since every identity shares one upstream user)",
        ))
    };
    let mut verdicts = decision.verdicts.clone();
    let mut changed = false;
    for (f, v) in decision.analysis.statements.iter().zip(verdicts.iter_mut()) {
        if let Some((rule, reason)) = shared_user(f) {
            *v = Verdict::Deny {
                rule: rule.into(),
                reason: reason.into(),
            };
            changed = true;
        } else if let Some(name) = foreign(f) {
            *v = Verdict::Deny {
                rule: weir_analyze::mysql::OTHER_DATABASE.into(),
                reason: format!(
                    "this target reaches only the database {db}; the statement names {name}"
                ),
            };
            changed = true;
        }
    }
    if !changed {
        return decision;
    }
    Arc::new(Decision {
        verdicts,
        ..(*decision).clone()
    })
}
