//! Results stream: the gateway's memory does not grow with result size. A 1 GiB result passes
//! through (COPY via psql, and a single SELECT via tokio-postgres) while the gateway's resident
//! set is sampled.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Samples the gateway's RSS every 20 ms until dropped; returns the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

const ROWS: i64 = 1_100_000; // × ~1,000 bytes ≈ 1.1 GB

#[test]
fn one_gib_copy_out_streams_in_bounded_memory() {
    let g = Gateway::start();
    // Warm up: one session, so the baseline includes the runtime's steady state.
    assert!(g.psql(&g.alice(), "SELECT 1;\n").status.success());
    let baseline = rss_kib(g.pid());
    let sampler = Sampler::start(g.pid());
    let mut child = std::process::Command::new(g.cluster.bindir().join("psql"))
        .arg(g.alice())
        .args(["-X", "-q", "-c"])
        .arg(format!(
            "COPY (SELECT repeat('x', 1000) FROM generate_series(1, {ROWS})) TO STDOUT"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let bytes = std::io::copy(&mut stdout, &mut std::io::sink()).unwrap();
    assert!(child.wait().unwrap().success());
    let peak = sampler.finish();
    eprintln!("COPY TO STDOUT: {bytes} bytes through the gateway; RSS baseline {baseline} KiB, peak {peak} KiB");
    assert!(bytes > 1_000_000_000, "{bytes}");
    assert!(
        peak < baseline + 64 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_gib_select_streams_in_bounded_memory() {
    use futures_util::TryStreamExt;
    let g = Gateway::start();
    let client = g.connect("alice", ALICE_TOKEN).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let baseline = rss_kib(g.pid());
    let sampler = Sampler::start(g.pid());
    let sql = format!("SELECT repeat('x', 1000) FROM generate_series(1, {ROWS})");
    let rows = client
        .query_raw(sql.as_str(), std::iter::empty::<i32>())
        .await
        .unwrap();
    futures_util::pin_mut!(rows);
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows.try_next().await.unwrap() {
        let s: &str = row.get(0);
        n += 1;
        bytes += s.len() as u64;
    }
    let peak = sampler.finish();
    eprintln!(
        "SELECT: {n} rows, {bytes} bytes of values; RSS baseline {baseline} KiB, peak {peak} KiB"
    );
    assert_eq!(n, ROWS as u64);
    assert!(
        peak < baseline + 64 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
}
