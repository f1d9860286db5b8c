//! Per-identity behaviour baselines: what an identity has done, as additive counts, so that
//! several gateways (and restarts) add to one record. The statistics that read them are the
//! gateway's (`weir_proxy::baseline`); this is the data and its storage.
//!
//! **Table.** `baselines (identity TEXT PRIMARY KEY, data TEXT)`: one JSON [`Baseline`] per
//! identity. [`merge`] adds a delta in one IMMEDIATE transaction (read, add, write), so
//! concurrent writers lose nothing.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Buckets of rows per request: bucket 0 holds 0 rows, bucket `i` holds `2^(i-1) ..= 2^i - 1`.
pub const ROW_BUCKETS: usize = 32;
/// Hourly row totals older than this many hours are dropped.
pub const HOURS_KEPT: u64 = 14 * 24;
/// Most distinct tables kept per identity.
pub const MAX_TABLES: usize = 10_000;

/// What one identity has done (or, as a delta, done since the last merge).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Statements forwarded.
    pub statements: u64,
    /// Of those, statements that write.
    pub writes: u64,
    /// `target schema.table` → statements that touched it.
    pub tables: BTreeMap<String, u64>,
    /// Statements by hour of day (UTC).
    pub hours: [u64; 24],
    /// Requests by rows returned or changed (see [`ROW_BUCKETS`]).
    pub row_buckets: [u64; ROW_BUCKETS],
    /// Rows by hour since the epoch.
    pub hourly_rows: BTreeMap<u64, u64>,
}

impl Baseline {
    /// Adds `other` to this one, then drops hours older than [`HOURS_KEPT`] before `now_hour`.
    pub fn add(&mut self, other: &Baseline, now_hour: u64) {
        self.statements = self.statements.saturating_add(other.statements);
        self.writes = self.writes.saturating_add(other.writes);
        for (t, n) in &other.tables {
            if self.tables.len() >= MAX_TABLES && !self.tables.contains_key(t) {
                continue;
            }
            let e = self.tables.entry(t.clone()).or_default();
            *e = e.saturating_add(*n);
        }
        for (a, b) in self.hours.iter_mut().zip(other.hours.iter()) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.row_buckets.iter_mut().zip(other.row_buckets.iter()) {
            *a = a.saturating_add(*b);
        }
        for (h, n) in &other.hourly_rows {
            let e = self.hourly_rows.entry(*h).or_default();
            *e = e.saturating_add(*n);
        }
        let oldest = now_hour.saturating_sub(HOURS_KEPT);
        self.hourly_rows.retain(|h, _| *h >= oldest);
    }

    pub fn is_empty(&self) -> bool {
        *self == Baseline::default()
    }
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS baselines (
    identity  TEXT PRIMARY KEY,
    data      TEXT NOT NULL
);
";

pub(crate) fn load(c: &Connection, identity: &str) -> Result<Baseline, StoreError> {
    let data: Option<String> = c
        .query_row(
            "SELECT data FROM baselines WHERE identity = ?1",
            [identity],
            |r| r.get(0),
        )
        .optional()?;
    parse(identity, data)
}

/// A baseline from its stored JSON (`None`: none stored yet).
pub(crate) fn parse(identity: &str, data: Option<String>) -> Result<Baseline, StoreError> {
    match data {
        None => Ok(Baseline::default()),
        Some(d) => serde_json::from_str(&d)
            .map_err(|e| StoreError::Corrupt(format!("baseline of {identity}: {e}"))),
    }
}

pub(crate) fn merge(
    c: &Connection,
    identity: &str,
    delta: &Baseline,
    now_hour: u64,
) -> Result<(), StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
    let mut current = load(&tx, identity)?;
    current.add(delta, now_hour);
    let data = serde_json::to_string(&current)
        .map_err(|e| StoreError::Refused(format!("baseline of {identity}: {e}")))?;
    tx.execute(
        "INSERT INTO baselines (identity, data) VALUES (?1, ?2)
         ON CONFLICT (identity) DO UPDATE SET data = excluded.data",
        params![identity, data],
    )?;
    tx.commit()?;
    Ok(())
}
