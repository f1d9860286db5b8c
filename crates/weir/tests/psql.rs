//! psql through the gateway: scripted sessions, \copy, transactions, errors mid-transaction,
//! TLS, and the startup refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

#[test]
fn psql_scripted_session_with_copy_and_transactions() {
    let g = Gateway::start();
    let csv = g.dir.path().join("in.csv");
    std::fs::write(
        &csv,
        (1..=500)
            .map(|i| format!("{i},name {i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out = g.psql(
        &g.alice(),
        r#"
CREATE TABLE t (id int PRIMARY KEY, name text);
\copy t FROM 'in.csv' WITH (FORMAT csv)
SELECT count(*), sum(id) FROM t;
BEGIN;
INSERT INTO t VALUES (1000, 'in tx');
SELECT 1/0;
INSERT INTO t VALUES (1001, 'after error');
ROLLBACK;
SELECT count(*) FROM t WHERE id >= 1000;
BEGIN;
UPDATE t SET name = 'changed' WHERE id = 1;
COMMIT;
SELECT name FROM t WHERE id = 1;
\copy (SELECT id, name FROM t WHERE id <= 3 ORDER BY id) TO 'out.csv' WITH (FORMAT csv)
SELECT 'a'; SELECT 'b';
"#,
    );
    let so = stdout(&out);
    let se = stderr(&out);
    assert!(so.contains("500|125250"), "stdout: {so}\nstderr: {se}");
    assert!(se.contains("division by zero"), "{se}");
    assert!(se.contains("current transaction is aborted"), "{se}");
    // The rolled-back transaction left nothing behind.
    assert!(so.contains("\n0\n"), "{so}");
    assert!(so.contains("changed"), "{so}");
    assert!(so.contains("a\nb"), "{so}");
    let copied = std::fs::read_to_string(g.dir.path().join("out.csv")).unwrap();
    assert_eq!(copied, "1,changed\n2,name 2\n3,name 3\n");
}

#[test]
fn psql_over_tls_with_self_signed_certificate() {
    let g = Gateway::start();
    let conn = format!(
        "host=127.0.0.1 port={} dbname=app user=alice password={ALICE_TOKEN} sslmode=require",
        g.port
    );
    let out = g.psql(&conn, "SELECT 40 + 2;\n");
    assert_eq!(stdout(&out).trim(), "42", "{}", stderr(&out));
    // The pair was generated on first start and kept beside the store.
    assert!(g.dir.path().join("weir-tls-cert.pem").exists());
    assert!(g.dir.path().join("weir-tls-key.pem").exists());
    let events = g.audit_events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "connection_opened" && e["tls"] == true),
        "{events:?}"
    );
}

#[test]
fn gssapi_encryption_is_refused_cleanly_and_psql_falls_back() {
    let g = Gateway::start();
    let conn = format!("host=127.0.0.1 port={} dbname=app user=alice password={ALICE_TOKEN} gssencmode=prefer sslmode=disable", g.port);
    let out = g.psql(&conn, "SELECT 'plain';\n");
    assert_eq!(stdout(&out).trim(), "plain", "{}", stderr(&out));
}

#[test]
fn unknown_target_and_missing_user_are_refused() {
    let g = Gateway::start();
    let conn = format!(
        "host=127.0.0.1 port={} dbname=nope user=alice password={ALICE_TOKEN} sslmode=disable",
        g.port
    );
    let out = g.psql(&conn, "SELECT 1;\n");
    assert!(
        stderr(&out).contains("no target named \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut g = Gateway::start();
    let out = g.psql(&g.alice(), "SELECT 1;\n");
    assert!(out.status.success());
    let status = g.terminate();
    assert!(status.success(), "{status}");
}
