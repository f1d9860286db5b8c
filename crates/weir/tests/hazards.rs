//! Operational hazards against real PostgreSQL: in production each waits for approval (with
//! `[approvals] timeout = "0s"` it is refused at once, naming the request), and a bystander
//! session proves nothing was killed or blocked; in development each runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::Write;
use std::process::{Command, Stdio};

const SEED: &str = "
CREATE TABLE orders (id serial PRIMARY KEY, status text);
INSERT INTO orders (status) SELECT 'new' FROM generate_series(1, 10);
CREATE MATERIALIZED VIEW order_totals AS SELECT status, count(*) FROM orders GROUP BY status;
CREATE UNIQUE INDEX ON order_totals (status);
SELECT lo_create(0);
";

fn gateway() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            settings: vec![("max_prepared_transactions".into(), "5".into())],
        },
        |c, _| {
            c.psql("app", SEED).unwrap();
            format!(
                r#"
[[target]]
name = "prod"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:{}"
database = "app"
user = "postgres"
password_file = "upstream-password"

[approvals]
timeout = "0s"
"#,
                c.port
            )
        },
    )
}

const HAZARDS: &[&str] = &[
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bystander'",
    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'bystander'",
    "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(0.2); COMMIT",
    "VACUUM FULL orders",
    "CLUSTER orders USING orders_pkey",
    "REINDEX TABLE orders",
    "REFRESH MATERIALIZED VIEW order_totals",
    "BEGIN; INSERT INTO orders (status) VALUES ('2pc'); PREPARE TRANSACTION 'weir_test'",
    "SELECT lo_unlink(oid) FROM pg_largeobject_metadata",
    "SELECT setval('orders_id_seq', 1)",
    "SELECT pg_reload_conf()",
    "CHECKPOINT",
];

/// A session that must survive and never wait: it reads `orders` while the hazards are tried.
struct Bystander(std::process::Child);

impl Bystander {
    fn start(g: &Gateway) -> Bystander {
        let mut child = Command::new(g.cluster.bindir().join("psql"))
            .arg(format!(
                "{} application_name=bystander",
                g.cluster.conninfo("app")
            ))
            .args(["-XAt", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"SET statement_timeout = '5s';\nSELECT 'up';\n")
            .unwrap();
        Bystander(child)
    }

    /// Reads `orders` within its statement timeout, then ends: it must still be connected and
    /// have waited on nothing.
    fn finish(mut self) -> String {
        let mut stdin = self.0.stdin.take().unwrap();
        stdin
            .write_all(b"SELECT count(*) FROM orders;\n\\q\n")
            .unwrap();
        drop(stdin);
        let out = self.0.wait_with_output().unwrap();
        assert!(out.status.success(), "bystander: {}", stderr(&out));
        stdout(&out)
    }
}

#[test]
fn hazards_wait_for_approval_in_production_and_run_in_development() {
    let g = gateway();
    let prod = g.alice().replace("dbname=app", "dbname=prod");
    let bystander = Bystander::start(&g);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for sql in HAZARDS {
        let out = g.psql(&prod, &format!("{sql};\n"));
        let err = stderr(&out);
        assert!(
            err.contains("weir: denied by weir.operational-hazard-needs-approval-in-production")
                && err.contains("request r-"),
            "{sql}: {err}"
        );
        let check = g.weir(&["policy", "check", "--as", "alice", "--target", "prod", sql]);
        assert!(
            stdout(&check).contains("approve weir.operational-hazard-needs-approval-in-production"),
            "{sql}: {}",
            stdout(&check)
        );
    }
    // Each is a request an approver can decide.
    let pending = stdout(&g.weir(&["approvals"]));
    assert!(pending.lines().count() >= HAZARDS.len(), "{pending}");
    let seen = bystander.finish();
    assert!(seen.contains("up") && seen.contains("10"), "{seen}");
    // Nothing ran: no prepared transaction (psql sent its BEGIN and INSERT on their own; the
    // refused PREPARE aborted them), the large object and the sequence are intact.
    let state = g
        .cluster
        .psql(
            "app",
            "SELECT (SELECT count(*) FROM pg_prepared_xacts), (SELECT count(*) FROM pg_largeobject_metadata), (SELECT last_value >= 10 FROM orders_id_seq), (SELECT count(*) FROM orders)",
        )
        .unwrap();
    assert_eq!(state.trim(), "0|1|t|10");

    // Legitimate maintenance and locks run in production.
    let out = g.psql(
        &prod,
        "VACUUM orders;\nANALYZE orders;\nREINDEX TABLE CONCURRENTLY orders;\nREFRESH MATERIALIZED VIEW CONCURRENTLY order_totals;\nBEGIN;\nSELECT id FROM orders WHERE id = 1 FOR UPDATE;\nLOCK TABLE orders IN ROW EXCLUSIVE MODE;\nLOCK TABLE orders IN ACCESS SHARE MODE;\nCOMMIT;\nSELECT nextval('orders_id_seq');\nSELECT pg_terminate_backend(pg_backend_pid()) IS NOT NULL;\n",
    );
    // (The last ends its own session, as asked: no denial, the server's own FATAL.)
    let err = stderr(&out);
    assert!(!err.contains("weir: denied"), "{err}");

    // In development the same statements run.
    for sql in HAZARDS.iter().filter(|s| !s.contains("bystander")) {
        let out = g.psql(&g.alice(), &format!("{sql};\n"));
        assert!(!stderr(&out).contains("weir:"), "{sql}: {}", stderr(&out));
    }
    let state = g
        .cluster
        .psql("app", "SELECT count(*) FROM pg_prepared_xacts")
        .unwrap();
    assert_eq!(state.trim(), "1", "{state}");
    g.cluster
        .psql("app", "ROLLBACK PREPARED 'weir_test'")
        .unwrap();
}
