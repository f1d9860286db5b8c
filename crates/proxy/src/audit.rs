//! The audit seam: where events leave the pipeline.
//!
//! A session appends an event and *waits for its acknowledgement* before it forwards the
//! statement the event describes (write-ahead). [`AuditAck`] keeps that wait cheap for sinks
//! that finish at once, and lets a durable sink (group commit: many sessions' events in one
//! fsync) answer later through a channel.
//!
//! [`DurableSink`] is the durable, tamper-evident trail; [`LogSink`] writes JSON lines to the
//! log and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use weir_audit::chain::{Chain, Checkpoint, Record, Signer};
use weir_audit::Event;
use weir_store::audit::{AuditTrail, TrailReader};
use weir_store::journal::Journal;
use weir_store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("audit: {0}")]
pub struct AuditError(pub String);

/// Acknowledgement of one appended event.
pub enum AuditAck {
    Done(Result<(), AuditError>),
    Pending(oneshot::Receiver<Result<(), AuditError>>),
}

impl AuditAck {
    pub async fn wait(self) -> Result<(), AuditError> {
        match self {
            AuditAck::Done(r) => r,
            AuditAck::Pending(rx) => rx
                .await
                .unwrap_or_else(|_| Err(AuditError("audit writer stopped".into()))),
        }
    }

    /// [`AuditAck::wait`] for callers outside an async runtime (the CLI).
    pub fn wait_blocking(self) -> Result<(), AuditError> {
        match self {
            AuditAck::Done(r) => r,
            AuditAck::Pending(rx) => rx
                .blocking_recv()
                .unwrap_or_else(|_| Err(AuditError("audit writer stopped".into()))),
        }
    }
}

pub trait AuditSink: Send + Sync + 'static {
    fn append(&self, event: Event) -> AuditAck;

    /// How many batches have failed so far. A sink acknowledges in the order events were
    /// appended, and counts a failed batch *before* it acknowledges anything after it, so a
    /// session that sees an `Ok` for a later event and the same count as when it appended an
    /// earlier one knows that the earlier one did not fail. Sinks that answer at once never
    /// fail later: 0.
    fn failures(&self) -> u64 {
        0
    }

    /// Appends an event that nobody waits for (not write-ahead: a completion). A sink may
    /// make it durable a little later, with the next event someone waits for.
    fn append_lazy(&self, event: Event) {
        let _ = self.append(event);
    }
}

/// Writes each event as one JSON line to the structured log (target `weir::audit`), and
/// nothing else: not durable, not tamper-evident. For tests and for running without a trail.
#[derive(Debug, Default)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn append(&self, event: Event) -> AuditAck {
        if tracing::enabled!(target: "weir::audit", tracing::Level::INFO) {
            tracing::info!(target: "weir::audit", "{}", event.to_json());
        }
        AuditAck::Done(Ok(()))
    }
}

/// An event's JSON and where its acknowledgement goes.
type Ack = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    Event(String, Ack),
    /// An event nobody waits for (a completion): written with the next batch that someone
    /// waits for, or within [`LAZY_DELAY`].
    Lazy(String),
    /// Write what was queued before this, then stop.
    Close,
}

/// How long an event nobody waits for may wait for company. A completion then rides with
/// the next statement's batch instead of costing a flush of its own that the next statement
/// would queue behind.
const LAZY_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// Most events sealed into one batch (one transaction, one fsync, one checkpoint). Bounds the
/// writer's memory and the size of one transaction; under any realistic load a batch is what
/// queued during the previous fsync, far fewer.
const MAX_BATCH: usize = 4096;

/// How many times a batch refused for not continuing its chain is sealed again.
const REFUSED_RETRIES: usize = 8;

/// The durable, tamper-evident audit trail.
///
/// [`AuditSink::append`] serializes the event on the caller's thread and queues it for **one
/// writer thread** (a plain `std::thread`, so fsyncs never block a tokio worker). The writer
/// takes everything queued (up to 4,096 events), seals it into the hash chain with the
/// current time, signs one checkpoint over the new head, and calls
/// [`AuditTrail::append`] — one transaction, one fsync. Whatever queues while that fsync runs
/// is the next batch, so many sessions share each fsync (group commit) without any timer.
/// Then every event of the batch is acknowledged: `Ok` once durable, or the same
/// [`AuditError`] for every event of a batch that failed — the session then refuses the
/// statement.
///
/// **Invariant:** the chain head advances only when a batch is durable. After a failed batch
/// the writer re-reads the head from the store (a commit can fail after its data reached the
/// disk), so the next batch continues whatever the store holds and the chain stays unbroken.
///
/// Every batch carries its own signed checkpoint, so every durable event is covered and a
/// clean shutdown needs no extra checkpoint. [`DurableSink::close`] (also run on drop) writes
/// what is queued and stops the writer; appends after it fail.
pub struct DurableSink {
    tx: mpsc::Sender<Msg>,
    failures: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Fills the trail's tables from its journal, behind the writer (journaled sinks only).
    indexer: Mutex<Option<(mpsc::Sender<Index>, JoinHandle<()>)>>,
}

/// Where the writer makes a batch durable: the trail's tables themselves, or its journal
/// ([`weir_store::journal`]), with the tables filled behind it.
pub trait DurableLog: Send + 'static {
    fn head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    fn append(&mut self, records: &[Record], checkpoint: &Checkpoint) -> Result<(), StoreError>;
}

/// The trail's tables as the durable write (one transaction and fsync per batch).
pub struct Tables<S>(pub S);

impl<S: AuditTrail + 'static> DurableLog for Tables<S> {
    fn head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.0.head()
    }
    fn append(&mut self, records: &[Record], checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.0.append(records, checkpoint)
    }
}

impl DurableLog for Journal {
    fn head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        Journal::head(self)
    }
    fn append(&mut self, records: &[Record], checkpoint: &Checkpoint) -> Result<(), StoreError> {
        Journal::append(self, records, checkpoint)
    }
}

/// What the indexer is told.
enum Index {
    /// A batch is durable in the journal.
    Batch,
    /// Index what is there, then stop.
    Close,
}

/// The indexer runs at most this often, so the tables take many batches per transaction.
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

impl std::fmt::Debug for DurableSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSink").finish_non_exhaustive()
    }
}

impl DurableSink {
    /// Starts the writer on `store`, continuing the chain it holds, signing with `signer`.
    ///
    /// `store` should be the writer's own connection (for SQLite: an
    /// [`weir_store::audit::AuditStore`] opened for this purpose); readers open their own.
    pub fn start<S: AuditTrail + 'static>(
        store: S,
        signer: Signer,
    ) -> Result<DurableSink, AuditError> {
        DurableSink::start_on(Tables(store), signer, None)
    }

    /// Starts the writer on the trail's journal, and an indexer thread that fills `index`
    /// (the trail's tables) from it behind the writer: within [`INDEX_EVERY`] of a batch,
    /// in one transaction for whatever arrived meanwhile. Segments whose events are all in
    /// the tables are removed, and a spare segment is kept ready, off the writer's path.
    pub fn start_journaled(
        journal: Journal,
        index: weir_store::audit::AuditStore,
        dir: std::path::PathBuf,
        signer: Signer,
    ) -> Result<DurableSink, AuditError> {
        let (itx, irx) = mpsc::channel();
        let indexer = std::thread::Builder::new()
            .name("weir-audit-index".into())
            .spawn(move || run_indexer(index, &dir, &irx))
            .map_err(|e| AuditError(format!("starting the audit indexer: {e}")))?;
        let sink = DurableSink::start_on(journal, signer, Some(itx.clone()))?;
        *sink.indexer.lock().unwrap_or_else(PoisonError::into_inner) = Some((itx, indexer));
        Ok(sink)
    }

    fn start_on<L: DurableLog>(
        mut store: L,
        signer: Signer,
        indexer: Option<mpsc::Sender<Index>>,
    ) -> Result<DurableSink, AuditError> {
        let chain = chain_at(
            store
                .head()
                .map_err(|e| AuditError(format!("reading the trail's head: {e}")))?,
        );
        tracing::debug!(
            events = chain.last_seq(),
            public_key = %signer.public_key(),
            "audit writer continues the trail"
        );
        let (tx, rx) = mpsc::channel();
        let failures = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&failures);
        let writer = std::thread::Builder::new()
            .name("weir-audit".into())
            .spawn(move || {
                Writer {
                    store,
                    signer,
                    chain,
                    failures: counted,
                    indexer,
                    reread: false,
                }
                .run(&rx)
            })
            .map_err(|e| AuditError(format!("starting the audit writer: {e}")))?;
        Ok(DurableSink {
            tx,
            failures,
            writer: Mutex::new(Some(writer)),
            indexer: Mutex::new(None),
        })
    }

    /// Writes every event appended before this call, then stops the writer (waiting for it).
    /// Appends racing with or after it are refused. Idempotent.
    pub fn close(&self) {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = self.tx.send(Msg::Close);
            if writer.join().is_err() {
                tracing::error!("the audit writer panicked");
            }
        }
        let indexer = self
            .indexer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((tx, indexer)) = indexer {
            let _ = tx.send(Index::Close);
            if indexer.join().is_err() {
                tracing::error!("the audit indexer panicked");
            }
        }
    }
}

impl Drop for DurableSink {
    fn drop(&mut self) {
        self.close();
    }
}

impl AuditSink for DurableSink {
    fn append(&self, event: Event) -> AuditAck {
        let (ack, rx) = oneshot::channel();
        let body = event.to_json();
        // Also on the structured log (target `weir::audit`) when asked for: a live feed for
        // log shippers. The trail in the store is the record.
        if tracing::enabled!(target: "weir::audit", tracing::Level::INFO) {
            tracing::info!(target: "weir::audit", "{body}");
        }
        match self.tx.send(Msg::Event(body, ack)) {
            Ok(()) => AuditAck::Pending(rx),
            Err(_) => AuditAck::Done(Err(AuditError("the audit writer has stopped".into()))),
        }
    }

    fn append_lazy(&self, event: Event) {
        let body = event.to_json();
        if tracing::enabled!(target: "weir::audit", tracing::Level::INFO) {
            tracing::info!(target: "weir::audit", "{body}");
        }
        if self.tx.send(Msg::Lazy(body)).is_err() {
            tracing::warn!("the audit writer has stopped; an event nobody waits for is lost");
        }
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }
}

fn chain_at(head: Option<(u64, [u8; 32])>) -> Chain {
    head.map_or_else(Chain::new, |(seq, hash)| Chain::resume(seq, hash))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What the writer did lately, logged at debug level every 10 s: how well group commit
/// groups (events per batch) and what one batch costs.
#[derive(Default)]
struct Stats {
    since: Option<std::time::Instant>,
    batches: u64,
    events: u64,
    busy: std::time::Duration,
}

impl Stats {
    fn batch(&mut self, events: usize, took: std::time::Duration) {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        self.batches += 1;
        self.events += events as u64;
        self.busy += took;
        let window = since.elapsed();
        if window >= std::time::Duration::from_secs(10) {
            tracing::debug!(
                batches = self.batches,
                events = self.events,
                events_per_batch = self.events as f64 / self.batches as f64,
                us_per_batch = self.busy.as_micros() as f64 / self.batches as f64,
                busy_pct = 100.0 * self.busy.as_secs_f64() / window.as_secs_f64(),
                "audit writer"
            );
            *self = Stats::default();
        }
    }
}

/// Fills the trail's tables from its journal until told to close (then once more).
fn run_indexer(
    mut index: weir_store::audit::AuditStore,
    dir: &std::path::Path,
    rx: &mpsc::Receiver<Index>,
) {
    let mut reader = weir_store::journal::Reader::new(dir);
    let mut failing = false;
    let mut closing = false;
    while !closing {
        match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(Index::Batch) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(Index::Close) | Err(mpsc::RecvTimeoutError::Disconnected) => closing = true,
        }
        if !closing {
            // Many batches per transaction: let more arrive, then take all that queued.
            std::thread::sleep(INDEX_EVERY);
        }
        loop {
            match rx.try_recv() {
                Ok(Index::Batch) => {}
                Ok(Index::Close) | Err(TryRecvError::Disconnected) => closing = true,
                Err(TryRecvError::Empty) => break,
            }
        }
        match index.index_journal(&mut reader) {
            Ok(_) => {
                if failing {
                    tracing::info!("the audit trail's tables are indexed again");
                }
                failing = false;
                let indexed = index.last_seq().unwrap_or(0);
                if let Err(e) = Journal::remove_indexed(dir, indexed) {
                    tracing::warn!(cause = %e, "removing indexed journal segments failed");
                }
                if !closing {
                    if let Err(e) = weir_store::journal::prepare_spare(dir) {
                        tracing::warn!(cause = %e, "preparing a journal segment failed");
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(cause = %e, "indexing the audit trail failed; events stay durable in its journal, and search does not see them until this is fixed");
                }
                failing = true;
                // Read the journal again from the start next time.
                reader = weir_store::journal::Reader::new(dir);
            }
        }
    }
}

/// The writer thread's state.
struct Writer<S> {
    /// Told when a batch is durable (a journaled sink's indexer).
    indexer: Option<mpsc::Sender<Index>>,
    store: S,
    signer: Signer,
    /// The head of what is durable in `store`.
    chain: Chain,
    /// Failed batches, counted before any later event is acknowledged.
    failures: Arc<AtomicU64>,
    /// A batch failed: the head is read from the store before the next one.
    reread: bool,
}

impl<S: DurableLog> Writer<S> {
    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        let mut bodies = Vec::with_capacity(MAX_BATCH);
        let mut acks = Vec::with_capacity(MAX_BATCH);
        let mut closing = false;
        let mut stats = Stats::default();
        while !closing {
            // Wait for one event, then take whatever else is already queued. While the batch
            // holds only events nobody waits for, wait a little for one somebody does.
            let mut lazy_until: Option<std::time::Instant> = None;
            while bodies.len() < MAX_BATCH {
                let msg = if bodies.is_empty() {
                    rx.recv().ok()
                } else if let (true, Some(until)) = (acks.is_empty(), lazy_until) {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(m) => Some(m),
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(m) => Some(m),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => None,
                    }
                };
                match msg {
                    Some(Msg::Event(body, ack)) => {
                        bodies.push(body);
                        acks.push(ack);
                    }
                    Some(Msg::Lazy(body)) => {
                        bodies.push(body);
                        lazy_until.get_or_insert_with(|| std::time::Instant::now() + LAZY_DELAY);
                    }
                    Some(Msg::Close) | None => {
                        closing = true;
                        break;
                    }
                }
            }
            if bodies.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let n = bodies.len();
            let result = self.write(&mut bodies);
            if result.is_err() {
                self.failures.fetch_add(1, Ordering::AcqRel);
            } else {
                let m = crate::metrics::get();
                m.audit_events.inc_by(n as u64);
                m.audit_batch_events.observe(n as f64);
                m.audit_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let Some(indexer) = &self.indexer {
                    let _ = indexer.send(Index::Batch);
                }
            }
            stats.batch(n, started.elapsed());
            for ack in acks.drain(..) {
                // A session that went away no longer waits: nothing to tell it.
                let _ = ack.send(result.clone());
            }
        }
        // Dropping `rx` now fails whatever was queued after `Close`: those sessions get
        // "audit writer stopped" and do not run their statements.
    }

    /// Seals, signs and stores one batch; empties `bodies`. When the store refuses the batch
    /// because another writer appended (the CLI recording an administrative action), the
    /// batch is sealed again after what is there and tried once more.
    fn write(&mut self, bodies: &mut Vec<String>) -> Result<(), AuditError> {
        let events = bodies.len();
        let mut attempt = self.try_write(std::mem::take(bodies));
        // Another writer of the same chain (the CLI; or, on a shared store, a second gateway
        // given the same signing key) may append between our read of the head and our
        // write: each time, seal again after what is there. Bounded, so a writer that keeps
        // losing fails its batch rather than spinning.
        for _ in 0..REFUSED_RETRIES {
            let Err((StoreError::Refused(_), again)) = attempt else {
                break;
            };
            attempt = match self.store.head() {
                Ok(head) => {
                    self.chain = chain_at(head);
                    self.try_write(again)
                }
                Err(e) => Err((e, Vec::new())),
            };
        }
        match attempt {
            Ok(()) => Ok(()),
            Err((e, _)) => {
                tracing::error!(cause = %e, events, "audit trail write failed; the statements are refused");
                // The next batch continues from what the store really holds (a failed
                // commit may still have reached the disk). Read then, not now: these
                // statements' sessions hear of the failure first.
                self.reread = true;
                Err(AuditError(format!(
                    "the audit trail could not be written: {e}"
                )))
            }
        }
    }

    /// One attempt: on failure, the error and the bodies, for another try.
    fn try_write(&mut self, bodies: Vec<String>) -> Result<(), (StoreError, Vec<String>)> {
        if self.reread {
            match self.store.head() {
                Ok(head) => {
                    self.chain = chain_at(head);
                    self.reread = false;
                }
                Err(e) => return Err((e, bodies)),
            }
        }
        let ts = now_us();
        // Sealed on a copy: `self.chain` moves only once the batch is durable.
        let mut next = self.chain;
        let records: Vec<_> = bodies.into_iter().map(|b| next.seal(ts, b)).collect();
        let checkpoint = self
            .signer
            .sign_checkpoint(next.last_seq(), next.head(), ts);
        match self.store.append(&records, &checkpoint) {
            Ok(()) => {
                self.chain = next;
                Ok(())
            }
            Err(e) => Err((e, records.into_iter().map(|r| r.body).collect())),
        }
    }
}

/// A reader of the trail in `store` (`[gateway] store`): the CLI's, the HTTP API's and
/// undo's view of it, whichever store holds it. SQLite readers see what the gateway has
/// indexed from its journal (within milliseconds of a batch being durable).
pub fn open_reader(
    store: &weir_config::StoreUrl,
) -> Result<Box<dyn weir_store::audit::TrailReader>, StoreError> {
    Ok(match store {
        weir_config::StoreUrl::Sqlite(path) => Box::new(weir_store::audit::AuditStore::open(path)?),
        weir_config::StoreUrl::Postgres(url) => Box::new(weir_store::pg::PgTrail::reader(
            weir_store::pg::Pg::shared(url)?,
        )),
    })
}

/// A time as `weir audit search --since/--until` and `GET /v1/audit/events` take it: a
/// duration back from now (`1h`, `30m`) or an RFC 3339 time; microseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = match humantime::parse_duration(s) {
        Ok(d) => SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("{s:?}: too far back"))?,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| format!("{s:?}: expected a duration (1h) or a time (RFC 3339)"))?,
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;
    use std::path::Path;
    use std::sync::Arc;
    use weir_audit::chain::Summary;
    use weir_store::audit::{AuditStore, Filter};

    fn wait(ack: AuditAck) -> Result<(), AuditError> {
        match ack {
            AuditAck::Done(r) => r,
            AuditAck::Pending(rx) => rx
                .blocking_recv()
                .unwrap_or_else(|_| Err(AuditError("dropped".into()))),
        }
    }

    fn event(actor: &str, n: u64) -> Event {
        Event::Admin {
            actor: actor.into(),
            action: "test".into(),
            subject: n.to_string(),
        }
    }

    fn signer() -> Signer {
        Signer::from_bytes(&[5; 32])
    }

    fn start(path: &Path) -> DurableSink {
        DurableSink::start(AuditStore::open(path).unwrap(), signer()).unwrap()
    }

    fn bodies(path: &Path) -> Vec<serde_json::Value> {
        let store = AuditStore::open(path).unwrap();
        let mut out = Vec::new();
        store
            .for_each_event(1, &Filter::default(), &mut |r| {
                out.push(serde_json::from_str(&r.body).unwrap());
                ControlFlow::Continue(())
            })
            .unwrap();
        out
    }

    fn verify(path: &Path) -> Result<Summary, weir_audit::chain::VerifyError> {
        AuditStore::open(path)
            .unwrap()
            .verify(&signer().public_key())
            .unwrap()
    }

    #[test]
    fn events_nobody_waits_for_ride_with_the_next_batch_or_wait_a_little() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let sink = start(&path);
        sink.append_lazy(event("lazy", 1));
        wait(sink.append(event("waited", 2))).unwrap();
        // One batch: one checkpoint covers both.
        let store = AuditStore::open(&path).unwrap();
        assert_eq!(store.checkpoints().unwrap().len(), 1);
        // Alone, it is written within the delay.
        sink.append_lazy(event("lazy", 3));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while bodies(&path).len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(bodies(&path).len(), 3);
        // And at close.
        sink.append_lazy(event("lazy", 4));
        sink.close();
        let subjects: Vec<String> = bodies(&path)
            .iter()
            .map(|b| b["subject"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(subjects, ["1", "2", "3", "4"]);
        assert!(verify(&path).is_ok());
    }

    #[test]
    fn events_from_many_threads_are_stored_in_order_on_a_verifying_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let sink = Arc::new(start(&path));
        const THREADS: u64 = 8;
        const EACH: u64 = 250;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    // Half the threads wait for each event (as a session does), half queue
                    // them all and then wait.
                    let mut pending = Vec::new();
                    for n in 0..EACH {
                        let ack = sink.append(event(&format!("t{t}"), n));
                        if t % 2 == 0 {
                            wait(ack).unwrap();
                        } else {
                            pending.push(ack);
                        }
                    }
                    for ack in pending {
                        wait(ack).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        sink.close();

        let all = bodies(&path);
        assert_eq!(all.len() as u64, THREADS * EACH);
        // Each thread's events appear in the order it appended them.
        let mut next = vec![0u64; THREADS as usize];
        for b in &all {
            let t: usize = b["actor"].as_str().unwrap()[1..].parse().unwrap();
            let n: u64 = b["subject"].as_str().unwrap().parse().unwrap();
            assert_eq!(n, next[t], "thread {t}");
            next[t] += 1;
        }
        let summary = verify(&path).unwrap();
        assert_eq!(summary.events, THREADS * EACH);
        assert!(summary.checkpoints >= 1 && summary.checkpoints <= summary.events);
    }

    #[test]
    fn events_queued_during_a_write_share_the_next_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let sink = start(&path);
        // Another connection holds the write lock: the writer's first batch waits for it.
        let blocker = AuditStore::open(&path).unwrap();
        blocker
            .connection()
            .execute_batch("BEGIN IMMEDIATE")
            .unwrap();
        let acks: Vec<_> = (0..500).map(|n| sink.append(event("a", n))).collect();
        blocker.connection().execute_batch("COMMIT").unwrap();
        for ack in acks {
            wait(ack).unwrap();
        }
        sink.close();
        // The first batch is what the writer had taken when it blocked; everything queued
        // meanwhile went into one more.
        let summary = verify(&path).unwrap();
        assert_eq!(summary.events, 500);
        assert!(summary.checkpoints <= 2, "{summary:?}");
    }

    #[test]
    fn a_failed_batch_fails_every_event_and_the_chain_does_not_advance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let sink = Arc::new(start(&path));
        for n in 0..10 {
            wait(sink.append(event("before", n))).unwrap();
        }
        let other = AuditStore::open(&path).unwrap();
        other
            .connection()
            .execute_batch(
                "CREATE TRIGGER broken BEFORE INSERT ON audit_events
                 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    let acks: Vec<_> = (0..50)
                        .map(|n| sink.append(event(&format!("t{t}"), n)))
                        .collect();
                    acks.into_iter().map(wait).collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            for result in t.join().unwrap() {
                let err = result.unwrap_err();
                assert!(err.to_string().contains("disk on fire"), "{err}");
            }
        }
        // The store recovers: the chain continues from event 10, with no gap.
        other
            .connection()
            .execute_batch("DROP TRIGGER broken")
            .unwrap();
        for n in 0..3 {
            wait(sink.append(event("after", n))).unwrap();
        }
        sink.close();
        let actors: Vec<String> = bodies(&path)
            .iter()
            .map(|b| b["actor"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(actors.len(), 13);
        assert!(actors[..10].iter().all(|a| a == "before"));
        assert!(actors[10..].iter().all(|a| a == "after"));
        assert_eq!(verify(&path).unwrap().events, 13);
    }

    #[test]
    fn a_missing_table_fails_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let sink = start(&path);
        wait(sink.append(event("a", 0))).unwrap();
        AuditStore::open(&path)
            .unwrap()
            .connection()
            .execute_batch("DROP TABLE audit_events")
            .unwrap();
        let acks: Vec<_> = (0..20).map(|n| sink.append(event("a", n))).collect();
        for ack in acks {
            assert!(wait(ack).is_err());
        }
    }

    #[test]
    fn the_chain_continues_across_restarts_and_close_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        for run in 0..3 {
            let sink = start(&path);
            // Not waited for: close() must still write them.
            let acks: Vec<_> = (0..100)
                .map(|n| sink.append(event("r", run * 100 + n)))
                .collect();
            sink.close();
            sink.close();
            for ack in acks {
                wait(ack).unwrap();
            }
            assert!(wait(sink.append(event("late", 0))).is_err());
        }
        assert_eq!(verify(&path).unwrap().events, 300);
        let subjects: Vec<u64> = bodies(&path)
            .iter()
            .map(|b| b["subject"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(subjects, (0..300).collect::<Vec<u64>>());
    }
}
