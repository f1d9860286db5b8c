//! Weir's state store: tokens and the audit trail ([`audit`]); approvals and grants as they
//! arrive.
//!
//! [`Store`] is the interface the rest of Weir uses. It is synchronous on purpose: the async
//! layer calls it from a blocking thread, and a PostgreSQL implementation (for several
//! gateways sharing state) can implement the same trait with a blocking client or a small
//! runtime of its own. The embedded default is SQLite in WAL mode ([`SqliteStore`]), which lets
//! the CLI and a running `weir serve` use the same file at once.
//!
//! Invariant: a token is never stored, only its SHA-256. Tokens carry 256 bits of randomness,
//! so a fast hash is the right tool (a slow password hash protects low-entropy secrets).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use weir_vocab::IdentityKind;

pub mod approvals;
pub mod audit;
pub mod baseline;
pub mod before_images;
pub mod clock;
pub mod derived;
pub mod journal;
pub mod pg;

pub use approvals::{Approval, Grant, Kind as ApprovalKind, NewApproval, Status as ApprovalStatus};
pub use baseline::Baseline;
pub use before_images::BeforeImage;
pub use clock::Clock;
pub use derived::{DerivedTagRecord, NewDerivedTag};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store: {0}")]
    Unsupported(String),
    /// The PostgreSQL store failed (unreachable, timed out, or the query failed).
    #[error("store: {0}")]
    Postgres(String),
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
    /// A write the store refused because it would break an invariant (for the audit trail:
    /// a batch that does not continue the stored chain).
    #[error("store: refused: {0}")]
    Refused(String),
    #[error("audit signing key {}: {source}", path.display())]
    Key {
        path: std::path::PathBuf,
        source: weir_audit::chain::KeyError,
    },
}

/// A token's record, without the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub kind: IdentityKind,
    pub groups: Vec<String>,
    /// Attributes policy sees as the identity's tags.
    pub attributes: BTreeMap<String, String>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    /// When a session last authenticated with it (seconds), recorded by the gateway.
    pub last_used_at: Option<u64>,
    /// The person an agent token acts for (`weir token create --on-behalf-of`).
    pub on_behalf_of: Option<String>,
}

impl TokenRecord {
    pub fn is_active(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

pub struct NewToken<'a> {
    pub name: &'a str,
    pub kind: IdentityKind,
    pub groups: &'a [String],
    pub attributes: &'a BTreeMap<String, String>,
    pub ttl: Option<Duration>,
    pub hash: [u8; 32],
    /// The person an agent token acts for.
    pub on_behalf_of: Option<&'a str>,
}

pub trait Store: Send + Sync {
    fn create_token(&self, token: NewToken<'_>) -> Result<TokenRecord, StoreError>;
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes every active token of `name`; returns how many.
    fn revoke_tokens(&self, name: &str) -> Result<usize, StoreError>;
    /// The record whose token hashes to `hash`, active or not.
    fn find_token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;
    /// Records when tokens were last used (token id, seconds).
    fn touch_tokens(&self, used: &[(i64, u64)]) -> Result<(), StoreError>;

    /// Records a new pending approval request.
    fn create_approval(&self, a: &NewApproval) -> Result<Approval, StoreError>;
    fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError>;
    /// Pending requests, oldest first.
    fn pending_approvals(&self) -> Result<Vec<Approval>, StoreError>;
    /// Moves a pending request to `to` (approved, denied, expired, cancelled), once: returns
    /// whether this call made the change, and the request as it now stands; `None` if there
    /// is no such request.
    fn decide_approval(
        &self,
        id: &str,
        to: ApprovalStatus,
        by: &str,
        note: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<(bool, Approval)>, StoreError>;
    /// The newest approved request of `fingerprint` for `identity` on `target` decided at or
    /// after `since_ms` (the auto-repeat window) that covers `rows` changed rows.
    fn recent_approval(
        &self,
        identity: &str,
        target: &str,
        fingerprint: &str,
        since_ms: u64,
        rows: u64,
    ) -> Result<Option<Approval>, StoreError>;

    /// Grants neither revoked nor expired at `now_ms`.
    fn active_grants(&self, now_ms: u64) -> Result<Vec<Grant>, StoreError>;
    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// Revokes an active grant; true if this call revoked it.
    fn revoke_grant(&self, id: &str, by: &str, now_ms: u64) -> Result<bool, StoreError>;

    /// Remembers the chat message (channel, ts) that announced request `id`.
    fn set_approval_message(&self, id: &str, channel: &str, ts: &str) -> Result<(), StoreError>;
    /// The chat message that announced request `id`, forgotten as it is returned (whoever
    /// settles the request updates it, once).
    fn take_approval_message(&self, id: &str) -> Result<Option<(String, String)>, StoreError>;

    /// Records derived sensitivity tags, leaving out those already in force; returns how many
    /// it added (see [`derived`]).
    fn add_derived_tags(&self, tags: &[NewDerivedTag], now_ms: u64) -> Result<usize, StoreError>;
    /// Tags of one target (every target when `None`), oldest first.
    fn derived_tags(
        &self,
        target: Option<&str>,
        include_cleared: bool,
    ) -> Result<Vec<DerivedTagRecord>, StoreError>;
    /// Clears a tag once; `Some((true, _))` if this call cleared it, `None` if there is none.
    fn clear_derived_tag(
        &self,
        id: i64,
        by: &str,
        now_ms: u64,
    ) -> Result<Option<(bool, DerivedTagRecord)>, StoreError>;
    /// Changes whenever a tag is added or cleared.
    fn derived_tags_version(&self) -> Result<(i64, i64), StoreError>;

    /// An agent read untrusted data on `target`: it stays tainted there until `until_ms`
    /// (a later taint only extends it).
    fn taint(
        &self,
        identity: &str,
        target: &str,
        source: &str,
        until_ms: u64,
    ) -> Result<(), StoreError>;
    /// The behaviour baseline of `identity` (empty when there is none).
    fn baseline(&self, identity: &str) -> Result<Baseline, StoreError>;
    /// Adds what `identity` did since the last merge to its baseline.
    fn merge_baseline(
        &self,
        identity: &str,
        delta: &Baseline,
        now_hour: u64,
    ) -> Result<(), StoreError>;
    /// A person signed in with an ID token: their name, groups and attributes as the IdP
    /// gave them, and when.
    fn record_person(&self, person: &PersonRecord) -> Result<(), StoreError>;
    /// The person of that name as last seen signing in with an ID token.
    fn person(&self, name: &str) -> Result<Option<PersonRecord>, StoreError>;
    /// Until when `identity` is tainted on `target`, if it is at `now_ms`.
    fn tainted_until(
        &self,
        identity: &str,
        target: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Keeps statements' sealed before-images, in one transaction.
    fn put_before_images(&self, images: &[BeforeImage]) -> Result<(), StoreError>;
    fn before_image(&self, change: &str) -> Result<Option<BeforeImage>, StoreError>;
    /// Deletes the ciphertext of images made before `cutoff_ms`; returns their change ids.
    fn purge_before_images(&self, cutoff_ms: u64, now_ms: u64) -> Result<Vec<String>, StoreError>;
    /// Claims an image for one undo: true if this call claimed it.
    fn claim_undo(&self, change: &str, by: &str, now_ms: u64) -> Result<bool, StoreError>;
    /// Gives back a claim whose undo did not run.
    fn release_undo(&self, change: &str, by: &str) -> Result<(), StoreError>;

    /// A secret every gateway on this store must share (the masking hash key): the one
    /// stored under `name`, or `fresh`, stored now, if there is none (of gateways starting
    /// together, the first to store wins and all get its value). `None`: this store keeps
    /// no shared secrets (SQLite, which one gateway uses: its secrets are files beside it).
    fn shared_secret(&self, name: &str, fresh: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (name, fresh);
        Ok(None)
    }
}

/// A person from the IdP, as last seen signing in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRecord {
    pub name: String,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub seen_ms: u64,
}

const PEOPLE: &str = "
CREATE TABLE IF NOT EXISTS people (
    name        TEXT PRIMARY KEY,
    groups      TEXT NOT NULL,
    attributes  TEXT NOT NULL,
    seen_ms     INTEGER NOT NULL
);
";

/// Agents that read untrusted data, per target, until when.
const TAINTS: &str = "
CREATE TABLE IF NOT EXISTS taints (
    identity  TEXT NOT NULL,
    target    TEXT NOT NULL,
    source    TEXT NOT NULL,
    until_ms  INTEGER NOT NULL,
    PRIMARY KEY (identity, target)
);
";

/// A person's record from its stored columns (groups and attributes as JSON).
pub(crate) fn person(
    name: String,
    groups: &str,
    attributes: &str,
    seen_ms: i64,
) -> Result<PersonRecord, StoreError> {
    Ok(PersonRecord {
        groups: serde_json::from_str(groups)
            .map_err(|e| StoreError::Corrupt(format!("groups of {name}: {e}")))?,
        attributes: serde_json::from_str(attributes)
            .map_err(|e| StoreError::Corrupt(format!("attributes of {name}: {e}")))?,
        seen_ms: seen_ms.unsigned_abs(),
        name,
    })
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parse_kind(s: &str) -> Result<IdentityKind, StoreError> {
    IdentityKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("identity kind {s:?}")))
}

/// The embedded store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    groups      TEXT NOT NULL,
    hash        BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_name ON tokens(name);
";

/// A connection to the store's SQLite file (made, with its directory, if missing), set up the
/// way every part of Weir shares it: WAL, so readers (the CLI) and the writer (the gateway)
/// work at once; a busy timeout, so concurrent writers wait for each other instead of
/// failing; `synchronous = FULL`, so in WAL mode every commit is fsync'd and survives a crash.
pub(crate) fn connect(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = connect(path)?;
        conn.execute_batch(SCHEMA)?;
        // Added after the first release of the table.
        let has_last_used: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('tokens') WHERE name = 'last_used_at'")?
            .exists([])?;
        if !has_last_used {
            conn.execute_batch("ALTER TABLE tokens ADD COLUMN last_used_at INTEGER")?;
        }
        let has_attributes: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('tokens') WHERE name = 'attributes'")?
            .exists([])?;
        if !has_attributes {
            conn.execute_batch(
                "ALTER TABLE tokens ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}'",
            )?;
        }
        let has_on_behalf_of: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('tokens') WHERE name = 'on_behalf_of'")?
            .exists([])?;
        if !has_on_behalf_of {
            conn.execute_batch("ALTER TABLE tokens ADD COLUMN on_behalf_of TEXT")?;
        }
        conn.execute_batch(approvals::SCHEMA)?;
        conn.execute_batch(derived::SCHEMA)?;
        conn.execute_batch(TAINTS)?;
        conn.execute_batch(PEOPLE)?;
        conn.execute_batch(baseline::SCHEMA)?;
        conn.execute_batch(before_images::SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A poisoned lock means a panic elsewhere while holding it; the connection itself is
        // still consistent (SQLite transactions are atomic), so keep going.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
    ))
}

pub(crate) type RawRecord = (
    i64,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
    Option<String>,
);

pub(crate) fn to_record(r: RawRecord) -> Result<TokenRecord, StoreError> {
    let (id, name, kind, groups, created, expires, revoked, last_used, attributes, on_behalf_of) =
        r;
    let attributes = serde_json::from_str(&attributes)
        .map_err(|e| StoreError::Corrupt(format!("attributes of token {id}: {e}")))?;
    Ok(TokenRecord {
        id,
        name,
        kind: parse_kind(&kind)?,
        groups: groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        attributes,
        created_at: created.unsigned_abs(),
        expires_at: expires.map(i64::unsigned_abs),
        revoked_at: revoked.map(i64::unsigned_abs),
        last_used_at: last_used.map(i64::unsigned_abs),
        on_behalf_of,
    })
}

const SELECT: &str =
    "SELECT id, name, kind, groups, created_at, expires_at, revoked_at, last_used_at, attributes, on_behalf_of FROM tokens";

impl Store for SqliteStore {
    fn put_before_images(&self, images: &[BeforeImage]) -> Result<(), StoreError> {
        self.with(|c| before_images::put_all(c, images))
    }

    fn before_image(&self, change: &str) -> Result<Option<BeforeImage>, StoreError> {
        self.with(|c| before_images::get(c, change))
    }

    fn purge_before_images(&self, cutoff_ms: u64, now_ms: u64) -> Result<Vec<String>, StoreError> {
        self.with(|c| before_images::purge(c, cutoff_ms, now_ms))
    }

    fn claim_undo(&self, change: &str, by: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.with(|c| before_images::claim_undo(c, change, by, now_ms))
    }

    fn release_undo(&self, change: &str, by: &str) -> Result<(), StoreError> {
        self.with(|c| before_images::release_undo(c, change, by))
    }

    fn create_token(&self, t: NewToken<'_>) -> Result<TokenRecord, StoreError> {
        let now = now_secs();
        let expires = t.ttl.map(|d| now.saturating_add(d.as_secs()));
        let groups = t.groups.join(",");
        let attributes = serde_json::to_string(t.attributes)
            .map_err(|e| StoreError::Refused(format!("attributes: {e}")))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (name, kind, groups, hash, created_at, expires_at, attributes, on_behalf_of) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    t.name,
                    t.kind.as_str(),
                    groups,
                    &t.hash[..],
                    now as i64,
                    expires.map(|e| e as i64),
                    attributes,
                    t.on_behalf_of
                ],
            )?;
            let id = c.last_insert_rowid();
            Ok(TokenRecord {
                id,
                name: t.name.to_owned(),
                kind: t.kind,
                groups: t.groups.to_vec(),
                attributes: t.attributes.clone(),
                created_at: now,
                expires_at: expires,
                revoked_at: None,
                last_used_at: None,
                on_behalf_of: t.on_behalf_of.map(str::to_owned),
            })
        })
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("{SELECT} ORDER BY id"))?;
            let rows = stmt.query_map([], row_to_record)?;
            rows.map(|r| to_record(r?)).collect()
        })
    }

    fn revoke_tokens(&self, name: &str) -> Result<usize, StoreError> {
        let now = now_secs() as i64;
        self.with(|c| {
            Ok(c.execute(
                "UPDATE tokens SET revoked_at = ?1 WHERE name = ?2 AND revoked_at IS NULL",
                params![now, name],
            )?)
        })
    }

    fn find_token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| {
            let raw = c
                .query_row(
                    &format!("{SELECT} WHERE hash = ?1"),
                    [&hash[..]],
                    row_to_record,
                )
                .optional()?;
            raw.map(to_record).transpose()
        })
    }

    fn touch_tokens(&self, used: &[(i64, u64)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE tokens SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1",
                )?;
                for (id, at) in used {
                    stmt.execute(params![id, i64::try_from(*at).unwrap_or(i64::MAX)])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn create_approval(&self, a: &NewApproval) -> Result<Approval, StoreError> {
        self.with(|c| approvals::create(c, a))
    }

    fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        self.with(|c| approvals::get(c, id))
    }

    fn pending_approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.with(approvals::pending)
    }

    fn decide_approval(
        &self,
        id: &str,
        to: ApprovalStatus,
        by: &str,
        note: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<(bool, Approval)>, StoreError> {
        self.with(|c| approvals::decide(c, id, to, by, note, now_ms))
    }

    fn recent_approval(
        &self,
        identity: &str,
        target: &str,
        fingerprint: &str,
        since_ms: u64,
        rows: u64,
    ) -> Result<Option<Approval>, StoreError> {
        self.with(|c| approvals::recent(c, identity, target, fingerprint, since_ms, rows))
    }

    fn active_grants(&self, now_ms: u64) -> Result<Vec<Grant>, StoreError> {
        self.with(|c| approvals::active_grants(c, now_ms))
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.with(|c| approvals::grant(c, id))
    }

    fn revoke_grant(&self, id: &str, by: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.with(|c| approvals::revoke_grant(c, id, by, now_ms))
    }

    fn set_approval_message(&self, id: &str, channel: &str, ts: &str) -> Result<(), StoreError> {
        self.with(|c| approvals::set_message(c, id, channel, ts))
    }

    fn take_approval_message(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        self.with(|c| approvals::take_message(c, id))
    }

    fn add_derived_tags(&self, tags: &[NewDerivedTag], now_ms: u64) -> Result<usize, StoreError> {
        self.with(|c| derived::add(c, tags, now_ms))
    }

    fn derived_tags(
        &self,
        target: Option<&str>,
        include_cleared: bool,
    ) -> Result<Vec<DerivedTagRecord>, StoreError> {
        self.with(|c| derived::list(c, target, include_cleared))
    }

    fn clear_derived_tag(
        &self,
        id: i64,
        by: &str,
        now_ms: u64,
    ) -> Result<Option<(bool, DerivedTagRecord)>, StoreError> {
        self.with(|c| derived::clear(c, id, by, now_ms))
    }

    fn derived_tags_version(&self) -> Result<(i64, i64), StoreError> {
        self.with(derived::version)
    }

    fn record_person(&self, p: &PersonRecord) -> Result<(), StoreError> {
        let groups = serde_json::to_string(&p.groups)
            .map_err(|e| StoreError::Refused(format!("groups: {e}")))?;
        let attributes = serde_json::to_string(&p.attributes)
            .map_err(|e| StoreError::Refused(format!("attributes: {e}")))?;
        let seen = i64::try_from(p.seen_ms).unwrap_or(i64::MAX);
        self.with(|c| {
            c.execute(
                "INSERT INTO people (name, groups, attributes, seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET groups = excluded.groups,
                   attributes = excluded.attributes, seen_ms = max(seen_ms, excluded.seen_ms)",
                params![p.name, groups, attributes, seen],
            )?;
            Ok(())
        })
    }

    fn person(&self, name: &str) -> Result<Option<PersonRecord>, StoreError> {
        self.with(|c| {
            let row: Option<(String, String, i64)> = c
                .query_row(
                    "SELECT groups, attributes, seen_ms FROM people WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(groups, attributes, seen)| {
                person(name.to_owned(), &groups, &attributes, seen)
            })
            .transpose()
        })
    }

    fn baseline(&self, identity: &str) -> Result<Baseline, StoreError> {
        self.with(|c| baseline::load(c, identity))
    }

    fn merge_baseline(
        &self,
        identity: &str,
        delta: &Baseline,
        now_hour: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| baseline::merge(c, identity, delta, now_hour))
    }

    fn taint(
        &self,
        identity: &str,
        target: &str,
        source: &str,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        let until = i64::try_from(until_ms).unwrap_or(i64::MAX);
        self.with(|c| {
            c.execute(
                "INSERT INTO taints (identity, target, source, until_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (identity, target) DO UPDATE
                 SET until_ms = max(until_ms, excluded.until_ms), source = excluded.source",
                params![identity, target, source, until],
            )?;
            Ok(())
        })
    }

    fn tainted_until(
        &self,
        identity: &str,
        target: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.with(|c| {
            let until: Option<i64> = c
                .query_row(
                    "SELECT until_ms FROM taints WHERE identity = ?1 AND target = ?2 AND until_ms > ?3",
                    params![identity, target, now],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(until.map(i64::unsigned_abs))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_created_found_and_revoked() {
        let dir = std::env::temp_dir().join(format!("weir-store-{}", std::process::id()));
        let store = SqliteStore::open(&dir.join("w.db")).unwrap();
        let groups = vec!["ci".to_owned()];
        let rec = store
            .create_token(NewToken {
                name: "bot",
                kind: IdentityKind::Service,
                groups: &groups,
                attributes: &BTreeMap::from([("team".to_owned(), "data".to_owned())]),
                ttl: None,
                hash: [7; 32],
                on_behalf_of: None,
            })
            .unwrap();
        let found = store.find_token(&[7; 32]).unwrap().unwrap();
        assert_eq!(found, rec);
        assert!(found.is_active(now_secs()));
        assert_eq!(store.revoke_tokens("bot").unwrap(), 1);
        assert!(!store
            .find_token(&[7; 32])
            .unwrap()
            .unwrap()
            .is_active(now_secs()));
        assert!(store.find_token(&[8; 32]).unwrap().is_none());
        assert_eq!(store.list_tokens().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn expired_token_is_inactive() {
        let rec = TokenRecord {
            id: 1,
            name: "x".into(),
            kind: IdentityKind::Agent,
            groups: vec![],
            attributes: BTreeMap::new(),
            created_at: 10,
            expires_at: Some(20),
            revoked_at: None,
            last_used_at: None,
            on_behalf_of: None,
        };
        assert!(rec.is_active(19));
        assert!(!rec.is_active(20));
    }
}
