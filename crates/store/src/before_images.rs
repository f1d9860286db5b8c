//! Before-images of UPDATE and DELETE (for `weir undo`), sealed: the store holds only
//! ciphertext, which the gateway seals with its own key before it gets here. A row is keyed
//! by the change id that the statement's audit event carries; purging deletes the ciphertext
//! and keeps the row (so "purged" is an answer, not "unknown"); an undo claims the row once.

use rusqlite::{params, OptionalExtension};

use crate::StoreError;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS before_images (
    change      TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    rows        INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    nonce       BLOB,
    sealed      BLOB,
    purged_ms   INTEGER,
    undone_by   TEXT,
    undone_ms   INTEGER
);
CREATE INDEX IF NOT EXISTS before_images_created ON before_images(created_ms);
";

/// One statement's sealed rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeforeImage {
    pub change: String,
    pub target: String,
    pub table: String,
    pub rows: u64,
    pub created_ms: u64,
    /// The AEAD nonce and ciphertext; `None` once purged.
    pub sealed: Option<(Vec<u8>, Vec<u8>)>,
    pub purged_ms: Option<u64>,
    /// Who undid it, once.
    pub undone_by: Option<String>,
}

/// Keeps several images in one transaction (one fsync for all).
pub(crate) fn put_all(c: &rusqlite::Connection, images: &[BeforeImage]) -> Result<(), StoreError> {
    let tx = c.unchecked_transaction()?;
    for b in images {
        put(&tx, b)?;
    }
    tx.commit()?;
    Ok(())
}

pub(crate) fn put(c: &rusqlite::Connection, b: &BeforeImage) -> Result<(), StoreError> {
    let (nonce, sealed) = match &b.sealed {
        Some((n, s)) => (Some(n.as_slice()), Some(s.as_slice())),
        None => (None, None),
    };
    c.execute(
        "INSERT INTO before_images (change, target, table_name, rows, created_ms, nonce, sealed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            b.change,
            b.target,
            b.table,
            i64::try_from(b.rows).unwrap_or(i64::MAX),
            i64::try_from(b.created_ms).unwrap_or(i64::MAX),
            nonce,
            sealed
        ],
    )?;
    Ok(())
}

pub(crate) fn get(
    c: &rusqlite::Connection,
    change: &str,
) -> Result<Option<BeforeImage>, StoreError> {
    Ok(c.query_row(
        "SELECT change, target, table_name, rows, created_ms, nonce, sealed, purged_ms, undone_by
         FROM before_images WHERE change = ?1",
        [change],
        |r| {
            let nonce: Option<Vec<u8>> = r.get(5)?;
            let sealed: Option<Vec<u8>> = r.get(6)?;
            Ok(BeforeImage {
                change: r.get(0)?,
                target: r.get(1)?,
                table: r.get(2)?,
                rows: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                created_ms: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                sealed: nonce.zip(sealed),
                purged_ms: r
                    .get::<_, Option<i64>>(7)?
                    .map(|v| u64::try_from(v).unwrap_or(0)),
                undone_by: r.get(8)?,
            })
        },
    )
    .optional()?)
}

/// Deletes the ciphertext of every image made before `cutoff_ms`; returns their change ids.
pub(crate) fn purge(
    c: &rusqlite::Connection,
    cutoff_ms: u64,
    now_ms: u64,
) -> Result<Vec<String>, StoreError> {
    let cutoff = i64::try_from(cutoff_ms).unwrap_or(i64::MAX);
    let tx = c.unchecked_transaction()?;
    let changes = {
        let mut q = tx.prepare(
            "SELECT change FROM before_images WHERE created_ms < ?1 AND sealed IS NOT NULL",
        )?;
        let rows = q.query_map([cutoff], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    tx.execute(
        "UPDATE before_images SET nonce = NULL, sealed = NULL, purged_ms = ?2
         WHERE created_ms < ?1 AND sealed IS NOT NULL",
        params![cutoff, i64::try_from(now_ms).unwrap_or(i64::MAX)],
    )?;
    tx.commit()?;
    Ok(changes)
}

/// Marks the image undone by `by`, once: true if this call claimed it.
pub(crate) fn claim_undo(
    c: &rusqlite::Connection,
    change: &str,
    by: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let n = c.execute(
        "UPDATE before_images SET undone_by = ?2, undone_ms = ?3
         WHERE change = ?1 AND undone_by IS NULL AND sealed IS NOT NULL",
        params![change, by, i64::try_from(now_ms).unwrap_or(i64::MAX)],
    )?;
    Ok(n == 1)
}

/// Gives back a claim whose undo did not run (its transaction failed or was refused).
pub(crate) fn release_undo(
    c: &rusqlite::Connection,
    change: &str,
    by: &str,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE before_images SET undone_by = NULL, undone_ms = NULL WHERE change = ?1 AND undone_by = ?2",
        params![change, by],
    )?;
    Ok(())
}
