//! Approval requests: a statement waiting for a person (or policy) to let it run.
//!
//! A request is written by the gateway when policy says "require approval", decided by an
//! approver (CLI, HTTP API, a webhook or Slack callback), and watched by the gateway that
//! holds the waiting client. Every change of state is one conditional update (`WHERE status =
//! 'pending'`), so two deciders, or a decision racing the client's cancel or the timeout,
//! cannot both win: exactly one state change happens, and the loser is told what it lost to.

use rusqlite::{params, OptionalExtension, Row};

use crate::StoreError;

/// Where a request stands. Only `Pending` changes, and only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Denied,
    /// Nobody decided before the client's wait (`[approvals] timeout`) ran out.
    Expired,
    /// The client cancelled or went away while waiting.
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }
}

/// A new request, as the gateway records it.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub id: String,
    /// Milliseconds since the epoch, on the gateway's clock.
    pub created_ms: u64,
    /// When the client stops waiting.
    pub deadline_ms: u64,
    pub identity: String,
    pub identity_kind: String,
    pub target: String,
    pub session: u64,
    /// The statement's fingerprint, hex (the same statement with other constants has the
    /// same one).
    pub fingerprint: String,
    /// The statement text as the audit trail keeps it (normalized unless the target keeps
    /// full text).
    pub statement: String,
    /// The rule that asked for approval, and its reason.
    pub rule: String,
    pub reason: String,
}

/// A request with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub identity: String,
    pub identity_kind: String,
    pub target: String,
    pub session: u64,
    pub fingerprint: String,
    pub statement: String,
    pub rule: String,
    pub reason: String,
    pub status: Status,
    /// Who decided (an identity name, or `policy` for an automatic approval).
    pub decided_by: Option<String>,
    pub decided_ms: Option<u64>,
    /// The approver's reason (required for a denial).
    pub note: Option<String>,
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approvals (
    id           TEXT PRIMARY KEY,
    created_ms   INTEGER NOT NULL,
    deadline_ms  INTEGER NOT NULL,
    identity     TEXT NOT NULL,
    identity_kind TEXT NOT NULL,
    target       TEXT NOT NULL,
    session      INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL,
    statement    TEXT NOT NULL,
    rule         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    status       TEXT NOT NULL,
    decided_by   TEXT,
    decided_ms   INTEGER,
    note         TEXT
);
CREATE INDEX IF NOT EXISTS approvals_pending ON approvals(status) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approvals_repeat ON approvals(identity, target, fingerprint, decided_ms);
";

const COLUMNS: &str = "id, created_ms, deadline_ms, identity, identity_kind, target, session, \
    fingerprint, statement, rule, reason, status, decided_by, decided_ms, note";

fn ms(v: i64) -> u64 {
    v.max(0).unsigned_abs()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Approval, StoreError>> {
    let status: String = r.get(11)?;
    let Some(status) = Status::parse(&status) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "approval status {status:?}"
        ))));
    };
    Ok(Ok(Approval {
        id: r.get(0)?,
        created_ms: ms(r.get(1)?),
        deadline_ms: ms(r.get(2)?),
        identity: r.get(3)?,
        identity_kind: r.get(4)?,
        target: r.get(5)?,
        session: ms(r.get(6)?),
        fingerprint: r.get(7)?,
        statement: r.get(8)?,
        rule: r.get(9)?,
        reason: r.get(10)?,
        status,
        decided_by: r.get(12)?,
        decided_ms: r.get::<_, Option<i64>>(13)?.map(ms),
        note: r.get(14)?,
    }))
}

pub(crate) fn create(c: &rusqlite::Connection, a: &NewApproval) -> Result<Approval, StoreError> {
    c.execute(
        &format!("INSERT INTO approvals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', NULL, NULL, NULL)"),
        params![
            a.id,
            to_i64(a.created_ms),
            to_i64(a.deadline_ms),
            a.identity,
            a.identity_kind,
            a.target,
            to_i64(a.session),
            a.fingerprint,
            a.statement,
            a.rule,
            a.reason,
        ],
    )?;
    get(c, &a.id)?.ok_or_else(|| StoreError::Corrupt(format!("approval {} vanished", a.id)))
}

pub(crate) fn get(c: &rusqlite::Connection, id: &str) -> Result<Option<Approval>, StoreError> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .transpose()
}

pub(crate) fn pending(c: &rusqlite::Connection) -> Result<Vec<Approval>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE status = 'pending' ORDER BY created_ms, id"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    rows.map(|r| r?).collect()
}

/// Moves a pending request to `to`. Returns the request as it now is: with `to` if this call
/// made the change, or with whatever state won before it.
pub(crate) fn decide(
    c: &rusqlite::Connection,
    id: &str,
    to: Status,
    by: &str,
    note: Option<&str>,
    now_ms: u64,
) -> Result<Option<(bool, Approval)>, StoreError> {
    let changed = c.execute(
        "UPDATE approvals SET status = ?2, decided_by = ?3, decided_ms = ?4, note = ?5 \
         WHERE id = ?1 AND status = 'pending'",
        params![id, to.as_str(), by, to_i64(now_ms), note],
    )?;
    Ok(get(c, id)?.map(|a| (changed == 1, a)))
}

/// The newest approval of the same statement (fingerprint) for the same identity and
/// target, decided at or after `since_ms`.
pub(crate) fn recent(
    c: &rusqlite::Connection,
    identity: &str,
    target: &str,
    fingerprint: &str,
    since_ms: u64,
) -> Result<Option<Approval>, StoreError> {
    c.query_row(
        &format!(
            "SELECT {COLUMNS} FROM approvals WHERE identity = ?1 AND target = ?2 \
             AND fingerprint = ?3 AND status = 'approved' AND decided_ms >= ?4 \
             ORDER BY decided_ms DESC LIMIT 1"
        ),
        params![identity, target, fingerprint, to_i64(since_ms)],
        from_row,
    )
    .optional()?
    .transpose()
}
