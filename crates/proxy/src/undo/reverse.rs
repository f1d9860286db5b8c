//! Undoing a change: reading its image back from the trail and the store (`prepare`), the
//! SQL that reverses it (`Prepared::statements`), and running that as the caller (`apply`).

use std::sync::Arc;

use serde_json::{Map, Value};
use weir_analyze::undo::{quote_ident, quote_literal, quote_qualified};

use super::{sealed_digest, Image, Sealer};

/// Why a change cannot be undone (`weir undo` exits 1 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CannotUndo(pub String);

/// An undo, ready to print or apply.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub statement_seq: u64,
    pub change: String,
    pub target: String,
    pub image: Image,
}

/// What `weir undo SEQ` needs of the trail: the statement event at `seq` and the
/// `before_image` event of its change.
pub fn prepare(
    trail: &dyn weir_store::audit::TrailReader,
    store: &dyn weir_store::Store,
    sealer: &Sealer,
    seq: u64,
) -> Result<Prepared, CannotUndo> {
    let fail = |s: String| CannotUndo(s);
    let record = trail
        .first_event_from(seq, &Default::default())
        .map_err(|e| fail(format!("the audit trail cannot be read: {e}")))?
        .filter(|r| r.seq == seq)
        .ok_or_else(|| fail(format!("there is no event {seq} in the audit trail")))?;
    let event: Value =
        serde_json::from_str(&record.body).map_err(|_| fail(format!("event {seq} is not JSON")))?;
    if event.get("event").and_then(Value::as_str) != Some("statement") {
        return Err(fail(format!("event {seq} is not a statement")));
    }
    let kinds: Vec<&str> = event
        .get("statements")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.get("kind")?.as_str()).collect())
        .unwrap_or_default();
    if !kinds.iter().any(|k| matches!(*k, "update" | "delete")) {
        return Err(fail(format!(
            "event {seq} is not an UPDATE or DELETE ({})",
            if kinds.is_empty() {
                "no statement".into()
            } else {
                kinds.join(", ")
            }
        )));
    }
    if let Some(why) = event.get("not_undoable").and_then(Value::as_str) {
        return Err(fail(format!("event {seq}: {why}")));
    }
    let Some(change) = event.get("change").and_then(Value::as_str) else {
        return Err(fail(format!(
            "event {seq}: no before-image was kept for it (before-images were off for its target, or it is a MySQL target, which keeps none yet)"
        )));
    };
    let target = event
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let filter = weir_store::audit::Filter {
        kind: Some("before_image".into()),
        text: Some(format!("\"change\":\"{change}\"")),
        ..Default::default()
    };
    let image_event = trail
        .first_event_from(seq, &filter)
        .map_err(|e| fail(format!("the audit trail cannot be read: {e}")))?
        .ok_or_else(|| {
            fail(format!(
                "event {seq}: the statement failed, was refused or did not finish, so it changed nothing to undo"
            ))
        })?;
    let ie: Value = serde_json::from_str(&image_event.body).unwrap_or(Value::Null);
    if ie.get("undoable").and_then(Value::as_bool) != Some(true) {
        let why = ie
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("not undoable");
        return Err(fail(format!("event {seq}: {why}")));
    }
    let stored = store
        .before_image(change)
        .map_err(|e| fail(format!("the store cannot be read: {e}")))?
        .ok_or_else(|| fail(format!("event {seq}: its before-image is not in the store")))?;
    if let Some(by) = &stored.undone_by {
        return Err(fail(format!("event {seq}: already undone (by {by})")));
    }
    let Some((nonce, sealed)) = &stored.sealed else {
        return Err(fail(format!(
            "event {seq}: its before-image was purged ([audit] before_image_retention)"
        )));
    };
    let digest = sealed_digest(nonce, sealed);
    if ie.get("sha256").and_then(Value::as_str) != Some(digest.as_str()) {
        return Err(fail(format!(
            "event {seq}: the stored before-image is not the one the trail recorded (its SHA-256 differs)"
        )));
    }
    let plain = sealer
        .unseal(change, &target, nonce, sealed)
        .map_err(|e| fail(format!("event {seq}: {e}")))?;
    let image: Image = serde_json::from_slice(&plain)
        .map_err(|e| fail(format!("event {seq}: the before-image does not read: {e}")))?;
    Ok(Prepared {
        statement_seq: seq,
        change: change.to_owned(),
        target,
        image,
    })
}

/// A JSON scalar as an SQL literal (untyped, so the column's type reads it).
fn literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => quote_literal(s),
        other => quote_literal(&other.to_string()),
    }
}

impl Prepared {
    /// The statements that undo the change, one per row; `shown` says whether a column's
    /// value may be printed in clear (masked values read `****`, so the printed SQL is a
    /// review copy, not the one applied).
    pub fn statements(&self, shown: &dyn Fn(&str) -> bool) -> Vec<String> {
        let img = &self.image;
        let t = quote_qualified(&img.table);
        let json = |row: &Map<String, Value>| -> String {
            let m: Map<String, Value> = row
                .iter()
                .map(|(k, v)| {
                    let v = if img.sensitive.contains_key(k) && !shown(k) && !v.is_null() {
                        Value::String("****".into())
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            quote_literal(&Value::Object(m).to_string())
        };
        let key_cond = |row: &Map<String, Value>| -> String {
            img.key
                .iter()
                .map(|k| {
                    let v = row.get(k).cloned().unwrap_or(Value::Null);
                    let v = if img.sensitive.contains_key(k) && !shown(k) {
                        Value::String("****".into())
                    } else {
                        v
                    };
                    format!("weir_t.{} = {}", quote_ident(k), literal(&v))
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        img.rows
            .iter()
            .filter_map(|r| match (&r.after, img.kind.as_str()) {
                (None, _) => Some(format!(
                    "INSERT INTO {t} OVERRIDING SYSTEM VALUE SELECT * FROM jsonb_populate_record(NULL::{t}, {}) ON CONFLICT DO NOTHING",
                    json(&r.before)
                )),
                (Some(after), _) => {
                    let changed: Vec<&String> = r
                        .before
                        .iter()
                        .filter(|(k, v)| after.get(*k) != Some(v))
                        .map(|(k, _)| k)
                        .collect();
                    if changed.is_empty() {
                        return None;
                    }
                    let cols = changed.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
                    let src = changed
                        .iter()
                        .map(|c| format!("weir_b.{}", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    Some(format!(
                        "UPDATE {t} AS weir_t SET ({cols}) = (SELECT {src} FROM jsonb_populate_record(NULL::{t}, {}) AS weir_b) WHERE {} AND to_jsonb(weir_t.*) = {}::jsonb",
                        json(&r.before),
                        key_cond(&r.before),
                        json(after)
                    ))
                }
            })
            .collect()
    }

    /// The printed form: a comment naming the change, then one transaction.
    pub fn script(&self, shown: &dyn Fn(&str) -> bool) -> String {
        let stmts = self.statements(shown);
        let masked = self
            .image
            .sensitive
            .keys()
            .filter(|c| !shown(c))
            .cloned()
            .collect::<Vec<_>>();
        let mut out = format!(
            "-- undo of audit event {} (change {}): {} {} row(s) of {} on {}\n",
            self.statement_seq,
            self.change,
            self.image.kind.to_uppercase(),
            self.image.rows.len(),
            self.image.table,
            self.target
        );
        if !masked.is_empty() {
            out.push_str(&format!(
                "-- values of {} are masked (****) in this copy\n",
                masked.join(", ")
            ));
        }
        out.push_str("BEGIN;\n");
        for s in stmts {
            out.push_str(&s);
            out.push_str(";\n");
        }
        out.push_str("COMMIT;\n");
        out
    }
}

/// What applying an undo came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub restored: u64,
    pub refused: u64,
}

/// Runs `prepared` through the gateway's pipeline as `who` (in-process session,
/// `Channel::Undo`): one request, one transaction; policy decides each statement and the
/// action `undo`, and an approval waits as policy says. The image is claimed first, so an
/// undo runs once; a failed one gives the claim back. The `undo` event links it to the
/// statement it reverses.
pub async fn apply(
    shared: &Arc<crate::Shared>,
    who: &weir_policy::Identity,
    prepared: &Prepared,
    notices: impl Fn(String) + Send + Sync + 'static,
) -> Result<Applied, CannotUndo> {
    let store = Arc::clone(shared.approvals.store());
    let now = shared.approvals.clock().now_ms();
    let claimed = {
        let (store, change, name) = (
            Arc::clone(&store),
            prepared.change.clone(),
            who.name.clone(),
        );
        tokio::task::spawn_blocking(move || store.claim_undo(&change, &name, now))
            .await
            .map_err(|e| CannotUndo(e.to_string()))?
            .map_err(|e| CannotUndo(format!("the store cannot be written: {e}")))?
    };
    if !claimed {
        return Err(CannotUndo(format!(
            "event {}: already undone, or being undone",
            prepared.statement_seq
        )));
    }
    let result = run_as(shared, who, prepared, notices).await;
    let (outcome, applied, reason) = match &result {
        Ok(a) if a.refused == 0 => ("applied", a.clone(), None),
        Ok(a) if a.restored == 0 => (
            "refused",
            a.clone(),
            Some("every row changed since".to_owned()),
        ),
        Ok(a) => (
            "partial",
            a.clone(),
            Some("some rows changed since".to_owned()),
        ),
        Err(e) => (
            "failed",
            Applied {
                restored: 0,
                refused: 0,
            },
            Some(e.0.clone()),
        ),
    };
    if applied.restored == 0 {
        let (store, change, name) = (
            Arc::clone(&store),
            prepared.change.clone(),
            who.name.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || store.release_undo(&change, &name)).await;
    }
    let event = weir_audit::Event::Undo {
        statement_seq: prepared.statement_seq,
        change: prepared.change.clone(),
        identity: who.name.clone(),
        target: prepared.target.clone(),
        outcome: outcome.into(),
        restored: applied.restored,
        refused: applied.refused,
        reason,
    };
    if let Err(e) = shared.audit.append(event).wait().await {
        tracing::warn!(cause = %e, "the undo event could not be recorded");
    }
    result
}

async fn run_as(
    shared: &Arc<crate::Shared>,
    who: &weir_policy::Identity,
    prepared: &Prepared,
    notices: impl Fn(String) + Send + Sync + 'static,
) -> Result<Applied, CannotUndo> {
    let statements = prepared.statements(&|_| true);
    if statements.is_empty() {
        return Ok(Applied {
            restored: prepared.image.rows.len() as u64,
            refused: 0,
        });
    }
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(crate::pg::run_pipe(
        theirs,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Arc::clone(shared),
        crate::pipeline::Channel::Undo,
    ));
    let secret = shared.auth.vouch(who.clone());
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(&who.name)
        .password(secret.as_bytes())
        .dbname(&prepared.target)
        .application_name("weir-undo")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, mut connection) = cfg
        .connect_raw(ours, tokio_postgres::NoTls)
        .await
        .map_err(|e| CannotUndo(pg_message(&e)))?;
    let notices = Arc::new(notices);
    tokio::spawn(async move {
        loop {
            let msg = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match msg {
                Some(Ok(tokio_postgres::AsyncMessage::Notice(n))) => {
                    notices(n.message().to_owned())
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    });
    // One request: one implicit transaction, one decision (and one approval) for all.
    let sql = statements.join(";\n");
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|e| CannotUndo(pg_message(&e)))?;
    let mut applied = Applied {
        restored: 0,
        refused: 0,
    };
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::CommandComplete(n) = m {
            if n > 0 {
                applied.restored += 1;
            } else {
                applied.refused += 1;
            }
        }
    }
    // Rows whose UPDATE would change nothing (the write left them as they were).
    let unchanged =
        (prepared.image.rows.len() as u64).saturating_sub(applied.restored + applied.refused);
    applied.restored += unchanged;
    Ok(applied)
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => format!("weir: the undo session failed: {e}"),
    }
}
