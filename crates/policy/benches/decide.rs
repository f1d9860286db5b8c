//! Analyze + decide per statement, as the gateway does it: cold (libpg_query parse and a
//! Cedar evaluation), with the analysis cached (Cedar only), and the session-scope resolution
//! that sits between them. The gateway's per-session verdict cache then makes a repeated
//! statement a hash lookup; that path is in `cargo bench -p weir-analyze` ("cached").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};
use weir_analyze::{Analyzer, Scope};
use weir_policy::{Identity, IdentityKind, Policy, TargetInfo};

const STATEMENTS: &[(&str, &str)] = &[
    (
        "pgbench select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    ),
    (
        "pgbench update",
        "UPDATE pgbench_accounts SET abalance = abalance + -3911 WHERE aid = 48213;",
    ),
    (
        "join + subquery",
        "SELECT c.full_name, o.total_cents FROM customers c JOIN orders o ON o.customer_id = c.id \
         WHERE c.id IN (SELECT customer_id FROM orders WHERE status = 'refunded') ORDER BY 2 DESC LIMIT 10",
    ),
];

fn decide(c: &mut Criterion) {
    let policy = Policy::load(true, "weir-admins", &[], &[]).unwrap();
    let who = Identity {
        name: "alice".into(),
        kind: IdentityKind::Human,
        groups: vec!["developers".into()],
        attributes: BTreeMap::new(),
        source: "static",
        on_behalf_of: None,
    };
    let target = TargetInfo {
        name: "shop".into(),
        environment: "production".into(),
        sensitivity: [("public.customers".to_string(), "pii".to_string())].into(),
        untrusted: Default::default(),
    };
    let session = policy.session(&who, &target).unwrap();
    let scope = Scope::new("app", None);

    let mut g = c.benchmark_group("analyze + decide (cold)");
    for (name, sql) in STATEMENTS {
        g.bench_function(*name, |b| {
            b.iter(|| {
                // A fresh analyzer each time: nothing cached.
                let analysis = Analyzer::new().analyze(sql.as_bytes()).unwrap();
                policy.decide(&session, &scope.resolve_analysis(&analysis))
            })
        });
    }
    g.finish();

    let analyzer = Analyzer::new();
    let mut g = c.benchmark_group("analyze (cached) + decide");
    for (name, sql) in STATEMENTS {
        analyzer.analyze(sql.as_bytes()).unwrap();
        g.bench_function(*name, |b| {
            b.iter(|| {
                let analysis = analyzer.analyze(sql.as_bytes()).unwrap();
                policy.decide(&session, &scope.resolve_analysis(&analysis))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("session scope");
    let analysis = analyzer.analyze(STATEMENTS[2].1.as_bytes()).unwrap();
    g.bench_function("resolve join + subquery", |b| {
        b.iter(|| scope.resolve(&analysis.statements))
    });
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
