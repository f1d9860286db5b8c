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
use tracing::{info, warn, Instrument};
use weir_analyze::{Scope, StatementFacts};
use weir_config::Target;
use weir_mask::{Env, Masker, Rewrite, Unmask};
use weir_policy::{Decision, Identity, Verdict};
use weir_wire::backend::{Authentication, Fields, Message as Backend, TxStatus};
use weir_wire::frontend::{Message as Frontend, Target as DescribeTarget};
use weir_wire::startup::StartupPacket;
use weir_wire::Header;

use crate::approvals::CancelSignal;
use crate::cancel::UpstreamKey;
use crate::io::{read_frame, FrameError};
use crate::pipeline::write_ahead::{Durability, TxPosition};
use crate::pipeline::{self, Channel};
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

    /// Whether every forwarded request has been answered.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
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

pub(crate) static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

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

/// A pipeline refusal as PostgreSQL reports it: SQLSTATE 42501 for a denial, 57014 for a
/// withdrawn request, 58000 when Weir could not run it safely.
fn refusal_fields(r: &crate::pipeline::Refusal) -> Fields {
    use crate::pipeline::RefusalKind;
    let code = match r.kind {
        RefusalKind::Denied => "42501",
        RefusalKind::Cancelled => "57014",
        RefusalKind::Unavailable => "58000",
    };
    let fields = Fields::new("ERROR", code, &r.message);
    match (&r.detail, &r.request) {
        (Some(d), _) => fields.with(b'D', d),
        // A client that reads fields, not text (the MCP server), finds the request here.
        (None, Some(id)) => fields.with(b'D', &format!("approval request {id}")),
        (None, None) => fields,
    }
}

impl From<FrameError> for Fatal {
    fn from(e: FrameError) -> Self {
        Fatal::protocol(e)
    }
}

pub async fn run(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    run_stream(Stream::Plain(tcp), peer, shared, Channel::Wire).await
}

/// One in-process client's session over a pipe (the MCP server's tool calls), through the
/// same startup, authentication and pipeline as a socket's. `peer` is the address the
/// caller came from, for the trail.
pub(crate) async fn run_pipe(
    pipe: tokio::io::DuplexStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    channel: Channel,
) {
    run_stream(Stream::Pipe(pipe), peer, shared, channel).await
}

async fn run_stream(mut client: Stream, peer: SocketAddr, shared: Arc<Shared>, channel: Channel) {
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", id = session, peer = %peer, channel = channel.as_str(), identity = tracing::field::Empty, target = tracing::field::Empty);
    async move {
        let mut buf = BytesMut::with_capacity(1024);
        match startup(&mut client, &mut buf, peer, session, &shared, channel).await {
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

mod backend;
mod frontend;
mod startup;

use frontend::FrontendHalf;
use startup::{reported_lexing_refusal, startup};

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
    channel: Channel,
    person: Option<Identity>,
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
    let opening = pipeline::Opening {
        session,
        identity: &identity,
        target: &target,
        peer,
        tls,
        channel,
    };
    if let Err(refusal) = pipeline::session_opened(shared, opening).await {
        return Err(Fatal::new("58000", refusal.message));
    }

    let info = crate::pipeline::SessionInfo::open(
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
    .map_err(|e| Fatal::new("58000", e.to_string()))?;
    let ctx = Context {
        info,
        upstream_addr: target.upstream.clone(),
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
            .map(|_| Masker::new(shared.upstreams.mask_key.clone())),
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
    pipeline::session_closed(&ctx.info, requests.load(Ordering::Relaxed), reason).await;
    Ok(())
}

struct Context {
    /// What the protocol-neutral stages know of the session.
    info: crate::pipeline::SessionInfo,
    upstream_addr: String,
    /// Fired by the client's cancel requests.
    cancel: Arc<CancelSignal>,
    /// Fired when the session must end (an access grant it relied on ended).
    end: Arc<crate::grants::SessionEnd>,
}

impl std::ops::Deref for Context {
    type Target = crate::pipeline::SessionInfo;

    fn deref(&self) -> &crate::pipeline::SessionInfo {
        &self.info
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
        self.0.may_unmask(column, label)
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
    crate::metrics::get()
        .bytes_to_upstream
        .inc_by(out.len() as u64);
    out.clear();
    Ok(())
}

async fn write<W: AsyncWrite + Unpin>(cw: &mut W, bytes: &[u8]) -> Result<(), Fatal> {
    cw.write_all(bytes)
        .await
        .map_err(|e| Fatal::new("08006", format!("weir: client write failed: {e}")))?;
    crate::metrics::get()
        .bytes_to_client
        .inc_by(bytes.len() as u64);
    Ok(())
}

/// `48213` → `48,213`, for counts people read.
pub(crate) fn group_digits(n: u64) -> String {
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
