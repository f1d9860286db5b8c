//! The write-ahead invariant, decided here and nowhere else:
//!
//! **No byte of a statement's result reaches the client, and nothing it changes can commit
//! or outlive a crash of Weir, before its event is durable.**
//!
//! So an event's flush may overlap the server's execution instead of preceding it, where
//! that cannot let anything out early. [`forwarding`] sorts a request:
//!
//! - **Overlapped**: forwarded while its events flush; the adapter holds every answer until
//!   [`Durability::wait`] says they are durable. That is a *pure read* (SELECT, SHOW,
//!   EXPLAIN without ANALYZE, with no state-changing, unknown-effect or user function, no
//!   locking clause, no state sink), transaction control that commits nothing (BEGIN,
//!   SAVEPOINT, RELEASE, ROLLBACK [TO]), and a *write inside an explicit transaction* into
//!   tables whose writes change rows and nothing else (no user trigger, rule, inheritance
//!   child, identity or function default: [`weir_mask::Catalog::writes_only_rows`]) — it
//!   cannot commit before a COMMIT, which is never overlapped. If Weir dies first, the
//!   server rolls the transaction back with the connection.
//! - **After durable**: everything else — COMMIT and PREPARE TRANSACTION, any write outside
//!   an explicit transaction (autocommit, or a transaction status Weir cannot be sure of
//!   because earlier requests are still in flight), sequences, large objects, server files,
//!   other sessions' backends, DO, CALL, user functions, COPY, SET, a request that needs an
//!   approval, a bound or derived tags, and anything the analysis cannot tell.
//!
//! When an overlapped event fails, its answer is replaced by a 58000 error and the session
//! is closed, which aborts any transaction it wrote in. A request forwarded after durable
//! also checks that no earlier overlapped event of its session failed (see
//! [`WriteAhead`]): a COMMIT whose own event is durable never commits a write whose event
//! was lost.

use std::sync::atomic::{AtomicU64, Ordering};

use weir_analyze::{StatementFacts, StatementKind};
use weir_mask::Catalog;

use super::Item;
use crate::audit::{AuditAck, AuditError};

/// Where the session's transaction stands as the request is forwarded, as far as the
/// adapter can be sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxPosition {
    /// Inside an explicit transaction block, with no earlier request still in flight that
    /// could end it.
    InBlock,
    /// Autocommit, a failed transaction, or not known.
    Other,
}

/// The events of an overlapped request, still flushing.
#[derive(Default)]
pub(crate) struct Durability {
    acks: Vec<AuditAck>,
}

impl Durability {
    pub(crate) fn new(acks: Vec<AuditAck>) -> Durability {
        Durability { acks }
    }

    /// Resolves once every event is durable, or with the first failure.
    pub(crate) async fn wait(self) -> Result<(), AuditError> {
        let mut failure = None;
        for ack in self.acks {
            if let Err(e) = ack.wait().await {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("events", &self.acks.len())
            .finish()
    }
}

/// Whether a request whose verdict lets it run now may be forwarded while its events
/// flush. `catalog` is the target's, when Weir has one.
pub(crate) fn may_overlap(items: &[Item], tx: TxPosition, catalog: Option<&Catalog>) -> bool {
    let statements = || {
        items
            .iter()
            .flat_map(|i| i.decision.analysis.statements.iter())
    };
    // A request that ends the block (`ROLLBACK; UPDATE …`) runs what follows in autocommit.
    let tx = if statements().any(ends_block) {
        TxPosition::Other
    } else {
        tx
    };
    !items.is_empty()
        && items.iter().all(|i| i.derived.is_empty())
        && statements().all(|f| statement_may_overlap(f, tx, catalog))
}

/// Ends an explicit transaction block (or may: anything but a savepoint's statements).
fn ends_block(f: &StatementFacts) -> bool {
    f.kind == StatementKind::Transaction
        && !matches!(
            f.transaction,
            Some("begin" | "start" | "savepoint" | "release" | "rollback_to")
        )
}

fn statement_may_overlap(f: &StatementFacts, tx: TxPosition, catalog: Option<&Catalog>) -> bool {
    let sees_all = !f.unknown_effect
        && !f.unknown_nested
        && f.user_functions.is_empty()
        && !f.changes_state
        && f.hazards.is_empty()
        && f.state_sinks.is_empty()
        && f.copy.is_none()
        && f.inner.is_none()
        && !f.explain_analyze;
    // What it reads runs no code it does not show: no view's rule, no row-level security
    // policy's function (either could write, and commit, in autocommit).
    let reads_plain = f.tables_read.is_empty()
        || catalog.is_some_and(|c| f.tables_read.iter().all(|t| c.reads_run_no_code(t)));
    if !sees_all || !reads_plain {
        return false;
    }
    match f.kind {
        StatementKind::Empty => true,
        StatementKind::Transaction => matches!(
            f.transaction,
            Some("begin" | "start" | "savepoint" | "release" | "rollback" | "rollback_to")
        ),
        StatementKind::Explain => true,
        StatementKind::Select | StatementKind::Show if !f.writes => !f.locks_rows,
        StatementKind::Select
        | StatementKind::Insert
        | StatementKind::Update
        | StatementKind::Delete
        | StatementKind::Merge => {
            tx == TxPosition::InBlock
                && !f.tables_written.is_empty()
                && catalog.is_some_and(|c| f.tables_written.iter().all(|t| c.writes_only_rows(t)))
        }
        _ => false,
    }
}

/// A session's overlapped requests whose events the result stage has not yet seen durable.
///
/// The trail acknowledges in append order and counts a failed batch before it acknowledges
/// anything appended later ([`crate::audit::AuditSink::failures`]). So when a request
/// forwarded after durable has its own acknowledgement, every earlier event has been
/// answered; if the failure count moved since the oldest unconfirmed overlapped request was
/// appended, one of them may have been lost, and the request is refused.
#[derive(Debug)]
pub(crate) struct WriteAhead {
    /// The sink's failure count when the oldest unconfirmed overlapped request was
    /// appended; `u64::MAX` when every overlapped request is confirmed.
    epoch: AtomicU64,
    /// The last overlapped request.
    last: AtomicU64,
    /// The last overlapped request whose answer the result stage released (durable).
    confirmed: AtomicU64,
}

impl Default for WriteAhead {
    fn default() -> WriteAhead {
        WriteAhead {
            epoch: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
        }
    }
}

impl WriteAhead {
    fn all_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Acquire) >= self.last.load(Ordering::Acquire)
    }

    /// Before the events of overlapped request `request` are appended; `failures` is the
    /// sink's count now.
    pub(crate) fn overlapping(&self, request: u64, failures: u64) {
        if self.all_confirmed() || self.epoch.load(Ordering::Acquire) == u64::MAX {
            self.epoch.store(failures, Ordering::Release);
        }
        self.last.store(request, Ordering::Release);
    }

    /// The result stage saw overlapped request `request`'s events durable.
    pub(crate) fn confirmed(&self, request: u64) {
        self.confirmed.fetch_max(request, Ordering::AcqRel);
        if self.all_confirmed() {
            self.epoch.store(u64::MAX, Ordering::Release);
        }
    }

    /// After a request's own events are durable: whether every earlier overlapped event of
    /// the session is known not to have failed.
    pub(crate) fn earlier_ones_held(&self, failures_now: u64) -> bool {
        if self.all_confirmed() {
            return true;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        epoch == u64::MAX || epoch == failures_now
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use weir_analyze::postgres::analyze_sql;
    use weir_mask::{CatalogRow, Rules};

    fn catalog() -> Catalog {
        let row = |oid: u32, table: &str, column: &str, side_effects: bool| CatalogRow {
            side_effects,
            read_runs_code: table == "a_view",
            ..CatalogRow::column(oid, 1, "public", table, column)
        };
        Catalog::build(
            vec![
                row(1, "accounts", "balance", false),
                row(2, "audited", "x", true),
                row(3, "a_view", "x", false),
            ],
            &Rules::default(),
        )
    }

    fn overlaps(sql: &str, tx: TxPosition) -> bool {
        let c = catalog();
        analyze_sql(sql)
            .unwrap()
            .iter()
            .all(|f| statement_may_overlap(f, tx, Some(&c)))
    }

    #[test]
    fn pure_reads_overlap_anywhere() {
        for sql in [
            "SELECT 1",
            "SELECT balance FROM public.accounts WHERE balance > 3",
            "SHOW work_mem",
            "EXPLAIN SELECT * FROM public.accounts",
            "SELECT count(*), now(), lower('A') FROM public.accounts",
            "BEGIN",
            "SAVEPOINT a",
            "ROLLBACK",
            "",
        ] {
            assert!(overlaps(sql, TxPosition::Other), "{sql}");
            assert!(overlaps(sql, TxPosition::InBlock), "{sql}");
        }
    }

    #[test]
    fn writes_overlap_only_inside_a_transaction_block() {
        for sql in [
            "UPDATE public.accounts SET balance = balance + 1 WHERE balance = 3",
            "INSERT INTO public.accounts VALUES ('x')",
            "DELETE FROM public.accounts WHERE balance = '1'",
        ] {
            assert!(!overlaps(sql, TxPosition::Other), "{sql}");
            assert!(overlaps(sql, TxPosition::InBlock), "{sql}");
        }
    }

    #[test]
    fn what_may_outlive_a_rollback_waits_for_its_event() {
        for sql in [
            "COMMIT",
            "END",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "SELECT nextval('s')",
            "SELECT setval('s', 1)",
            "SELECT pg_terminate_backend(42)",
            "SELECT lo_import('/etc/passwd')",
            "SELECT dblink_exec('x', 'DROP TABLE t')",
            "SELECT my_function()",
            "SELECT * FROM public.accounts FOR UPDATE",
            "SELECT * FROM (SELECT * FROM public.accounts FOR SHARE) s",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT pg_notify('c', 'x')",
            "EXPLAIN ANALYZE SELECT 1",
            "DO $$ BEGIN END $$",
            "CALL p()",
            "COPY public.accounts TO STDOUT",
            "SET work_mem = '1MB'",
            "FETCH 10 FROM c",
            "PREPARE p AS SELECT 1",
            "CREATE TABLE t (a int)",
            "TRUNCATE public.accounts",
            "UPDATE public.audited SET x = '1'",
            "UPDATE public.unknown SET x = '1'",
            "INSERT INTO public.accounts SELECT nextval('s')::text",
            "SELECT * FROM public.a_view",
            "SELECT * FROM public.unknown",
            "UPDATE public.accounts SET balance = v.x FROM public.a_view v",
            // A CTE's name is no relation the catalog knows: strict.
            "WITH d AS (DELETE FROM public.accounts RETURNING 1) SELECT count(*) FROM d",
        ] {
            assert!(!overlaps(sql, TxPosition::InBlock), "{sql}");
        }
    }

    #[test]
    fn a_request_that_ends_the_block_does_not_overlap_the_writes_after_it() {
        let c = catalog();
        let request = |sql: &str| -> bool {
            let facts = analyze_sql(sql).unwrap();
            let decision = weir_policy::Decision {
                analysis: std::sync::Arc::new(weir_analyze::Analysis::synthetic(sql, facts)),
                verdicts: vec![weir_policy::Verdict::Allow],
                touched: std::sync::Arc::from(Vec::new()),
                anomalies: Vec::new(),
            };
            let items = [Item::new("query", std::sync::Arc::new(decision))];
            may_overlap(&items, TxPosition::InBlock, Some(&c))
        };
        assert!(!request(
            "ROLLBACK; UPDATE public.accounts SET balance = '1'"
        ));
        assert!(!request("ABORT; INSERT INTO public.accounts VALUES ('x')"));
        assert!(request(
            "ROLLBACK TO s; UPDATE public.accounts SET balance = '1'"
        ));
        assert!(request(
            "SAVEPOINT s; UPDATE public.accounts SET balance = '1'"
        ));
        assert!(request("ROLLBACK"));
    }

    #[test]
    fn a_session_refuses_after_an_unconfirmed_overlap_may_have_failed() {
        let w = WriteAhead::default();
        assert!(w.earlier_ones_held(0));
        w.overlapping(1, 0);
        // A failure after it was appended: it may be the one that was lost.
        assert!(!w.earlier_ones_held(1));
        assert!(w.earlier_ones_held(0));
        // Confirmed durable by the result stage: later failures are someone else's.
        w.confirmed(1);
        assert!(w.earlier_ones_held(5));
        w.overlapping(2, 5);
        w.overlapping(3, 5);
        w.confirmed(2);
        assert!(!w.earlier_ones_held(6));
        w.confirmed(3);
        assert!(w.earlier_ones_held(6));
    }
}
