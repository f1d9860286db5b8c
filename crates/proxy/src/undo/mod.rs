//! Reversible changes: before-images of UPDATE and DELETE, sealed at rest, and the SQL that
//! undoes a change.
//!
//! **Capture.** Where `[audit] before_images` keeps them (production targets by default), an
//! UPDATE or DELETE that is one statement, on one table with a primary or non-null unique key
//! its SET leaves alone, runs in a bracket (`crate::pg` frontend): Weir's transaction or
//! savepoint, then [`weir_analyze::undo::CapturePlan::capture_sql`] (`SELECT to_jsonb(t.*)
//! … FOR UPDATE OF t`, the write's own FROM and WHERE), then the write, then for an UPDATE
//! the same rows again by key (the after-image), then the bracket's end. The lock keeps the
//! rows from changing between the capture and the write, so the image is exactly the rows
//! changed, under concurrency; a count that differs (a phantom: a row inserted in between)
//! makes the change not undoable, as does a capture over `[audit] before_image_max_bytes`.
//!
//! **At rest.** The image is JSON, sealed with AES-256-GCM under `[audit]
//! before_image_key_file` (AAD: the change id and the target), and kept in the store
//! (`before_images`), outside the user's database. The statement's audit event carries the
//! change id; a `before_image` event carries it with the SHA-256 of the ciphertext, so the
//! chain proves which change the rows belong to. After `[audit] before_image_retention` the
//! ciphertext is deleted, and the purge is an event.
//!
//! **Undo** ([`prepare`]): INSERT for deleted rows (`ON CONFLICT DO NOTHING`: a row with the
//! key back is refused), UPDATE back to the old values keyed by the key *and* guarded by the
//! whole after-image (`to_jsonb(row) = after`), so a row changed since does not match and is
//! reported as refused. [`apply`] runs them as one request, in one transaction, through the
//! gateway's own pipeline as the caller (`Channel::Undo`: policy action `undo` on top of
//! what each statement is; approval as policy says).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use weir_analyze::undo::{quote_ident, quote_literal, quote_qualified, CapturePlan};

mod keep;
mod reverse;

pub(crate) use keep::{keep, Keeper};
pub use keep::{purge, sealed_digest, ImageWriter, Sealer};
pub use reverse::{apply, prepare, Applied, CannotUndo, Prepared};

/// What a statement's event says about its before-image: the change id, or why none is kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mark {
    pub change: Option<Arc<str>>,
    pub not_undoable: Option<String>,
    /// How its rows are captured (with `change`).
    pub spec: Option<Arc<CaptureSpec>>,
}

/// How one write's rows are captured.
#[derive(Debug, Clone)]
pub(crate) struct CaptureSpec {
    pub change: Arc<str>,
    pub plan: CapturePlan,
    /// `schema.table`.
    pub table: String,
    pub key: Vec<String>,
    /// Sensitive columns of the table (name → label), as the catalog classified them: what
    /// `weir undo` masks when it prints the rows.
    pub sensitive: BTreeMap<String, String>,
    pub max_bytes: u64,
    /// The capture's parameters (formats, values), for a write with bound parameters.
    pub params: Option<(Vec<i16>, Vec<Option<bytes::Bytes>>)>,
}

/// An Execute's bound parameters as the client sent them (format codes as in its Bind,
/// `None` for NULL), or why they cannot be given to a capture.
pub(crate) type Params = Result<Arc<BoundParams>, &'static str>;

#[derive(Debug)]
pub(crate) struct BoundParams {
    pub formats: Vec<i16>,
    pub values: Vec<Option<bytes::Bytes>>,
}

impl BoundParams {
    /// The format and value of parameter `i` (0-based).
    fn get(&self, i: usize) -> Option<(i16, Option<bytes::Bytes>)> {
        let format = match self.formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => *many.get(i)?,
        };
        Some((format, self.values.get(i)?.clone()))
    }

    /// The formats and values of the parameters at `order`, for the capture's Bind.
    pub fn pick(&self, order: &[usize]) -> Option<(Vec<i16>, Vec<Option<bytes::Bytes>>)> {
        let picked: Option<Vec<(i16, Option<bytes::Bytes>)>> =
            order.iter().map(|i| self.get(*i)).collect();
        Some(picked?.into_iter().unzip())
    }
}

/// The most bytes of parameters a portal keeps for its capture.
const MAX_PARAM_BYTES: usize = 1 << 20;

/// What a Bind's parameters give a capture: kept only for an UPDATE or DELETE on a target
/// that keeps before-images (`None` otherwise).
pub(crate) fn params_for(
    config: &weir_config::Config,
    target: &weir_config::Target,
    decision: &weir_policy::Decision,
    formats: &[i16],
    values: &[Option<bytes::Bytes>],
) -> Option<Params> {
    let writes = decision.analysis.statements.iter().any(|f| {
        matches!(
            f.kind,
            weir_analyze::StatementKind::Update | weir_analyze::StatementKind::Delete
        )
    });
    if !writes || !config.audit.keeps_before_images(target) {
        return None;
    }
    if values
        .iter()
        .map(|v| v.as_ref().map_or(0, |b| b.len()))
        .sum::<usize>()
        > MAX_PARAM_BYTES
    {
        return Some(Err(
            "its parameters are larger than a capture takes (1 MiB)",
        ));
    }
    Some(Ok(Arc::new(BoundParams {
        formats: formats.to_vec(),
        values: values.to_vec(),
    })))
}

/// Whether writes on `target` keep before-images, and if so for this one statement (its
/// SQL, its facts, an Execute's parameters, the catalog), how — or why not. `None`: out of
/// scope (not an UPDATE or DELETE, or before-images are off for the target).
pub(crate) fn plan(
    config: &weir_config::Config,
    target: &weir_config::Target,
    sql: &str,
    facts: &[weir_analyze::StatementFacts],
    params: Option<&Params>,
    catalog: Option<&weir_mask::catalog::Catalog>,
) -> Option<Mark> {
    if !config.audit.keeps_before_images(target) {
        return None;
    }
    let writes = facts.iter().any(|f| {
        matches!(
            f.kind,
            weir_analyze::StatementKind::Update | weir_analyze::StatementKind::Delete
        )
    });
    if !writes {
        return None;
    }
    let not = |why: String| {
        Some(Mark {
            change: None,
            not_undoable: Some(format!("not undoable: {why}")),
            spec: None,
        })
    };
    let [f] = facts else {
        return not("the request holds more than one statement".into());
    };
    if f.nested_write || f.unknown_effect || !f.user_functions.is_empty() {
        return not("it runs code or nested writes whose effect Weir cannot see".into());
    }
    let bound = match params {
        None => None,
        Some(Ok(p)) => Some(Arc::clone(p)),
        Some(Err(why)) => return not((*why).to_owned()),
    };
    let plan = match weir_analyze::undo::capture_plan_bound(sql, bound.is_some()) {
        Ok(p) => p,
        Err(why) => return not(why),
    };
    let capture_params = match &bound {
        None => None,
        Some(b) => match b.pick(&plan.params) {
            Some(picked) => Some(picked),
            None => return not("it uses a parameter its Bind did not give".into()),
        },
    };
    let [table] = f.tables_written.iter().collect::<Vec<_>>()[..] else {
        return not("it does not write exactly one table".into());
    };
    let Some(catalog) = catalog else {
        return not("the target's catalog is not loaded (masking is off)".into());
    };
    let Some(columns) = catalog.columns_in_order(table) else {
        return not(format!("{table} is not a table Weir's catalog knows"));
    };
    let key = catalog
        .unique_keys(table)
        .iter()
        .filter(|k| !k.iter().any(|c| plan.set_columns.contains(c)))
        .min_by_key(|k| k.len())
        .cloned();
    let Some(key) = key else {
        return not(format!(
            "{table} has no primary or unique key that the statement leaves unchanged"
        ));
    };
    let sensitive = columns
        .iter()
        .filter_map(|c| {
            let s = c.sensitive.as_ref()?;
            let name = c.qualified.rsplit('.').next()?.to_owned();
            Some((name, s.label.to_string()))
        })
        .collect();
    let change: Arc<str> = Arc::from(crate::approvals::new_id());
    let spec = Arc::new(CaptureSpec {
        change: Arc::clone(&change),
        plan,
        table: table.clone(),
        key,
        sensitive,
        max_bytes: config.audit.before_image_max_bytes,
        params: capture_params,
    });
    Some(Mark {
        change: Some(change),
        not_undoable: None,
        spec: Some(spec),
    })
}

/// One change's rows, as sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// `update` or `delete`.
    pub kind: String,
    /// `schema.table`.
    pub table: String,
    pub key: Vec<String>,
    /// Sensitive columns (name → label).
    pub sensitive: BTreeMap<String, String>,
    pub rows: Vec<RowImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowImage {
    pub before: Map<String, Value>,
    /// The row as the UPDATE left it (none for a DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Map<String, Value>>,
}

/// The key's values of a row, as one comparable string.
fn key_of(row: &Map<String, Value>, key: &[String]) -> Option<String> {
    let values: Option<Vec<&Value>> = key
        .iter()
        .map(|k| row.get(k).filter(|v| !v.is_null()))
        .collect();
    serde_json::to_string(&values?).ok()
}

/// The before rows of a capture (JSON objects, deduplicated by key: FROM/USING may join a
/// row twice). `Err` when a row is not an object or has a NULL key.
pub(crate) fn before_rows(
    captured: Vec<Option<String>>,
    key: &[String],
) -> Result<Vec<Map<String, Value>>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::with_capacity(captured.len());
    for text in captured {
        let Some(Value::Object(row)) = text.and_then(|t| serde_json::from_str(&t).ok()) else {
            return Err("a captured row is not a JSON object".into());
        };
        let Some(k) = key_of(&row, key) else {
            return Err("a captured row has a NULL key".into());
        };
        if seen.insert(k) {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The query that reads the rows with these keys again (the after-image of an UPDATE).
pub(crate) fn after_image_sql(table: &str, key: &[String], rows: &[Map<String, Value>]) -> String {
    let t = quote_qualified(table);
    let keys: Vec<Value> = rows
        .iter()
        .map(|r| {
            Value::Object(
                key.iter()
                    .filter_map(|k| r.get(k).map(|v| (k.clone(), v.clone())))
                    .collect(),
            )
        })
        .collect();
    let cols = key
        .iter()
        .map(|k| format!("weir_t.{}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let rcols = key
        .iter()
        .map(|k| format!("weir_k.{}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT to_jsonb(weir_t.*) FROM {t} AS weir_t WHERE ({cols}) IN (SELECT {rcols} FROM jsonb_populate_recordset(NULL::{t}, {}) AS weir_k)",
        quote_literal(&Value::Array(keys).to_string())
    )
}

/// Pairs each before row with its after row by key.
pub(crate) fn pair(
    before: Vec<Map<String, Value>>,
    after: Option<Vec<Option<String>>>,
    key: &[String],
) -> Result<Vec<RowImage>, String> {
    let Some(after) = after else {
        return Ok(before
            .into_iter()
            .map(|b| RowImage {
                before: b,
                after: None,
            })
            .collect());
    };
    let mut by_key = std::collections::HashMap::new();
    for text in after {
        let Some(Value::Object(row)) = text.and_then(|t| serde_json::from_str(&t).ok()) else {
            return Err("an after-image row is not a JSON object".into());
        };
        if let Some(k) = key_of(&row, key) {
            by_key.insert(k, row);
        }
    }
    before
        .into_iter()
        .map(|b| {
            let k = key_of(&b, key).ok_or("a row has a NULL key")?;
            let a = by_key
                .remove(&k)
                .ok_or("a changed row was not found again by its key")?;
            Ok(RowImage {
                before: b,
                after: Some(a),
            })
        })
        .collect()
}

/// What a captured write's image comes to, once the write ran: its before rows (and, for an
/// UPDATE, the same rows read again by key, in the bracket) when their count is what the
/// write changed; else why not. `Err` (the session ends, its transaction rolled back) when
/// the after-image read failed although the write did not.
pub(crate) fn outcome(
    spec: &CaptureSpec,
    before: Result<Vec<Map<String, Value>>, String>,
    after: Option<(crate::track::ProbeResult, crate::track::Collected)>,
    changed: u64,
) -> Result<Outcome, String> {
    let rows = match before {
        Ok(rows) => rows,
        Err(why) => return Ok(Outcome::NotKept(why)),
    };
    if rows.len() as u64 != changed {
        return Ok(Outcome::NotKept(format!(
            "{} rows were captured but the statement changed {changed} (a row came or went in between, or a trigger or rule changed others)",
            rows.len()
        )));
    }
    let after = match after {
        None => None,
        Some((r, _)) if r.sqlstate.is_some() => {
            return Err(format!(
                "the after-image of a captured write failed (SQLSTATE {})",
                r.sqlstate.unwrap_or_default()
            ))
        }
        Some((_, c)) if c.over => {
            return Ok(Outcome::NotKept(format!(
                "over the cap: its rows are more than [audit] before_image_max_bytes ({} bytes)",
                spec.max_bytes
            )))
        }
        Some((_, c)) => Some(c.rows),
    };
    if spec.plan.kind == weir_analyze::undo::WriteKind::Update
        && after.is_none()
        && !rows.is_empty()
    {
        return Ok(Outcome::NotKept("the after-image was not read".into()));
    }
    Ok(match pair(rows, after, &spec.key) {
        Ok(r) => Outcome::Kept(r),
        Err(why) => Outcome::NotKept(why),
    })
}

/// What a captured write came to, for its `before_image` event.
pub(crate) enum Outcome {
    Kept(Vec<RowImage>),
    NotKept(String),
}
