//! One client connection, from the first byte to the last.
//!
//! Stages, in order: startup (TLS, cancel, parameters) → authenticate the token → open the
//! upstream → relay. The relay runs two halves in one task:
//!
//! - the **frontend half** reads client messages and buffers one complete request (a Query,
//!   or extended-protocol messages up to Sync or Flush), analyzes and decides it, appends its
//!   audit events and waits for them to be recorded, and only then forwards it — or, when it
//!   is denied, forwards a stand-in that makes the server abort the transaction (see
//!   [`crate::track::Op::Abort`]);
//! - the **backend half** reads server messages, passes each through the request's result
//!   stage and the [`Tracker`], and writes them to the client, streaming: it holds at most
//!   one read buffer and one incomplete message, whatever the result size.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info, warn, Instrument};
use weir_analyze::{AnalyzeError, Scope, StatementFacts};
use weir_audit::Event;
use weir_config::Target;
use weir_mask::{Env, Masker, Rewrite, Unmask};
use weir_policy::{Decision, Identity, PolicySession, Verdict};
use weir_wire::backend::{Authentication, Fields, Message as Backend, TxStatus};
use weir_wire::frontend::{Message as Frontend, Target as DescribeTarget};
use weir_wire::startup::StartupPacket;
use weir_wire::Header;

use crate::approvals::{CancelSignal, Outcome};
use crate::cancel::UpstreamKey;
use crate::catalog::CatalogCache;
use crate::io::{read_frame, FrameError};
use crate::stream::Stream;
use crate::track::{Action, Due, Entry, ExecInfo, Mode, ModeKind, Op, Pending, Probe, Tracker};
use crate::upstream::{self, UpstreamError};
use crate::Shared;

/// Most prepared statements (and portals) one session may hold. Each is kept with its
/// analysis, so the count must be bounded; PostgreSQL itself has no limit.
const MAX_PREPARED: usize = 10_000;
/// Requests forwarded but not yet answered; bounds memory when a client pipelines without
/// reading. The frontend half waits when it is reached.
const PIPELINE_DEPTH: usize = 1024;

/// Hands requests from the frontend half to the backend half. Both halves run in one task, so
/// this is a plain queue: the backend half drains it before it looks at any server bytes,
/// and no wake-up is needed per request.
struct Inbox {
    queue: std::sync::Mutex<VecDeque<Entry>>,
    in_flight: std::sync::atomic::AtomicUsize,
    space: Notify,
    /// Messages for the client that answer no server message (the notice that a statement
    /// waits for approval), and the wake-up for the backend half, which may be waiting on
    /// the server.
    to_client: std::sync::Mutex<Vec<Bytes>>,
    to_client_ready: Notify,
    /// The server's transaction status at its last ReadyForQuery ('I', 'T', 'E').
    tx_status: std::sync::atomic::AtomicU8,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            queue: Default::default(),
            in_flight: Default::default(),
            space: Notify::new(),
            to_client: Default::default(),
            to_client_ready: Notify::new(),
            tx_status: std::sync::atomic::AtomicU8::new(b'I'),
        }
    }
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, entry: Entry) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.lock().push_back(entry);
    }

    fn is_full(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= PIPELINE_DEPTH
    }

    /// Waits until fewer than [`PIPELINE_DEPTH`] requests are in flight. The caller must
    /// have written every queued request upstream first, or nothing could complete.
    async fn wait_for_space(&self) {
        loop {
            let space = self.space.notified();
            if !self.is_full() {
                return;
            }
            space.await;
        }
    }

    /// Waits until every forwarded request has been answered.
    async fn wait_idle(&self) {
        loop {
            let space = self.space.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            space.await;
        }
    }

    fn tx_status(&self) -> TxStatus {
        TxStatus::from_byte(self.tx_status.load(Ordering::Acquire)).unwrap_or(TxStatus::Idle)
    }

    /// Queues a message for the client, written between two whole server messages.
    fn tell_client(&self, frame: Bytes) {
        self.to_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(frame);
        self.to_client_ready.notify_one();
    }

    fn take_for_client(&self) -> Vec<Bytes> {
        std::mem::take(&mut *self.to_client.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn completed(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) <= PIPELINE_DEPTH {
            self.space.notify_one();
        }
    }
}
/// Read buffer size for both directions.
const READ_CHUNK: usize = 64 * 1024;
/// The portal name Weir executes in place of a denied request. It cannot exist: Weir never
/// forwards a Bind that names it.
const ABORT_PORTAL: &[u8] = b"weir\x1fdenied";

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A session-ending failure, reported to the client as a FATAL error when it still listens.
#[derive(Debug)]
struct Fatal {
    code: &'static str,
    message: String,
}

impl Fatal {
    fn new(code: &'static str, message: impl Into<String>) -> Fatal {
        Fatal {
            code,
            message: message.into(),
        }
    }

    fn protocol(e: impl std::fmt::Display) -> Fatal {
        Fatal::new("08P01", format!("weir: protocol violation: {e}"))
    }

    fn frame(&self) -> BytesMut {
        Backend::error(Fields::new("FATAL", self.code, &self.message))
    }
}

impl From<FrameError> for Fatal {
    fn from(e: FrameError) -> Self {
        Fatal::protocol(e)
    }
}

pub async fn run(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", id = session, peer = %peer);
    async move {
        let _ = tcp.set_nodelay(true);
        let mut client = Stream::Plain(tcp);
        let mut buf = BytesMut::with_capacity(1024);
        match startup(&mut client, &mut buf, peer, session, &shared).await {
            Ok(()) => {}
            Err(f) => {
                info!(code = f.code, message = %f.message, "session refused");
                let _ = client.write_all(&f.frame()).await;
                let _ = client.shutdown().await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Reads the first packet(s): TLS negotiation, cancel requests, then the startup message.
async fn startup(
    client: &mut Stream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    session: u64,
    shared: &Arc<Shared>,
) -> Result<(), Fatal> {
    // One deadline for the whole of startup and authentication, however many packets the
    // client sends on the way.
    let deadline = tokio::time::Instant::now() + shared.config.gateway.connect_timeout;
    let mut gss_refused = false;
    loop {
        let packet = tokio::time::timeout_at(deadline, read_startup(client, buf))
            .await
            .map_err(|_| Fatal::new("08006", "weir: startup timed out"))??;
        match packet {
            StartupPacket::SslRequest => {
                if client.is_tls() {
                    return Err(Fatal::protocol("SSLRequest inside TLS"));
                }
                // Bytes after SSLRequest and before the handshake would be read as if they
                // came over TLS (CVE-2021-23214): refuse them.
                if !buf.is_empty() {
                    return Err(Fatal::protocol("unexpected data after SSLRequest"));
                }
                let Stream::Plain(mut tcp) = std::mem::replace(client, Stream::Closed) else {
                    return Err(Fatal::protocol("TLS state"));
                };
                tcp.write_all(b"S").await.map_err(Fatal::protocol)?;
                let tls = tokio::time::timeout_at(deadline, shared.tls_acceptor.accept(tcp))
                    .await
                    .map_err(|_| Fatal::new("08006", "weir: TLS handshake timed out"))?
                    .map_err(|e| Fatal::new("08006", format!("weir: TLS handshake failed: {e}")))?;
                *client = Stream::Server(Box::new(tls));
            }
            StartupPacket::GssEncRequest => {
                if gss_refused {
                    return Err(Fatal::protocol("a second GSSENCRequest"));
                }
                gss_refused = true;
                if !buf.is_empty() {
                    return Err(Fatal::protocol("unexpected data after GSSENCRequest"));
                }
                client.write_all(b"N").await.map_err(Fatal::protocol)?;
            }
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                if let Some((key, signal)) = shared.cancels.lookup(process_id, &secret_key) {
                    signal.fire();
                    if let Err(e) = crate::cancel::send_cancel(&key).await {
                        warn!(cause = %e, "could not forward a cancel request");
                    }
                }
                // A cancel request gets no answer, whatever happened.
                let _ = client.shutdown().await;
                return Ok(());
            }
            startup @ StartupPacket::Startup { .. } => {
                return authenticate(client, buf, startup, peer, session, shared, deadline).await;
            }
        }
    }
}

async fn read_startup(client: &mut Stream, buf: &mut BytesMut) -> Result<StartupPacket, Fatal> {
    loop {
        if let Some(len) = StartupPacket::frame_len(buf).map_err(Fatal::protocol)? {
            if buf.len() >= len {
                let frame = buf.split_to(len).freeze();
                return StartupPacket::decode(frame).map_err(Fatal::protocol);
            }
            buf.reserve(len - buf.len());
        }
        let n = client.read_buf(buf).await.map_err(Fatal::protocol)?;
        if n == 0 {
            return Err(Fatal::protocol("connection closed during startup"));
        }
    }
}

/// Startup parameters a client may pass on to the upstream. Everything else is dropped or,
/// for `options` and `replication`, refused: settings given there would bypass policy.
fn forwardable(name: &str) -> bool {
    matches!(
        name,
        "application_name"
            | "client_encoding"
            | "DateStyle"
            | "datestyle"
            | "TimeZone"
            | "timezone"
            | "IntervalStyle"
            | "intervalstyle"
            | "extra_float_digits"
            | "search_path"
            | "lc_messages"
            | "lc_monetary"
            | "lc_numeric"
            | "lc_time"
            | "bytea_output"
            | "standard_conforming_strings"
            | "statement_timeout"
            | "lock_timeout"
            | "idle_in_transaction_session_timeout"
            | "geqo"
    )
}

async fn authenticate(
    client: &mut Stream,
    buf: &mut BytesMut,
    startup: StartupPacket,
    peer: SocketAddr,
    session: u64,
    shared: &Arc<Shared>,
    deadline: tokio::time::Instant,
) -> Result<(), Fatal> {
    let StartupPacket::Startup { minor, params } = &startup else {
        return Err(Fatal::protocol("expected a startup message"));
    };
    let user = startup
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Fatal::new(
                "28000",
                "weir: no user name given: connect with user=<identity>",
            )
        })?
        .to_owned();
    let database = startup.param("database").unwrap_or(&user).to_owned();
    if startup
        .param("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(Fatal::new(
            "42501",
            "weir: denied by weir.protocol.replication: replication connections bypass statement policy",
        ));
    }
    if startup
        .param("options")
        .is_some_and(|o| !o.trim().is_empty())
    {
        return Err(Fatal::new(
            "0A000",
            "weir: the startup parameter \"options\" is not accepted: settings given there would bypass policy; use SET after connecting",
        ));
    }
    let target = shared
        .config
        .target(&database)
        .cloned()
        .ok_or_else(|| Fatal::new("3D000", format!("weir: no target named \"{database}\"")))?;
    if target.engine != weir_config::Engine::Postgres {
        return Err(Fatal::new(
            "0A000",
            format!("weir: target \"{database}\" is not a PostgreSQL target"),
        ));
    }
    // The token is a bearer secret: never accept it in clear over a network.
    if !client.is_tls() && !peer.ip().is_loopback() {
        return Err(Fatal::new(
            "28000",
            "weir: connections from other hosts must use TLS (sslmode=require)",
        ));
    }

    let mut out = BytesMut::new();
    Backend::Authentication(Authentication::CleartextPassword).encode(&mut out);
    client.write_all(&out).await.map_err(Fatal::protocol)?;
    let (tag, body) = tokio::time::timeout_at(
        deadline,
        read_frame(client, buf, weir_wire::MAX_STARTUP_PACKET_SIZE),
    )
    .await
    .map_err(|_| Fatal::new("08006", "weir: authentication timed out"))??;
    if tag != b'p' {
        return Err(Fatal::protocol("expected a password message"));
    }
    let token = body.strip_suffix(&[0]).unwrap_or(&body);
    let (identity, token_id) = match shared.auth.verify(&user, token).await {
        Ok(verified) => verified,
        Err(e) => {
            let verdict = shared.failed_logins.failed(peer.ip(), &user);
            for summary in verdict.summaries {
                let _ = shared.audit.append(summary);
            }
            if verdict.record {
                info!(user = %user, target = %database, reason = %e, "authentication failed");
                let _ = shared
                    .audit
                    .append(Event::AuthFailed {
                        claimed: user.clone(),
                        client_addr: peer.to_string(),
                        target: database.clone(),
                        reason: e.to_string(),
                    })
                    .wait()
                    .await;
            } else {
                // Past the address's limit: counted for its window's summary, and not logged
                // one by one either.
                debug!(user = %user, target = %database, reason = %e, "authentication failed (counted)");
            }
            return Err(Fatal::new(
                "28P01",
                format!("weir: authentication failed for \"{user}\": the password must be a valid Weir token or ID token for this identity"),
            ));
        }
    };

    // INVARIANT: the session starts in the lexing mode Weir analyzes in
    // (`weir_analyze::lexing`): the client may not choose another, and
    // standard_conforming_strings is always sent as `on`, so neither a role's or database's
    // default nor a later RESET or DISCARD ALL can return to another.
    for (k, v) in params.iter().filter(|(k, _)| forwardable(k)) {
        if let Err(why) = weir_analyze::lexing::check_setting(k, Some(v)) {
            return Err(Fatal::new(
                "22023",
                format!("weir: denied by {}: {why}", weir_analyze::lexing::RULE),
            ));
        }
    }
    let mut client_params: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| forwardable(k) && k != "standard_conforming_strings")
        .cloned()
        .collect();
    client_params.push(("standard_conforming_strings".into(), "on".into()));
    let tls_cfg = shared.upstream_tls.get(&target.name).cloned().flatten();
    let upstream = upstream::connect(upstream::ConnectParams {
        target: &target,
        tls: tls_cfg,
        client_params,
        max_message: shared.config.gateway.max_message_size,
        timeout: shared.config.gateway.connect_timeout,
    })
    .await
    .map_err(|e| match e {
        UpstreamError::Refused(fields) => {
            let code = fields.code().unwrap_or("08006").to_owned();
            let msg = fields
                .get(b'M')
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            warn!(target = %target.name, code = %code, message = %msg, "upstream refused the session");
            Fatal {
                code: static_code(&code),
                message: format!("weir: upstream of target \"{}\": {msg}", target.name),
            }
        }
        other => {
            warn!(target = %target.name, cause = %other, "cannot open the upstream session");
            Fatal::new(
                "08006",
                format!("weir: cannot connect to target \"{}\"; the gateway log has the cause", target.name),
            )
        }
    })?;

    if let Some(why) = lexing_refusal(&upstream.startup_frames) {
        warn!(target = %target.name, reason = %why, "upstream session is not in a lexing mode Weir reads");
        return Err(Fatal::new(
            "22023",
            format!("weir: denied by {}: the target's session reports {why}; connect with client_encoding=UTF8", weir_analyze::lexing::RULE),
        ));
    }
    let key = UpstreamKey {
        addr: target.upstream.clone(),
        process_id: upstream.process_id,
        secret_key: upstream.secret_key.clone(),
    };
    let cancel = Arc::new(CancelSignal::default());
    let (pid, secret) = shared.cancels.register(key, Arc::clone(&cancel));
    let end = Arc::new(crate::grants::SessionEnd::default());
    if let Some(id) = token_id {
        shared.grants.token_session(id, session, &end);
    }
    let result = serve(
        client, buf, upstream, *minor, params, pid, secret, identity, target, peer, session,
        shared, cancel, end,
    )
    .await;
    shared.cancels.unregister(pid);
    result
}

/// The first ParameterStatus among `frames` that reports a lexing mode Weir does not analyze
/// in (`weir_analyze::lexing`), described.
fn lexing_refusal(frames: &[u8]) -> Option<String> {
    let mut rest = frames;
    while let Ok(Some(h)) = Header::parse(rest, usize::MAX) {
        let frame = rest.get(..h.frame_len())?;
        if h.tag == b'S' {
            if let Some(why) = reported_lexing_refusal(frame.get(Header::SIZE..)?) {
                return Some(why);
            }
        }
        rest = rest.get(h.frame_len()..)?;
    }
    None
}

/// A ParameterStatus body that reports a lexing mode Weir does not analyze in, described.
fn reported_lexing_refusal(body: &[u8]) -> Option<String> {
    let Ok(Backend::ParameterStatus { name, value }) =
        Backend::decode(b'S', Bytes::copy_from_slice(body))
    else {
        return None;
    };
    let name = String::from_utf8_lossy(&name);
    let value = String::from_utf8_lossy(&value);
    weir_analyze::lexing::check_reported(&name, &value)
        .err()
        .map(|why| format!("{name} = {value} ({why})"))
}

/// SQLSTATEs are five ASCII characters; keep the ones the upstream sends that clients act on.
fn static_code(code: &str) -> &'static str {
    match code {
        "53300" => "53300",
        "3D000" => "3D000",
        "57P03" => "57P03",
        "53000" => "53000",
        _ => "08006",
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    client: &mut Stream,
    buf: &mut BytesMut,
    upstream: upstream::Upstream,
    minor: u16,
    params: &[(String, String)],
    pid: i32,
    secret: [u8; 4],
    identity: Identity,
    target: Target,
    peer: SocketAddr,
    session: u64,
    shared: &Arc<Shared>,
    cancel: Arc<CancelSignal>,
    end: Arc<crate::grants::SessionEnd>,
) -> Result<(), Fatal> {
    let mut out = BytesMut::new();
    Backend::Authentication(Authentication::Ok).encode(&mut out);
    let unsupported: Vec<Bytes> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| Bytes::copy_from_slice(k.as_bytes()))
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        Backend::NegotiateProtocolVersion {
            newest_minor: 0,
            unsupported,
        }
        .encode(&mut out);
    }
    out.extend_from_slice(&upstream.startup_frames);
    Backend::BackendKeyData {
        process_id: pid,
        secret_key: Bytes::copy_from_slice(&secret),
    }
    .encode(&mut out);
    Backend::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    client.write_all(&out).await.map_err(Fatal::protocol)?;

    let tls = client.is_tls();
    info!(identity = %identity.name, kind = identity.kind.as_str(), target = %target.name, tls, "session started");
    let opened = shared.audit.append(Event::ConnectionOpened {
        session,
        identity: identity.name.clone(),
        identity_kind: identity.kind.as_str(),
        auth: identity.source,
        groups: identity.groups.clone(),
        attributes: identity.attributes.clone(),
        client_addr: peer.to_string(),
        target: target.name.clone(),
        tls,
    });
    if let Err(e) = opened.wait().await {
        return Err(Fatal::new(
            "58000",
            format!("weir: cannot record the connection, so it is refused: {e}"),
        ));
    }

    let target_info = target.policy_info();
    let policy = shared
        .policy
        .session(&identity, &target_info)
        .map_err(|e| {
            Fatal::new(
                "58000",
                format!("weir: cannot evaluate policy for this session, so it is refused: {e}"),
            )
        })?;
    let mask = if shared.config.masking.enabled {
        shared.catalogs.get(&target.name).cloned()
    } else {
        None
    };
    if let Some(cache) = &mask {
        // Load the catalog while the client composes its first request, not after it.
        let (cache, shared, target) = (Arc::clone(cache), Arc::clone(shared), target.clone());
        tokio::spawn(async move {
            if let Err(e) = cache.ensure(&shared, &target).await {
                warn!(cause = %e, "cannot load the masking catalog");
            }
        });
    }
    let ctx = Context {
        session,
        mask,
        identity_name: Arc::from(identity.name.as_str()),
        target_name: Arc::from(target.name.as_str()),
        upstream_addr: target.upstream.clone(),
        policy,
        identity,
        full_text: shared.config.audit.full_text_targets.contains(&target.name),
        target: target.clone(),
        shared: Arc::clone(shared),
        cancel,
        end,
    };
    let upstream::Upstream {
        stream: up,
        leftover,
        ..
    } = upstream;
    let pending_client = std::mem::take(buf);
    let client_stream = std::mem::replace(client, Stream::Closed);
    let (mut cr, mut cw) = crate::stream::split(client_stream);
    let (mut ur, mut uw) = crate::stream::split(up);
    let inbox = Inbox::default();
    let requests = AtomicU64::new(0);

    let search_path = params
        .iter()
        .find(|(k, _)| k == "search_path")
        .map(|(_, v)| v.as_str());
    let scope = Scope::new(&target.user, search_path);
    let mut front = FrontendHalf::new(&ctx, &inbox, pending_client, &requests, scope);
    let mut back = BackendHalf {
        ctx: &ctx,
        inbox: &inbox,
        tracker: Tracker::default(),
        buf: leftover,
        masker: ctx
            .mask
            .as_ref()
            .map(|_| Masker::new(shared.mask_key.clone())),
        catalog: ctx.mask.as_ref().map(|c| c.snapshot()).unwrap_or_default(),
        out: BytesMut::new(),
        held: BytesMut::new(),
    };
    let reason = tokio::select! {
        r = front.run(&mut cr, &mut uw) => r,
        r = back.run(&mut ur, &mut cw) => r,
        why = ctx.end.ended() => Err(Fatal::new("57P01", why)),
    };
    let (reason, fatal) = match reason {
        Ok(why) => (why.to_owned(), None),
        Err(f) => (f.message.clone(), Some(f)),
    };
    if let Some(f) = &fatal {
        let _ = cw.write_all(&f.frame()).await;
    }
    let _ = cw.shutdown().await;
    let _ = uw.shutdown().await;
    info!(reason = %reason, "session ended");
    let _ = shared
        .audit
        .append(Event::ConnectionClosed {
            session,
            identity: ctx.identity.name.clone(),
            target: ctx.target_name.to_string(),
            requests: requests.load(Ordering::Relaxed),
            reason,
        })
        .wait()
        .await;
    Ok(())
}

struct Context {
    session: u64,
    /// The target's masking catalog; `None` when results are not masked (`[masking]
    /// enabled = false`).
    mask: Option<Arc<CatalogCache>>,
    target: Target,
    /// Shared copies of the names every statement event carries.
    identity_name: Arc<str>,
    target_name: Arc<str>,
    upstream_addr: String,
    identity: Identity,
    policy: PolicySession,
    /// The audit trail keeps this target's statements as sent (`[audit] full_text_targets`),
    /// not normalized.
    full_text: bool,
    shared: Arc<Shared>,
    /// Fired by the client's cancel requests.
    cancel: Arc<CancelSignal>,
    /// Fired when the session must end (an access grant it relied on ended).
    end: Arc<crate::grants::SessionEnd>,
}

/// A statement that a request carries, for the audit record.
struct Item {
    via: &'static str,
    decision: Arc<Decision>,
    /// Columns its writes make sensitive (copies of sensitive values), recorded before it
    /// is forwarded.
    derived: Vec<weir_mask::DerivedTag>,
}

/// A decision the session reached, kept for texts with the same facts.
struct CachedDecision {
    /// Holds the facts the key is the address of (see `FrontendHalf::decide`).
    _facts: Arc<[StatementFacts]>,
    resolved: Arc<[StatementFacts]>,
    verdicts: Vec<Verdict>,
}

/// The frontend half: client → decide → upstream.
struct FrontendHalf<'a> {
    ctx: &'a Context,
    inbox: &'a Inbox,
    buf: BytesMut,
    /// Messages of the request being assembled, as received.
    batch: BytesMut,
    ops: VecDeque<Op>,
    items: Vec<Item>,
    /// The analysis of each prepared statement, by name (the unnamed one is "").
    statements: HashMap<Bytes, Arc<Decision>>,
    /// Which statement each portal was bound from, with the result formats asked for.
    portals: HashMap<Bytes, Arc<ExecInfo>>,
    /// After a denied request that ended with Flush: drop messages until Sync, as the
    /// server does after an error.
    skip_until_sync: bool,
    /// Verdicts already reached in this session, by the facts they were reached for, with
    /// those facts as resolved in the session's scope. Cleared when the scope changes.
    decisions: HashMap<usize, CachedDecision>,
    /// What this session's statements mean: search_path, SQL-level prepared statements.
    scope: Scope,
    /// The scope as the request being assembled would leave it, when one of its statements
    /// changes it. Becomes `scope` if the request is forwarded; dropped if it is denied.
    pending_scope: Option<Scope>,
    requests: &'a AtomicU64,
    /// The grants generation last looked at, and the grants this session relied on.
    grant_generation: u64,
    relied_on: std::collections::HashSet<String>,
    /// A request waiting for approval: decided and recorded, its messages still in `batch`
    /// and `ops`, not forwarded. The run loop waits for it before it takes more input.
    held: Option<Held>,
    /// A write under a row bound, decided and recorded, its messages still in `batch` and
    /// `ops`: the run loop runs it inside a bracket and checks the count.
    bounded: Option<Bounded>,
    /// A forwarded request ran code Weir cannot see (a function, DO, CALL, SQL from text),
    /// which may have changed how the server lexes: the next SQL text waits until it is
    /// answered, so its ParameterStatus (checked by the backend half) comes first.
    unseen_in_flight: bool,
    /// The request being assembled executes such code: more SQL text in it is refused,
    /// since the server would lex that text after the code ran.
    batch_unseen: bool,
}

/// Whether a decided statement runs code Weir cannot see into, which could change session
/// settings unseen (a function body's `set_config`, a DO block's SET, a `set_config` whose
/// setting is not a constant).
fn runs_unseen_code(decision: &Decision) -> bool {
    decision.analysis.statements.iter().any(|f| {
        f.unknown_effect || !f.user_functions.is_empty() || f.setting.as_deref() == Some("*")
    })
}

/// A write that may change at most `limit` rows.
struct Bounded {
    request: u64,
    items: Vec<Item>,
    next_scope: Option<Scope>,
    end: BatchEnd,
    limit: u64,
    rule: String,
}

/// A request that waits for an approver.
struct Held {
    request: u64,
    items: Vec<Item>,
    next_scope: Option<Scope>,
    end: BatchEnd,
    approval: String,
    /// The rule and why (a bounded write's count), for the client's NOTICE.
    subject: String,
    deadline_ms: u64,
    /// The session's cancel count before the request was recorded: a cancel after it (even
    /// one that arrives before the wait begins) withdraws the request.
    cancels_before: u64,
}

/// What asking for approval came to.
enum Ask {
    /// Run it: an earlier approval of the same statement covers it, or policy approved it.
    Go,
    /// Recorded as request `id`; the client waits.
    Wait { id: String, deadline_ms: u64 },
    /// It cannot be asked (the store or the trail failed): refuse with this error.
    Refuse(Fields),
}

impl<'a> FrontendHalf<'a> {
    fn new(
        ctx: &'a Context,
        inbox: &'a Inbox,
        buf: BytesMut,
        requests: &'a AtomicU64,
        scope: Scope,
    ) -> FrontendHalf<'a> {
        FrontendHalf {
            ctx,
            inbox,
            buf,
            batch: BytesMut::new(),
            ops: VecDeque::new(),
            items: Vec::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            skip_until_sync: false,
            decisions: HashMap::new(),
            scope,
            pending_scope: None,
            requests,
            grant_generation: u64::MAX,
            relied_on: Default::default(),
            held: None,
            bounded: None,
            unseen_in_flight: false,
            batch_unseen: false,
        }
    }

    /// Keeps policy's `granted` current: re-checked only when the gateway's set of active
    /// grants changed. A session that decides while holding a grant relies on it, and ends
    /// with it.
    fn check_grant(&mut self) {
        let grants = &self.ctx.shared.grants;
        let generation = grants.generation();
        if generation == self.grant_generation {
            return;
        }
        self.grant_generation = generation;
        let grant = grants.active_for(&self.ctx.identity.name, &self.ctx.target_name);
        if grant.is_some() != self.ctx.policy.granted() {
            self.ctx.policy.set_granted(grant.is_some());
            // Verdicts reached without (or with) the grant no longer hold.
            self.decisions.clear();
        }
        if let Some(g) = grant {
            if self.relied_on.insert(g.id.clone()) {
                info!(grant = %g.id, "session relies on an access grant");
                grants.depend(&g.id, self.ctx.session, &self.ctx.end);
            }
        }
    }

    async fn run<R, W>(&mut self, cr: &mut R, uw: &mut W) -> Result<&'static str, Fatal>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.ctx.shared.config.gateway.max_message_size;
        let mut out = BytesMut::with_capacity(READ_CHUNK);
        loop {
            // Every complete message in the buffer is handled before reading more.
            while let Some(h) = Header::parse(&self.buf, max).map_err(Fatal::protocol)? {
                if self.buf.len() < h.frame_len() {
                    self.buf.reserve(h.frame_len() - self.buf.len());
                    break;
                }
                if self.unseen_in_flight && matches!(h.tag, b'Q' | b'P') {
                    // Lexed only once the server has reported what that code left behind.
                    flush_upstream(uw, &mut out).await?;
                    self.inbox.wait_idle().await;
                    self.unseen_in_flight = false;
                }
                let frame = self.buf.split_to(h.frame_len());
                if self.on_frame(h.tag, frame, &mut out).await? {
                    if !out.is_empty() {
                        uw.write_all(&out).await.map_err(|e| {
                            Fatal::new("08006", format!("weir: upstream write failed: {e}"))
                        })?;
                    }
                    return Ok("client terminated");
                }
                if self.bounded.is_some() || self.held.is_some() {
                    // Earlier requests go now; this one runs in a bracket or waits for its
                    // approver.
                    flush_upstream(uw, &mut out).await?;
                    let client_stayed = match (self.bounded.take(), self.held.take()) {
                        (Some(bounded), _) => self.run_bounded(bounded, cr, uw, &mut out).await?,
                        (None, Some(held)) => self.wait_for_approval(held, cr, &mut out).await?,
                        (None, None) => true,
                    };
                    if !client_stayed {
                        let mut term = BytesMut::new();
                        Frontend::Terminate.encode(&mut term);
                        let _ = uw.write_all(&term).await;
                        return Ok("client disconnected while waiting for approval");
                    }
                }
                if self.inbox.is_full() {
                    // A client pipelining faster than it reads: forward what is queued, then
                    // wait for answers before taking more.
                    flush_upstream(uw, &mut out).await?;
                    self.inbox.wait_for_space().await;
                }
            }
            flush_upstream(uw, &mut out).await?;
            let n = read_more(cr, &mut self.buf)
                .await
                .map_err(|e| Fatal::new("08006", format!("weir: client read failed: {e}")))?;
            if n == 0 {
                // The client vanished without Terminate: end the upstream session too.
                let mut term = BytesMut::new();
                Frontend::Terminate.encode(&mut term);
                let _ = uw.write_all(&term).await;
                return Ok("client disconnected");
            }
        }
    }

    /// Handles one client message. Returns true when the session should end.
    async fn on_frame(
        &mut self,
        tag: u8,
        frame: BytesMut,
        out: &mut BytesMut,
    ) -> Result<bool, Fatal> {
        let frame = frame.freeze();
        let body = frame.slice(Header::SIZE..);
        let msg = Frontend::decode(tag, body).map_err(Fatal::protocol)?;
        // INVARIANT: no client message names the portal of Weir's denial stand-in, so that
        // Execute always fails and the denial always aborts the transaction.
        let names_abort_portal = match &msg {
            Frontend::Bind(b) => b.portal.as_ref() == ABORT_PORTAL,
            Frontend::Execute { portal, .. } => portal.as_ref() == ABORT_PORTAL,
            Frontend::Describe(DescribeTarget::Portal, name)
            | Frontend::Close(DescribeTarget::Portal, name) => name.as_ref() == ABORT_PORTAL,
            _ => false,
        };
        if names_abort_portal {
            return Err(Fatal::protocol(
                "the portal name is reserved by the gateway",
            ));
        }
        if self.skip_until_sync && !matches!(msg, Frontend::Sync | Frontend::Terminate) {
            return Ok(false);
        }
        match msg {
            Frontend::CopyData(_) | Frontend::CopyDone | Frontend::CopyFail(_) => {
                // COPY FROM STDIN data follows a statement that was already decided; the
                // server ignores these messages outside COPY. Keep them in order, and mark
                // where the copy ended for the tracker (see `Op::CopyEnd`).
                let end = !matches!(msg, Frontend::CopyData(_));
                if self.batch.is_empty() {
                    if end {
                        let id = self.requests.load(Ordering::Relaxed);
                        let mut marker = Pending::new(id, VecDeque::from([Op::CopyEnd]));
                        marker.audited = false;
                        self.send(Entry::Request(marker));
                    }
                    out.extend_from_slice(&frame);
                } else {
                    if end {
                        self.ops.push_back(Op::CopyEnd);
                    }
                    self.batch.extend_from_slice(&frame);
                }
            }
            Frontend::Terminate => {
                self.finish_batch(out, BatchEnd::Sync).await?;
                out.extend_from_slice(&frame);
                return Ok(true);
            }
            Frontend::FunctionCall(call) => {
                // A FunctionCall is its own request; in the middle of an unsynced extended
                // batch its answer could not keep the order the client expects.
                if !self.batch.is_empty() {
                    return Err(Fatal::protocol(
                        "FunctionCall inside an unfinished extended-protocol batch",
                    ));
                }
                // The fastpath interface calls a function by OID (libpq's and pgjdbc's
                // large-object calls): decided, recorded and run exactly as
                // `SELECT schema.fn($1, …)` would be. An OID Weir cannot resolve is refused.
                let name = match self.ctx.shared.catalog(&self.ctx.target.name) {
                    Some(cache) => cache
                        .function_by_oid(&self.ctx.shared, &self.ctx.target, call.oid as u32)
                        .await
                        .unwrap_or_else(|e| {
                            warn!(cause = %e, "cannot look up a fastpath call's function");
                            None
                        }),
                    None => None,
                };
                let Some(name) = name else {
                    return self
                        .refuse_function_call(
                            out,
                            &format!("-- fastpath call of function oid {}", call.oid),
                            &format!("function oid {} is not one Weir can resolve; call the function in SQL", call.oid),
                        )
                        .await
                        .map(|()| false);
                };
                let params: Vec<String> = (1..=call.args.len()).map(|i| format!("${i}")).collect();
                let sql = format!("SELECT {name}({})", params.join(", "));
                let decision = self.decide(sql.as_bytes())?;
                // A result of a function Weir cannot see into is masked in SQL; a fastpath
                // answer has no columns to mask, so such a call must be made in SQL.
                let opaque = decision
                    .analysis
                    .statements
                    .iter()
                    .any(|f| !f.user_functions.is_empty() || f.unknown_effect);
                if opaque && self.ctx.mask.is_some() {
                    return self
                        .refuse_function_call(
                            out,
                            &sql,
                            &format!("{name} is not a built-in function, and a fastpath call's result cannot be masked; call it in SQL"),
                        )
                        .await
                        .map(|()| false);
                }
                self.batch.extend_from_slice(&frame);
                // Answered like a simple query: a FunctionCallResponse or an error, then
                // ReadyForQuery.
                self.ops.push_back(Op::Query);
                self.items.push(Item {
                    via: "function_call",
                    decision,
                    derived: Vec::new(),
                });
                self.finish_batch(out, BatchEnd::Sync).await?;
            }
            Frontend::Password(_) => {
                return Err(Fatal::protocol("password message after authentication"))
            }
            Frontend::Query(sql) => {
                self.batch.extend_from_slice(&frame);
                self.ops.push_back(Op::Query);
                let decision = self.decide(&sql)?;
                self.items.push(Item {
                    via: "query",
                    decision,
                    derived: Vec::new(),
                });
                self.finish_batch(out, BatchEnd::Sync).await?;
            }
            Frontend::Sync => {
                if self.skip_until_sync {
                    self.skip_until_sync = false;
                }
                self.batch.extend_from_slice(&frame);
                self.ops.push_back(Op::Sync);
                self.finish_batch(out, BatchEnd::Sync).await?;
            }
            Frontend::Flush => {
                self.batch.extend_from_slice(&frame);
                self.finish_batch(out, BatchEnd::Flush).await?;
            }
            Frontend::Parse(p) => {
                self.batch.extend_from_slice(&frame);
                self.ops.push_back(Op::Parse);
                let mut decision = self.decide(&p.query)?;
                if self.batch_unseen {
                    decision = Arc::new(Decision {
                        analysis: Arc::clone(&decision.analysis),
                        verdicts: vec![Verdict::Deny {
                            rule: weir_analyze::lexing::RULE.into(),
                            reason: "this request executes code Weir cannot see (a function, DO, CALL) and then more SQL text, which the server would read in whatever mode that code left; send Sync before the next statement".into(),
                        }],
                    });
                }
                if !p.name.is_empty()
                    && !self.statements.contains_key(&p.name)
                    && self.statements.len() >= MAX_PREPARED
                {
                    return Err(Fatal::new(
                        "54000",
                        format!(
                            "weir: more than {MAX_PREPARED} prepared statements in one session"
                        ),
                    ));
                }
                if !matches!(
                    decision.overall(),
                    Verdict::Allow | Verdict::AllowBounded { .. }
                ) {
                    self.items.push(Item {
                        via: "parse",
                        decision: Arc::clone(&decision),
                        derived: Vec::new(),
                    });
                }
                if self.ctx.mask.is_some() {
                    // Masking needs every prepared statement's columns, also when the
                    // client never asks for them (it may Bind and Execute in a later
                    // request): Weir describes the statement itself and keeps the answer.
                    Frontend::Describe(DescribeTarget::Statement, p.name.clone())
                        .encode(&mut self.batch);
                    self.ops.push_back(Op::DescribeStatement {
                        name: p.name.clone(),
                        injected: true,
                    });
                }
                self.statements.insert(p.name, decision);
            }
            Frontend::Bind(b) => {
                self.batch.extend_from_slice(&frame);
                self.ops.push_back(Op::Bind);
                if let Some(d) = self.statements.get(&b.statement).cloned() {
                    if !b.portal.is_empty()
                        && !self.portals.contains_key(&b.portal)
                        && self.portals.len() >= MAX_PREPARED
                    {
                        return Err(Fatal::new(
                            "54000",
                            format!("weir: more than {MAX_PREPARED} portals in one session"),
                        ));
                    }
                    self.portals.insert(
                        b.portal,
                        Arc::new(ExecInfo {
                            statement: b.statement,
                            formats: b.result_formats,
                            decision: d,
                        }),
                    );
                }
            }
            Frontend::Describe(t, name) => {
                self.batch.extend_from_slice(&frame);
                self.ops.push_back(match t {
                    DescribeTarget::Statement => Op::DescribeStatement {
                        name,
                        injected: false,
                    },
                    DescribeTarget::Portal => Op::DescribePortal,
                });
            }
            Frontend::Execute { portal, .. } => {
                self.batch.extend_from_slice(&frame);
                let info = self.portals.get(&portal);
                self.ops.push_back(Op::Execute(
                    info.filter(|_| self.ctx.mask.is_some()).cloned(),
                ));
                let decision = match info {
                    Some(i) => Arc::clone(&i.decision),
                    // A portal Weir did not see bound: a cursor declared in SQL (whose
                    // DECLARE was decided) or a client error the server will report.
                    // It is decided as a cursor fetch; the client's portal name is recorded,
                    // never parsed as SQL.
                    None => {
                        let analysis = Arc::new(weir_analyze::Analysis::synthetic(
                            &format!("-- execute portal {:?}", String::from_utf8_lossy(&portal)),
                            vec![StatementFacts::new(weir_analyze::StatementKind::Cursor)],
                        ));
                        let scope = self.pending_scope.as_ref().unwrap_or(&self.scope);
                        Arc::new(
                            self.ctx
                                .shared
                                .policy
                                .decide(&self.ctx.policy, scope, &analysis),
                        )
                    }
                };
                self.batch_unseen |= runs_unseen_code(&decision);
                self.items.push(Item {
                    via: "execute",
                    decision,
                    derived: Vec::new(),
                });
            }
            Frontend::Close(t, name) => {
                self.batch.extend_from_slice(&frame);
                self.ops.push_back(Op::Close);
                match t {
                    DescribeTarget::Statement => {
                        self.statements.remove(&name);
                    }
                    DescribeTarget::Portal => {
                        self.portals.remove(&name);
                    }
                }
            }
        }
        if self.batch.len() > self.ctx.shared.config.gateway.max_message_size {
            return Err(Fatal::new(
                "54000",
                "weir: request too large: send Sync or Flush more often, or raise [gateway] max_message_size",
            ));
        }
        Ok(false)
    }

    /// Analyze + decide one SQL text. Analysis failure fails closed: the request is denied.
    /// Texts that share facts (the analyzer's cache hands out the same `Arc`) share the
    /// session's decision too: identity and target do not change within a session.
    fn decide(&mut self, sql: &[u8]) -> Result<Arc<Decision>, Fatal> {
        self.check_grant();
        let shared = &self.ctx.shared;
        let analysis = match shared.analyzer.analyze(sql) {
            Ok(a) => a,
            Err(e) => {
                let rule = match e {
                    AnalyzeError::Parse(_) => "weir.parse",
                    AnalyzeError::NotUtf8 | AnalyzeError::Internal(_) => "weir.analyze",
                    AnalyzeError::LexingMode(_) => weir_analyze::lexing::RULE,
                };
                return Ok(Arc::new(Decision {
                    analysis: Arc::new(weir_analyze::Analysis::synthetic(
                        &weir_analyze::redacted(&String::from_utf8_lossy(sql)),
                        Vec::new(),
                    )),
                    verdicts: vec![Verdict::Deny {
                        rule: rule.into(),
                        reason: e.to_string(),
                    }],
                }));
            }
        };
        // A request that changes the scope (SET search_path, PREPARE, …) is decided in the
        // scope it makes, and so is the rest of the request; the cache is for the scope the
        // session is in.
        let base = self.pending_scope.as_ref().unwrap_or(&self.scope);
        if let Some(next) = base.after(&analysis) {
            self.pending_scope = Some(next);
        }
        if let Some(scope) = &self.pending_scope {
            return Ok(Arc::new(shared.policy.decide(
                &self.ctx.policy,
                scope,
                &analysis,
            )));
        }
        // INVARIANT: the cache holds the facts' `Arc`, so the address cannot be reused by
        // other facts while the entry exists.
        let key = Arc::as_ptr(&analysis.statements) as *const StatementFacts as usize;
        if let Some(hit) = self.decisions.get(&key) {
            return Ok(Arc::new(Decision {
                analysis: Arc::new(analysis.with_statements(Arc::clone(&hit.resolved))),
                verdicts: hit.verdicts.clone(),
            }));
        }
        let decision = shared
            .policy
            .decide(&self.ctx.policy, &self.scope, &analysis);
        if self.decisions.len() >= MAX_PREPARED {
            self.decisions.clear();
        }
        self.decisions.insert(
            key,
            CachedDecision {
                _facts: Arc::clone(&analysis.statements),
                resolved: Arc::clone(&decision.analysis.statements),
                verdicts: decision.verdicts.clone(),
            },
        );
        Ok(Arc::new(decision))
    }

    /// Refuses a fastpath call, on record, as a denied request.
    async fn refuse_function_call(
        &mut self,
        out: &mut BytesMut,
        sql: &str,
        reason: &str,
    ) -> Result<(), Fatal> {
        const RULE: &str = "weir.protocol.function_call";
        let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let recorded = self
            .ctx
            .shared
            .audit
            .append(Event::Statement {
                session: self.ctx.session,
                request: id,
                identity: Arc::clone(&self.ctx.identity_name),
                target: Arc::clone(&self.ctx.target_name),
                via: "function_call",
                sql: Arc::from(sql),
                fingerprint: 0,
                statements: Arc::from(Vec::new()),
                decision: "deny",
                rule: Some(RULE.into()),
            })
            .wait()
            .await;
        if let Err(e) = recorded {
            warn!(cause = %e, "audit write failed for a refused function call");
        }
        let fields = Fields::new(
            "ERROR",
            "42501",
            &format!("weir: denied by {RULE}: {reason}"),
        );
        self.deny_now(out, fields, BatchEnd::Sync).await
    }

    /// The request is complete: audit it, then forward it or its denial.
    async fn finish_batch(&mut self, out: &mut BytesMut, end: BatchEnd) -> Result<(), Fatal> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let mut items = std::mem::take(&mut self.items);
        let next_scope = self.pending_scope.take();
        self.batch_unseen = false;
        self.guard_state_sinks(&mut items).await;
        self.guard_copies(&mut items, next_scope.as_ref()).await;
        let verdict = items
            .iter()
            .map(|i| i.decision.overall())
            .max_by_key(|v| v.severity())
            .cloned()
            .unwrap_or(Verdict::Allow);

        // Write-ahead: every statement's event is recorded before anything is forwarded.
        let shared = &self.ctx.shared;
        let mut acks = Vec::with_capacity(items.len());
        for item in &items {
            let v = item.decision.overall();
            acks.push(shared.audit.append(Event::Statement {
                session: self.ctx.session,
                request: id,
                identity: Arc::clone(&self.ctx.identity_name),
                target: Arc::clone(&self.ctx.target_name),
                via: item.via,
                sql: Arc::clone(if self.ctx.full_text {
                    &item.decision.analysis.sql
                } else {
                    &item.decision.analysis.normalized
                }),
                fingerprint: item.decision.analysis.fingerprint,
                statements: Arc::clone(&item.decision.analysis.statements),
                decision: v.label(),
                rule: v.rule().map(str::to_owned),
            }));
        }
        // What copies of sensitive values this request's writes make: on record with the
        // statements, and in the store (which every catalog reads) before anything runs.
        let derived: Vec<&weir_mask::DerivedTag> = if matches!(verdict, Verdict::Deny { .. }) {
            Vec::new()
        } else {
            items.iter().flat_map(|i| &i.derived).collect()
        };
        if !derived.is_empty() {
            acks.push(shared.audit.append(Event::SensitivityDerived {
                session: self.ctx.session,
                request: id,
                identity: Arc::clone(&self.ctx.identity_name),
                target: Arc::clone(&self.ctx.target_name),
                tags: derived.iter().map(|t| t.to_string()).collect(),
            }));
        }
        let mut audit_failure = None;
        for ack in acks {
            if let Err(e) = ack.wait().await {
                audit_failure = Some(e);
            }
        }
        if let Some(e) = audit_failure {
            warn!(cause = %e, "audit write failed; request refused");
            let fields = Fields::new("ERROR", "58000", &format!("weir: the statement was not run because it could not be recorded in the audit trail ({e})"));
            self.batch.clear();
            self.ops.clear();
            return self.deny_now(out, fields, end).await;
        }

        if !derived.is_empty() {
            if let Err(e) = self.record_derived(&items).await {
                warn!(cause = %e, "recording derived sensitivity failed; request refused");
                let fields = Fields::new("ERROR", "58000", &format!("weir: the statement was not run because the columns it copies sensitive values into could not be marked sensitive ({e})"));
                self.batch.clear();
                self.ops.clear();
                return self.deny_now(out, fields, end).await;
            }
        }

        match &verdict {
            Verdict::Allow => self.forward(id, &items, next_scope, out).await,
            Verdict::AllowBounded { rows, .. }
                if *rows >= 1 && self.at_most_one_row(&items).await =>
            {
                // No bracket where it cannot matter: a key equality changes at most one row.
                self.forward(id, &items, next_scope, out).await
            }
            Verdict::AllowBounded { rows, rule } => {
                // Checked by running it in a bracket: one statement, and a Sync to end the
                // request (Weir must see its ReadyForQuery to close the bracket).
                let single = matches!(end, BatchEnd::Sync)
                    && matches!(items.as_slice(), [one] if one.decision.analysis.statements.len() == 1
                        && one.decision.analysis.statements.iter().all(|f| f.copy.is_none()));
                if single {
                    self.bounded = Some(Bounded {
                        request: id,
                        items,
                        next_scope,
                        end,
                        limit: *rows,
                        rule: rule.clone(),
                    });
                    return Ok(());
                }
                let reason = format!(
                    "a write bounded to {rows} rows ({rule}) cannot be counted in a request with several statements or without Sync"
                );
                self.approval_or_refusal(id, items, next_scope, end, rule, &reason, None, out)
                    .await
            }
            Verdict::Deny { rule, reason } => {
                let fields = Fields::new(
                    "ERROR",
                    "42501",
                    &format!("weir: denied by {rule}: {reason}"),
                );
                self.batch.clear();
                self.ops.clear();
                self.deny_now(out, fields, end).await
            }
            Verdict::RequireApproval { rule, reason } => {
                self.approval_or_refusal(id, items, next_scope, end, rule, reason, None, out)
                    .await
            }
        }
    }

    /// No side door through session state: a statement that would keep a value derived from
    /// a sensitive column in a setting, a notification, a sequence or an advisory-lock key
    /// (where a later statement, another session or another identity reads it back unmasked)
    /// is denied, unless policy lets this identity see that column in clear. Without a
    /// catalog to tell (it cannot be loaded), such a statement is denied too.
    async fn guard_state_sinks(&self, items: &mut [Item]) {
        const RULE: &str = "weir.sensitive-value-into-session-state";
        let Some(cache) = &self.ctx.mask else {
            return;
        };
        if !items.iter().any(|i| {
            i.decision
                .analysis
                .statements
                .iter()
                .any(|f| !f.state_sinks.is_empty())
        }) {
            return;
        }
        let loaded = cache.ensure(&self.ctx.shared, &self.ctx.target).await;
        let catalog = cache.snapshot();
        for item in items.iter_mut() {
            let d = &item.decision;
            let mut verdicts = d.verdicts.clone();
            let mut changed = false;
            for (f, v) in d.analysis.statements.iter().zip(verdicts.iter_mut()) {
                if f.state_sinks.is_empty() || matches!(v, Verdict::Deny { .. }) {
                    continue;
                }
                let found = match &loaded {
                    Ok(()) => weir_mask::sensitive_state_sink(f, &catalog),
                    Err(_) => Some((
                        "a column (the masking catalog cannot be loaded)".into(),
                        weir_mask::Sensitive {
                            label: Arc::from("unknown"),
                            strategy: weir_mask::Strategy::Redact,
                        },
                    )),
                };
                let Some((column, s)) = found else { continue };
                if self
                    .ctx
                    .shared
                    .policy
                    .may_unmask(&self.ctx.policy, &column, &s.label)
                {
                    continue;
                }
                *v = Verdict::Deny {
                    rule: RULE.into(),
                    reason: format!(
                        "this statement would keep a value of {column} ({}) in session or server state (a setting, a notification, a sequence, an advisory lock), where it can be read back unmasked",
                        s.label
                    ),
                };
                changed = true;
            }
            if changed {
                item.decision = Arc::new(Decision {
                    analysis: Arc::clone(&d.analysis),
                    verdicts,
                });
            }
        }
    }

    /// Sensitivity flows with the data: a write whose values derive, by lineage, from a
    /// sensitive column (`StatementFacts::flows` against the target's catalog) marks the
    /// columns it writes sensitive (`Item::derived`, recorded before it runs), and policy
    /// decides it again knowing what it copies (`context.copies_sensitive`; the built-in
    /// policy asks for approval in production unless the identity may see those columns in
    /// clear). Without a catalog to tell (it cannot be loaded), such a write is denied.
    async fn guard_copies(&self, items: &mut [Item], next_scope: Option<&Scope>) {
        let Some(cache) = &self.ctx.mask else {
            return;
        };
        let copies = |f: &StatementFacts| {
            !f.flows.is_empty()
                && !matches!(
                    f.kind,
                    weir_analyze::StatementKind::Prepare | weir_analyze::StatementKind::Cursor
                )
        };
        if !items
            .iter()
            .any(|i| i.decision.analysis.statements.iter().any(copies))
        {
            return;
        }
        let shared = &self.ctx.shared;
        let scope = next_scope.unwrap_or(&self.scope);
        let loaded = cache.ensure(shared, &self.ctx.target).await;
        let catalog = cache.snapshot();
        for item in items.iter_mut() {
            let d = &item.decision;
            let mut verdicts = d.verdicts.clone();
            let mut changed = false;
            for (f, v) in d.analysis.statements.iter().zip(verdicts.iter_mut()) {
                if !copies(f) || matches!(v, Verdict::Deny { .. }) {
                    continue;
                }
                if let Err(e) = &loaded {
                    *v = Verdict::Deny {
                        rule: "weir.sensitive-copy".into(),
                        reason: format!("this write copies columns, and Weir cannot tell whether they are sensitive: the masking catalog cannot be loaded ({e})"),
                    };
                    changed = true;
                    continue;
                }
                let tags = weir_mask::derived_tags(f, &catalog);
                if tags.is_empty() {
                    continue;
                }
                let copied = weir_policy::Copied {
                    labels: tags.iter().map(|t| t.label.to_string()).collect(),
                    may_unmask: tags.iter().all(|t| {
                        shared
                            .policy
                            .may_unmask(&self.ctx.policy, &t.source, &t.label)
                    }),
                };
                let again = shared
                    .policy
                    .decide_copying(&self.ctx.policy, scope, f, &copied);
                if again.severity() > v.severity() {
                    *v = again;
                    changed = true;
                }
                item.derived.extend(tags);
            }
            if changed {
                item.decision = Arc::new(Decision {
                    analysis: Arc::clone(&d.analysis),
                    verdicts,
                });
            }
        }
    }

    /// Records the request's derived tags in the store, and makes the target's catalog
    /// stale so that it is rebuilt with them before the next request is forwarded.
    async fn record_derived(&self, items: &[Item]) -> Result<(), weir_store::StoreError> {
        let statement = |i: &Item| {
            if self.ctx.full_text {
                i.decision.analysis.sql.to_string()
            } else {
                i.decision.analysis.normalized.to_string()
            }
        };
        let tags: Vec<weir_store::NewDerivedTag> = items
            .iter()
            .flat_map(|i| {
                i.derived.iter().map(move |t| weir_store::NewDerivedTag {
                    target: self.ctx.target_name.to_string(),
                    column: t.column.clone(),
                    label: t.label.to_string(),
                    strategy: t.strategy.as_str().to_owned(),
                    source: t.source.clone(),
                    identity: self.ctx.identity_name.to_string(),
                    statement: statement(i),
                })
            })
            .collect();
        let now = self.ctx.shared.approvals.clock().now_ms();
        self.ctx
            .shared
            .approvals
            .with_store(move |s| s.add_derived_tags(&tags, now))
            .await?;
        if let Some(cache) = &self.ctx.mask {
            cache.invalidate();
        }
        Ok(())
    }

    /// Whether every bounded statement of the request is an UPDATE or DELETE whose WHERE
    /// fixes every column of a unique key of the one table it writes (the target's catalog, loaded fresh
    /// if due), so it changes at most one row. Without a catalog (masking off): no.
    async fn at_most_one_row(&self, items: &[Item]) -> bool {
        let Some(cache) = &self.ctx.mask else {
            return false;
        };
        if let Err(e) = cache.ensure(&self.ctx.shared, &self.ctx.target).await {
            warn!(cause = %e, "cannot load the catalog; the bounded write is bracketed");
            return false;
        }
        let catalog = cache.snapshot();
        !items.is_empty()
            && items.iter().all(|i| {
                let bounded = i
                    .decision
                    .analysis
                    .statements
                    .iter()
                    .zip(&i.decision.verdicts)
                    .filter(|(_, v)| matches!(v, Verdict::AllowBounded { .. }));
                bounded.into_iter().all(|(f, _)| {
                    matches!(
                        f.kind,
                        weir_analyze::StatementKind::Update | weir_analyze::StatementKind::Delete
                    ) && !f.nested_write
                        && f.user_functions.is_empty()
                        && !f.unknown_effect
                        && f.tables_written.len() == 1
                        && f.tables_written
                            .iter()
                            .all(|t| catalog.covers_unique_key(t, &f.key_equalities))
                })
            })
    }

    /// A request that needs approval: forwarded at once (an earlier approval or policy
    /// covers it), held for approvers (`self.held`), or refused.
    #[allow(clippy::too_many_arguments)]
    async fn approval_or_refusal(
        &mut self,
        id: u64,
        items: Vec<Item>,
        next_scope: Option<Scope>,
        end: BatchEnd,
        rule: &str,
        reason: &str,
        rows: Option<u64>,
        out: &mut BytesMut,
    ) -> Result<(), Fatal> {
        let cancels_before = self.ctx.cancel.count();
        match self.ask_approval(id, &items, rule, reason, rows).await {
            Ask::Go => self.forward(id, &items, next_scope, out).await,
            Ask::Wait {
                id: approval,
                deadline_ms,
            } => {
                self.held = Some(Held {
                    request: id,
                    items,
                    next_scope,
                    end,
                    approval,
                    subject: format!("{rule}: {reason}"),
                    deadline_ms,
                    cancels_before,
                });
                Ok(())
            }
            Ask::Refuse(fields) => {
                self.batch.clear();
                self.ops.clear();
                self.deny_now(out, fields, end).await
            }
        }
    }

    /// Queues one of Weir's own statements (a bracket around a bounded write).
    fn inject(&mut self, out: &mut BytesMut, sql: &'static str, mode: Mode) {
        let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let mut pending = Pending::new(id, VecDeque::from([Op::Query]));
        pending.mode = mode;
        pending.audited = false;
        self.send(Entry::Request(pending));
        Frontend::Query(Bytes::from_static(sql.as_bytes())).encode(out);
    }

    /// Runs a bounded write inside a bracket — a transaction Weir opens when the client is in
    /// none, else a savepoint in the client's transaction — with its answers held until the
    /// count is known. Within the bound: the bracket is committed (released) and the client
    /// gets the answers. Over it: the bracket is rolled back, nothing reaches the client, and
    /// the write goes to approval with its exact count; approved, it runs for real. A write
    /// that fails reaches the client as it would without Weir. Returns false when the client
    /// went away while waiting for approval.
    async fn run_bounded<R, W>(
        &mut self,
        b: Bounded,
        cr: &mut R,
        uw: &mut W,
        out: &mut BytesMut,
    ) -> Result<bool, Fatal>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // The transaction status the write starts in is known once everything before it has
        // been answered.
        self.inbox.wait_idle().await;
        let status = self.inbox.tx_status();
        if status == TxStatus::Failed {
            // The server refuses anything but the end of the transaction: nothing to count.
            self.forward(b.request, &b.items, b.next_scope, out).await?;
            return Ok(true);
        }
        let autocommit = status == TxStatus::Idle;
        let (batch, ops) = (self.batch.clone(), self.ops.clone());
        let (probe, result) = Probe::new();
        self.inject(
            out,
            if autocommit {
                "BEGIN"
            } else {
                "SAVEPOINT weir_row_bound"
            },
            Mode::Hidden,
        );
        self.forward_as(
            b.request,
            &b.items,
            b.next_scope.clone(),
            out,
            Mode::Held(probe),
        )
        .await?;
        flush_upstream(uw, out).await?;
        let Ok(result) = result.await else {
            return Err(Fatal::new(
                "08006",
                "weir: a bounded write's result was lost; the session is closed",
            ));
        };
        if result.sqlstate.is_some() || result.rows <= b.limit {
            // Failed (the client sees the failure; in its own transaction, the transaction
            // stays aborted, as it would be), or within the bound (kept).
            let close = match (result.sqlstate.is_some(), autocommit) {
                (true, true) => "ROLLBACK",
                (true, false) => "",
                (false, true) => "COMMIT",
                (false, false) => "RELEASE SAVEPOINT weir_row_bound",
            };
            self.inject(out, close, Mode::Close { release: true });
            return Ok(true);
        }
        // Over the bound: undo it, then ask.
        self.inject(
            out,
            if autocommit {
                "ROLLBACK"
            } else {
                "ROLLBACK TO SAVEPOINT weir_row_bound; RELEASE SAVEPOINT weir_row_bound"
            },
            Mode::Hidden,
        );
        flush_upstream(uw, out).await?;
        self.batch = batch;
        self.ops = ops;
        let kind = result
            .tags
            .last()
            .and_then(|t| t.split(' ').next())
            .unwrap_or("statement")
            .to_owned();
        let reason = format!(
            "this {kind} would change {} rows, more than the {} allowed ({})",
            group_digits(result.rows),
            group_digits(b.limit),
            b.rule
        );
        info!(
            rows = result.rows,
            limit = b.limit,
            "bounded write over its bound; rolled back"
        );
        self.approval_or_refusal(
            b.request,
            b.items,
            b.next_scope,
            b.end,
            &b.rule,
            &reason,
            Some(result.rows),
            out,
        )
        .await?;
        if let Some(held) = self.held.take() {
            flush_upstream(uw, out).await?;
            return self.wait_for_approval(held, cr, out).await;
        }
        Ok(true)
    }

    /// Forwards a decided, recorded request: its entry goes to the backend half first, then
    /// its bytes into `out`.
    async fn forward(
        &mut self,
        id: u64,
        items: &[Item],
        next_scope: Option<Scope>,
        out: &mut BytesMut,
    ) -> Result<(), Fatal> {
        self.forward_as(id, items, next_scope, out, Mode::Client)
            .await
    }

    async fn forward_as(
        &mut self,
        id: u64,
        items: &[Item],
        next_scope: Option<Scope>,
        out: &mut BytesMut,
        mode: Mode,
    ) -> Result<(), Fatal> {
        let shared = &self.ctx.shared;
        if let Some(scope) = next_scope {
            // Forwarded: the session now has the scope its statements made.
            self.scope = scope;
            self.decisions.clear();
        }
        if items.iter().any(|i| runs_unseen_code(&i.decision)) {
            self.unseen_in_flight = true;
        }
        let ops = std::mem::take(&mut self.ops);
        let mut pending = Pending::new(id, ops);
        pending.mode = mode;
        if let Some(cache) = &self.ctx.mask {
            // The catalog must know the tables this request reads before any of
            // its results arrive. On failure the previous catalog stays, and what
            // it does not know is masked.
            if let Err(e) = cache.ensure(shared, &self.ctx.target).await {
                warn!(cause = %e, "cannot load the masking catalog; unknown relations are masked");
            }
            pending.decision = items.first().map(|i| Arc::clone(&i.decision));
        }
        pending.ddl = items.iter().any(|i| {
            i.decision.analysis.statements.iter().any(|f| {
                matches!(
                    f.kind,
                    weir_analyze::StatementKind::Ddl | weir_analyze::StatementKind::Drop
                )
            })
        });
        self.send(Entry::Request(pending));
        out.extend_from_slice(&self.batch);
        self.batch.clear();
        Ok(())
    }

    /// What an approval of the request is for: the statements as an approver sees them
    /// (data constants as `$n`, code, names, paths and settings as written; full text for
    /// `[audit] full_text_targets`), the repeat key (`weir_analyze::approval`: equal only for
    /// texts that differ in data constants; a key that never repeats when a parameter decides
    /// what runs), and how far the approval reaches, in words.
    fn approval_subject(&self, items: &[Item]) -> (String, String, &'static str) {
        let scopes: Vec<Option<weir_analyze::approval::ApprovalScope>> = items
            .iter()
            .map(|i| weir_analyze::approval::scope(&i.decision.analysis.sql))
            .collect();
        let sql: Vec<&str> = items
            .iter()
            .zip(&scopes)
            .map(|(i, s)| match s {
                _ if self.ctx.full_text => &*i.decision.analysis.sql,
                Some(s) => s.shown.as_str(),
                None => &*i.decision.analysis.normalized,
            })
            .collect();
        let all: Option<Vec<&weir_analyze::approval::ApprovalScope>> =
            scopes.iter().map(Option::as_ref).collect();
        let (key, reach) = all
            .and_then(|all| weir_analyze::approval::combined(&all))
            // Never the same twice: each run asks.
            .unwrap_or_else(|| {
                (
                    format!("once-{}", crate::approvals::new_id()),
                    weir_analyze::approval::ONE_RUN,
                )
            });
        (sql.join("; "), key, reach)
    }

    fn approval_event(&self, id: &str, decision: &str) -> Event {
        Event::Approval {
            id: id.to_owned(),
            decision: decision.to_owned(),
            identity: self.ctx.identity.name.clone(),
            target: self.ctx.target_name.to_string(),
            session: Some(self.ctx.session),
            by: None,
            rule: None,
            note: None,
            sql: None,
            fingerprint: None,
            rode_on: None,
        }
    }

    /// A request that policy says needs approval: runs on an earlier approval of the same
    /// statement (within `[approvals] auto_repeat_window`), or on policy's own approval
    /// (`auto_approve`), or is recorded for approvers to decide.
    async fn ask_approval(
        &mut self,
        request: u64,
        items: &[Item],
        rule: &str,
        reason: &str,
        rows: Option<u64>,
    ) -> Ask {
        let shared = &self.ctx.shared;
        let approvals = &shared.approvals;
        let cfg = &shared.config.approvals;
        let refuse = |what: &str, e: &dyn std::fmt::Display| {
            warn!(cause = %e, "{what}");
            Ask::Refuse(Fields::new(
                "ERROR",
                "58000",
                &format!("weir: the statement needs approval ({rule}), and {what}: {e}"),
            ))
        };
        let (sql, fingerprint, reach) = self.approval_subject(items);
        let reason = &format!("{reason}; an approval covers {reach}");
        let now = approvals.clock().now_ms();
        let window = u64::try_from(cfg.auto_repeat_window.as_millis()).unwrap_or(u64::MAX);

        // 1. The same statement approved for the same identity and target, recently.
        if window > 0 {
            let (who, target, fp) = (
                self.ctx.identity.name.clone(),
                self.ctx.target_name.to_string(),
                fingerprint.clone(),
            );
            let since = now.saturating_sub(window);
            match approvals
                .with_store(move |s| {
                    s.recent_approval(&who, &target, &fp, since, rows.unwrap_or(0))
                })
                .await
            {
                Ok(Some(earlier)) => {
                    let mut e = self.approval_event(&earlier.id, "repeated");
                    if let Event::Approval {
                        rode_on,
                        rule: r,
                        fingerprint: f,
                        ..
                    } = &mut e
                    {
                        *rode_on = Some(earlier.id.clone());
                        *r = Some(rule.to_owned());
                        *f = Some(fingerprint.clone());
                    }
                    return match shared.audit.append(e).wait().await {
                        Ok(()) => Ask::Go,
                        Err(e) => refuse("it could not be recorded", &e),
                    };
                }
                Ok(None) => {}
                Err(e) => return refuse("the approval store cannot be read", &e),
            }
        }

        // 2. Policy approving on its own.
        let facts = items
            .iter()
            .find(|i| matches!(i.decision.overall(), Verdict::RequireApproval { .. }))
            .and_then(|i| {
                i.decision
                    .verdicts
                    .iter()
                    .position(|v| matches!(v, Verdict::RequireApproval { .. }))
                    .and_then(|k| i.decision.analysis.statements.get(k))
            });
        let auto = facts.is_some_and(|facts| {
            shared.policy.may_approve(
                &self.ctx.policy,
                &weir_policy::ApprovalFacts {
                    facts,
                    sensitivity: &[],
                    requester: &self.ctx.identity.name,
                    requester_kind: self.ctx.identity.kind.as_str(),
                    rule,
                    self_approval: true,
                },
                true,
            )
        });

        // 3. A request: recorded in the trail before anyone can see it.
        let id = crate::approvals::new_id();
        let timeout = u64::try_from(cfg.timeout.as_millis()).unwrap_or(u64::MAX);
        // `timeout = "0s"`: nobody waits. The request stays open for the auto-repeat window,
        // and the client's next run of the statement rides on its approval.
        let waits = timeout > 0 && !auto;
        let deadline_ms = now.saturating_add(if timeout > 0 { timeout } else { window });
        let mut requested =
            self.approval_event(&id, if auto { "auto_approved" } else { "requested" });
        if let Event::Approval {
            rule: r,
            note,
            sql: q,
            fingerprint: f,
            by,
            ..
        } = &mut requested
        {
            *r = Some(rule.to_owned());
            *note = Some(reason.to_owned());
            *q = Some(sql.clone());
            *f = Some(fingerprint.clone());
            if auto {
                *by = Some("policy".into());
            }
        }
        if let Err(e) = shared.audit.append(requested).wait().await {
            return refuse("the request could not be recorded", &e);
        }
        let new = weir_store::NewApproval {
            id: id.clone(),
            kind: weir_store::ApprovalKind::Statement,
            grant_ms: None,
            created_ms: now,
            deadline_ms,
            identity: self.ctx.identity.name.clone(),
            identity_kind: self.ctx.identity.kind.as_str().to_owned(),
            target: self.ctx.target_name.to_string(),
            session: self.ctx.session,
            fingerprint,
            statement: sql,
            rows,
            facts: {
                let all: Vec<StatementFacts> = items
                    .iter()
                    .flat_map(|i| i.decision.analysis.statements.iter().cloned())
                    .collect();
                weir_audit::facts_json(&all).to_string()
            },
            rule: rule.to_owned(),
            reason: reason.to_owned(),
        };
        match approvals.create(new).await {
            Err(e) => return refuse("the approval request could not be stored", &e),
            Ok(stored) if !auto && shared.notifier.enabled() => {
                let notifier = Arc::clone(&shared.notifier);
                let store = Arc::clone(approvals.store());
                tokio::spawn(async move { notifier.announce(stored, store).await });
            }
            Ok(_) => {}
        }
        if auto {
            return match approvals
                .settle(&id, weir_store::ApprovalStatus::Approved, "policy")
                .await
            {
                Ok(Some((true, _))) => Ask::Go,
                Ok(_) => refuse("the automatic approval did not take", &id),
                Err(e) => refuse("the automatic approval could not be stored", &e),
            };
        }
        if !waits {
            return Ask::Refuse(Fields::new(
                "ERROR",
                "42501",
                &format!(
                    "weir: denied by {rule}: approval required: {reason} (request {id}: once it is approved, run the statement again within {})",
                    humantime::format_duration(cfg.auto_repeat_window)
                ),
            ));
        }
        info!(approval = %id, request, rule, "statement waits for approval");
        Ask::Wait { id, deadline_ms }
    }

    /// Waits for the held request's outcome, then forwards it or its refusal. Meanwhile the
    /// client's bytes are read (and kept) so that a client that goes away is noticed, and a
    /// cancel request withdraws the wait. Returns false when the client went away.
    async fn wait_for_approval<R: AsyncRead + Unpin>(
        &mut self,
        held: Held,
        cr: &mut R,
        out: &mut BytesMut,
    ) -> Result<bool, Fatal> {
        let shared = Arc::clone(&self.ctx.shared);
        let approvals = &shared.approvals;
        let id = held.approval.clone();
        let rule = held.subject.clone();
        self.inbox.tell_client(
            Backend::notice(
                Fields::new(
                    "NOTICE",
                    "00000",
                    &format!("weir: waiting for approval of request {id} ({rule})"),
                )
                .with(
                    b'H',
                    &format!(
                        "an approver runs: weir approve {id} --config <weir.toml> --as <name>"
                    ),
                ),
            )
            .freeze(),
        );
        let since = held.cancels_before;
        let mut rx = approvals.watch(&id, held.deadline_ms);
        let max = shared.config.gateway.max_message_size;
        let mut client_open = true;
        let outcome = loop {
            tokio::select! {
                r = &mut rx => break r.unwrap_or_else(|_| Outcome::Failed("the approval watcher stopped".into())),
                () = self.ctx.cancel.fired_since(since) => {
                    approvals.forget(&id);
                    break self.withdraw(&id).await;
                }
                n = read_more(cr, &mut self.buf), if client_open && self.buf.len() <= max => {
                    match n {
                        Ok(0) | Err(_) => {
                            approvals.forget(&id);
                            client_open = false;
                            break self.withdraw(&id).await;
                        }
                        Ok(_) => {}
                    }
                }
            }
        };
        let mut fields = None;
        let mut event = self.approval_event(&id, "released");
        match &outcome {
            Outcome::Approved { by } => {
                if let Event::Approval { by: b, .. } = &mut event {
                    *b = Some(by.clone());
                }
            }
            Outcome::Denied { by, note } => {
                fields = Some(Fields::new(
                    "ERROR",
                    "42501",
                    &format!(
                        "weir: approval request {id} was denied by {by}: {}",
                        note.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            Outcome::Expired => {
                event = self.approval_event(&id, "expired");
                fields = Some(Fields::new(
                    "ERROR",
                    "42501",
                    &format!(
                        "weir: approval request {id} timed out: nobody approved it within {}",
                        humantime::format_duration(shared.config.approvals.timeout)
                    ),
                ));
            }
            Outcome::Cancelled => {
                event = self.approval_event(&id, "cancelled");
                fields = Some(
                    Fields::new("ERROR", "57014", "canceling statement due to user request")
                        .with(b'D', &format!("weir: approval request {id} was withdrawn")),
                );
            }
            Outcome::Failed(e) => {
                fields = Some(Fields::new(
                    "ERROR",
                    "58000",
                    &format!("weir: approval request {id} cannot be followed, so the statement does not run: {e}"),
                ));
            }
        }
        // Denials were recorded by whoever denied; everything else is recorded here, before
        // the statement runs or its refusal goes out.
        let recorded = if matches!(outcome, Outcome::Denied { .. } | Outcome::Failed(_)) {
            Ok(())
        } else {
            shared.audit.append(event).wait().await
        };
        if let Err(e) = recorded {
            fields = Some(Fields::new(
                "ERROR",
                "58000",
                &format!("weir: the statement was not run because it could not be recorded in the audit trail ({e})"),
            ));
        }
        if !client_open {
            return Ok(false);
        }
        match fields {
            None => {
                info!(approval = %id, "approved; forwarding");
                self.forward(held.request, &held.items, held.next_scope, out)
                    .await?;
            }
            Some(fields) => {
                self.batch.clear();
                self.ops.clear();
                self.deny_now(out, fields, held.end).await?;
            }
        }
        Ok(true)
    }

    /// Withdraws a waiting request (the client cancelled or left). If a decision won the race,
    /// the client still asked to stop: the statement does not run either way.
    async fn withdraw(&self, id: &str) -> Outcome {
        match self
            .ctx
            .shared
            .approvals
            .settle(
                id,
                weir_store::ApprovalStatus::Cancelled,
                &self.ctx.identity.name,
            )
            .await
        {
            Ok(_) => Outcome::Cancelled,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Forwards the stand-in for a denied request: the server aborts the transaction as for
    /// any failed statement, and the client sees Weir's error in its place.
    async fn deny_now(
        &mut self,
        out: &mut BytesMut,
        fields: Fields,
        end: BatchEnd,
    ) -> Result<(), Fatal> {
        let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let mut ops: VecDeque<Op> = VecDeque::from([Op::Abort]);
        Frontend::Execute {
            portal: Bytes::from_static(ABORT_PORTAL),
            max_rows: 0,
        }
        .encode(out);
        match end {
            BatchEnd::Sync => {
                Frontend::Sync.encode(out);
                ops.push_back(Op::Sync);
            }
            BatchEnd::Flush => {
                Frontend::Flush.encode(out);
                self.skip_until_sync = true;
            }
        }
        let mut pending = Pending::new(id, ops);
        pending.denial = Some(Backend::error(fields).freeze());
        pending.audited = false;
        self.send(Entry::Request(pending));
        Ok(())
    }

    fn send(&self, entry: Entry) {
        self.inbox.push(entry);
    }
}

#[derive(Clone, Copy)]
enum BatchEnd {
    Sync,
    Flush,
}

/// The backend half: upstream → result stage → client.
struct BackendHalf<'a> {
    ctx: &'a Context,
    inbox: &'a Inbox,
    tracker: Tracker,
    buf: BytesMut,
    /// The result stage; `None` when results are not masked.
    masker: Option<Masker>,
    /// The catalog the masker reads, refreshed at each result's description.
    catalog: Arc<weir_mask::Catalog>,
    /// Rewritten messages (and the unchanged ones between them) waiting to be written.
    out: BytesMut,
    /// The answers of a bounded write, held until Weir knows its row count.
    held: BytesMut,
}

/// Who may see clear text, as this session's policy says.
struct SessionUnmask<'a>(&'a Context);

impl Unmask for SessionUnmask<'_> {
    fn may_unmask(&self, column: &str, label: &str) -> bool {
        self.0
            .shared
            .policy
            .may_unmask(&self.0.policy, column, label)
    }
}

impl BackendHalf<'_> {
    async fn run<R, W>(&mut self, ur: &mut R, cw: &mut W) -> Result<&'static str, Fatal>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.ctx.shared.config.gateway.max_message_size;
        let mut due: Vec<Due> = Vec::new();
        loop {
            self.process(cw, max, &mut due).await?;
            // `process` wrote every whole message it had, so a message of Weir's own can go
            // out now without splitting one of the server's.
            let n = tokio::select! {
                biased;
                r = read_more(ur, &mut self.buf) => r,
                () = self.inbox.to_client_ready.notified() => {
                    for frame in self.inbox.take_for_client() {
                        write(cw, &frame).await?;
                    }
                    continue;
                }
            }
            .map_err(|e| Fatal::new("08006", format!("weir: upstream read failed: {e}")))?;
            if n == 0 {
                return Err(Fatal::new(
                    "08006",
                    "weir: the upstream server closed the connection",
                ));
            }
        }
    }

    fn drain_entries(&mut self, due: &mut Vec<Due>) {
        // Entries are queued before their request is written upstream, so every response in
        // the buffer has its entry in the inbox by now.
        let entries: Vec<Entry> = self.inbox.lock().drain(..).collect();
        for e in entries {
            self.tracker.push(e, due);
        }
    }

    /// Writes every complete message in the buffer to the client, rewritten where the result
    /// stage says so, followed by whatever became due.
    async fn process<W: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut W,
        max: usize,
        due: &mut Vec<Due>,
    ) -> Result<(), Fatal> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.drain_entries(due);
        // `kept` is the length of the prefix of `buf` that goes out unchanged.
        let mut kept = 0usize;
        // Room the incomplete frame at the end still needs. Reserved only once the prefix
        // before it is written: reserving while the buffer still holds it would grow the
        // allocation by the prefix every time (it doubled up to tens of MiB on large results).
        let mut need = 0usize;
        loop {
            let rest = self.buf.get(kept..).unwrap_or(&[]);
            let Some(h) = Header::parse(rest, max).map_err(|e| {
                Fatal::new("08P01", format!("weir: upstream protocol violation: {e}"))
            })?
            else {
                break;
            };
            if rest.len() < h.frame_len() {
                need = h.frame_len() - rest.len();
                break;
            }
            let body = rest.get(Header::SIZE..h.frame_len()).unwrap_or(&[]);
            let frame = rest.get(..h.frame_len()).unwrap_or(&[]);
            let mut replace: Option<Bytes> = None;
            // Whom this message is for (ParameterStatus and notifications belong to no
            // request).
            let mode = if matches!(h.tag, b'S' | b'A') {
                ModeKind::Client
            } else {
                self.tracker.mode()
            };
            if let (Some(masker), Some(cache)) = (&mut self.masker, &self.ctx.mask) {
                if matches!(
                    h.tag,
                    b't' | b'n'
                        | b'T'
                        | b'D'
                        | b'C'
                        | b'I'
                        | b's'
                        | b'Z'
                        | b'E'
                        | b'N'
                        | b'H'
                        | b'd'
                        | b'c'
                ) {
                    if masker.plans_at(h.tag) {
                        self.catalog = cache.snapshot();
                    }
                    let env = Env {
                        catalog: &self.catalog,
                        unmask: &SessionUnmask(self.ctx),
                    };
                    match masker.on_message(self.tracker.answering(), env, h.tag, body) {
                        Rewrite::Keep => {}
                        Rewrite::Replace(b) => replace = Some(b.freeze()),
                        Rewrite::Drop => replace = Some(Bytes::new()),
                    }
                }
            }
            if h.tag == b'A' {
                replace = self.translate_notification(body);
            }
            if h.tag == b'S' {
                // The check of last resort: a change Weir could not see (a function's
                // set_config) put the server in a lexing mode Weir does not analyze in.
                // Nothing more is forwarded on this session.
                if let Some(why) = reported_lexing_refusal(body) {
                    warn!(reason = %why, "the server left the lexing mode Weir analyzes in; session closed");
                    return Err(Fatal::new(
                        "22023",
                        format!(
                            "weir: denied by {}: the server reports {why}; the session is closed",
                            weir_analyze::lexing::RULE
                        ),
                    ));
                }
                if let Some(masked) = self.mask_parameter_status(body) {
                    replace = Some(masked);
                }
            }
            let action = self.tracker.on_message(h.tag, body, due);
            if h.tag == b'Z' {
                self.inbox
                    .tx_status
                    .store(self.tracker.tx_status.byte(), Ordering::Release);
            }
            match action {
                Action::Forward => {}
                Action::Replace(b) => replace = Some(b),
                Action::Desync => {
                    return Err(Fatal::new(
                        "08P01",
                        format!(
                            "weir: the server sent '{}' in answer to nothing Weir forwarded; the session is closed",
                            if h.tag.is_ascii_graphic() { h.tag as char } else { '?' }
                        ),
                    ))
                }
            }
            // A bounded write's bracket: held answers, hidden bracket statements.
            let mut release = None;
            match mode {
                ModeKind::Client => {}
                ModeKind::Held => {
                    // Its ReadyForQuery is not the client's: the closing statement's is.
                    if h.tag != b'Z' {
                        match &replace {
                            Some(b) => self.held.extend_from_slice(b),
                            None => self.held.extend_from_slice(frame),
                        }
                    }
                    replace = Some(Bytes::new());
                }
                ModeKind::Hidden | ModeKind::Close { .. } => {
                    if !self.held.is_empty() {
                        let held = std::mem::take(&mut self.held);
                        if mode == (ModeKind::Close { release: true }) {
                            release = Some(held);
                        }
                    }
                    let shown = matches!(mode, ModeKind::Close { .. })
                        && matches!(h.tag, b'E' | b'N' | b'Z');
                    if !shown {
                        replace = Some(Bytes::new());
                    } else if release.is_some() && replace.is_none() {
                        // Through the staging path, so the released answers go first.
                        replace = Some(Bytes::copy_from_slice(frame));
                    }
                }
            }
            match replace {
                None => kept += h.frame_len(),
                Some(bytes) => {
                    // Staged, not written: a masked result rewrites most rows, and one
                    // write per row would cost more than the masking.
                    let prefix = self.buf.split_to(kept);
                    self.out.extend_from_slice(&prefix);
                    self.buf.advance(h.frame_len());
                    kept = 0;
                    if let Some(held) = release {
                        self.out.extend_from_slice(&held);
                    }
                    self.out.extend_from_slice(&bytes);
                }
            }
            if !due.is_empty() {
                self.flush_prefix(cw, kept).await?;
                kept = 0;
                self.handle_due(due);
            }
        }
        self.flush_prefix(cw, kept).await?;
        if need > 0 {
            self.buf.reserve(need);
        }
        if !due.is_empty() {
            self.handle_due(due);
        }
        Ok(())
    }

    /// A notification names its sender by upstream pid; clients know sessions by the pid
    /// Weir gave them (and compare it to skip their own notifications), so translate it.
    fn translate_notification(&self, body: &[u8]) -> Option<Bytes> {
        let Ok(Backend::NotificationResponse {
            process_id,
            channel,
            payload,
        }) = Backend::decode(b'A', Bytes::copy_from_slice(body))
        else {
            return None;
        };
        let pid = self
            .ctx
            .shared
            .cancels
            .weir_pid(&self.ctx.upstream_addr, process_id);
        // A backstop behind the analysis' state-sink rule: a payload holding what content
        // detection recognizes (another session's NOTIFY, a constant) is withheld.
        let sensitive =
            self.ctx.mask.is_some() && weir_mask::classify::by_content(&payload).is_some();
        if pid.is_none() && !sensitive {
            return None;
        }
        let mut out = BytesMut::new();
        Backend::NotificationResponse {
            process_id: pid.unwrap_or(process_id),
            channel,
            payload: if sensitive {
                Bytes::from_static(b"****")
            } else {
                payload
            },
        }
        .encode(&mut out);
        Some(out.freeze())
    }

    /// A ParameterStatus whose value content detection recognizes (`SET application_name`
    /// to an address), with the value withheld; `None` to pass it as it is.
    fn mask_parameter_status(&self, body: &[u8]) -> Option<Bytes> {
        self.ctx.mask.as_ref()?;
        let Ok(Backend::ParameterStatus { name, value }) =
            Backend::decode(b'S', Bytes::copy_from_slice(body))
        else {
            return None;
        };
        weir_mask::classify::by_content(&value)?;
        let mut out = BytesMut::new();
        Backend::ParameterStatus {
            name,
            value: Bytes::from_static(b"****"),
        }
        .encode(&mut out);
        Some(out.freeze())
    }

    /// Writes what is staged, then the first `n` bytes of the read buffer (unchanged
    /// messages, written from where they were read when nothing is staged).
    async fn flush_prefix<W: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut W,
        n: usize,
    ) -> Result<(), Fatal> {
        if !self.out.is_empty() {
            let chunk = self.buf.split_to(n);
            self.out.extend_from_slice(&chunk);
            let result = write(cw, &self.out).await;
            self.out.clear();
            return result;
        }
        if n == 0 {
            return Ok(());
        }
        let chunk = self.buf.split_to(n);
        write(cw, &chunk).await
    }

    fn handle_due(&mut self, due: &mut Vec<Due>) {
        for d in due.drain(..) {
            match d {
                Due::Completed(p) => {
                    self.inbox.completed();
                    if let Mode::Held(probe) = &p.mode {
                        probe.send(crate::track::ProbeResult {
                            rows: p.rows,
                            tags: p.tags.clone(),
                            sqlstate: p.sqlstate.clone(),
                        });
                    }
                    let mut masked = Vec::new();
                    if let (Some(masker), Some(cache)) = (&mut self.masker, &self.ctx.mask) {
                        masked = masker.take_masked().iter().map(|c| c.to_string()).collect();
                        if masker.take_unknown_relation() || p.ddl {
                            cache.invalidate();
                        }
                    }
                    if p.audited {
                        let _ = self.ctx.shared.audit.append(Event::Completed {
                            session: self.ctx.session,
                            request: p.id,
                            tags: p.tags,
                            rows: p.rows,
                            duration_us: u64::try_from(p.started.elapsed().as_micros())
                                .unwrap_or(u64::MAX),
                            sqlstate: p.sqlstate,
                            masked,
                        });
                    }
                }
            }
        }
    }
}

/// Reads whatever is available into `buf`, keeping at least 1 KiB of room. A peer that
/// closes a TLS stream without close_notify has disconnected, like a plain EOF: 0.
async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    match r.read_buf(buf).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

/// Writes what the frontend half has queued for the upstream, and empties the queue.
async fn flush_upstream<W: AsyncWrite + Unpin>(
    uw: &mut W,
    out: &mut BytesMut,
) -> Result<(), Fatal> {
    if out.is_empty() {
        return Ok(());
    }
    uw.write_all(out)
        .await
        .map_err(|e| Fatal::new("08006", format!("weir: upstream write failed: {e}")))?;
    out.clear();
    Ok(())
}

async fn write<W: AsyncWrite + Unpin>(cw: &mut W, bytes: &[u8]) -> Result<(), Fatal> {
    cw.write_all(bytes)
        .await
        .map_err(|e| Fatal::new("08006", format!("weir: client write failed: {e}")))
}

/// `48213` → `48,213`, for counts people read.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
