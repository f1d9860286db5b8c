//! An approval covers what was approved: a constant that is code, a name, a path or a setting
//! is part of "the same statement"; only data constants (comparison operands in WHERE, INSERT
//! and UPDATE values, LIMIT/OFFSET) and parameters in those places may differ on a repeat.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

fn gateway() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, _| {
            c.psql(
                "app",
                "CREATE TABLE orders (id int PRIMARY KEY, status text);
                 INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 50) g;",
            )
            .unwrap();
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

[[identity.static]]
name = "claude"
kind = "agent"
groups = ["agents"]
token = "claude-test-token"

[approvals]
timeout = "0s"
auto_repeat_window = "1h"
approvers = ["dba"]
"#,
                c.port
            )
        },
    )
}

/// Runs `sql` as `user` on the production target: `Ok(stdout)` when it ran, `Err(request)`
/// when it was refused for approval (timeout 0s: at once, naming the request).
fn run(g: &Gateway, user: &str, token: &str, sql: &str) -> Result<String, String> {
    let conn = g.conninfo(user, token).replace("dbname=app", "dbname=prod");
    let out = g.psql(&conn, &format!("{sql};\n"));
    let err = stderr(&out);
    match err.split("request ").nth(1) {
        Some(rest) if err.contains("weir: denied by") => Err(rest
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .next()
            .unwrap()
            .to_owned()),
        _ => {
            assert!(!err.contains("ERROR"), "{sql}: {err}");
            Ok(stdout(&out))
        }
    }
}

fn approve(g: &Gateway, id: &str) {
    let out = g.weir(&["approve", id, "--as", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The approved statement repeats without asking; each variant waits for its own approval,
/// or repeats, as given.
fn check(g: &Gateway, user: &str, token: &str, approved: &str, same: &[&str], own: &[&str]) {
    let id = run(g, user, token, approved).expect_err(approved);
    approve(g, &id);
    run(g, user, token, approved).unwrap_or_else(|r| panic!("{approved}: asked again ({r})"));
    for sql in same {
        run(g, user, token, sql)
            .unwrap_or_else(|r| panic!("{sql} did not ride on {approved} ({r})"));
    }
    for sql in own {
        let other = run(g, user, token, sql).expect_err(sql);
        assert_ne!(other, id, "{sql}");
    }
}

#[test]
fn code_names_paths_and_settings_are_part_of_the_statement_data_is_not() {
    let g = gateway();
    // DO: the constant is the code.
    check(
        &g,
        "alice",
        ALICE_TOKEN,
        "DO $$ BEGIN RAISE NOTICE 'hello'; END $$",
        &[],
        &[
            "DO $$ BEGIN DELETE FROM orders; END $$",
            "DO $$ BEGIN RAISE NOTICE 'hello!'; END $$",
        ],
    );
    assert_eq!(
        g.cluster
            .psql("app", "SELECT count(*) FROM orders")
            .unwrap()
            .trim(),
        "50"
    );
    // CREATE FUNCTION: the body is code; replacing it needs its own approval.
    check(
        &g,
        "alice",
        ALICE_TOKEN,
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        &[],
        &["CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM orders RETURNING 1'"],
    );
    check(
        &g,
        "alice",
        ALICE_TOKEN,
        "SELECT f()",
        &[],
        &["SELECT f(), f()"],
    );
    // SQL given as text.
    check(
        &g,
        "alice",
        ALICE_TOKEN,
        "SELECT query_to_xml('select 1', true, false, '')",
        &[],
        &["SELECT query_to_xml('select status from orders', true, false, '')"],
    );
    // A setting's name and value.
    check(
        &g,
        "alice",
        ALICE_TOKEN,
        "SELECT set_config('role', 'postgres', false)",
        &[],
        &["SELECT set_config('role', 'pg_read_server_files', false)"],
    );
    // Data: an agent's write approved once repeats with other values in SET and WHERE.
    check(
        &g,
        "claude",
        "claude-test-token",
        "UPDATE orders SET status = 'paid' WHERE id = 7",
        &[
            "UPDATE orders SET status = 'void' WHERE id = 8",
            "UPDATE orders SET status = 'x' WHERE id = 9",
        ],
        &["UPDATE orders SET status = upper('x') WHERE id = 9"],
    );
    // The trail records the key a repeat matched.
    let export = stdout(&g.weir(&["audit", "export", "--format", "jsonl"]));
    let repeated: Vec<&str> = export
        .lines()
        .filter(|l| l.contains("\"repeated\""))
        .collect();
    assert!(!repeated.is_empty(), "{export}");
    assert!(repeated
        .iter()
        .all(|l| l.contains("\"rode_on\"") && l.contains("\"fingerprint\"")));
    // Approvers see the reach and the code.
    let id = run(&g, "alice", ALICE_TOKEN, "DO $$ BEGIN PERFORM 42; END $$").unwrap_err();
    let listed = stdout(&g.weir(&["approvals"]));
    let line = listed.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        line.contains("an approval covers this exact statement"),
        "{line}"
    );
    assert!(line.contains("PERFORM 42"), "{line}");
}

#[test]
fn parameters_are_data_in_data_positions_and_strict_elsewhere() {
    let g = gateway();
    let conn = g
        .conninfo("claude", "claude-test-token")
        .replace("dbname=app", "dbname=prod");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let sql = "UPDATE orders SET status = $1 WHERE id = $2";
        let err = c.execute(sql, &[&"a", &1i32]).await.unwrap_err();
        let msg = err.as_db_error().unwrap().message().to_owned();
        let id = msg
            .split("request ")
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        approve(&g, &id);
        assert_eq!(c.execute(sql, &[&"b", &2i32]).await.unwrap(), 1);
        assert_eq!(c.execute(sql, &[&"c", &3i32]).await.unwrap(), 1);
        // A parameter where it decides what runs: every run asks.
        let (c2, connection) = tokio_postgres::connect(
            &g.conninfo("alice", ALICE_TOKEN)
                .replace("dbname=app", "dbname=prod"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let q = "SELECT query_to_xml($1, true, false, '')";
        let err = c2.query(q, &[&"select 1"]).await.unwrap_err();
        let msg = err.as_db_error().unwrap().message().to_owned();
        let id = msg
            .split("request ")
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        approve(&g, &id);
        assert!(
            c2.query(q, &[&"select 1"]).await.is_err(),
            "a code parameter rode on an approval"
        );
    });
}
