//! Load on the durable audit sink alone, as sessions put it there: CLIENTS threads, each
//! appending a statement event and waiting for it (write-ahead), then a completion event it
//! does not wait for — for SECONDS seconds. Prints statements per second and the mean wait.
//!
//!   cargo run --release -p weir-proxy --example audit_load -- [CLIENTS] [SECONDS] [DIR]
//!
//! DIR (default: a temporary directory under the current one) must be on the disk to measure:
//! the fsync is most of what is timed.

// A measuring tool, not the data path: it stops on the first failure.
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_audit::chain::Signer;
use weir_audit::Event;
use weir_proxy::audit::{AuditSink, DurableSink};
use weir_store::audit::AuditStore;

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let base = args.next().unwrap_or_else(|| ".".into());
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    let store = AuditStore::open(&dir.path().join("weir.db")).expect("store");
    let sink = Arc::new(DurableSink::start(store, Signer::from_bytes(&[7; 32])).expect("sink"));
    let analysis = weir_analyze::Analyzer::new()
        .analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = 4242")
        .expect("analysis");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let waited_ns = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|session| {
            let (sink, stop, done, waited_ns) = (
                Arc::clone(&sink),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&waited_ns),
            );
            let analysis = Arc::clone(&analysis);
            std::thread::spawn(move || {
                let mut request = 0;
                while !stop.load(Ordering::Relaxed) {
                    request += 1;
                    let start = Instant::now();
                    let ack = sink.append(Event::Statement {
                        session,
                        request,
                        identity: "bench".into(),
                        target: "bench".into(),
                        via: "query",
                        sql: analysis.normalized.clone(),
                        fingerprint: analysis.fingerprint,
                        statements: analysis.statements.clone(),
                        decision: "allow",
                        rule: None,
                        anomalies: Vec::new(),
                        change: None,
                        not_undoable: None,
                    });
                    ack.wait_blocking().expect("durable");
                    waited_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                    // Completion events are not waited for.
                    drop(sink.append(Event::Completed {
                        session,
                        request,
                        tags: vec!["SELECT 1".into()],
                        rows: 1,
                        duration_us: 80,
                        sqlstate: None,
                        masked: Vec::new(),
                        anomalies: Vec::new(),
                    }));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    sink.close();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{clients} clients, {seconds} s: {:.0} statements/s, mean wait {:.0} µs",
        n as f64 / seconds as f64,
        waited_ns.load(Ordering::Relaxed) as f64 / n.max(1) as f64 / 1000.0
    );
}
