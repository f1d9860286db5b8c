//! The frontend half: client → decide → record → upstream. A request is assembled from the
//! client's messages, decided, recorded write-ahead, and then forwarded, held for approval,
//! run under a row bound, or replaced by its denial.

use super::*;
use crate::pipeline::Item;

mod approval;
mod bracket;
mod decide;

/// The frontend half: client → decide → upstream.
pub(super) struct FrontendHalf<'a> {
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
    /// The decide stage: scope, decision cache, grant check.
    decider: pipeline::Decider,
    requests: &'a AtomicU64,
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
    /// A request ending with Flush was forwarded since the last one ending with Sync: the
    /// server has sent no ReadyForQuery for it, so the last transaction status Weir saw may
    /// be stale (a COMMIT executed before a Flush).
    unsynced: bool,
    /// Before-images being kept beside the client's transaction (`crate::undo::keep`).
    pending_images: Vec<tokio::task::JoinHandle<()>>,
}

/// Whether a decided statement runs code Weir cannot see into, which could change session
/// settings unseen (a function body's `set_config`, a DO block's SET, a `set_config` whose
/// setting is not a constant).
fn runs_unseen_code(decision: &Decision) -> bool {
    decision.analysis.statements.iter().any(|f| {
        f.unknown_effect || !f.user_functions.is_empty() || f.setting.as_deref() == Some("*")
    })
}

/// A write that runs in a bracket: under a row bound (it may change at most `limit` rows),
/// with its before-image captured (`capture`), or both.
struct Bounded {
    request: u64,
    items: Vec<Item>,
    next_scope: Option<Scope>,
    end: BatchEnd,
    limit: Option<u64>,
    rule: String,
    capture: Option<Arc<crate::undo::CaptureSpec>>,
    /// Its events, when they are still flushing (an overlapped write in the client's
    /// transaction).
    durability: Option<Durability>,
}

/// The capture of a request's before-image, when it has one (one UPDATE or DELETE ending
/// with Sync, where before-images are kept: see [`FrontendHalf::mark_undo`]).
fn capture_of(items: &[Item]) -> Option<Arc<crate::undo::CaptureSpec>> {
    match items {
        [one] => one.undo.as_ref().and_then(|u| u.spec.clone()),
        _ => None,
    }
}

/// A request that waits for an approver.
struct Held {
    request: u64,
    items: Vec<Item>,
    next_scope: Option<Scope>,
    end: BatchEnd,
    waiting: pipeline::approval::Waiting,
    /// The session's cancel count before the request was recorded: a cancel after it (even
    /// one that arrives before the wait begins) withdraws the request.
    cancels_before: u64,
}

impl<'a> FrontendHalf<'a> {
    pub(super) fn new(
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
            decider: pipeline::Decider::new(scope),
            requests,
            held: None,
            bounded: None,
            unseen_in_flight: false,
            batch_unseen: false,
            unsynced: false,
            pending_images: Vec::new(),
        }
    }

    pub(super) async fn run<R, W>(&mut self, cr: &mut R, uw: &mut W) -> Result<&'static str, Fatal>
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
                while self.bounded.is_some() || self.held.is_some() {
                    // Earlier requests go now; this one runs in a bracket or waits for its
                    // approver (and, approved, may then run in a bracket).
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
        // The same for Weir's capture statement and portal (`bracket::CAPTURE_STATEMENT`).
        let reserved = |n: &[u8]| n == ABORT_PORTAL || n == bracket::CAPTURE_STATEMENT;
        let names_abort_portal = match &msg {
            Frontend::Bind(b) => reserved(&b.portal) || reserved(&b.statement),
            Frontend::Parse(p) => reserved(&p.name),
            Frontend::Execute { portal, .. } => reserved(portal),
            Frontend::Describe(_, name) | Frontend::Close(_, name) => reserved(name),
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
                let name = match self.ctx.shared.upstreams.catalog(&self.ctx.target.name) {
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
                self.items.push(Item::new("function_call", decision));
                self.finish_batch(out, BatchEnd::Sync).await?;
            }
            Frontend::Password(_) => {
                return Err(Fatal::protocol("password message after authentication"))
            }
            Frontend::Query(sql) => {
                self.batch.extend_from_slice(&frame);
                self.ops.push_back(Op::Query);
                let decision = self.decide(&sql)?;
                self.items.push(Item::new("query", decision));
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
                        verdicts: vec![Verdict::Deny {
                            rule: weir_analyze::lexing::RULE.into(),
                            reason: "this request executes code Weir cannot see (a function, DO, CALL) and then more SQL text, which the server would read in whatever mode that code left; send Sync before the next statement".into(),
                        }],
                        ..Decision::clone(&decision)
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
                    self.items.push(Item::new("parse", Arc::clone(&decision)));
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
                    let params = crate::undo::params_for(
                        &self.ctx.shared.config,
                        &self.ctx.target,
                        &d,
                        &b.param_formats,
                        &b.params,
                    );
                    self.portals.insert(
                        b.portal,
                        Arc::new(ExecInfo {
                            statement: b.statement,
                            formats: b.result_formats,
                            decision: d,
                            params,
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
                        self.decider
                            .decide_facts(&self.ctx.info, &self.ctx.end, &analysis)
                    }
                };
                self.batch_unseen |= runs_unseen_code(&decision);
                let mut item = Item::new("execute", decision);
                item.params = info.and_then(|i| i.params.clone());
                self.items.push(item);
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

    /// The request is complete: audit it, then forward it or its denial.
    async fn finish_batch(&mut self, out: &mut BytesMut, end: BatchEnd) -> Result<(), Fatal> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let mut items = std::mem::take(&mut self.items);
        let next_scope = self.decider.take_pending();
        self.batch_unseen = false;
        let scope = next_scope
            .as_ref()
            .unwrap_or_else(|| self.decider.request_scope());
        pipeline::guards::guard_state_sinks(&self.ctx.info, &mut items).await;
        pipeline::guards::guard_copies(&self.ctx.info, scope, &mut items).await;
        self.mark_undo(&mut items, end).await;
        self.settle_images(&items).await;
        let verdict = pipeline::overall(&items);
        // No bracket where it cannot matter: a key equality changes at most one row.
        let one_row = matches!(&verdict, Verdict::AllowBounded { rows, .. } if *rows >= 1)
            && self.at_most_one_row(&items).await;
        let runs_now = (matches!(verdict, Verdict::Allow) || one_row).then(|| {
            // Sure only when everything forwarded earlier was answered up to a ReadyForQuery
            // that said so: nothing still in flight could end the transaction.
            if !self.unsynced
                && self.inbox.is_idle()
                && self.inbox.tx_status() == TxStatus::InTransaction
            {
                TxPosition::InBlock
            } else {
                TxPosition::Other
            }
        });
        // Whatever happens to this request, its end decides what the next one may assume.
        self.unsynced = matches!(end, BatchEnd::Flush);
        let durability = match pipeline::admit(&self.ctx.info, id, &items, &verdict, runs_now).await
        {
            Ok(d) => d,
            Err(refusal) => return self.refuse(out, &refusal, end).await,
        };

        match &verdict {
            Verdict::Allow => self.forward(id, &items, next_scope, out, durability).await,
            Verdict::AllowBounded { .. } if one_row => {
                self.forward(id, &items, next_scope, out, durability).await
            }
            Verdict::AllowBounded { rows, rule } => {
                // Checked by running it in a bracket: one statement, and a Sync to end the
                // request (Weir must see its ReadyForQuery to close the bracket).
                let single = matches!(end, BatchEnd::Sync)
                    && matches!(items.as_slice(), [one] if one.decision.analysis.statements.len() == 1
                        && one.decision.analysis.statements.iter().all(|f| f.copy.is_none()));
                if single {
                    let capture = capture_of(&items);
                    self.bounded = Some(Bounded {
                        request: id,
                        items,
                        next_scope,
                        end,
                        limit: Some(*rows),
                        rule: rule.clone(),
                        capture,
                        durability: None,
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
                self.refuse(out, &pipeline::Refusal::denied(rule, reason), end)
                    .await
            }
            Verdict::RequireApproval { rule, reason } => {
                self.approval_or_refusal(id, items, next_scope, end, rule, reason, None, out)
                    .await
            }
        }
    }

    /// Forwards a decided, recorded request: its entry goes to the backend half first, then
    /// its bytes into `out`. With a `durability`, its events are still flushing: the
    /// backend half holds its answers until they are durable.
    async fn forward(
        &mut self,
        id: u64,
        items: &[Item],
        next_scope: Option<Scope>,
        out: &mut BytesMut,
        durability: Option<Durability>,
    ) -> Result<(), Fatal> {
        if let Some(capture) = capture_of(items) {
            // Its rows are captured first: it runs in a bracket (the run loop's).
            self.bounded = Some(Bounded {
                request: id,
                items: items.to_vec(),
                next_scope,
                end: BatchEnd::Sync,
                limit: None,
                rule: String::new(),
                capture: Some(capture),
                durability,
            });
            return Ok(());
        }
        self.forward_as(id, items, next_scope, out, Mode::Client, durability)
            .await
    }

    async fn forward_as(
        &mut self,
        id: u64,
        items: &[Item],
        next_scope: Option<Scope>,
        out: &mut BytesMut,
        mode: Mode,
        durability: Option<Durability>,
    ) -> Result<(), Fatal> {
        let shared = &self.ctx.shared;
        if let Some(scope) = next_scope {
            // Forwarded: the session now has the scope its statements made.
            self.decider.adopt(scope);
        }
        if items.iter().any(|i| runs_unseen_code(&i.decision)) {
            self.unseen_in_flight = true;
        }
        let ops = std::mem::take(&mut self.ops);
        let mut pending = Pending::new(id, ops);
        pending.mode = mode;
        pending.durability = durability;
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

    /// Drops the request being assembled and forwards its refusal in its place.
    async fn refuse(
        &mut self,
        out: &mut BytesMut,
        refusal: &pipeline::Refusal,
        end: BatchEnd,
    ) -> Result<(), Fatal> {
        self.batch.clear();
        self.ops.clear();
        self.deny_now(out, refusal_fields(refusal), end).await
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
