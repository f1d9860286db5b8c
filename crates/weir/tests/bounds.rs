//! Row-bounded writes with real clients: a write under `@bound("N")` runs inside a bracket
//! (Weir's own transaction, or a savepoint in the client's); over the bound it is rolled back
//! and waits for approval with its exact count; the client's own transaction state is what
//! it would be without Weir.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::{Duration, Instant};

const POLICY: &str = r#"
@id("test.small-writes")
@bound("3")
permit (principal, action in [Weir::Action::"update", Weir::Action::"delete"], resource);
"#;

fn gateway() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, dir| {
            cluster
                .psql(
                    "app",
                    "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0 CHECK (n < 100));
                     INSERT INTO items (id) SELECT generate_series(1, 20);
                     CREATE TABLE log (msg text);",
                )
                .unwrap();
            std::fs::write(dir.join("bound.cedar"), POLICY).unwrap();
            "[policy]\nfiles = [\"bound.cedar\"]\n[approvals]\ntimeout = \"120s\"\n".into()
        },
    )
}

fn pending(g: &Gateway, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Vec<String> = stdout(&g.weir(&["approvals"]))
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() == n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{lines:?}\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sql(g: &Gateway, q: &str) -> String {
    g.cluster.psql("app", q).unwrap().trim().to_owned()
}

#[test]
fn within_the_bound_writes_run_and_the_client_sees_its_own_state() {
    let g = gateway();
    let out = g.psql(
        &g.alice(),
        "DELETE FROM items WHERE id <= 2 RETURNING id;
UPDATE items SET n = 1 WHERE id = 3;
SELECT count(*) FROM items;
BEGIN;
INSERT INTO log VALUES ('in my transaction');
UPDATE items SET n = 2 WHERE id IN (4, 5, 6);
SELECT txid_current_if_assigned() IS NOT NULL AS in_tx, (SELECT count(*) FROM log) AS logged;
COMMIT;
SELECT n FROM items WHERE id = 5;
",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(se.is_empty(), "{se}");
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        [
            "1",
            "2",
            "DELETE 2",
            "UPDATE 1",
            "18",
            "BEGIN",
            "INSERT 0 1",
            "UPDATE 3",
            "t|1",
            "COMMIT",
            "2"
        ],
        "{so}"
    );
    assert_eq!(sql(&g, "SELECT count(*) FROM log"), "1");
}

#[test]
fn over_the_bound_is_rolled_back_and_waits_for_approval_with_its_count() {
    let g = gateway();
    std::thread::scope(|s| {
        let client = s.spawn(|| g.psql(&g.alice(), "UPDATE items SET n = n + 1 WHERE id > 10;\n"));
        let line = pending(&g, 1).remove(0);
        assert!(
            line.contains(
                "this UPDATE would change 10 rows, more than the 3 allowed (test.small-writes)"
            ),
            "{line}"
        );
        // Rolled back while it waits: nothing changed.
        assert_eq!(sql(&g, "SELECT sum(n) FROM items"), "0");
        let id = line.split_whitespace().next().unwrap().to_owned();
        assert!(g.weir(&["approve", &id, "--as", "bob"]).status.success());
        let out = client.join().unwrap();
        assert_eq!(stdout(&out).trim(), "UPDATE 10", "{}", stderr(&out));
        assert_eq!(sql(&g, "SELECT sum(n) FROM items"), "10");
        // The approval covers repeats within its count: 8 rows run without asking…
        let out = g.psql(&g.alice(), "UPDATE items SET n = n + 1 WHERE id > 12;\n");
        assert_eq!(stdout(&out).trim(), "UPDATE 8", "{}", stderr(&out));
        // …15 rows is more than was approved: asked again, with the new count.
        let client = s.spawn(|| g.psql(&g.alice(), "UPDATE items SET n = n + 1 WHERE id > 5;\n"));
        let line = pending(&g, 1).remove(0);
        assert!(line.contains("this UPDATE would change 15 rows"), "{line}");
        let id = line.split_whitespace().next().unwrap().to_owned();
        assert!(g.weir(&["deny", &id, "--reason", "no"]).status.success());
        assert!(stderr(&client.join().unwrap()).contains("denied"));
        assert_eq!(sql(&g, "SELECT sum(n) FROM items"), "18");
    });
}

#[test]
fn inside_the_clients_transaction_only_the_write_is_undone() {
    let g = gateway();
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            g.psql(
                &g.alice(),
                "\\set VERBOSITY verbose
BEGIN;
INSERT INTO log VALUES ('before the big delete');
DELETE FROM items WHERE id > 5;
SELECT 'after';
ROLLBACK;
",
            )
        });
        let line = pending(&g, 1).remove(0);
        assert!(line.contains("this DELETE would change 15 rows"), "{line}");
        // The client's transaction is open, its insert done, the delete undone.
        assert_eq!(sql(&g, "SELECT count(*) FROM items"), "20");
        let id = line.split_whitespace().next().unwrap().to_owned();
        assert!(g
            .weir(&["deny", &id, "--as", "bob", "--reason", "too many"])
            .status
            .success());
        let out = client.join().unwrap();
        let se = stderr(&out);
        // Denied like a failed statement: the transaction is aborted until ROLLBACK.
        assert!(
            se.contains(&format!(
                "42501: weir: approval request {id} was denied by bob: too many"
            )),
            "{se}"
        );
        assert!(se.contains("current transaction is aborted"), "{se}");
        assert_eq!(sql(&g, "SELECT count(*) FROM items"), "20");
        assert_eq!(sql(&g, "SELECT count(*) FROM log"), "0");
    });
    // A failing write in a transaction aborts it, as without Weir; in autocommit, the
    // failure is all there is.
    let out = g.psql(
        &g.alice(),
        "BEGIN;
UPDATE items SET n = 500 WHERE id = 1;
SELECT 1;
ROLLBACK;
UPDATE items SET n = 500 WHERE id = 1;
SELECT 'still fine';
",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(se.contains("violates check constraint"), "{se}");
    assert!(se.contains("current transaction is aborted"), "{se}");
    assert!(so.ends_with("still fine\n"), "{so}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_bounded_writes() {
    let g = gateway();
    let client = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let n = client
        .execute("UPDATE items SET n = 7 WHERE id <= $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(n, 3);
    let rows = client
        .query(
            "DELETE FROM items WHERE id = ANY($1) RETURNING id",
            &[&vec![18i32, 19]],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let tx = client.simple_query("SELECT 1").await.unwrap();
    assert!(!tx.is_empty());
    assert_eq!(
        tokio::task::block_in_place(|| sql(&g, "SELECT count(*) FROM items WHERE n = 7")),
        "3"
    );
}
