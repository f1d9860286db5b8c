//! Behaviour baselines and the anomaly flags they raise. Per identity, Weir counts what it
//! does (tables touched per target, writes, hours of activity, rows per request and per hour)
//! and flags a statement that departs from that, for policy (`context.anomalies`) and the
//! trail (`anomalies` on the statement or completion event).
//!
//! The rules are plain statistics, and none applies while the identity is learning (fewer than
//! [`LEARNING`] statements known):
//! - `new_table`: the statement touches a table this identity never touched on this target;
//! - `first_write`: it writes, and the identity never wrote;
//! - `unusual_hour`: under 1% of the identity's statements fell in this hour of day (UTC);
//! - `rows_per_hour_above_norm`: the rows of this hour so far exceed 10 × the 95th percentile
//!   of its earlier hourly totals (at least 3 earlier active hours);
//! - `rows_above_norm` (on the completion, after the fact): the request returned or changed
//!   more than 10 × the 95th percentile of its rows per request.
//!
//! Counts live in memory per identity (loaded from the store at the identity's first session
//! here) and are added to the store every [`FLUSH`] ([`Baselines::flush`]), so they survive
//! restarts and every gateway adds to one record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_analyze::{StatementFacts, Touched};
use weir_store::baseline::ROW_BUCKETS;
use weir_store::{Baseline, Clock, Store};

/// Statements an identity needs on record before anything it does is flagged.
pub const LEARNING: u64 = 50;
/// How often counts go to the store.
pub const FLUSH: Duration = Duration::from_secs(5);
/// A value this many times its norm is flagged.
const FACTOR: u64 = 10;

#[derive(Default)]
struct Entry {
    /// Everything known: the store's record at load, plus what happened here since.
    known: Baseline,
    /// What happened here since the last flush.
    pending: Baseline,
    /// Bumped whenever `known` moved so that some statement's flags could change.
    generation: u64,
    /// What the generation was last judged on.
    judged: Option<Judged>,
}

/// What flags depend on besides the statement: past learning, how many tables, any write,
/// the hour, whether this hour of day is unusual, whether this hour's rows are above the norm.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Judged {
    learned: bool,
    tables: usize,
    wrote: bool,
    hour: u64,
    unusual_hour: bool,
    rows_high: bool,
}

impl Entry {
    /// Re-judges what flags depend on at `now_ms`; bumps the generation if any of it changed.
    /// `rows_moved`: this hour's rows changed (else the last judgement of them stands within
    /// the hour).
    fn rejudge(&mut self, now_ms: u64, rows_moved: bool) {
        let b = &self.known;
        let (hour, of_day) = hours(now_ms);
        let rows_high = match self.judged {
            Some(j) if j.hour == hour && !rows_moved => j.rows_high,
            _ => hourly_rows_high(b, hour),
        };
        let judged = Judged {
            learned: b.statements >= LEARNING,
            tables: b.tables.len(),
            wrote: b.writes > 0,
            hour,
            unusual_hour: b
                .hours
                .get(of_day)
                .copied()
                .unwrap_or(0)
                .saturating_mul(100)
                < b.statements,
            rows_high,
        };
        if self.judged != Some(judged) {
            self.judged = Some(judged);
            self.generation = self.generation.wrapping_add(1);
        }
    }
}

/// Whether the rows of `hour` so far exceed the norm of earlier hours (the
/// `rows_per_hour_above_norm` rule).
fn hourly_rows_high(b: &Baseline, hour: u64) -> bool {
    let mut earlier: Vec<u64> = b
        .hourly_rows
        .iter()
        .filter(|(h, _)| **h < hour)
        .map(|(_, n)| *n)
        .collect();
    if earlier.len() < 3 {
        return false;
    }
    earlier.sort_unstable();
    let k = (earlier.len() * 95).div_ceil(100).saturating_sub(1);
    let p95 = earlier.get(k).copied().unwrap_or(0).max(1);
    b.hourly_rows.get(&hour).copied().unwrap_or(0) > p95.saturating_mul(FACTOR)
}

/// The baselines of the identities active on this gateway.
pub struct Baselines {
    store: Arc<dyn Store>,
    clock: Clock,
    entries: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `(hour since the epoch, hour of day)` at `now_ms`.
fn hours(now_ms: u64) -> (u64, usize) {
    let hour = now_ms / 3_600_000;
    (hour, usize::try_from(hour % 24).unwrap_or(0))
}

fn bucket(rows: u64) -> usize {
    let b = usize::try_from(64 - rows.leading_zeros()).unwrap_or(ROW_BUCKETS - 1);
    b.min(ROW_BUCKETS - 1)
}

/// The largest value bucket `i` holds.
fn bucket_top(i: usize) -> u64 {
    match i {
        0 => 0,
        i if i >= 64 => u64::MAX,
        i => (1u64 << i) - 1,
    }
}

/// The 95th percentile of rows per request, as the top of its bucket.
fn p95_rows(b: &Baseline) -> u64 {
    let total: u64 = b.row_buckets.iter().sum();
    let need = total.saturating_mul(95).div_ceil(100);
    let mut seen = 0u64;
    for (i, n) in b.row_buckets.iter().enumerate() {
        seen = seen.saturating_add(*n);
        if seen >= need && seen > 0 {
            return bucket_top(i);
        }
    }
    0
}

fn table_key(target: &str, table: &str) -> String {
    format!("{target} {table}")
}

/// The flags `facts` (touching `touched`) raises against `b` at `now_ms` (pure: the rules of
/// the module's documentation).
pub fn flags(
    b: &Baseline,
    target: &str,
    facts: &StatementFacts,
    touched: &Touched,
    now_ms: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    if b.statements < LEARNING {
        return out;
    }
    let mut tables = touched.tables.iter().chain(touched.anywhere.iter());
    if tables.any(|t| !b.tables.contains_key(&table_key(target, t))) {
        out.push("new_table".to_owned());
    }
    if facts.writes && b.writes == 0 {
        out.push("first_write".to_owned());
    }
    let (hour, of_day) = hours(now_ms);
    let in_hour = b.hours.get(of_day).copied().unwrap_or(0);
    if in_hour.saturating_mul(100) < b.statements {
        out.push("unusual_hour".to_owned());
    }
    if hourly_rows_high(b, hour) {
        out.push("rows_per_hour_above_norm".to_owned());
    }
    out
}

/// The flag a request's `rows` raises against `b`, after it ran.
pub fn rows_flag(b: &Baseline, rows: u64) -> Option<String> {
    if b.statements < LEARNING {
        return None;
    }
    let norm = p95_rows(b).max(1);
    (rows > norm.saturating_mul(FACTOR)).then(|| "rows_above_norm".to_owned())
}

impl Baselines {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Baselines {
        Baselines {
            store,
            clock,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, identity: &str) -> Option<Arc<Mutex<Entry>>> {
        lock(&self.entries).get(identity).cloned()
    }

    /// Loads `identity`'s baseline from the store unless this gateway has it. A store that
    /// cannot be read leaves it unloaded: its statements are then not flagged (learning).
    pub async fn ensure(&self, identity: &str) {
        if self.entry(identity).is_some() {
            return;
        }
        let store = Arc::clone(&self.store);
        let who = identity.to_owned();
        let loaded = tokio::task::spawn_blocking(move || store.baseline(&who)).await;
        match loaded {
            Ok(Ok(known)) => {
                lock(&self.entries)
                    .entry(identity.to_owned())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Entry {
                            known,
                            ..Entry::default()
                        }))
                    });
            }
            Ok(Err(e)) => tracing::warn!(cause = %e, "cannot read a behaviour baseline"),
            Err(e) => tracing::warn!(cause = %e, "cannot read a behaviour baseline"),
        }
    }

    /// The identity's baseline generation: equal values mean no statement's flags changed in
    /// between (an hour boundary is judged here). 0 for an identity whose baseline is not
    /// loaded (it raises no flags).
    pub fn generation(&self, identity: &str) -> u64 {
        let Some(e) = self.entry(identity) else {
            return 0;
        };
        let mut e = lock(&e);
        let now = self.clock.now_ms();
        if e.judged.is_none_or(|j| j.hour != now / 3_600_000) {
            e.rejudge(now, false);
        }
        e.generation
    }

    /// The flags of one statement now.
    pub fn flags(
        &self,
        identity: &str,
        target: &str,
        facts: &StatementFacts,
        touched: &Touched,
    ) -> Vec<String> {
        match self.entry(identity) {
            Some(e) => flags(&lock(&e).known, target, facts, touched, self.clock.now_ms()),
            None => Vec::new(),
        }
    }

    /// Counts statements that were forwarded.
    pub fn observe(
        &self,
        identity: &str,
        target: &str,
        statements: &[(&StatementFacts, &Touched)],
    ) {
        let Some(e) = self.entry(identity) else {
            return;
        };
        let now = self.clock.now_ms();
        let (_, of_day) = hours(now);
        let keys: Vec<String> = statements
            .iter()
            .flat_map(|(_, t)| t.tables.iter().chain(t.anywhere.iter()))
            .map(|t| table_key(target, t))
            .collect();
        let writes = statements.iter().filter(|(f, _)| f.writes).count() as u64;
        let count = statements.len() as u64;
        let mut guard = lock(&e);
        let e = &mut *guard;
        for b in [&mut e.known, &mut e.pending] {
            b.statements = b.statements.saturating_add(count);
            b.writes = b.writes.saturating_add(writes);
            if let Some(h) = b.hours.get_mut(of_day) {
                *h = h.saturating_add(count);
            }
            for key in &keys {
                if let Some(n) = b.tables.get_mut(key) {
                    *n = n.saturating_add(1);
                } else if b.tables.len() < weir_store::baseline::MAX_TABLES {
                    b.tables.insert(key.clone(), 1);
                }
            }
        }
        e.rejudge(now, false);
    }

    /// Counts the rows of a completed request; returns its flag, judged against what was
    /// known before it.
    pub fn observe_rows(&self, identity: &str, rows: u64) -> Option<String> {
        let e = self.entry(identity)?;
        let (hour, _) = hours(self.clock.now_ms());
        let mut guard = lock(&e);
        let e = &mut *guard;
        let flag = rows_flag(&e.known, rows);
        for b in [&mut e.known, &mut e.pending] {
            if let Some(n) = b.row_buckets.get_mut(bucket(rows)) {
                *n = n.saturating_add(1);
            }
            let n = b.hourly_rows.entry(hour).or_default();
            *n = n.saturating_add(rows);
        }
        e.rejudge(self.clock.now_ms(), true);
        flag
    }

    /// Adds what happened here since the last flush to the store. An identity whose merge
    /// fails keeps its delta for the next flush.
    pub async fn flush(&self) {
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = lock(&self.entries)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let (hour, _) = hours(self.clock.now_ms());
        for (identity, e) in entries {
            let delta = std::mem::take(&mut lock(&e).pending);
            if delta.is_empty() {
                continue;
            }
            let store = Arc::clone(&self.store);
            let (who, d) = (identity.clone(), delta.clone());
            let merged =
                tokio::task::spawn_blocking(move || store.merge_baseline(&who, &d, hour)).await;
            if !matches!(merged, Ok(Ok(()))) {
                tracing::warn!(identity = %identity, "cannot store a behaviour baseline; kept for the next flush");
                lock(&e).pending.add(&delta, hour);
            }
        }
    }

    /// Flushes every [`FLUSH`], until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(FLUSH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn facts(sql: &str) -> (StatementFacts, Touched) {
        let a = weir_analyze::Analyzer::new()
            .analyze(sql.as_bytes())
            .unwrap();
        let f = a.statements[0].clone();
        let touched = weir_analyze::Scope::new("app", None).touched(&f);
        (f, touched)
    }

    /// A synthetic history: `n` reads of public.orders at 10:00 UTC, 20 rows each, spread
    /// over the ten days before `day`.
    fn history(n: u64, day: u64) -> Baseline {
        let mut b = Baseline {
            statements: n,
            ..Default::default()
        };
        // What `orders` could denote in the session, as `observe` counts it.
        let (_, t) = facts("SELECT * FROM orders");
        for name in t.tables.iter().chain(t.anywhere.iter()) {
            b.tables.insert(table_key("shop", name), n);
        }
        b.hours[10] = n;
        b.row_buckets[bucket(20)] = n;
        for d in 1..=10 {
            b.hourly_rows.insert((day - d) * 24 + 10, 20 * n / 10);
        }
        b
    }

    #[test]
    fn nothing_is_flagged_while_learning_or_as_usual() {
        let day = 20_000;
        let at = |h: u64| (day * 24 + h) * HOUR;
        let (f, t) = facts("SELECT * FROM orders WHERE id = 1");
        let (w, wt) = facts("DELETE FROM customers WHERE id = 1");
        assert!(flags(&history(49, day), "shop", &w, &wt, at(3)).is_empty());
        assert!(flags(&history(500, day), "shop", &f, &t, at(10)).is_empty());
        assert_eq!(rows_flag(&history(49, day), 1_000_000), None);
        assert_eq!(rows_flag(&history(500, day), 300), None);
    }

    #[test]
    fn a_departure_is_flagged() {
        let day = 20_000;
        let at = |h: u64| (day * 24 + h) * HOUR;
        let b = history(500, day);
        let (t_new, tt_new) = facts("SELECT * FROM customers");
        assert_eq!(flags(&b, "shop", &t_new, &tt_new, at(10)), ["new_table"]);
        // The same table on another target is another table.
        let (f, t) = facts("SELECT * FROM orders");
        assert_eq!(flags(&b, "shop_dev", &f, &t, at(10)), ["new_table"]);
        let (w, wt) = facts("UPDATE orders SET status = 'x' WHERE id = 1");
        assert_eq!(flags(&b, "shop", &w, &wt, at(10)), ["first_write"]);
        assert_eq!(flags(&b, "shop", &f, &t, at(3)), ["unusual_hour"]);
        // p95 is the top of the 16..31 bucket: 10 × 31 = 310.
        assert_eq!(rows_flag(&b, 311).as_deref(), Some("rows_above_norm"));
        assert_eq!(rows_flag(&b, 310), None);
        // This hour's rows so far: 10 × the earlier hours' p95 (1,000) is the limit.
        let mut now = b.clone();
        now.hourly_rows.insert(day * 24 + 10, 10_001);
        assert_eq!(
            flags(&now, "shop", &f, &t, at(10)),
            ["rows_per_hour_above_norm"]
        );
        now.hourly_rows.insert(day * 24 + 10, 10_000);
        assert!(flags(&now, "shop", &f, &t, at(10)).is_empty());
    }

    #[test]
    fn buckets_hold_what_they_say() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(2), 2);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(16), 5);
        assert_eq!(bucket_top(5), 31);
        assert_eq!(bucket(u64::MAX), ROW_BUCKETS - 1);
    }
}
