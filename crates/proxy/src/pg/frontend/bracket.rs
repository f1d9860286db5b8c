//! The row-bound bracket: a write under a bound runs inside Weir's own transaction or
//! savepoint, its count is checked, and it is kept or undone (and then waits for approval).

use super::*;

/// What undoes a bracket and everything in it: Weir's transaction, or its savepoint in the
/// client's.
fn undo_bracket(autocommit: bool) -> &'static str {
    if autocommit {
        "ROLLBACK"
    } else {
        "ROLLBACK TO SAVEPOINT weir_row_bound; RELEASE SAVEPOINT weir_row_bound"
    }
}

/// A capture query on its way: its outcome and rows arrive through these.
struct Queued {
    result: tokio::sync::oneshot::Receiver<crate::track::ProbeResult>,
    collector: Arc<crate::track::Collector>,
}

impl Queued {
    async fn rows(self) -> Result<(crate::track::ProbeResult, crate::track::Collected), Fatal> {
        let Ok(result) = self.result.await else {
            return Err(Fatal::new(
                "08006",
                "weir: a before-image capture's result was lost; the session is closed",
            ));
        };
        Ok((result, self.collector.take()))
    }
}

/// The name of Weir's own capture statement and portal (`crate::undo`). No client message
/// may name it (`FrontendHalf::on_frame`), so it never clobbers or reads a client's.
pub(super) const CAPTURE_STATEMENT: &[u8] = b"weir\x1fcapture";

impl FrontendHalf<'_> {
    /// Whether every bounded statement of the request is an UPDATE or DELETE whose WHERE
    /// fixes every column of a unique key of the one table it writes (the target's catalog, loaded fresh
    /// if due), so it changes at most one row. Without a catalog (masking off): no.
    pub(super) async fn at_most_one_row(&self, items: &[Item]) -> bool {
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

    /// Marks an UPDATE or DELETE where before-images are kept: its change id and capture,
    /// or why it is not undoable (`crate::undo::plan`). Only a request of one statement
    /// ending with Sync can be captured (Weir must see its ReadyForQuery to close the
    /// bracket); COPY is not a write it captures.
    pub(super) async fn mark_undo(&self, items: &mut [Item], end: BatchEnd) {
        let (config, target) = (&self.ctx.shared.config, &self.ctx.target);
        // Nothing to do for reads: no catalog check on their path.
        let writes = items.iter().any(|i| {
            i.decision.analysis.statements.iter().any(|f| {
                matches!(
                    f.kind,
                    weir_analyze::StatementKind::Update | weir_analyze::StatementKind::Delete
                )
            })
        });
        if !writes || !config.audit.keeps_before_images(target) {
            return;
        }
        let catalog = match &self.ctx.mask {
            Some(cache) => {
                if let Err(e) = cache.ensure(&self.ctx.shared, target).await {
                    warn!(cause = %e, "cannot load the catalog; the write is not undoable");
                }
                Some(cache.snapshot())
            }
            None => None,
        };
        let single = items.len() == 1 && matches!(end, BatchEnd::Sync);
        for item in items.iter_mut() {
            let d = &item.decision;
            let mut mark = crate::undo::plan(
                config,
                target,
                &d.analysis.sql,
                &d.analysis.statements,
                item.params.as_ref(),
                catalog.as_deref(),
            );
            if let (Some(m), false) = (&mut mark, single) {
                if m.spec.is_some() {
                    *m = crate::undo::Mark {
                        change: None,
                        not_undoable: Some(
                            "not undoable: the request holds more than one statement, or does not end with Sync"
                                .into(),
                        ),
                        spec: None,
                    };
                }
            }
            if mark.as_ref().is_some_and(|m| m.spec.is_none()) {
                // Decided as undoable (a write where images are kept); it is not.
                let verdicts = self.ctx.info.decide_not_undoable(&item.decision);
                if verdicts != item.decision.verdicts {
                    item.decision = Arc::new(Decision {
                        verdicts,
                        ..Decision::clone(&item.decision)
                    });
                }
            }
            item.undo = mark;
        }
    }

    /// Waits for the images kept beside the client's transaction before a request that may
    /// end it (COMMIT, ROLLBACK, PREPARE TRANSACTION, a procedure's own COMMIT, anything Weir
    /// cannot see into): their events then come before its own in the trail.
    pub(super) async fn settle_images(&mut self, items: &[Item]) {
        if self.pending_images.is_empty() {
            return;
        }
        let plain = items.iter().all(|i| {
            i.decision.analysis.statements.iter().all(|f| {
                matches!(
                    f.kind,
                    weir_analyze::StatementKind::Select
                        | weir_analyze::StatementKind::Insert
                        | weir_analyze::StatementKind::Update
                        | weir_analyze::StatementKind::Delete
                        | weir_analyze::StatementKind::Merge
                        | weir_analyze::StatementKind::Show
                        | weir_analyze::StatementKind::Explain
                        | weir_analyze::StatementKind::Empty
                ) && !f.unknown_effect
                    && f.user_functions.is_empty()
            })
        });
        if plain {
            return;
        }
        for handle in std::mem::take(&mut self.pending_images) {
            let _ = handle.await;
        }
    }

    /// Queues one of Weir's own statements (a bracket around a bounded write).
    pub(super) fn inject(&mut self, out: &mut BytesMut, sql: &'static str, mode: Mode) {
        self.inject_text(out, Bytes::from_static(sql.as_bytes()), mode);
    }

    /// [`FrontendHalf::inject`] for a text Weir built (a capture query).
    pub(super) fn inject_text(&mut self, out: &mut BytesMut, sql: Bytes, mode: Mode) {
        let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let mut pending = Pending::new(id, VecDeque::from([Op::Query]));
        pending.mode = mode;
        pending.audited = false;
        self.send(Entry::Request(pending));
        Frontend::Query(sql).encode(out);
    }

    /// Runs one of Weir's capture queries and waits for its rows (see
    /// [`FrontendHalf::queue_capture`]).
    async fn capture<W: AsyncWrite + Unpin>(
        &mut self,
        sql: String,
        params: Option<(Vec<i16>, Vec<Option<Bytes>>)>,
        max: u64,
        uw: &mut W,
        out: &mut BytesMut,
    ) -> Result<(crate::track::ProbeResult, crate::track::Collected), Fatal> {
        let queued = self.queue_capture(sql, params, max, out);
        flush_upstream(uw, out).await?;
        queued.rows().await
    }

    /// Queues one of Weir's capture queries into `out`: as a simple Query, or, with `params`
    /// (formats and values, as the write's Bind gave them), as Weir's own prepared statement
    /// [`CAPTURE_STATEMENT`], bound with them.
    fn queue_capture(
        &mut self,
        sql: String,
        params: Option<(Vec<i16>, Vec<Option<Bytes>>)>,
        max: u64,
        out: &mut BytesMut,
    ) -> Queued {
        let (probe, result) = Probe::new();
        let collector = crate::track::Collector::new(max);
        let mode = Mode::Capture(probe, Arc::clone(&collector));
        match params {
            None => self.inject_text(out, Bytes::from(sql), mode),
            Some((formats, values)) => {
                let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
                let name = Bytes::from_static(CAPTURE_STATEMENT);
                // Closed first: an earlier capture that failed left it defined.
                Frontend::Close(DescribeTarget::Statement, name.clone()).encode(out);
                Frontend::Parse(weir_wire::frontend::Parse {
                    name: name.clone(),
                    query: Bytes::from(sql),
                    param_types: Vec::new(),
                })
                .encode(out);
                Frontend::Bind(weir_wire::frontend::Bind {
                    portal: Bytes::from_static(CAPTURE_STATEMENT),
                    statement: name,
                    param_formats: formats,
                    params: values,
                    result_formats: vec![0],
                })
                .encode(out);
                Frontend::Execute {
                    portal: Bytes::from_static(CAPTURE_STATEMENT),
                    max_rows: 0,
                }
                .encode(out);
                Frontend::Sync.encode(out);
                let mut pending = Pending::new(
                    id,
                    VecDeque::from([Op::Close, Op::Parse, Op::Bind, Op::Execute(None), Op::Sync]),
                );
                pending.mode = mode;
                pending.audited = false;
                self.send(Entry::Request(pending));
            }
        }
        Queued { result, collector }
    }

    /// Runs a bounded write inside a bracket — a transaction Weir opens when the client is in
    /// none, else a savepoint in the client's transaction — with its answers held until the
    /// count is known. Within the bound: the bracket is committed (released) and the client
    /// gets the answers. Over it: the bracket is rolled back, nothing reaches the client, and
    /// the write goes to approval with its exact count; approved, it runs for real. A write
    /// that fails reaches the client as it would without Weir. Returns false when the client
    /// went away while waiting for approval.
    pub(super) async fn run_bounded<R, W>(
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
            // The server refuses anything but the end of the transaction: nothing to count
            // or capture.
            self.forward_as(
                b.request,
                &b.items,
                b.next_scope,
                out,
                Mode::Client,
                b.durability,
            )
            .await?;
            return Ok(true);
        }
        let autocommit = status == TxStatus::Idle;
        let (batch, ops) = (self.batch.clone(), self.ops.clone());
        self.inject(
            out,
            if autocommit {
                "BEGIN"
            } else {
                "SAVEPOINT weir_row_bound"
            },
            Mode::Hidden,
        );
        // The rows as they are, locked until the bracket ends, so the write changes exactly
        // these.
        let mut before: Option<Result<Vec<serde_json::Map<String, serde_json::Value>>, String>> =
            None;
        if let Some(spec) = &b.capture {
            let (r, c) = self
                .capture(
                    spec.plan.capture_sql.clone(),
                    spec.params.clone(),
                    spec.max_bytes,
                    uw,
                    out,
                )
                .await?;
            before = Some(if let Some(code) = r.sqlstate {
                // The capture failed (a permission, a lock timeout): the transaction goes on
                // as before it, and the write runs without an image.
                if autocommit {
                    self.inject(out, "ROLLBACK", Mode::Hidden);
                    self.inject(out, "BEGIN", Mode::Hidden);
                } else {
                    self.inject(out, "ROLLBACK TO SAVEPOINT weir_row_bound", Mode::Hidden);
                }
                Err(format!("its rows could not be captured (SQLSTATE {code})"))
            } else if c.over {
                Err(format!(
                    "over the cap: its rows are more than [audit] before_image_max_bytes ({} bytes)",
                    spec.max_bytes
                ))
            } else {
                crate::undo::before_rows(c.rows, &spec.key)
            });
            if let Some(Err(why)) = &before {
                // Not undoable after all: policy decides again (`context.undoable` false),
                // before the write has run.
                let mut items = b.items.clone();
                let verdicts = items
                    .first()
                    .map(|i| self.ctx.info.decide_not_undoable(&i.decision))
                    .unwrap_or_default();
                let refused = match verdicts.iter().max_by_key(|v| v.severity()) {
                    Some(Verdict::Deny { rule, reason }) => Some((true, rule.clone(), reason)),
                    Some(Verdict::RequireApproval { rule, reason }) => {
                        Some((false, rule.clone(), reason))
                    }
                    _ => None,
                };
                if let Some((deny, rule, reason)) = refused {
                    let reason = format!("{reason} ({why})");
                    self.inject(out, undo_bracket(autocommit), Mode::Hidden);
                    flush_upstream(uw, out).await?;
                    crate::undo::keep(
                        crate::undo::Keeper::of(&self.ctx.info),
                        b.request,
                        Arc::clone(spec),
                        crate::undo::Outcome::NotKept(why.clone()),
                        false,
                    )
                    .await;
                    if deny {
                        self.refuse(out, &pipeline::Refusal::denied(&rule, &reason), b.end)
                            .await?;
                        return Ok(true);
                    }
                    for item in &mut items {
                        item.undo = None;
                        item.decision = Arc::new(Decision {
                            verdicts: verdicts.clone(),
                            ..Decision::clone(&item.decision)
                        });
                    }
                    // The request it makes is left in `held`: the run loop waits for it.
                    self.approval_or_refusal(
                        b.request,
                        items,
                        b.next_scope,
                        b.end,
                        &rule,
                        &reason,
                        None,
                        out,
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
        let (probe, result) = Probe::new();
        self.forward_as(
            b.request,
            &b.items,
            b.next_scope.clone(),
            out,
            Mode::Held(probe),
            b.durability,
        )
        .await?;
        // An UPDATE's rows read again by key go right behind it (the keys are known from the
        // capture): one round trip for both. Should the write fail or pass its bound, this
        // read fails or is ignored with it.
        let after = match (&b.capture, &before) {
            (Some(spec), Some(Ok(rows)))
                if spec.plan.kind == weir_analyze::undo::WriteKind::Update && !rows.is_empty() =>
            {
                let sql = crate::undo::after_image_sql(&spec.table, &spec.key, rows);
                Some(self.queue_capture(sql, None, spec.max_bytes, out))
            }
            _ => None,
        };
        flush_upstream(uw, out).await?;
        let Ok(result) = result.await else {
            return Err(Fatal::new(
                "08006",
                "weir: a bounded write's result was lost; the session is closed",
            ));
        };
        let after = match after {
            Some(q) => Some(q.rows().await?),
            None => None,
        };
        let within = b.limit.is_none_or(|limit| result.rows <= limit);
        if result.sqlstate.is_some() || within {
            if let (Some(spec), Some(before), None) = (&b.capture, before, &result.sqlstate) {
                // A failed after-image aborted the bracket, write included, and the client's
                // answers are held: closing the session rolls it all back.
                let outcome =
                    crate::undo::outcome(spec, before, after, result.rows).map_err(|e| {
                        Fatal::new(
                            "58000",
                            format!(
                                "weir: {e}; the session is closed and its transaction rolled back"
                            ),
                        )
                    })?;
                // Weir's own COMMIT waits until the image and its event are durable. In the
                // client's transaction the image is kept beside its next statements, and
                // anything that may end the transaction waits for it (`settle_images`).
                let keep = crate::undo::keep(
                    crate::undo::Keeper::of(&self.ctx.info),
                    b.request,
                    Arc::clone(spec),
                    outcome,
                    autocommit,
                );
                if autocommit {
                    keep.await;
                } else {
                    self.pending_images.push(tokio::spawn(keep));
                }
            }
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
        self.inject(out, undo_bracket(autocommit), Mode::Hidden);
        flush_upstream(uw, out).await?;
        self.batch = batch;
        self.ops = ops;
        let kind = result
            .tags
            .last()
            .and_then(|t| t.split(' ').next())
            .unwrap_or("statement")
            .to_owned();
        let limit = b.limit.unwrap_or_default();
        let reason = format!(
            "this {kind} would change {} rows, more than the {} allowed ({})",
            group_digits(result.rows),
            group_digits(limit),
            b.rule
        );
        info!(
            rows = result.rows,
            limit, "bounded write over its bound; rolled back"
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
}
