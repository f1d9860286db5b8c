//! Derived sensitivity tags: columns that hold copies of sensitive values because a write
//! copied them there (`INSERT … SELECT ssn`, `CREATE TABLE … AS`). The gateway records a tag
//! before the write runs; every gateway's masking catalog applies the tags that are not
//! cleared, so later reads are masked for every identity until an operator reviews the
//! column and clears its tag (`weir tags clear`).

use rusqlite::{params, OptionalExtension, Row};

use crate::StoreError;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS derived_tags (
    id          INTEGER PRIMARY KEY,
    target      TEXT NOT NULL,
    column_name TEXT NOT NULL,
    label       TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    source      TEXT NOT NULL,
    identity    TEXT NOT NULL,
    statement   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    cleared_at  INTEGER,
    cleared_by  TEXT
);
CREATE INDEX IF NOT EXISTS derived_tags_target ON derived_tags(target, cleared_at);
";

/// A tag to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDerivedTag {
    pub target: String,
    /// `schema.table.column`, `schema.table.#n` or `schema.table.*`.
    pub column: String,
    pub label: String,
    /// The masking strategy's name.
    pub strategy: String,
    /// The sensitive column the value was copied from.
    pub source: String,
    /// Who ran the write.
    pub identity: String,
    /// The write, as the audit trail records it (normalized unless the target keeps text).
    pub statement: String,
}

/// A recorded tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedTagRecord {
    pub id: i64,
    pub tag: NewDerivedTag,
    pub created_at_ms: u64,
    pub cleared_at_ms: Option<u64>,
    pub cleared_by: Option<String>,
}

fn record(row: &Row<'_>) -> rusqlite::Result<DerivedTagRecord> {
    Ok(DerivedTagRecord {
        id: row.get(0)?,
        tag: NewDerivedTag {
            target: row.get(1)?,
            column: row.get(2)?,
            label: row.get(3)?,
            strategy: row.get(4)?,
            source: row.get(5)?,
            identity: row.get(6)?,
            statement: row.get(7)?,
        },
        created_at_ms: row.get::<_, i64>(8)?.max(0) as u64,
        cleared_at_ms: row.get::<_, Option<i64>>(9)?.map(|v| v.max(0) as u64),
        cleared_by: row.get(10)?,
    })
}

const COLUMNS: &str = "id, target, column_name, label, strategy, source, identity, statement, \
    created_at, cleared_at, cleared_by";

/// Records tags, leaving out those already in force (same target, column and label). Returns
/// how many it added. One transaction: all or none.
pub(crate) fn add(
    conn: &rusqlite::Connection,
    tags: &[NewDerivedTag],
    now_ms: u64,
) -> Result<usize, StoreError> {
    // IMMEDIATE: the transaction reads before it writes, and a deferred one that another
    // writer (the audit trail, in the same file) overtakes between the two fails at once
    // with "database is locked" instead of waiting out the busy timeout.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let mut added = 0;
    for t in tags {
        let exists = tx
            .prepare_cached(
                "SELECT 1 FROM derived_tags WHERE target = ?1 AND column_name = ?2 AND label = ?3 \
                 AND cleared_at IS NULL",
            )?
            .exists(params![t.target, t.column, t.label])?;
        if exists {
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO derived_tags (target, column_name, label, strategy, source, identity, \
             statement, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            t.target,
            t.column,
            t.label,
            t.strategy,
            t.source,
            t.identity,
            t.statement,
            now_ms as i64
        ])?;
        added += 1;
    }
    tx.commit()?;
    Ok(added)
}

/// Tags of `target` (every target when `None`), oldest first; cleared ones too when asked.
pub(crate) fn list(
    conn: &rusqlite::Connection,
    target: Option<&str>,
    include_cleared: bool,
) -> Result<Vec<DerivedTagRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM derived_tags WHERE (?1 IS NULL OR target = ?1) \
         AND (?2 OR cleared_at IS NULL) ORDER BY id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![target, include_cleared], record)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Clears a tag in force, once: `Some((true, tag))` if this call cleared it, `Some((false,
/// tag))` if it was already cleared, `None` if there is no such tag.
pub(crate) fn clear(
    conn: &rusqlite::Connection,
    id: i64,
    by: &str,
    now_ms: u64,
) -> Result<Option<(bool, DerivedTagRecord)>, StoreError> {
    let changed = conn.execute(
        "UPDATE derived_tags SET cleared_at = ?2, cleared_by = ?3 WHERE id = ?1 AND cleared_at IS NULL",
        params![id, now_ms as i64, by],
    )?;
    let sql = format!("SELECT {COLUMNS} FROM derived_tags WHERE id = ?1");
    let now = conn
        .prepare_cached(&sql)?
        .query_row(params![id], record)
        .optional()?;
    Ok(now.map(|r| (changed == 1, r)))
}

/// Changes whenever a tag is added or cleared: what a gateway compares to know that its
/// catalogs must be rebuilt.
pub(crate) fn version(conn: &rusqlite::Connection) -> Result<(i64, i64), StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(id), 0), count(cleared_at) FROM derived_tags",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}
