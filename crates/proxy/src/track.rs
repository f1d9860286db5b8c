//! Matching the server's responses to the requests that caused them.
//!
//! The frontend half of a session forwards a request and hands the backend half a [`Pending`]
//! listing the responses it expects (one [`Op`] per forwarded message that gets an answer).
//! The backend half feeds every server message through [`Tracker::on_message`], which says
//! what to do with it and notices when a request is complete (for the audit record) and when
//! bytes that Weir itself produced (a denial) are due, so they reach the client in protocol
//! order. This module is plain code over tags: no I/O, unit-tested below.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use weir_mask::Answering;
use weir_policy::Decision;
use weir_wire::backend::TxStatus;

/// What an Execute runs, for the result stage: the statement its portal was bound from, the
/// result formats the Bind asked for, and the statement's decision (its facts).
#[derive(Debug)]
pub struct ExecInfo {
    pub statement: Bytes,
    pub formats: Vec<i16>,
    pub decision: Arc<Decision>,
    /// The bound parameters in text, kept where the statement is an UPDATE or DELETE whose
    /// before-image is captured (`crate::undo`), or why they are not usable.
    pub params: Option<crate::undo::Params>,
}

/// A forwarded client message that the server will answer.
#[derive(Debug, Clone)]
pub enum Op {
    /// Simple query: answered by anything up to ReadyForQuery.
    Query,
    Parse,
    Bind,
    /// `injected`: Weir added it (so masking knows every prepared statement's columns);
    /// its answers are not for the client.
    DescribeStatement {
        name: Bytes,
        injected: bool,
    },
    DescribePortal,
    /// `None` when results are not masked in this session.
    Execute(Option<Arc<ExecInfo>>),
    Close,
    Sync,
    /// Marks where the client's CopyDone or CopyFail went upstream. Answered by nothing: it
    /// tells the tracker which Syncs the server ignored because they came during COPY FROM
    /// STDIN (the server reads only copy messages then, and drops Sync and Flush).
    CopyEnd,
    /// Weir's own Execute of a portal that cannot exist, sent in place of a denied request so
    /// the server aborts the (implicit or explicit) transaction exactly as if the denied
    /// statement had failed. Its ErrorResponse is replaced by Weir's denial.
    Abort,
}

/// An [`Op`] without its data, for matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    CopyEnd,
    Abort,
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Query => Kind::Query,
            Op::Parse => Kind::Parse,
            Op::Bind => Kind::Bind,
            Op::DescribeStatement { .. } => Kind::DescribeStatement,
            Op::DescribePortal => Kind::DescribePortal,
            Op::Execute(_) => Kind::Execute,
            Op::Close => Kind::Close,
            Op::Sync => Kind::Sync,
            Op::CopyEnd => Kind::CopyEnd,
            Op::Abort => Kind::Abort,
        }
    }
}

/// Who a request's answers are for.
#[derive(Debug, Clone, Default)]
pub enum Mode {
    /// The client's request: answers go to the client.
    #[default]
    Client,
    /// Weir's own bracket statement (BEGIN, SAVEPOINT, ROLLBACK…): every answer is dropped,
    /// and answers still held for a bounded write are dropped with them.
    Hidden,
    /// A write under a row bound: its answers are held back until Weir knows how many rows it
    /// changed (the probe gets the count when the request completes). Its ReadyForQuery is
    /// never the client's: the closing statement's is.
    Held(Arc<Probe>),
    /// The statement that closes a bounded write's bracket (COMMIT, RELEASE, or an empty
    /// query): first the held answers are released (or dropped), then only its errors,
    /// notices and ReadyForQuery reach the client.
    Close { release: bool },
    /// Weir's own query that captures a write's rows (a before-image, `crate::undo`): its
    /// rows go to the collector, nothing to the client, and answers held for the write stay
    /// held. The probe gets its outcome.
    Capture(Arc<Probe>, Arc<Collector>),
}

/// [`Mode`] without its data, for the relay's per-message decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeKind {
    Client,
    Hidden,
    Held,
    Close { release: bool },
    Capture,
}

/// The rows of a capture query: the first column of each DataRow as text (`None` for NULL),
/// until they pass `max` bytes; past it only the count goes on.
#[derive(Debug)]
pub struct Collector {
    inner: std::sync::Mutex<Collected>,
}

#[derive(Debug, Default)]
pub struct Collected {
    pub rows: Vec<Option<String>>,
    pub count: u64,
    pub bytes: u64,
    /// The rows passed the cap: `rows` is incomplete.
    pub over: bool,
    pub max: u64,
}

impl Collector {
    pub fn new(max: u64) -> Arc<Collector> {
        Arc::new(Collector {
            inner: std::sync::Mutex::new(Collected {
                max,
                ..Collected::default()
            }),
        })
    }

    /// Keeps one DataRow's first column (`body` is the message after its header).
    pub fn push(&self, body: &[u8]) {
        let mut c = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.count += 1;
        c.bytes = c.bytes.saturating_add(body.len() as u64);
        if c.over || c.bytes > c.max {
            c.over = true;
            c.rows = Vec::new();
            return;
        }
        let value = first_column(body);
        c.rows.push(value);
    }

    pub fn take(&self) -> Collected {
        std::mem::take(
            &mut *self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// A DataRow body's first column as text: `None` for NULL, a malformed row, or bytes that
/// are not UTF-8 (the capture asks for JSON text).
fn first_column(body: &[u8]) -> Option<String> {
    let n = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if n < 1 {
        return None;
    }
    let len = i32::from_be_bytes([*body.get(2)?, *body.get(3)?, *body.get(4)?, *body.get(5)?]);
    let len = usize::try_from(len).ok()?;
    let bytes = body.get(6..6usize.checked_add(len)?)?;
    String::from_utf8(bytes.to_vec()).ok()
}

/// What a bounded write came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub rows: u64,
    pub tags: Vec<String>,
    pub sqlstate: Option<String>,
}

/// Where a bounded write's result goes: the frontend half waits on the receiver.
#[derive(Debug, Default)]
pub struct Probe {
    tx: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<ProbeResult>>>,
}

impl Probe {
    pub fn new() -> (Arc<Probe>, tokio::sync::oneshot::Receiver<ProbeResult>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Arc::new(Probe {
                tx: std::sync::Mutex::new(Some(tx)),
            }),
            rx,
        )
    }

    pub fn send(&self, result: ProbeResult) {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(result);
        }
    }
}

/// One forwarded request (a Query, or an extended batch up to Sync or Flush).
#[derive(Debug)]
pub struct Pending {
    /// Who its answers are for.
    pub mode: Mode,
    pub id: u64,
    pub started: Instant,
    pub ops: VecDeque<Op>,
    /// A simple Query's decision, for the result stage (when results are masked).
    pub decision: Option<Arc<Decision>>,
    /// The request changes the schema: the masking catalog is stale once it completes.
    pub ddl: bool,
    /// The ErrorResponse to send in place of the server's answer to [`Op::Abort`].
    pub denial: Option<Bytes>,
    /// Whether the completion is audited (requests that carry statements are).
    pub audited: bool,
    /// Its events, when it was forwarded while they flush: no answer of it may reach the
    /// client before they are durable (`crate::pipeline::write_ahead`).
    pub durability: Option<crate::pipeline::write_ahead::Durability>,
    pub tags: Vec<String>,
    pub rows: u64,
    pub sqlstate: Option<String>,
}

impl Pending {
    pub fn new(id: u64, ops: VecDeque<Op>) -> Pending {
        Pending {
            mode: Mode::Client,
            id,
            started: Instant::now(),
            ops,
            decision: None,
            ddl: false,
            denial: None,
            audited: true,
            durability: None,
            tags: Vec::new(),
            rows: 0,
            sqlstate: None,
        }
    }
}

#[derive(Debug)]
pub enum Entry {
    Request(Pending),
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    Replace(Bytes),
    /// The message answers nothing Weir forwarded: the session has lost its place and must
    /// end (audit and denials depend on knowing which request an answer belongs to).
    Desync,
}

/// Something that became due after a message: a finished request.
#[derive(Debug)]
pub enum Due {
    Completed(Pending),
}

#[derive(Debug)]
pub struct Tracker {
    queue: VecDeque<Entry>,
    /// After an error in the extended protocol the server ignores everything up to Sync.
    skipping: bool,
    /// The server is (or was) in COPY FROM STDIN for an Execute: Syncs sent before the
    /// client's CopyDone/CopyFail were dropped by the server and get no answer.
    copy_in: bool,
    pub tx_status: TxStatus,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            queue: VecDeque::new(),
            skipping: false,
            copy_in: false,
            tx_status: TxStatus::Idle,
        }
    }
}

impl Tracker {
    pub fn push(&mut self, entry: Entry, due: &mut Vec<Due>) {
        self.queue.push_back(entry);
        self.settle(due);
    }

    /// Whether any forwarded request still waits for an answer.
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    fn head(&mut self) -> Option<&mut Pending> {
        match self.queue.front_mut() {
            Some(Entry::Request(p)) => Some(p),
            None => None,
        }
    }

    fn front_op(&mut self) -> Option<Kind> {
        self.head().and_then(|p| p.ops.front().map(Op::kind))
    }

    fn pop_op(&mut self) {
        if let Some(p) = self.head() {
            p.ops.pop_front();
        }
    }

    /// The next server message answers a request whose events may still be flushing: its
    /// durability, and the request, once (the caller waits before anything of it goes out).
    pub fn take_durability(&mut self) -> Option<(u64, crate::pipeline::write_ahead::Durability)> {
        let p = self.head()?;
        let d = p.durability.take()?;
        Some((p.id, d))
    }

    /// Who the next server message is for.
    pub fn mode(&self) -> ModeKind {
        match self.queue.front() {
            Some(Entry::Request(p)) => match &p.mode {
                Mode::Client => ModeKind::Client,
                Mode::Hidden => ModeKind::Hidden,
                Mode::Held(_) => ModeKind::Held,
                Mode::Close { release } => ModeKind::Close { release: *release },
                Mode::Capture(..) => ModeKind::Capture,
            },
            None => ModeKind::Client,
        }
    }

    /// Where the next server message's rows go, when it answers a capture query.
    pub fn collector(&self) -> Option<Arc<Collector>> {
        match self.queue.front() {
            Some(Entry::Request(Pending {
                mode: Mode::Capture(_, c),
                ..
            })) => Some(Arc::clone(c)),
            _ => None,
        }
    }

    /// What the next server message answers, for the result stage.
    pub fn answering(&self) -> Answering<'_> {
        let Some(Entry::Request(p)) = self.queue.front() else {
            return Answering::Other;
        };
        match p.ops.front() {
            Some(Op::Query) => Answering::Query(
                p.decision
                    .as_ref()
                    .map(|d| &*d.analysis.statements)
                    .unwrap_or(&[]),
            ),
            Some(Op::DescribeStatement { name, injected }) => Answering::DescribeStatement {
                name: name.as_ref(),
                injected: *injected,
            },
            Some(Op::DescribePortal) => Answering::DescribePortal,
            Some(Op::Execute(info)) => Answering::Execute {
                statement: info.as_ref().map(|i| i.statement.as_ref()),
                formats: info.as_ref().map_or(&[], |i| i.formats.as_slice()),
                facts: info
                    .as_ref()
                    .and_then(|i| i.decision.analysis.statements.first()),
            },
            _ => Answering::Other,
        }
    }

    /// Completes finished requests, drops ops the server will skip, and releases injections
    /// that are now in order.
    fn settle(&mut self, due: &mut Vec<Due>) {
        loop {
            let skipping = self.skipping;
            let copy_in = self.copy_in;
            match self.queue.front_mut() {
                Some(Entry::Request(p)) if p.ops.is_empty() => {
                    if let Some(Entry::Request(p)) = self.queue.pop_front() {
                        due.push(Due::Completed(p));
                    }
                }
                Some(Entry::Request(p)) if p.ops.front().map(Op::kind) == Some(Kind::CopyEnd) => {
                    p.ops.pop_front();
                    self.copy_in = false;
                }
                Some(Entry::Request(p))
                    if copy_in && p.ops.front().map(Op::kind) == Some(Kind::Sync) =>
                {
                    p.ops.pop_front();
                }
                Some(Entry::Request(p))
                    if skipping && p.ops.front().map(Op::kind) != Some(Kind::Sync) =>
                {
                    p.ops.pop_front();
                }
                _ => return,
            }
        }
    }

    /// Accounts for one server message. `tag` is the message tag; `error_code` is the
    /// SQLSTATE for ErrorResponse, `command_tag` the text of CommandComplete.
    pub fn on_message(&mut self, tag: u8, body: &[u8], due: &mut Vec<Due>) -> Action {
        let mut action = Action::Forward;
        match tag {
            // Asynchronous: can arrive at any time, answer nothing.
            b'S' | b'N' | b'A' => return Action::Forward,
            b'Z' => {
                if let Some(s) = body.first().copied().and_then(TxStatus::from_byte) {
                    self.tx_status = s;
                }
                self.skipping = false;
                if !matches!(self.front_op(), Some(Kind::Sync | Kind::Query)) {
                    return Action::Desync;
                }
                self.pop_op();
            }
            b'E' => {
                let code = error_code(body);
                match self.front_op() {
                    Some(Kind::Query) => {
                        if let Some(p) = self.head() {
                            p.sqlstate = code;
                        }
                    }
                    Some(Kind::Abort) => {
                        if let Some(p) = self.head() {
                            p.sqlstate = Some("42501".into());
                            if let Some(d) = p.denial.take() {
                                action = Action::Replace(d);
                            }
                        }
                        self.pop_op();
                        self.skipping = true;
                    }
                    Some(_) => {
                        if let Some(p) = self.head() {
                            p.sqlstate = code;
                        }
                        self.pop_op();
                        self.skipping = true;
                    }
                    None => {}
                }
            }
            b'1' | b'2' | b'3' | b'n' | b's' => {
                let expected = match tag {
                    b'1' => matches!(self.front_op(), Some(Kind::Parse)),
                    b'2' => matches!(self.front_op(), Some(Kind::Bind)),
                    b'3' => matches!(self.front_op(), Some(Kind::Close)),
                    b'n' => matches!(
                        self.front_op(),
                        Some(Kind::DescribeStatement | Kind::DescribePortal)
                    ),
                    _ => matches!(self.front_op(), Some(Kind::Execute)),
                };
                if !expected {
                    return Action::Desync;
                }
                self.pop_op();
            }
            b'G' if self.front_op() == Some(Kind::Execute) => self.copy_in = true,
            b'T' => {
                if matches!(
                    self.front_op(),
                    Some(Kind::DescribeStatement | Kind::DescribePortal)
                ) {
                    self.pop_op();
                }
            }
            b'C' => {
                let text = body.strip_suffix(&[0]).unwrap_or(body);
                let text = String::from_utf8_lossy(text).into_owned();
                let op = self.front_op();
                if let Some(p) = self.head() {
                    p.rows = p.rows.saturating_add(weir_audit::rows_from_tag(&text));
                    p.tags.push(text);
                }
                if op == Some(Kind::Execute) {
                    self.pop_op();
                }
            }
            b'I' if self.front_op() == Some(Kind::Execute) => self.pop_op(),
            _ => {}
        }
        self.settle(due);
        action
    }
}

/// The SQLSTATE of an ErrorResponse body.
fn error_code(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        let value = tail.get(..end)?;
        if code == b'C' {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = tail.get(end + 1..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: u64, ops: &[Op]) -> Entry {
        Entry::Request(Pending::new(id, ops.iter().cloned().collect()))
    }

    fn completed(due: &mut Vec<Due>) -> Vec<u64> {
        due.drain(..)
            .map(|d| match d {
                Due::Completed(p) => p.id,
            })
            .collect()
    }

    #[test]
    fn simple_query_completes_at_ready_for_query() {
        let mut t = Tracker::default();
        let mut due = Vec::new();
        t.push(req(1, &[Op::Query]), &mut due);
        t.on_message(b'T', b"", &mut due);
        t.on_message(b'D', b"", &mut due);
        t.on_message(b'C', b"SELECT 1\0", &mut due);
        assert!(completed(&mut due).is_empty());
        t.on_message(b'Z', b"I", &mut due);
        assert_eq!(completed(&mut due), vec![1]);
        assert!(t.is_idle());
    }

    #[test]
    fn flush_batch_completes_without_ready_for_query() {
        let mut t = Tracker::default();
        let mut due = Vec::new();
        t.push(
            req(
                1,
                &[Op::Parse, Op::Bind, Op::DescribePortal, Op::Execute(None)],
            ),
            &mut due,
        );
        for (tag, body) in [(b'1', &b""[..]), (b'2', b""), (b'T', b""), (b'D', b"")] {
            t.on_message(tag, body, &mut due);
        }
        assert!(completed(&mut due).is_empty());
        t.on_message(b'C', b"SELECT 1\0", &mut due);
        assert_eq!(completed(&mut due), vec![1]);
    }

    #[test]
    fn error_skips_to_sync_across_requests() {
        let mut t = Tracker::default();
        let mut due = Vec::new();
        t.push(req(1, &[Op::Parse, Op::Bind, Op::Execute(None)]), &mut due);
        t.on_message(b'E', b"C42P01\0\0", &mut due);
        // The rest of request 1 is skipped by the server.
        assert_eq!(completed(&mut due), vec![1]);
        t.push(req(2, &[Op::Bind, Op::Execute(None), Op::Sync]), &mut due);
        assert!(completed(&mut due).is_empty());
        t.on_message(b'Z', b"I", &mut due);
        assert_eq!(completed(&mut due), vec![2]);
    }

    #[test]
    fn denial_replaces_the_abort_error_and_keeps_order() {
        let mut t = Tracker::default();
        let mut due = Vec::new();
        t.push(req(1, &[Op::Query]), &mut due);
        let mut denied = Pending::new(2, [Op::Abort, Op::Sync].into());
        denied.denial = Some(Bytes::from_static(b"denied"));
        t.push(Entry::Request(denied), &mut due);
        assert!(due.is_empty());
        t.on_message(b'Z', b"T", &mut due);
        assert_eq!(completed(&mut due), vec![1]);
        assert_eq!(
            t.on_message(b'E', b"C34000\0\0", &mut due),
            Action::Replace(Bytes::from_static(b"denied"))
        );
        t.on_message(b'Z', b"E", &mut due);
        assert_eq!(completed(&mut due), vec![2]);
        assert_eq!(t.tx_status, TxStatus::Failed);
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_answer() {
        let mut t = Tracker::default();
        let mut due = Vec::new();
        // Bind, Execute (COPY FROM STDIN), Sync — then copy data, CopyDone, Sync.
        t.push(req(1, &[Op::Bind, Op::Execute(None), Op::Sync]), &mut due);
        t.push(req(2, &[Op::CopyEnd]), &mut due);
        t.push(req(3, &[Op::Sync]), &mut due);
        assert_eq!(t.on_message(b'2', b"", &mut due), Action::Forward);
        t.on_message(b'G', b"", &mut due);
        t.on_message(b'C', b"COPY 3\0", &mut due);
        assert_eq!(completed(&mut due), vec![1, 2]);
        t.on_message(b'Z', b"I", &mut due);
        assert_eq!(completed(&mut due), vec![3]);
        assert!(t.is_idle());
    }

    #[test]
    fn an_answer_to_nothing_is_a_desync() {
        let mut t = Tracker::default();
        let mut due = Vec::new();
        assert_eq!(t.on_message(b'Z', b"I", &mut due), Action::Desync);
        t.push(req(1, &[Op::Parse, Op::Sync]), &mut due);
        assert_eq!(t.on_message(b'2', b"", &mut due), Action::Desync);
    }

    #[test]
    fn error_code_is_read_from_fields() {
        assert_eq!(
            error_code(b"SERROR\0C22012\0Mx\0\0").as_deref(),
            Some("22012")
        );
        assert_eq!(error_code(b"SERROR\0"), None);
        assert_eq!(error_code(b"S"), None);
    }
}
