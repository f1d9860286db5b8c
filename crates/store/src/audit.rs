//! The audit trail's storage: sealed records and signed checkpoints.
//!
//! [`AuditTrail`] is the interface: the gateway's single writer appends batches
//! ([`AuditTrail::append`]: records and the checkpoint that covers them, atomically), readers
//! stream ([`AuditTrail::for_each_event`], [`AuditTrail::for_each_checkpoint`],
//! [`AuditTrail::verify`]). It is synchronous and not `Sync`: one instance per connection, one
//! writer thread owns its own; readers (the CLI, `audit tail`) open their own. A PostgreSQL
//! implementation can implement the same trait (a transaction per batch, `REPEATABLE READ`
//! for `verify`).
//!
//! [`AuditStore`] is the embedded implementation, in the same SQLite file as the tokens:
//!
//! - **Durability.** WAL mode with `synchronous = FULL`: a commit fsyncs the WAL, so a batch is
//!   durable when [`AuditTrail::append`] returns, and one fsync covers the whole batch — that is
//!   the group commit. WAL readers do not block the writer, nor the writer them.
//! - **Tables.** `audit_events (seq INTEGER PRIMARY KEY, ts_us, prev BLOB, hash BLOB, body TEXT,
//!   kind, session, identity, target, decision)` — the last five extracted from the body for
//!   search, indexed on `session`, `identity`, `target`, `ts_us` (`kind` and `decision` have a
//!   handful of values; an index would cost every insert and rarely narrow a scan);
//!   `audit_checkpoints (seq INTEGER PRIMARY KEY, head BLOB, ts_us, signature BLOB)`.
//!   The extracted columns are a convenience for search, not part of what is verified: the
//!   body is.
//! - **Invariant:** what is stored is a valid chain as far as the writer knows: `append`
//!   refuses a batch that does not continue the stored head (wrong `seq` or `prev`), or whose
//!   checkpoint is not at its last record, and writes nothing of it.
//! - **Bounded memory.** Reads are cursors: one record in memory at a time, whatever the
//!   trail's length.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use weir_audit::chain::{self, Checkpoint, PublicKey, Record, Signer, Summary, VerifyError};

use crate::StoreError;

/// Which events to read. Every field set narrows the selection (they combine with AND); the
/// default selects every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Who: the event's `identity` (for `auth_failed`, the identity claimed; for `admin`, the
    /// actor). Exact match.
    pub identity: Option<String>,
    /// The target's name. Exact match.
    pub target: Option<String>,
    /// `allow`, `deny`, … (statement events only). Exact match.
    pub decision: Option<String>,
    /// One session's events (`weir audit replay`).
    pub session: Option<u64>,
    /// Event kind: `statement`, `completed`, `connection_opened`, `connection_closed`,
    /// `auth_failed`, `admin`.
    pub kind: Option<String>,
    /// Sealed at or after, microseconds since the Unix epoch.
    pub since_us: Option<i64>,
    /// Sealed before (exclusive), microseconds since the Unix epoch.
    pub until_us: Option<i64>,
    /// A substring of the event's JSON (statement text, rule, reason, …), case-sensitive.
    /// Matched against the JSON text, so a `"` in an SQL string is `\"` there.
    pub text: Option<String>,
}

/// Where the audit trail is kept. See the module documentation for the contract.
pub trait AuditTrail: TrailReader {
    /// The last record's `seq` and hash (`None` when the trail is empty): where a writer
    /// resumes the chain ([`weir_audit::chain::Chain::resume`]) after a restart.
    fn head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError>;

    /// Durably appends `records` (consecutive, continuing [`AuditTrail::head`]) and
    /// `checkpoint` (signed over the last of them), in one transaction: when this returns
    /// `Ok`, all of them survive a crash; on `Err`, none was written. `records` may be empty
    /// only if the checkpoint is at the current head.
    fn append(&mut self, records: &[Record], checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Calls `f` with each checkpoint at `from_seq` or later, in `seq` order, until it breaks.
    fn for_each_checkpoint(
        &self,
        from_seq: u64,
        f: &mut dyn FnMut(&Checkpoint) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// Every checkpoint, in `seq` order. There is one per written batch, so a long trail has
    /// many: prefer [`AuditTrail::for_each_checkpoint`] when the trail may be large.
    fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let mut all = Vec::new();
        self.for_each_checkpoint(0, &mut |c| {
            all.push(c.clone());
            ControlFlow::Continue(())
        })?;
        Ok(all)
    }

    /// Verifies the whole trail against `key` in one pass over one consistent snapshot (a
    /// trail being written verifies as of the moment the pass starts). The outer `Err` is a
    /// storage failure; the inner result is the verdict, naming the first bad event.
    fn verify(&self, key: &PublicKey) -> Result<Result<Summary, VerifyError>, StoreError>;
}

/// The audit trail in SQLite. One per connection; see the module documentation.
pub struct AuditStore {
    conn: Connection,
}

impl std::fmt::Debug for AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStore")
            .field("path", &self.conn.path())
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    seq      INTEGER PRIMARY KEY,
    ts_us    INTEGER NOT NULL,
    prev     BLOB NOT NULL,
    hash     BLOB NOT NULL,
    body     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    session  INTEGER,
    identity TEXT,
    target   TEXT,
    decision TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_session ON audit_events(session);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    head      BLOB NOT NULL,
    ts_us     INTEGER NOT NULL,
    signature BLOB NOT NULL
);
";

/// One event of an export, with where it sits in its chain.
#[derive(Debug)]
pub struct Exported<'a> {
    /// The event's place in the whole trail (what search and `weir undo` call its seq).
    pub seq: u64,
    /// Its chain, in a trail of several (the PostgreSQL store: the hex of the chain's public
    /// key); `None` in a trail of one chain, where `seq` is the chain's own.
    pub chain: Option<&'a str>,
    /// The record as sealed: its `seq` is its chain's, what the hashes cover.
    pub record: &'a Record,
    /// The signed checkpoint that ends at it, if one does.
    pub checkpoint: Option<&'a Checkpoint>,
}

/// What [`TrailReader::for_each_with_checkpoints`] calls for each event.
pub type ExportVisitor<'a> = dyn FnMut(&Exported<'_>) -> Result<(), StoreError> + 'a;

/// One chain's verdict ([`TrailReader::verify_chains`]).
#[derive(Debug)]
pub struct ChainVerdict {
    /// The chain's id (`None`: the one chain of a SQLite trail).
    pub chain: Option<String>,
    /// What it holds, or what is wrong with it (naming the first bad event).
    pub verdict: Result<Summary, String>,
}

impl ChainVerdict {
    /// Every chain's verdict as one: the sums, or the first failure (naming its chain when
    /// there are several).
    pub fn overall(all: &[ChainVerdict]) -> Result<Summary, String> {
        let mut sum = Summary {
            events: 0,
            checkpoints: 0,
        };
        for v in all {
            match (&v.verdict, &v.chain) {
                (Ok(s), _) => {
                    sum.events = sum.events.saturating_add(s.events);
                    sum.checkpoints = sum.checkpoints.saturating_add(s.checkpoints);
                }
                (Err(e), Some(chain)) if all.len() > 1 => {
                    return Err(format!("chain {}: {e}", chain.get(..16).unwrap_or(chain)))
                }
                (Err(e), _) => return Err(e.clone()),
            }
        }
        Ok(sum)
    }
}

/// What the readers of a trail use (the CLI, the HTTP API, undo), whichever store holds it.
/// A record's `seq` here is its place in the whole trail.
pub trait TrailReader: Send {
    /// The newest event's seq, 0 when empty.
    fn last_seq(&self) -> Result<u64, StoreError>;

    /// Each event matching `filter` from `from_seq` on, in order, until `f` breaks.
    fn for_each_event(
        &self,
        from_seq: u64,
        filter: &Filter,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// Each event matching `filter`, newest first, until `f` breaks: what the console's
    /// latest events read without scanning the trail from its start.
    fn for_each_event_newest_first(
        &self,
        filter: &Filter,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// The first event at or after `from_seq` that matches `filter` (`weir undo` finds a
    /// statement's event, then the before-image event that follows it).
    fn first_event_from(
        &self,
        from_seq: u64,
        filter: &Filter,
    ) -> Result<Option<Record>, StoreError> {
        let mut found = None;
        self.for_each_event(from_seq, filter, &mut |r| {
            found = Some(r.clone());
            ControlFlow::Break(())
        })?;
        Ok(found)
    }

    /// Every event in order, each with its chain and the signed checkpoint that ends at it,
    /// if one does: what an export an auditor verifies without the store is made of.
    fn for_each_with_checkpoints(&self, f: &mut ExportVisitor<'_>) -> Result<(), StoreError>;

    /// Verifies every chain, each against its key. `keys` are the keys given; `pinned`
    /// means they are the whole set (a chain signed by another key, or a key without a
    /// chain, fails). Unpinned, a trail of several chains verifies each against the key it
    /// registered in the store.
    fn verify_chains(
        &self,
        keys: &[PublicKey],
        pinned: bool,
    ) -> Result<Vec<ChainVerdict>, StoreError>;
}

const EVENT_COLUMNS: &str = "seq, ts_us, prev, hash, body";
const CHECKPOINT_COLUMNS: &str = "seq, head, ts_us, signature";

/// What search indexes of an event, read from its JSON. Every field is optional: a body
/// without them (or not JSON at all) is stored with kind `unknown` and no search columns.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Indexed<'a> {
    #[serde(borrow, default)]
    pub(crate) event: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) session: Option<u64>,
    #[serde(borrow, default)]
    pub(crate) identity: Option<Cow<'a, str>>,
    /// `auth_failed`: who the client claimed to be.
    #[serde(borrow, default)]
    pub(crate) claimed: Option<Cow<'a, str>>,
    /// `admin`: who did it.
    #[serde(borrow, default)]
    pub(crate) actor: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) target: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) decision: Option<Cow<'a, str>>,
}

impl<'a> Indexed<'a> {
    pub(crate) fn of(body: &'a str) -> Indexed<'a> {
        serde_json::from_str(body).unwrap_or_default()
    }
}

fn seq_to_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Refused(format!("sequence number {seq} too large")))
}

fn blob<const N: usize>(row: &Row<'_>, i: usize) -> rusqlite::Result<[u8; N]> {
    let v: Vec<u8> = row.get(i)?;
    v.try_into().map_err(|v: Vec<u8>| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Blob,
            format!("expected {N} bytes, found {}", v.len()).into(),
        )
    })
}

fn seq(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

/// A row of [`EVENT_COLUMNS`].
fn record(row: &Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: seq(row, 0)?,
        ts_us: row.get(1)?,
        prev: blob(row, 2)?,
        hash: blob(row, 3)?,
        body: row.get(4)?,
    })
}

/// A row of [`CHECKPOINT_COLUMNS`].
fn checkpoint(row: &Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: seq(row, 0)?,
        head: blob(row, 1)?,
        ts_us: row.get(2)?,
        signature: blob(row, 3)?,
    })
}

fn head_of(conn: &Connection) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    // Cached: the writer reads the head in every batch's transaction.
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((seq(r, 0)?, blob::<32>(r, 1)?)))
        .optional()?)
}

/// Inserts one batch continuing the stored head, inside the caller's transaction.
fn insert_batch(tx: &Connection, records: &[Record], cp: &Checkpoint) -> Result<(), StoreError> {
    let (mut last, mut head) = head_of(tx)?.unwrap_or((0, chain::GENESIS));
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO audit_events (seq, ts_us, prev, hash, body, kind, session, identity, target, decision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for r in records {
            if r.seq != last.saturating_add(1) || r.prev != head {
                // INVARIANT: the stored trail stays one chain. Dropping `tx` rolls back.
                return Err(StoreError::Refused(format!(
                    "audit batch does not continue the trail: event {} after event {last}{}",
                    r.seq,
                    if r.prev != head {
                        " with a different prev hash"
                    } else {
                        ""
                    }
                )));
            }
            let ix = Indexed::of(&r.body);
            ins.execute(params![
                seq_to_sql(r.seq)?,
                r.ts_us,
                &r.prev[..],
                &r.hash[..],
                r.body,
                ix.event.as_deref().unwrap_or("unknown"),
                ix.session.and_then(|s| i64::try_from(s).ok()),
                ix.identity.or(ix.claimed).or(ix.actor).as_deref(),
                ix.target.as_deref(),
                ix.decision.as_deref(),
            ])?;
            (last, head) = (r.seq, r.hash);
        }
    }
    if cp.seq != last || cp.head != head {
        return Err(StoreError::Refused(format!(
            "audit checkpoint at event {} does not cover the batch, which ends at event {last}",
            cp.seq
        )));
    }
    tx.prepare_cached(
        "INSERT INTO audit_checkpoints (seq, head, ts_us, signature) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        seq_to_sql(cp.seq)?,
        &cp.head[..],
        cp.ts_us,
        &cp.signature[..],
    ])?;
    Ok(())
}

impl AuditStore {
    /// The events matching `filter` from `from_seq` on, in `order` (an `ORDER BY` clause).
    fn events_in_order(
        &self,
        from_seq: u64,
        filter: &Filter,
        order: &str,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq >= ?");
        let mut args = vec![Value::Integer(seq_to_sql(from_seq)?)];
        let mut cond = |clause: &str, v: Value| {
            sql.push_str(" AND ");
            sql.push_str(clause);
            args.push(v);
        };
        let text = |v: &Option<String>| v.clone().map(Value::Text);
        if let Some(v) = text(&filter.identity) {
            cond("identity = ?", v);
        }
        if let Some(v) = text(&filter.target) {
            cond("target = ?", v);
        }
        if let Some(v) = text(&filter.decision) {
            cond("decision = ?", v);
        }
        if let Some(v) = filter.session {
            match i64::try_from(v) {
                Ok(v) => cond("session = ?", Value::Integer(v)),
                Err(_) => return Ok(()),
            }
        }
        if let Some(v) = text(&filter.kind) {
            cond("kind = ?", v);
        }
        if let Some(v) = filter.since_us {
            cond("ts_us >= ?", Value::Integer(v));
        }
        if let Some(v) = filter.until_us {
            cond("ts_us < ?", Value::Integer(v));
        }
        if let Some(v) = text(&filter.text) {
            cond("instr(body, ?) > 0", v);
        }
        sql.push(' ');
        sql.push_str(order);
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(row) = rows.next()? {
            if f(&record(row)?).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Opens the trail in the SQLite file at `path` (creating the file, its directory and the
    /// tables if missing), in WAL mode with `synchronous = FULL`.
    pub fn open(path: &Path) -> Result<AuditStore, StoreError> {
        // FULL (see `connect`): a committed batch survives a crash or power loss.
        let conn = crate::connect(path)?;
        // Checkpoint the WAL into the database every ~40 MB rather than every 4 MB: each
        // batch rewrites the same hot pages (the table's and indexes' right edges), and a
        // checkpoint copies each page once however often it changed.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        conn.execute_batch(SCHEMA)?;
        Ok(AuditStore { conn })
    }

    /// Brings the index (these tables) up to the journal ([`crate::journal`]): every batch
    /// `reader` has not yet passed that continues the stored head is inserted, all in one
    /// transaction. Returns how many events were added.
    ///
    /// Refused when the tables were changed outside Weir at their end — the last event is
    /// not the last checkpoint's (a hand-appended event, a tail cut off): the journal must
    /// not paper over that, so `weir audit verify` still reports it.
    pub fn index_journal(
        &mut self,
        reader: &mut crate::journal::Reader,
    ) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head = head_of(&tx)?.map_or(0, |(s, _)| s);
        let checkpointed: Option<i64> = tx
            .prepare_cached("SELECT max(seq) FROM audit_checkpoints")?
            .query_row([], |r| r.get(0))?;
        let checkpointed = checkpointed.map_or(0, |s| u64::try_from(s).unwrap_or(0));
        if head != checkpointed {
            return Err(StoreError::Refused(format!(
                "the trail's tables were changed outside Weir: their last event is {head}, their last checkpoint is at {checkpointed}; the journal's events are not added (weir audit verify names what is wrong)"
            )));
        }
        let mut added = 0u64;
        let mut last = head;
        reader.each(&mut |records, cp| {
            if cp.seq <= last {
                return Ok(());
            }
            let fresh: Vec<Record> = records.into_iter().filter(|r| r.seq > last).collect();
            insert_batch(&tx, &fresh, &cp)?;
            added += fresh.len() as u64;
            last = cp.seq;
            Ok(())
        })?;
        if added > 0 {
            tx.commit()?;
        }
        Ok(added)
    }

    /// The underlying connection, for tests that tamper with the trail.
    #[doc(hidden)]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl AuditTrail for AuditStore {
    fn head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        head_of(&self.conn)
    }

    fn append(&mut self, records: &[Record], cp: &Checkpoint) -> Result<(), StoreError> {
        // IMMEDIATE: take the write lock before reading the head, so nothing can commit
        // between the check and the insert.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_batch(&tx, records, cp)?;
        tx.commit()?;
        Ok(())
    }

    fn for_each_checkpoint(
        &self,
        from_seq: u64,
        f: &mut dyn FnMut(&Checkpoint) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq >= ?1 ORDER BY seq"
        ))?;
        let mut rows = stmt.query([seq_to_sql(from_seq)?])?;
        while let Some(row) = rows.next()? {
            if f(&checkpoint(row)?).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn verify(&self, key: &PublicKey) -> Result<Result<Summary, VerifyError>, StoreError> {
        // One read transaction: both cursors see the same snapshot, so a batch committed
        // meanwhile cannot show up as a checkpoint without its records.
        let tx = self.conn.unchecked_transaction()?;
        let mut events = tx.prepare(&format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY seq"
        ))?;
        let mut checkpoints = tx.prepare(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq"
        ))?;
        let verdict = chain::verify_trail(
            key.clone(),
            events.query_map([], record)?,
            checkpoints.query_map([], checkpoint)?,
        )?;
        drop((events, checkpoints));
        tx.finish()?;
        Ok(verdict)
    }
}

impl TrailReader for AuditStore {
    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.head()?.map_or(0, |(seq, _)| seq))
    }

    fn for_each_event(
        &self,
        from_seq: u64,
        filter: &Filter,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.events_in_order(from_seq, filter, "ORDER BY seq", f)
    }

    fn for_each_event_newest_first(
        &self,
        filter: &Filter,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.events_in_order(1, filter, "ORDER BY seq DESC", f)
    }

    fn for_each_with_checkpoints(&self, f: &mut ExportVisitor<'_>) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT e.seq, e.ts_us, e.prev, e.hash, e.body, c.head, c.ts_us, c.signature
             FROM audit_events e LEFT JOIN audit_checkpoints c ON c.seq = e.seq ORDER BY e.seq",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let record = record(row)?;
            let checkpoint = match row.get::<_, Option<Vec<u8>>>(5)? {
                Some(_) => Some(Checkpoint {
                    seq: record.seq,
                    head: blob(row, 5)?,
                    ts_us: row.get(6)?,
                    signature: blob(row, 7)?,
                }),
                None => None,
            };
            f(&Exported {
                seq: record.seq,
                chain: None,
                record: &record,
                checkpoint: checkpoint.as_ref(),
            })?;
        }
        Ok(())
    }

    /// A SQLite trail is one chain, signed by one key: the first given.
    fn verify_chains(
        &self,
        keys: &[PublicKey],
        _pinned: bool,
    ) -> Result<Vec<ChainVerdict>, StoreError> {
        let key = keys.first().ok_or_else(|| {
            StoreError::Unsupported("no public key to verify the trail with".into())
        })?;
        Ok(vec![ChainVerdict {
            chain: None,
            verdict: self.verify(key)?.map_err(|e| e.to_string()),
        }])
    }
}

/// Reads the checkpoint signing key from `path` ([`weir_audit::chain::key_from_file_text`]
/// format), or, if there is no file, makes a new key and writes it there: mode 0600, synced,
/// created under a temporary name and linked into place, so a second process starting at the
/// same moment reads the complete key rather than a half-written file or a different key.
pub fn load_or_create_signing_key(path: &Path) -> Result<Signer, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            check_private(path, "audit signing key")?;
            parse_key(path, &text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_signing_key(path),
        Err(e) => Err(e.into()),
    }
}

/// Reads a secret key of `len` bytes (hex, one line) from `path`, or makes one and writes it
/// there the way [`load_or_create_signing_key`] does (0600, synced, linked into place, a
/// concurrent creator's key wins). `what` names it in errors.
pub fn load_or_create_secret(path: &Path, len: usize, what: &str) -> Result<Vec<u8>, StoreError> {
    let parse = |text: &str| -> Result<Vec<u8>, StoreError> {
        hex::decode(text.trim())
            .ok()
            .filter(|k| k.len() == len)
            .ok_or_else(|| {
                StoreError::Unsupported(format!(
                    "{what} {}: expected {} hex digits",
                    path.display(),
                    len * 2
                ))
            })
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            check_private(path, what)?;
            return parse(&text);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut key = vec![0u8; len];
    getrandom::fill(&mut key)
        .map_err(|e| StoreError::Unsupported(format!("no randomness: {e}")))?;
    if link_private(path, format!("{}\n", hex::encode(&key)).as_bytes())? {
        Ok(key)
    } else {
        // Another process made it first: use that one.
        parse(&std::fs::read_to_string(path)?)
    }
}

/// Writes `bytes` to a new file at `path` (mode 0600, synced) created under a temporary name
/// and linked into place, so a concurrent reader sees the whole file or none. False when
/// `path` already existed (another process made it first); the caller reads that one.
fn link_private(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = write_private(&tmp, bytes);
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new directory entry is durable too.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Refuses a key file that other users can read or write, as PostgreSQL does for its TLS
/// key: anyone who can read it can sign checkpoints over a forged trail.
fn check_private(path: &Path, what: &str) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(StoreError::Unsupported(format!(
                "{what} {}: mode {:o} lets other users read or change it; chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let _ = path;
    Ok(())
}

fn parse_key(path: &Path, text: &str) -> Result<Signer, StoreError> {
    chain::key_from_file_text(text).map_err(|source| StoreError::Key {
        path: path.to_owned(),
        source,
    })
}

fn create_signing_key(path: &Path) -> Result<Signer, StoreError> {
    let signer = Signer::generate().map_err(|source| StoreError::Key {
        path: path.to_owned(),
        source,
    })?;
    if link_private(path, chain::key_to_file_text(&signer).as_bytes())? {
        Ok(signer)
    } else {
        // Another process made it first: use that one.
        parse_key(path, &std::fs::read_to_string(path)?)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_audit::chain::Chain;

    fn body(i: u64) -> String {
        let who = ["alice", "bob", "carol"][(i % 3) as usize];
        let decision = if i.is_multiple_of(10) {
            "deny"
        } else {
            "allow"
        };
        format!(
            "{{\"event\":\"statement\",\"session\":{},\"request\":{i},\"identity\":\"{who}\",\"target\":\"{}\",\"via\":\"query\",\"sql\":\"SELECT {i}\",\"kinds\":[\"select\"],\"decision\":\"{decision}\",\"rule\":null}}",
            i / 100,
            if i.is_multiple_of(2) { "shop" } else { "billing" },
        )
    }

    /// A writer as the gateway runs one: seal a batch, sign it, append it.
    struct Writer {
        chain: Chain,
        signer: Signer,
    }

    impl Writer {
        fn new() -> Writer {
            Writer {
                chain: Chain::new(),
                signer: Signer::from_bytes(&[3; 32]),
            }
        }

        fn batch(
            &mut self,
            bodies: impl IntoIterator<Item = (i64, String)>,
        ) -> (Vec<Record>, Checkpoint) {
            let records: Vec<Record> = bodies
                .into_iter()
                .map(|(ts, b)| self.chain.seal(ts, b))
                .collect();
            let cp = self
                .signer
                .sign_checkpoint(self.chain.last_seq(), self.chain.head(), 0);
            (records, cp)
        }

        fn write(&mut self, store: &mut AuditStore, n: u64) {
            let from = self.chain.next_seq();
            let (records, cp) = self.batch((from..from + n).map(|i| (i as i64, body(i))));
            store.append(&records, &cp).unwrap();
        }
    }

    fn collect(store: &AuditStore, from: u64, filter: &Filter) -> Vec<u64> {
        let mut seqs = Vec::new();
        store
            .for_each_event(from, filter, &mut |r| {
                seqs.push(r.seq);
                ControlFlow::Continue(())
            })
            .unwrap();
        seqs
    }

    #[test]
    fn a_hundred_thousand_events_append_stream_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("weir.db")).unwrap();
        let mut w = Writer::new();
        assert_eq!(store.head().unwrap(), None);
        assert_eq!(store.last_seq().unwrap(), 0);
        for _ in 0..100 {
            w.write(&mut store, 1000);
        }
        assert_eq!(store.head().unwrap(), Some((100_000, w.chain.head())));
        assert_eq!(store.last_seq().unwrap(), 100_000);

        // Streamed in order, each record as sealed.
        let mut n = 0u64;
        let mut prev = chain::GENESIS;
        store
            .for_each_event(1, &Filter::default(), &mut |r| {
                n += 1;
                assert_eq!(r.seq, n);
                assert_eq!(r.prev, prev);
                assert!(r.is_intact());
                prev = r.hash;
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(n, 100_000);

        let cps = store.checkpoints().unwrap();
        assert_eq!(cps.len(), 100);
        assert_eq!(cps.last().map(|c| c.seq), Some(100_000));
        let summary = store.verify(&w.signer.public_key()).unwrap().unwrap();
        assert_eq!(
            summary,
            Summary {
                events: 100_000,
                checkpoints: 100
            }
        );

        // Tampering through SQL is found and named.
        let key = w.signer.public_key();
        let c = store.connection();
        c.execute("UPDATE audit_events SET body = '{}' WHERE seq = 4242", [])
            .unwrap();
        let err = store.verify(&key).unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 4242: hash does not match its contents (altered)"
        );
        c.execute(
            "UPDATE audit_events SET body = ?1 WHERE seq = 4242",
            [body(4242)],
        )
        .unwrap();
        assert!(store.verify(&key).unwrap().is_ok());
        c.execute("DELETE FROM audit_events WHERE seq > 99990", [])
            .unwrap();
        assert_eq!(
            store.verify(&key).unwrap(),
            Err(VerifyError::Truncated {
                missing: 99_991,
                covers: 100_000
            })
        );
    }

    #[test]
    fn filters_select_by_the_extracted_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("weir.db")).unwrap();
        let mut w = Writer::new();
        w.write(&mut store, 300);
        let other = [
            "{\"event\":\"auth_failed\",\"claimed\":\"mallory\",\"client_addr\":\"10.0.0.9:5\",\"target\":\"shop\",\"reason\":\"bad token\"}",
            "{\"event\":\"admin\",\"actor\":\"cli\",\"action\":\"token.create\",\"subject\":\"ci\"}",
            "not json at all",
            "{\"event\":\"completed\",\"session\":\"not a number\"}",
        ];
        let (records, cp) = w.batch(other.iter().map(|b| (1_000, b.to_string())));
        store.append(&records, &cp).unwrap();

        let all = Filter::default();
        assert_eq!(collect(&store, 1, &all).len(), 304);
        assert_eq!(collect(&store, 299, &all), [299, 300, 301, 302, 303, 304]);
        let f = |g: fn(&mut Filter)| {
            let mut f = Filter::default();
            g(&mut f);
            collect(&store, 1, &f)
        };
        assert_eq!(f(|f| f.identity = Some("alice".into())).len(), 100);
        assert_eq!(f(|f| f.identity = Some("mallory".into())), [301]);
        assert_eq!(f(|f| f.identity = Some("cli".into())), [302]);
        assert_eq!(f(|f| f.target = Some("shop".into())).len(), 151);
        assert_eq!(f(|f| f.decision = Some("deny".into())).len(), 30);
        assert_eq!(f(|f| f.session = Some(2)).len(), 100);
        assert_eq!(f(|f| f.kind = Some("admin".into())), [302]);
        assert_eq!(f(|f| f.kind = Some("unknown".into())), [303, 304]);
        assert_eq!(f(|f| f.text = Some("SELECT 42\"".into())), [42]);
        assert_eq!(
            f(|f| {
                f.since_us = Some(10);
                f.until_us = Some(20);
            }),
            (10..20).collect::<Vec<u64>>()
        );
        assert_eq!(
            f(|f| {
                f.identity = Some("bob".into());
                f.target = Some("shop".into());
                f.decision = Some("deny".into());
            }),
            [10, 40, 70, 100, 130, 160, 190, 220, 250, 280]
        );

        // A callback that breaks stops the stream.
        let mut seen = 0;
        store
            .for_each_event(1, &all, &mut |_| {
                seen += 1;
                if seen == 5 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(seen, 5);
        assert!(store.verify(&w.signer.public_key()).unwrap().is_ok());
    }

    #[test]
    fn a_batch_that_does_not_continue_the_chain_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let mut store = AuditStore::open(&path).unwrap();
        let mut w = Writer::new();
        w.write(&mut store, 10);

        // Sealed from a stale head (as a second writer on the same file would).
        let mut stale = Writer {
            chain: Chain::resume(5, [0; 32]),
            signer: Signer::from_bytes(&[3; 32]),
        };
        let (records, cp) = stale.batch([(1, body(6))]);
        let err = store.append(&records, &cp).unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{err}");
        // A gap.
        let mut ahead = Writer {
            chain: Chain::resume(11, w.chain.head()),
            signer: Signer::from_bytes(&[3; 32]),
        };
        let (records, cp) = ahead.batch([(1, body(12))]);
        assert!(matches!(
            store.append(&records, &cp),
            Err(StoreError::Refused(_))
        ));
        // A checkpoint that is not at the batch's end.
        let mut next = Writer {
            chain: w.chain,
            signer: Signer::from_bytes(&[3; 32]),
        };
        let (records, _) = next.batch([(1, body(11)), (1, body(12))]);
        let early = w.signer.sign_checkpoint(11, records[0].hash, 0);
        assert!(matches!(
            store.append(&records, &early),
            Err(StoreError::Refused(_))
        ));
        assert_eq!(store.last_seq().unwrap(), 10);

        // A failure inside the transaction (the checkpoint insert) leaves no record behind.
        let mut good = Writer {
            chain: w.chain,
            signer: Signer::from_bytes(&[3; 32]),
        };
        let (records, cp) = good.batch([(1, body(11)), (1, body(12))]);
        let other = AuditStore::open(&path).unwrap();
        other
            .connection()
            .execute_batch(
                "CREATE TRIGGER no_checkpoints BEFORE INSERT ON audit_checkpoints
                 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
            .unwrap();
        let err = store.append(&records, &cp).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(store.last_seq().unwrap(), 10);
        other
            .connection()
            .execute_batch("DROP TRIGGER no_checkpoints")
            .unwrap();
        store.append(&records, &cp).unwrap();
        assert_eq!(store.last_seq().unwrap(), 12);
        assert_eq!(
            store.verify(&w.signer.public_key()).unwrap(),
            Ok(Summary {
                events: 12,
                checkpoints: 2
            })
        );
    }

    #[test]
    fn a_reader_verifies_while_the_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let mut store = AuditStore::open(&path).unwrap();
        let reader = AuditStore::open(&path).unwrap();
        let mut w = Writer::new();
        w.write(&mut store, 100);
        let key = w.signer.public_key();
        // Mid-read, the writer commits more: the reader's pass stays on its snapshot.
        let mut n = 0;
        reader
            .for_each_event(1, &Filter::default(), &mut |_| {
                n += 1;
                if n == 50 {
                    w.write(&mut store, 100);
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(n, 100);
        assert_eq!(reader.verify(&key).unwrap().map(|s| s.events), Ok(200));
    }

    #[test]
    fn the_signing_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/audit.key");
        let a = load_or_create_signing_key(&path).unwrap();
        let b = load_or_create_signing_key(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // A key others can read is refused, not used.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create_signing_key(&path).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // No temporary file left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("keys")).unwrap().count(),
            1
        );

        std::fs::write(&path, "not a key\n").unwrap();
        let err = load_or_create_signing_key(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("audit signing key {}: ", path.display())),
            "{err}"
        );
    }
}
