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

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use weir_analyze::undo::{quote_ident, quote_literal, quote_qualified, CapturePlan};

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

/// Seals and opens before-images: AES-256-GCM, a fresh random nonce per image, the change id
/// and target as associated data (a ciphertext moved to another change does not open).
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

fn aad(change: &str, target: &str) -> Vec<u8> {
    format!("weir before-image v1\0{change}\0{target}").into_bytes()
}

impl Sealer {
    /// The key in `[audit] before_image_key_file`, made (0600) if missing.
    pub fn open(config: &weir_config::Config) -> Result<Sealer, String> {
        let path = &config.audit.before_image_key_file;
        let key =
            weir_store::audit::load_or_create_secret(path, 32, "[audit] before_image_key_file")
                .map_err(|e| format!("[audit] before_image_key_file {}: {e}", path.display()))?;
        Sealer::from_key(&key)
    }

    pub fn from_key(key: &[u8]) -> Result<Sealer, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| "a bad AES-256 key")?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
        })
    }

    /// (nonce, ciphertext with tag).
    pub fn seal(
        &self,
        change: &str,
        target: &str,
        plain: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(change, target)),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        Ok((nonce.to_vec(), data))
    }

    pub fn unseal(
        &self,
        change: &str,
        target: &str,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, String> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "a bad nonce")?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(change, target)), &mut data)
            .map_err(|_| {
                "the before-image does not open with this key (another key, or it was altered)"
                    .to_owned()
            })?;
        Ok(plain.to_vec())
    }
}

/// The hex SHA-256 the `before_image` event carries: of the nonce and the ciphertext.
pub fn sealed_digest(nonce: &[u8], sealed: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(sealed);
    hex::encode(h.finalize())
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

/// What keeping an image needs of its session, owned (a keep in the client's transaction
/// runs beside the session's next statements).
pub(crate) struct Keeper {
    shared: Arc<crate::Shared>,
    session: u64,
    identity: String,
    target: Arc<str>,
}

impl Keeper {
    pub fn of(s: &crate::pipeline::SessionInfo) -> Keeper {
        Keeper {
            shared: Arc::clone(&s.shared),
            session: s.session,
            identity: s.identity.name.clone(),
            target: Arc::clone(&s.target_name),
        }
    }
}

/// Seals and stores a write's image, then records its `before_image` event (with `durable`,
/// waiting until it is: before Weir's own COMMIT). In the client's transaction the session
/// runs this beside its next statements and waits for it before anything that may end the
/// transaction (`FrontendHalf::settle_images`), so the event is in the trail before the
/// COMMIT's, which waits for both. A failure makes the change not undoable (the event says
/// why); the write itself has already been decided and recorded.
pub(crate) async fn keep(
    s: Keeper,
    request: u64,
    spec: Arc<CaptureSpec>,
    outcome: Outcome,
    durable: bool,
) {
    let shared = &s.shared;
    let (rows, bytes, digest, reason) = match outcome {
        Outcome::NotKept(why) => (0, 0, None, Some(why)),
        Outcome::Kept(rows) => {
            let image = Image {
                kind: spec.plan.kind.as_str().into(),
                table: spec.table.clone(),
                key: spec.key.clone(),
                sensitive: spec.sensitive.clone(),
                rows,
            };
            let n = image.rows.len() as u64;
            match store_image(&s, &spec, &image).await {
                Ok((bytes, digest)) => (n, bytes, Some(digest), None),
                Err(e) => {
                    tracing::warn!(cause = %e, "a before-image could not be kept; the change is not undoable");
                    (
                        n,
                        0,
                        None,
                        Some(format!("the before-image could not be stored: {e}")),
                    )
                }
            }
        }
    };
    let event = weir_audit::Event::BeforeImage {
        change: spec.change.to_string(),
        session: s.session,
        request,
        identity: s.identity.clone(),
        target: s.target.to_string(),
        table: spec.table.clone(),
        key: spec.key.clone(),
        rows,
        bytes,
        undoable: digest.is_some(),
        sha256: digest,
        reason: reason.map(|r| format!("not undoable: {r}")),
    };
    if !durable {
        // Rides with the next event someone waits for (the COMMIT's at the latest): no
        // flush of its own.
        shared.audit.append_lazy(event);
        return;
    }
    if let Err(e) = shared.audit.append(event).wait().await {
        tracing::warn!(cause = %e, "a before-image event could not be recorded");
    }
}

async fn store_image(
    s: &Keeper,
    spec: &CaptureSpec,
    image: &Image,
) -> Result<(u64, String), String> {
    let sealer = s
        .shared
        .sealer
        .as_ref()
        .ok_or("no before-image key is loaded")?;
    let plain = serde_json::to_vec(image).map_err(|e| e.to_string())?;
    let (nonce, sealed) = sealer.seal(&spec.change, &s.target, &plain)?;
    let digest = sealed_digest(&nonce, &sealed);
    let bytes = sealed.len() as u64;
    let record = weir_store::BeforeImage {
        change: spec.change.to_string(),
        target: s.target.to_string(),
        table: spec.table.clone(),
        rows: image.rows.len() as u64,
        created_ms: s.shared.approvals.clock().now_ms(),
        sealed: Some((nonce, sealed)),
        purged_ms: None,
        undone_by: None,
    };
    let writer = s
        .shared
        .image_writer
        .as_ref()
        .ok_or("no before-image writer is running")?;
    writer.put(record).await?;
    Ok((bytes, digest))
}

/// Keeps sealed images in the store with group commit: one thread takes whatever images
/// queued while it committed the last batch and commits them in one transaction (one fsync),
/// then answers each session. Under load many writes share a commit, as the trail's do.
pub struct ImageWriter {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<ImageJob>>,
}

/// An image to keep, and where its commit is answered.
type ImageJob = (
    weir_store::BeforeImage,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// Most images one batch commits.
const MAX_IMAGE_BATCH: usize = 256;

impl ImageWriter {
    pub fn start(store: Arc<dyn weir_store::Store>) -> Result<ImageWriter, String> {
        let (tx, rx) = std::sync::mpsc::channel::<ImageJob>();
        std::thread::Builder::new()
            .name("weir-images".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_IMAGE_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let (images, acks): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let result = store.put_before_images(&images).map_err(|e| e.to_string());
                    for ack in acks {
                        let _ = ack.send(result.clone());
                    }
                }
            })
            .map_err(|e| format!("cannot start the before-image writer: {e}"))?;
        Ok(ImageWriter {
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// Keeps one image; answers once it is committed.
    pub async fn put(&self, image: weir_store::BeforeImage) -> Result<(), String> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((image, ack))
            .map_err(|_| "the before-image writer stopped".to_owned())?;
        done.await
            .unwrap_or_else(|_| Err("the before-image writer stopped".into()))
    }
}

/// Purges the images past retention, and records the purge. Returns how many.
pub fn purge(
    store: &dyn weir_store::Store,
    audit: &dyn crate::audit::AuditSink,
    config: &weir_config::Config,
    now_ms: u64,
) -> Result<usize, String> {
    let keep = u64::try_from(config.audit.before_image_retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(keep);
    let changes = store
        .purge_before_images(cutoff, now_ms)
        .map_err(|e| e.to_string())?;
    if changes.is_empty() {
        return Ok(0);
    }
    let n = changes.len();
    audit
        .append(weir_audit::Event::BeforeImagesPurged {
            changes,
            older_than_ms: cutoff,
        })
        .wait_blocking()
        .map_err(|e| e.to_string())?;
    Ok(n)
}

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
    trail: &weir_store::audit::AuditStore,
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
