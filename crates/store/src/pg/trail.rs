//! [`PgTrail`]: the audit trail on PostgreSQL, written by several gateways at once.
//!
//! - **One chain per signing key.** Each gateway (and a CLI run with the same config, which
//!   has the same key) appends its own hash chain. The chain's id is the hex of its public
//!   key, registered in `audit_chains` when the writer opens. `audit_chains` also holds the
//!   chain's last `seq` and head, updated in the same transaction as every batch: a tail cut
//!   from `audit_events` then disagrees with it, which `verify` reports.
//! - **One order over all chains.** `audit_events.gseq` is assigned by the store. Appends take
//!   one advisory lock for the length of their transaction ([`APPEND_LOCK`]), so batches
//!   commit in the order their `gseq`s were drawn: a reader following the trail by `gseq`
//!   (`weir audit tail`) never sees a later number before an earlier one commits. The cost is
//!   that batches of different gateways commit one at a time; each carries a whole group
//!   commit, so the lock is taken once per batch, not per event.
//! - **What readers see.** Every reader's [`Record::seq`] is the `gseq` (search, export, undo,
//!   replay and the HTTP API number events that way); verification uses each chain's own
//!   `seq`, which is what the hashes and signatures cover.
//! - **Invariant:** as for SQLite, `append` refuses (and writes nothing of) a batch that does
//!   not continue its chain's stored head, or whose checkpoint is not at its last record.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use weir_audit::chain::{self, Checkpoint, PublicKey, Record, Summary, Verifier, VerifyError};

use super::{err, Pg};
use crate::audit::{
    AuditTrail, ChainVerdict, ExportVisitor, Exported, Filter, Indexed, TrailReader,
};
use crate::StoreError;

/// Held by every append for its transaction: batches commit in `gseq` order.
pub const APPEND_LOCK: i64 = 0x7765_6972_0000_0002;
/// Events read per round trip by the streaming readers.
const PAGE: i64 = 1000;
/// How long verifying the whole trail may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(3600);

type Args = Vec<Box<dyn ToSql + Send + Sync>>;

/// The trail in a PostgreSQL store: a reader, or the writer of one chain.
#[derive(Debug, Clone)]
pub struct PgTrail {
    pg: Arc<Pg>,
    /// The chain this instance appends to (`None`: a reader).
    chain: Option<String>,
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(err)
}

fn hash32(row: &Row, i: usize) -> Result<[u8; 32], StoreError> {
    let v: Vec<u8> = get(row, i)?;
    v.try_into()
        .map_err(|v: Vec<u8>| StoreError::Corrupt(format!("expected 32 bytes, found {}", v.len())))
}

fn sig64(row: &Row, i: usize) -> Result<[u8; 64], StoreError> {
    let v: Vec<u8> = get(row, i)?;
    v.try_into()
        .map_err(|v: Vec<u8>| StoreError::Corrupt(format!("expected 64 bytes, found {}", v.len())))
}

fn seq_of(row: &Row, i: usize) -> Result<u64, StoreError> {
    let v: i64 = get(row, i)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("sequence number {v}")))
}

fn to_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Refused(format!("sequence number {seq} too large")))
}

/// `gseq, ts_us, prev, hash, body` as a record numbered by `gseq`.
const EVENT_COLUMNS: &str = "gseq, ts_us, prev, hash, body";

fn record(row: &Row) -> Result<Record, StoreError> {
    Ok(Record {
        seq: seq_of(row, 0)?,
        ts_us: get(row, 1)?,
        prev: hash32(row, 2)?,
        hash: hash32(row, 3)?,
        body: get(row, 4)?,
    })
}

/// The filter's conditions (each `AND …`), numbered from `$first`.
fn conditions(filter: &Filter, first: usize) -> Option<(String, Args)> {
    let mut sql = String::new();
    let mut args: Args = Vec::new();
    let mut cond = |clause: &str, v: Box<dyn ToSql + Send + Sync>| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} ${}", first + args.len() - 1));
    };
    if let Some(v) = &filter.identity {
        cond("identity =", Box::new(v.clone()));
    }
    if let Some(v) = &filter.target {
        cond("target =", Box::new(v.clone()));
    }
    if let Some(v) = &filter.decision {
        cond("decision =", Box::new(v.clone()));
    }
    if let Some(v) = filter.session {
        // A session number beyond i64 matches nothing.
        cond("session =", Box::new(i64::try_from(v).ok()?));
    }
    if let Some(v) = &filter.kind {
        cond("kind =", Box::new(v.clone()));
    }
    if let Some(v) = filter.since_us {
        cond("ts_us >=", Box::new(v));
    }
    if let Some(v) = filter.until_us {
        cond("ts_us <", Box::new(v));
    }
    if let Some(v) = &filter.text {
        args.push(Box::new(v.clone()));
        sql.push_str(&format!(
            " AND strpos(body, ${}) > 0",
            first + args.len() - 1
        ));
    }
    Some((sql, args))
}

impl PgTrail {
    /// A reader of the whole trail.
    pub fn reader(pg: Arc<Pg>) -> PgTrail {
        PgTrail { pg, chain: None }
    }

    /// The writer of the chain signed by `key`, registered in the store if it is new.
    pub fn writer(pg: Arc<Pg>, key: &PublicKey, now_ms: u64) -> Result<PgTrail, StoreError> {
        let chain = key.to_hex();
        let id = chain.clone();
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        pg.with(move |c| async move {
            c.execute(
                "INSERT INTO audit_chains (chain, public_key, registered_ms) VALUES ($1, $1, $2) \
                 ON CONFLICT (chain) DO NOTHING",
                &[&id, &now],
            )
            .await
            .map_err(err)?;
            Ok(())
        })?;
        Ok(PgTrail {
            pg,
            chain: Some(chain),
        })
    }

    fn own_chain(&self) -> Result<&str, StoreError> {
        self.chain.as_deref().ok_or_else(|| {
            StoreError::Unsupported("this trail handle has no chain of its own".into())
        })
    }

    /// The chains registered in the store, oldest first.
    pub fn chains(&self) -> Result<Vec<String>, StoreError> {
        self.pg.with(|c| async move {
            let rows = c
                .query(
                    "SELECT chain FROM audit_chains ORDER BY registered_ms, chain",
                    &[],
                )
                .await
                .map_err(err)?;
            rows.iter().map(|r| get(r, 0)).collect()
        })
    }

    /// Pages through the events matching `filter`, `gseq` from `from` on (ascending) or up
    /// to `from` (descending), calling `f` on the caller's thread.
    fn pages(
        &self,
        from: u64,
        descending: bool,
        filter: &Filter,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let Some((cond, _)) = conditions(filter, 3) else {
            return Ok(());
        };
        let (cmp, order) = if descending {
            ("<=", "DESC")
        } else {
            (">=", "")
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE gseq {cmp} $1{cond} ORDER BY gseq {order} LIMIT $2"
        );
        let mut cursor = to_sql(from)?;
        loop {
            let sql = sql.clone();
            let Some((_, args)) = conditions(filter, 3) else {
                return Ok(());
            };
            let page = self.pg.with(move |c| async move {
                let mut all: Vec<&(dyn ToSql + Sync)> = vec![&cursor, &PAGE];
                all.extend(args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)));
                let rows = c.query(&sql, &all).await.map_err(err)?;
                rows.iter().map(record).collect::<Result<Vec<_>, _>>()
            })?;
            let full = page.len() as i64 == PAGE;
            for r in &page {
                if f(r).is_break() {
                    return Ok(());
                }
                let at = to_sql(r.seq)?;
                cursor = if descending { at - 1 } else { at + 1 };
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// Verifies one chain inside the caller's snapshot transaction.
async fn verify_chain(
    c: &tokio_postgres::Client,
    chain: &str,
    key: PublicKey,
) -> Result<Result<Summary, VerifyError>, StoreError> {
    let mut v = Verifier::new(key);
    let mut last_seq = 0i64;
    let mut last_gseq = 0i64;
    loop {
        let rows = c
            .query(
                "SELECT e.seq, e.ts_us, e.prev, e.hash, e.body, e.gseq, k.head, k.ts_us, k.signature \
                 FROM audit_events e LEFT JOIN audit_checkpoints k ON k.chain = e.chain AND k.seq = e.seq \
                 WHERE e.chain = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
                &[&chain, &last_seq, &PAGE],
            )
            .await
            .map_err(err)?;
        for row in &rows {
            let r = record(row)?;
            let gseq: i64 = get(row, 5)?;
            if gseq <= last_gseq {
                // The global order was rewritten (gseq is not hashed, but appends draw it in
                // chain order): report it at this event.
                return Ok(Err(VerifyError::OutOfOrder {
                    seq: r.seq,
                    after: r.seq.saturating_sub(1),
                }));
            }
            last_gseq = gseq;
            last_seq = to_sql(r.seq)?;
            if let Err(e) = v.event(&r) {
                return Ok(Err(e));
            }
            if row.try_get::<_, Option<Vec<u8>>>(6).map_err(err)?.is_some() {
                let cp = Checkpoint {
                    seq: r.seq,
                    head: hash32(row, 6)?,
                    ts_us: get(row, 7)?,
                    signature: sig64(row, 8)?,
                };
                if let Err(e) = v.checkpoint(&cp) {
                    return Ok(Err(e));
                }
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    // Checkpoints at events that are not there: a tail removed with its events.
    let beyond = c
        .query(
            "SELECT seq, head, ts_us, signature FROM audit_checkpoints WHERE chain = $1 AND seq > $2 ORDER BY seq",
            &[&chain, &last_seq],
        )
        .await
        .map_err(err)?;
    for row in &beyond {
        let cp = Checkpoint {
            seq: seq_of(row, 0)?,
            head: hash32(row, 1)?,
            ts_us: get(row, 2)?,
            signature: sig64(row, 3)?,
        };
        if let Err(e) = v.checkpoint(&cp) {
            return Ok(Err(e));
        }
    }
    let summary = match v.finish() {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    // The chain's own record of where it ends, written with every batch.
    let recorded = c
        .query_opt(
            "SELECT last_seq FROM audit_chains WHERE chain = $1",
            &[&chain],
        )
        .await
        .map_err(err)?;
    let recorded = match recorded {
        Some(r) => seq_of(&r, 0)?,
        None => 0,
    };
    if recorded > summary.events {
        return Ok(Err(VerifyError::Truncated {
            missing: summary.events.saturating_add(1),
            covers: recorded,
        }));
    }
    Ok(Ok(summary))
}

impl AuditTrail for PgTrail {
    fn head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let chain = self.own_chain()?.to_owned();
        self.pg.with(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT last_seq, head FROM audit_chains WHERE chain = $1",
                    &[&chain],
                )
                .await
                .map_err(err)?;
            match row {
                Some(r) if seq_of(&r, 0)? > 0 => Ok(Some((seq_of(&r, 0)?, hash32(&r, 1)?))),
                _ => Ok(None),
            }
        })
    }

    fn append(&mut self, records: &[Record], cp: &Checkpoint) -> Result<(), StoreError> {
        let chain = self.own_chain()?.to_owned();
        let records = records.to_vec();
        let cp = cp.clone();
        self.pg.transaction(move |c| async move {
            c.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])
                .await
                .map_err(err)?;
            let row = c
                .query_one(
                    "SELECT last_seq, head FROM audit_chains WHERE chain = $1 FOR UPDATE",
                    &[&chain],
                )
                .await
                .map_err(err)?;
            let mut last = seq_of(&row, 0)?;
            let mut head = match row.try_get::<_, Option<Vec<u8>>>(1).map_err(err)? {
                Some(_) => hash32(&row, 1)?,
                None => chain::GENESIS,
            };
            let n = records.len();
            let (mut seqs, mut ts, mut prevs, mut hashes, mut bodies) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut kinds, mut sessions, mut identities, mut targets, mut decisions) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for r in &records {
                if r.seq != last.saturating_add(1) || r.prev != head {
                    // INVARIANT: each stored chain stays one chain; the rollback writes
                    // nothing of this batch.
                    return Err(StoreError::Refused(format!(
                        "audit batch does not continue chain {}: event {} after event {last}{}",
                        short(&chain),
                        r.seq,
                        if r.prev != head { " with a different prev hash" } else { "" }
                    )));
                }
                let ix = Indexed::of(&r.body);
                seqs.push(to_sql(r.seq)?);
                ts.push(r.ts_us);
                prevs.push(r.prev.to_vec());
                hashes.push(r.hash.to_vec());
                bodies.push(r.body.as_str());
                kinds.push(ix.event.as_deref().unwrap_or("unknown").to_owned());
                sessions.push(ix.session.and_then(|s| i64::try_from(s).ok()));
                identities.push(ix.identity.or(ix.claimed).or(ix.actor).map(|s| s.into_owned()));
                targets.push(ix.target.map(|s| s.into_owned()));
                decisions.push(ix.decision.map(|s| s.into_owned()));
                (last, head) = (r.seq, r.hash);
            }
            if cp.seq != last || cp.head != head {
                return Err(StoreError::Refused(format!(
                    "audit checkpoint at event {} does not cover the batch, which ends at event {last}",
                    cp.seq
                )));
            }
            if n > 0 {
                c.execute(
                    "INSERT INTO audit_events (chain, seq, ts_us, prev, hash, body, kind, session, identity, target, decision) \
                     SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[], \
                     $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[]) ORDER BY 1",
                    &[
                        &chain, &seqs, &ts, &prevs, &hashes, &bodies, &kinds, &sessions,
                        &identities, &targets, &decisions,
                    ],
                )
                .await
                .map_err(err)?;
            }
            c.execute(
                "INSERT INTO audit_checkpoints (chain, seq, head, ts_us, signature) VALUES ($1, $2, $3, $4, $5)",
                &[&chain, &to_sql(cp.seq)?, &cp.head.to_vec(), &cp.ts_us, &cp.signature.to_vec()],
            )
            .await
            .map_err(err)?;
            c.execute(
                "UPDATE audit_chains SET last_seq = $2, head = $3 WHERE chain = $1",
                &[&chain, &to_sql(last)?, &head.to_vec()],
            )
            .await
            .map_err(err)?;
            Ok(())
        })
    }

    fn for_each_checkpoint(
        &self,
        from_seq: u64,
        f: &mut dyn FnMut(&Checkpoint) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let chain = self.own_chain()?.to_owned();
        let from = to_sql(from_seq)?;
        let all = self.pg.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT seq, head, ts_us, signature FROM audit_checkpoints WHERE chain = $1 AND seq >= $2 ORDER BY seq",
                    &[&chain, &from],
                )
                .await
                .map_err(err)?;
            rows.iter()
                .map(|row| {
                    Ok(Checkpoint {
                        seq: seq_of(row, 0)?,
                        head: hash32(row, 1)?,
                        ts_us: get(row, 2)?,
                        signature: sig64(row, 3)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        for cp in &all {
            if f(cp).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Verifies the chain signed by `key` (every chain: [`TrailReader::verify_chains`]).
    fn verify(&self, key: &PublicKey) -> Result<Result<Summary, VerifyError>, StoreError> {
        let chain = key.to_hex();
        let key = key.clone();
        self.pg.with_timeout(VERIFY_TIMEOUT, move |c| async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(err)?;
            let verdict = verify_chain(&c, &chain, key).await?;
            c.batch_execute("COMMIT").await.map_err(err)?;
            Ok(verdict)
        })
    }
}

/// A chain's id as messages show it.
fn short(chain: &str) -> &str {
    chain.get(..16).unwrap_or(chain)
}

impl TrailReader for PgTrail {
    fn last_seq(&self) -> Result<u64, StoreError> {
        self.pg.with(|c| async move {
            let row = c
                .query_one("SELECT coalesce(max(gseq), 0) FROM audit_events", &[])
                .await
                .map_err(err)?;
            seq_of(&row, 0)
        })
    }

    fn for_each_event(
        &self,
        from_seq: u64,
        filter: &Filter,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.pages(from_seq, false, filter, f)
    }

    fn for_each_event_newest_first(
        &self,
        filter: &Filter,
        f: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.pages(i64::MAX as u64, true, filter, f)
    }

    fn for_each_with_checkpoints(&self, f: &mut ExportVisitor<'_>) -> Result<(), StoreError> {
        let mut cursor = 0i64;
        loop {
            let page = self.pg.with(move |c| async move {
                let rows = c
                    .query(
                        "SELECT e.gseq, e.chain, e.seq, e.ts_us, e.prev, e.hash, e.body, k.head, k.ts_us, k.signature \
                         FROM audit_events e LEFT JOIN audit_checkpoints k ON k.chain = e.chain AND k.seq = e.seq \
                         WHERE e.gseq > $1 ORDER BY e.gseq LIMIT $2",
                        &[&cursor, &PAGE],
                    )
                    .await
                    .map_err(err)?;
                rows.iter()
                    .map(|row| {
                        let gseq = seq_of(row, 0)?;
                        let chain: String = get(row, 1)?;
                        let r = Record {
                            seq: seq_of(row, 2)?,
                            ts_us: get(row, 3)?,
                            prev: hash32(row, 4)?,
                            hash: hash32(row, 5)?,
                            body: get(row, 6)?,
                        };
                        let cp = match row.try_get::<_, Option<Vec<u8>>>(7).map_err(err)? {
                            Some(_) => Some(Checkpoint {
                                seq: r.seq,
                                head: hash32(row, 7)?,
                                ts_us: get(row, 8)?,
                                signature: sig64(row, 9)?,
                            }),
                            None => None,
                        };
                        Ok((gseq, chain, r, cp))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })?;
            for (gseq, chain, record, checkpoint) in &page {
                f(&Exported {
                    seq: *gseq,
                    chain: Some(chain),
                    record,
                    checkpoint: checkpoint.as_ref(),
                })?;
                cursor = to_sql(*gseq)?;
            }
            if (page.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn verify_chains(
        &self,
        keys: &[PublicKey],
        pinned: bool,
    ) -> Result<Vec<ChainVerdict>, StoreError> {
        let stored = self.chains()?;
        let mut chains: Vec<String> = stored.clone();
        if pinned {
            for k in keys {
                if !chains.contains(&k.to_hex()) {
                    chains.push(k.to_hex());
                }
            }
        }
        let keys: Vec<String> = keys.iter().map(PublicKey::to_hex).collect();
        self.pg.with_timeout(VERIFY_TIMEOUT, move |c| async move {
            // One snapshot for every chain: a batch committed meanwhile is in all or none.
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(err)?;
            let mut out = Vec::new();
            for chain in chains {
                let verdict = if pinned && !keys.contains(&chain) {
                    Err(format!(
                        "chain {chain} is in the store but its key is not one of those given (--public-key)"
                    ))
                } else if !stored.contains(&chain) {
                    Err(format!("no chain signed by key {chain} is in the store (removed?)"))
                } else {
                    match PublicKey::from_hex(&chain) {
                        Ok(key) => verify_chain(&c, &chain, key).await?.map_err(|e| e.to_string()),
                        Err(e) => Err(format!("chain {chain}: its id is not a public key: {e}")),
                    }
                };
                out.push(ChainVerdict {
                    chain: Some(chain),
                    verdict,
                });
            }
            c.batch_execute("COMMIT").await.map_err(err)?;
            Ok(out)
        })
    }
}
