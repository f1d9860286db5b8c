//! Cost of analyzing one statement with libpg_query, uncached: the figure the statement cache
//! has to beat on the gateway's hot path.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use criterion::{criterion_group, criterion_main, Criterion};
use weir_analyze::postgres::analyze_sql;

fn analyze(c: &mut Criterion) {
    let mut g = c.benchmark_group("analyze (cold)");
    for (name, sql) in [
        ("pgbench select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
        ("pgbench update", "UPDATE pgbench_accounts SET abalance = abalance + -3911 WHERE aid = 48213;"),
        (
            "join + subquery",
            "SELECT c.full_name, o.total_cents FROM customers c JOIN orders o ON o.customer_id = c.id \
             WHERE c.id IN (SELECT customer_id FROM orders WHERE status = 'refunded') ORDER BY 2 DESC LIMIT 10",
        ),
    ] {
        g.bench_function(name, |b| b.iter(|| analyze_sql(sql).unwrap()));
    }
    g.finish();
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    let mut g = c.benchmark_group("libpg_query primitives");
    g.bench_function("parse only", |b| {
        b.iter(|| pg_query::parse(sql, 0).unwrap())
    });
    g.bench_function("normalize", |b| {
        b.iter(|| pg_query::normalize(sql).unwrap())
    });
    g.bench_function("fingerprint", |b| {
        b.iter(|| pg_query::fingerprint(sql, 0, 0).unwrap())
    });
    g.finish();
}

/// The hot path: a warm cache, as every statement after the first of its shape sees it.
fn cached(c: &mut Criterion) {
    let a = weir_analyze::Analyzer::new();
    a.analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
        .unwrap();
    a.analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1")
        .unwrap();
    a.analyze(b"SELECT \"abalance\" FROM pgbench_accounts /* x */ WHERE aid = 1")
        .unwrap();
    let mut g = c.benchmark_group("analyze (cached)");
    let mut i = 0u32;
    g.bench_function("constants differ (fast key)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            a.analyze(format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};").as_bytes())
                .unwrap()
        })
    });
    g.bench_function("same text (exact)", |b| {
        b.iter(|| {
            a.analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1")
                .unwrap()
        })
    });
    g.bench_function("comment, so normalize path", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            a.analyze(
                format!("SELECT \"abalance\" FROM pgbench_accounts /* x */ WHERE aid = {i}")
                    .as_bytes(),
            )
            .unwrap()
        })
    });
    g.finish();
}

/// A MySQL text (sysbench's point select): sqlparser analysis, and the cache's lookup.
fn mysql(c: &mut Criterion) {
    use weir_analyze::mysql::Mode;
    let sql = b"SELECT c FROM sbtest1 WHERE id=4913";
    let mode = Mode::new("sbtest");
    let mut g = c.benchmark_group("mysql");
    g.bench_function("analyze (cold)", |b| {
        b.iter(|| weir_analyze::mysql::analyze(sql, &mode).unwrap())
    });
    let analyzer = weir_analyze::Analyzer::new();
    g.bench_function("analyze (cached)", |b| {
        b.iter(|| analyzer.analyze_mysql(sql, &mode).unwrap())
    });
    g.finish();
}

criterion_group!(benches, analyze, cached, mysql);
criterion_main!(benches);
