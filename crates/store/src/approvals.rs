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

/// What an approval request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A statement waits to run.
    Statement,
    /// Just-in-time access: once approved, a grant for the target, for `grant_ms`.
    Access,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Statement => "statement",
            Kind::Access => "access",
        }
    }
}

/// A new request, as the gateway records it.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub id: String,
    pub kind: Kind,
    /// For access requests: how long the grant lasts once approved.
    pub grant_ms: Option<u64>,
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
    /// What the statement does, as JSON (kind, tables, columns, functions per statement).
    pub facts: String,
    /// For a write over its row bound: the rows it would change. An approval covers repeats
    /// that change at most this many.
    pub rows: Option<u64>,
    /// The rule that asked for approval, and its reason.
    pub rule: String,
    pub reason: String,
}

/// A request with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub kind: Kind,
    pub grant_ms: Option<u64>,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub identity: String,
    pub identity_kind: String,
    pub target: String,
    pub session: u64,
    pub fingerprint: String,
    pub statement: String,
    pub facts: String,
    pub rows: Option<u64>,
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
    kind         TEXT NOT NULL DEFAULT 'statement',
    grant_ms     INTEGER,
    created_ms   INTEGER NOT NULL,
    deadline_ms  INTEGER NOT NULL,
    identity     TEXT NOT NULL,
    identity_kind TEXT NOT NULL,
    target       TEXT NOT NULL,
    session      INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL,
    statement    TEXT NOT NULL,
    facts        TEXT NOT NULL DEFAULT '[]',
    rows         INTEGER,
    rule         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    status       TEXT NOT NULL,
    decided_by   TEXT,
    decided_ms   INTEGER,
    note         TEXT
);
CREATE INDEX IF NOT EXISTS approvals_pending ON approvals(status) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approvals_repeat ON approvals(identity, target, fingerprint, decided_ms);
CREATE TABLE IF NOT EXISTS grants (
    id           TEXT PRIMARY KEY,
    identity     TEXT NOT NULL,
    target       TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,
    approval     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    approved_by  TEXT NOT NULL,
    revoked_ms   INTEGER,
    revoked_by   TEXT
);
CREATE INDEX IF NOT EXISTS grants_open ON grants(expires_ms) WHERE revoked_ms IS NULL;
CREATE TABLE IF NOT EXISTS approval_messages (
    id      TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    ts      TEXT NOT NULL
);
";

/// Remembers the chat message that announced request `id` (Slack: channel and ts), so that
/// whoever settles the request can update it.
pub(crate) fn set_message(
    c: &rusqlite::Connection,
    id: &str,
    channel: &str,
    ts: &str,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT OR REPLACE INTO approval_messages (id, channel, ts) VALUES (?1, ?2, ?3)",
        params![id, channel, ts],
    )?;
    Ok(())
}

/// The message that announced request `id`, forgotten as it is returned: it is updated once.
pub(crate) fn take_message(
    c: &rusqlite::Connection,
    id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let found = c
        .query_row(
            "DELETE FROM approval_messages WHERE id = ?1 RETURNING channel, ts",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(found)
}

/// Just-in-time access to a target, made when an access request is approved. It ends at
/// `expires_ms` or when revoked; sessions that relied on it end with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub identity: String,
    pub target: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The access request it came from.
    pub approval: String,
    pub reason: String,
    pub approved_by: String,
    pub revoked_ms: Option<u64>,
    pub revoked_by: Option<String>,
}

impl Grant {
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && now_ms < self.expires_ms
    }
}

const COLUMNS: &str =
    "id, kind, grant_ms, created_ms, deadline_ms, identity, identity_kind, target, session, \
    fingerprint, statement, rule, reason, status, decided_by, decided_ms, note, facts, rows";

fn ms(v: i64) -> u64 {
    v.max(0).unsigned_abs()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Approval, StoreError>> {
    let status: String = r.get(13)?;
    let Some(status) = Status::parse(&status) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "approval status {status:?}"
        ))));
    };
    let kind = match r.get::<_, String>(1)?.as_str() {
        "statement" => Kind::Statement,
        "access" => Kind::Access,
        other => return Ok(Err(StoreError::Corrupt(format!("approval kind {other:?}")))),
    };
    Ok(Ok(Approval {
        id: r.get(0)?,
        kind,
        grant_ms: r.get::<_, Option<i64>>(2)?.map(ms),
        created_ms: ms(r.get(3)?),
        deadline_ms: ms(r.get(4)?),
        identity: r.get(5)?,
        identity_kind: r.get(6)?,
        target: r.get(7)?,
        session: ms(r.get(8)?),
        fingerprint: r.get(9)?,
        statement: r.get(10)?,
        rule: r.get(11)?,
        reason: r.get(12)?,
        status,
        decided_by: r.get(14)?,
        decided_ms: r.get::<_, Option<i64>>(15)?.map(ms),
        note: r.get(16)?,
        facts: r.get(17)?,
        rows: r.get::<_, Option<i64>>(18)?.map(ms),
    }))
}

pub(crate) fn create(c: &rusqlite::Connection, a: &NewApproval) -> Result<Approval, StoreError> {
    c.execute(
        &format!("INSERT INTO approvals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'pending', NULL, NULL, NULL, ?14, ?15)"),
        params![
            a.id,
            a.kind.as_str(),
            a.grant_ms.map(to_i64),
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
            a.facts,
            a.rows.map(to_i64),
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
/// made the change, or with whatever state won before it. Approving an access request makes
/// its grant in the same transaction.
pub(crate) fn decide(
    c: &rusqlite::Connection,
    id: &str,
    to: Status,
    by: &str,
    note: Option<&str>,
    now_ms: u64,
) -> Result<Option<(bool, Approval)>, StoreError> {
    let tx = c.unchecked_transaction()?;
    let changed = tx.execute(
        "UPDATE approvals SET status = ?2, decided_by = ?3, decided_ms = ?4, note = ?5 \
         WHERE id = ?1 AND status = 'pending'",
        params![id, to.as_str(), by, to_i64(now_ms), note],
    )?;
    let a = get(&tx, id)?;
    if let Some(a) = &a {
        if changed == 1 && to == Status::Approved && a.kind == Kind::Access {
            tx.execute(
                "INSERT INTO grants (id, identity, target, created_ms, expires_ms, approval, reason, approved_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    grant_id(&a.id),
                    a.identity,
                    a.target,
                    to_i64(now_ms),
                    to_i64(now_ms.saturating_add(a.grant_ms.unwrap_or(0))),
                    a.id,
                    a.reason,
                    by,
                ],
            )?;
        }
    }
    tx.commit()?;
    Ok(a.map(|a| (changed == 1, a)))
}

/// The id of the grant an access request makes: `g-` and the request's own suffix.
pub fn grant_id(approval: &str) -> String {
    format!("g-{}", approval.strip_prefix("r-").unwrap_or(approval))
}

const GRANT_COLUMNS: &str = "id, identity, target, created_ms, expires_ms, approval, reason, \
    approved_by, revoked_ms, revoked_by";

fn grant_row(r: &Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        identity: r.get(1)?,
        target: r.get(2)?,
        created_ms: ms(r.get(3)?),
        expires_ms: ms(r.get(4)?),
        approval: r.get(5)?,
        reason: r.get(6)?,
        approved_by: r.get(7)?,
        revoked_ms: r.get::<_, Option<i64>>(8)?.map(ms),
        revoked_by: r.get(9)?,
    })
}

/// Grants not revoked and not expired at `now_ms`.
pub(crate) fn active_grants(
    c: &rusqlite::Connection,
    now_ms: u64,
) -> Result<Vec<Grant>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE revoked_ms IS NULL AND expires_ms > ?1 ORDER BY created_ms"
    ))?;
    let rows = stmt.query_map([to_i64(now_ms)], grant_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn grant(c: &rusqlite::Connection, id: &str) -> Result<Option<Grant>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
        [id],
        grant_row,
    )
    .optional()?)
}

/// Revokes an active grant; true if this call revoked it.
pub(crate) fn revoke_grant(
    c: &rusqlite::Connection,
    id: &str,
    by: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    Ok(c.execute(
        "UPDATE grants SET revoked_ms = ?2, revoked_by = ?3 WHERE id = ?1 AND revoked_ms IS NULL AND expires_ms > ?2",
        params![id, to_i64(now_ms), by],
    )? == 1)
}

/// The newest approval of the same statement (fingerprint) for the same identity and
/// target, decided at or after `since_ms`, that covers `rows` changed rows (approvals of
/// statements without a count cover any).
pub(crate) fn recent(
    c: &rusqlite::Connection,
    identity: &str,
    target: &str,
    fingerprint: &str,
    since_ms: u64,
    rows: u64,
) -> Result<Option<Approval>, StoreError> {
    c.query_row(
        &format!(
            "SELECT {COLUMNS} FROM approvals WHERE identity = ?1 AND target = ?2 \
             AND fingerprint = ?3 AND status = 'approved' AND decided_ms >= ?4 \
             AND (rows IS NULL OR rows >= ?5) ORDER BY decided_ms DESC LIMIT 1"
        ),
        params![
            identity,
            target,
            fingerprint,
            to_i64(since_ms),
            to_i64(rows)
        ],
        from_row,
    )
    .optional()?
    .transpose()
}
