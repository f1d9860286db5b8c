//! The row-bound bracket: a write under a bound runs inside Weir's own transaction or
//! savepoint, its count is checked, and it is kept or undone (and then waits for approval).

use super::*;

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

    /// Queues one of Weir's own statements (a bracket around a bounded write).
    pub(super) fn inject(&mut self, out: &mut BytesMut, sql: &'static str, mode: Mode) {
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
            // The server refuses anything but the end of the transaction: nothing to count.
            self.forward(b.request, &b.items, b.next_scope, out, None)
                .await?;
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
            None,
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
}
