//! Reversible changes against real PostgreSQL: before-images of UPDATE and DELETE captured in
//! the write's transaction, sealed in the store, and `weir undo` printing and applying what
//! reverses them — never over a row that changed since.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::{Duration, Instant};

const SCHEMA: &str = "
CREATE TABLE accounts (
    id int PRIMARY KEY,
    owner text NOT NULL,
    email text,
    balance numeric(12,2) NOT NULL,
    note text,
    tags text[],
    opened timestamptz NOT NULL DEFAULT '2024-01-02 03:04:05.678+00',
    data jsonb
);
INSERT INTO accounts (id, owner, email, balance, note, tags, data)
SELECT g, 'owner ' || g, 'user' || g || '@example.com', g * 1.25,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'it''s \"note\" ' || g END,
       ARRAY['a', 'b' || g], jsonb_build_object('n', g, 'x', ARRAY[1, 2])
FROM generate_series(1, 1000) g;
CREATE TABLE lines (order_id int, line int, qty int NOT NULL, PRIMARY KEY (order_id, line));
INSERT INTO lines SELECT o, l, o * l FROM generate_series(1, 5) o, generate_series(1, 4) l;
CREATE TABLE nokey (a int, b text);
INSERT INTO nokey VALUES (1, 'one'), (2, 'two');
";

/// A gateway whose development target keeps before-images, and a production target on the
/// same database.
fn gateway(extra_audit: &str) -> Gateway {
    gateway_with(extra_audit, None)
}

fn gateway_with(extra_audit: &str, policy: Option<&str>) -> Gateway {
    let extra_audit = extra_audit.to_owned();
    let policy = policy.map(str::to_owned);
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        move |cluster, dir| {
            cluster.psql("app", SCHEMA).unwrap();
            let files = match policy {
                Some(p) => {
                    std::fs::write(dir.join("test.cedar"), p).unwrap();
                    "[policy]\nfiles = [\"test.cedar\"]\n"
                }
                None => "",
            };
            format!(
                r#"{files}
[[target]]
name = "prod"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:{pg}"
database = "app"
user = "postgres"
password_file = "upstream-password"

[[identity.static]]
name = "dana"
kind = "human"
groups = ["dba"]
token = "dana-test-token"

[audit]
before_images = true
{extra_audit}

[approvals]
timeout = "120s"
"#,
                pg = cluster.port
            )
        },
    )
}

fn direct(g: &Gateway, q: &str) -> String {
    g.cluster.psql("app", q).unwrap().trim().to_owned()
}

/// A digest of a table's whole contents, from PostgreSQL itself.
fn digest(g: &Gateway, table: &str, order: &str) -> String {
    direct(
        g,
        &format!(
            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) FROM {table} t"
        ),
    )
}

fn run(g: &Gateway, sql: &str) {
    let out = g.psql(&g.alice(), sql);
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{sql}: {}",
        stderr(&out)
    );
}

/// The trail as `weir audit export` gives it.
fn exported(g: &Gateway) -> Vec<serde_json::Value> {
    let out = g.weir(&["audit", "export"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each line holds the record; its event is under `event`, with the record's seq added.
    stdout(&out)
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut e = r["event"].clone();
            e["seq"] = r["seq"].clone();
            e
        })
        .collect()
}

/// The seq of the newest statement event whose SQL contains `needle`.
fn seq_of(g: &Gateway, needle: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = exported(g).into_iter().rev().find(|e| {
            e["event"] == "statement" && e["sql"].as_str().is_some_and(|s| s.contains(needle))
        });
        if let Some(e) = found {
            return e["seq"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no statement event with {needle:?}: {:?}",
            exported(g).iter().rev().take(4).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The line of `weir approvals` that holds `needle`, once a request shows it.
fn waiting_request(g: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = stdout(&g.weir(&["approvals"]));
        if let Some(l) = listed.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no request with {needle:?}\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn request_id(line: &str) -> String {
    line.split_whitespace().next().unwrap().to_owned()
}

fn undo(g: &Gateway, seq: u64, args: &[&str]) -> std::process::Output {
    let seq = seq.to_string();
    let mut all = vec!["undo", seq.as_str()];
    all.extend_from_slice(args);
    g.weir(&all)
}

#[test]
fn updates_and_deletes_of_one_and_a_thousand_rows_are_undone() {
    let g = gateway("");
    let original = digest(&g, "accounts", "id");
    for (change, needle) in [
        (
            "UPDATE accounts SET balance = balance + 1, note = 'one' WHERE id = 3",
            "note = $",
        ),
        (
            "UPDATE accounts SET balance = 0, tags = NULL, data = '{}', email = NULL WHERE id > 0",
            "email = $4",
        ),
        ("DELETE FROM accounts WHERE id = 14", "id = $1"),
        ("DELETE FROM accounts WHERE owner LIKE 'owner%'", "LIKE"),
    ] {
        run(&g, change);
        assert_ne!(digest(&g, "accounts", "id"), original, "{change}");
        let seq = seq_of(&g, needle);
        let printed = undo(&g, seq, &["--as", "bob"]);
        assert!(printed.status.success(), "{change}: {}", stderr(&printed));
        let sql = stdout(&printed);
        assert!(sql.starts_with("-- undo of audit event"), "{sql}");
        assert!(sql.contains("BEGIN;") && sql.contains("COMMIT;"), "{sql}");
        let applied = undo(&g, seq, &["--apply", "--as", "bob"]);
        assert!(
            applied.status.success(),
            "{change}: {}\n{}",
            stdout(&applied),
            stderr(&applied)
        );
        assert!(
            stdout(&applied).contains("refused 0"),
            "{}",
            stdout(&applied)
        );
        assert_eq!(
            digest(&g, "accounts", "id"),
            original,
            "{change} was not undone exactly"
        );
        // Once.
        let again = undo(&g, seq, &["--apply", "--as", "bob"]);
        assert_eq!(again.status.code(), Some(1), "{}", stdout(&again));
        assert!(
            stderr(&again).contains("already undone"),
            "{}",
            stderr(&again)
        );
        assert_eq!(digest(&g, "accounts", "id"), original);
    }
    // The trail links each undo to the statement it reverses, and has its statements.
    let events = exported(&g);
    let undos: Vec<_> = events.iter().filter(|e| e["event"] == "undo").collect();
    assert_eq!(undos.len(), 4, "{undos:?}");
    assert!(undos.iter().all(|u| u["outcome"] == "applied"), "{undos:?}");
    let restored: u64 = undos.iter().map(|u| u["restored"].as_u64().unwrap()).sum();
    assert_eq!(restored, 1 + 1000 + 1 + 1000);
    assert!(events.iter().any(|e| e["event"] == "statement"
        && e["sql"]
            .as_str()
            .is_some_and(|s| s.contains("jsonb_populate_record"))));
    // (An undo of one row is itself an UPDATE or INSERT; bob's UPDATE keeps an image too.)
    let images: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "before_image" && e["identity"] == "alice")
        .collect();
    assert_eq!(images.len(), 4);
    assert!(images
        .iter()
        .all(|i| i["undoable"] == true && i["sha256"].is_string()));
    let verify = g.weir(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[test]
fn composite_keys_a_row_changed_since_and_a_table_without_a_key() {
    let g = gateway("");
    let original = digest(&g, "lines", "order_id, line");
    run(&g, "UPDATE lines SET qty = qty * 10 WHERE line IN (2, 3)");
    let seq = seq_of(&g, "qty * $");
    // Someone changes one of those rows afterwards.
    direct(
        &g,
        "UPDATE lines SET qty = -1 WHERE order_id = 4 AND line = 3",
    );
    let applied = undo(&g, seq, &["--apply", "--as", "bob"]);
    assert_eq!(applied.status.code(), Some(1), "{}", stderr(&applied));
    assert!(
        stdout(&applied).contains("restored 9 row(s), refused 1"),
        "{}",
        stdout(&applied)
    );
    assert!(
        stderr(&applied).contains("changed since"),
        "{}",
        stderr(&applied)
    );
    // The newer value is intact, every other row is back.
    assert_eq!(
        direct(&g, "SELECT qty FROM lines WHERE order_id = 4 AND line = 3"),
        "-1"
    );
    direct(
        &g,
        "UPDATE lines SET qty = 12 WHERE order_id = 4 AND line = 3",
    );
    assert_eq!(digest(&g, "lines", "order_id, line"), original);

    run(&g, "UPDATE nokey SET b = 'x' WHERE a = 1");
    let seq = seq_of(&g, "UPDATE nokey");
    let out = undo(&g, seq, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no primary or unique key"),
        "{}",
        stderr(&out)
    );
    // Not an UPDATE or DELETE.
    run(&g, "SELECT count(*) FROM lines");
    let out = undo(&g, seq_of(&g, "SELECT count"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not an UPDATE or DELETE"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn before_images_are_sealed_masked_when_printed_and_purged_after_retention() {
    let g = gateway("before_image_retention = \"7d\"");
    run(
        &g,
        "UPDATE accounts SET note = 'SECRET-MARKER-7f3a', email = 'marker@leak.example' WHERE id = 5",
    );
    run(&g, "DELETE FROM accounts WHERE id = 5");
    let seq = seq_of(&g, "DELETE FROM accounts");
    // Nothing of the rows is readable in the store's files.
    for entry in walk(g.dir.path()) {
        let name = entry.to_string_lossy().to_string();
        if name.ends_with(".toml") || name.ends_with(".log") || name.contains("pgdata") {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for marker in ["SECRET-MARKER-7f3a", "marker@leak.example"] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{marker} in {name}"
            );
        }
    }
    // With the key: the values are there; the email is masked for alice.
    let printed = undo(&g, seq, &["--as", "alice"]);
    assert!(printed.status.success(), "{}", stderr(&printed));
    let sql = stdout(&printed);
    assert!(sql.contains("SECRET-MARKER-7f3a"), "{sql}");
    assert!(
        !sql.contains("marker@leak.example") && sql.contains("****"),
        "{sql}"
    );
    // Another key does not open it.
    let key = g.dir.path().join("before-images.key");
    let kept = std::fs::read(&key).unwrap();
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let out = undo(&g, seq, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not open"), "{}", stderr(&out));
    std::fs::write(&key, kept).unwrap();
    // Eight days later the gateway purges it, on record.
    g.set_clock_offset(8 * 24 * 3600);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exported(&g)
        .iter()
        .any(|e| e["event"] == "before_images_purged")
    {
        assert!(Instant::now() < deadline, "no purge\n{}", g.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = undo(&g, seq, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("purged"), "{}", stderr(&out));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_concurrent_writer_is_waited_for_and_the_image_is_what_the_write_changed() {
    let g = gateway("");
    // Another session holds row 5 and commits a new balance while the change waits for it.
    let conn = g.cluster.conninfo("app");
    let psql = g.cluster.bindir().join("psql");
    let other = std::thread::spawn(move || {
        std::process::Command::new(psql)
            .args([
                conn.as_str(),
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "BEGIN; UPDATE accounts SET balance = 777 WHERE id = 5; SELECT pg_sleep(1.5); COMMIT;",
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    run(
        &g,
        "UPDATE accounts SET balance = balance + 1000 WHERE id <= 10",
    );
    assert!(other.join().unwrap().status.success());
    assert_eq!(
        direct(&g, "SELECT balance FROM accounts WHERE id = 5"),
        "1777.00"
    );
    let seq = seq_of(&g, "balance + $");
    let applied = undo(&g, seq, &["--apply", "--as", "bob"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    // Back to what it was just before the change: the other session's committed value.
    assert_eq!(
        direct(&g, "SELECT balance FROM accounts WHERE id = 5"),
        "777.00"
    );
    assert_eq!(
        direct(&g, "SELECT balance FROM accounts WHERE id = 6"),
        "7.50"
    );
}

#[test]
fn over_the_cap_the_write_runs_and_is_not_undoable() {
    let g = gateway("before_image_max_bytes = 4096");
    run(&g, "UPDATE accounts SET note = 'bulk' WHERE id <= 500");
    assert_eq!(
        direct(&g, "SELECT count(*) FROM accounts WHERE note = 'bulk'"),
        "500"
    );
    let seq = seq_of(&g, "note = $");
    let out = undo(&g, seq, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("over the cap"), "{}", stderr(&out));
}

#[test]
fn undo_in_production_waits_for_an_approver() {
    let g = gateway("");
    let out = g.psql(
        &g.conninfo("alice", ALICE_TOKEN)
            .replace("dbname=app", "dbname=prod"),
        "UPDATE accounts SET owner = 'changed' WHERE id = 9",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let seq = seq_of(&g, "owner = $");
    let config = g.config.clone();
    let clock = g.clock_file();
    let applying = std::thread::spawn(move || {
        std::process::Command::new(weir_bin())
            .args([
                "undo",
                &seq.to_string(),
                "--apply",
                "--as",
                "alice",
                "--config",
            ])
            .arg(&config)
            .env("WEIR_CLOCK_FILE", clock)
            .output()
            .unwrap()
    });
    let id = request_id(&waiting_request(&g, "weir.undo-needs-approval"));
    assert_eq!(
        direct(&g, "SELECT owner FROM accounts WHERE id = 9"),
        "changed"
    );
    let approved = g.weir(&["approve", &id, "--as", "bob"]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    let out = applying.join().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("waiting for approval"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        direct(&g, "SELECT owner FROM accounts WHERE id = 9"),
        "owner 9"
    );
}

#[test]
fn policy_sees_whether_a_write_is_undoable() {
    const POLICY: &str = r#"
@id("test.irreversible-writes-need-approval")
@outcome("approve")
@reason("this write cannot be undone")
forbid (principal, action in [Weir::Action::"update", Weir::Action::"delete"], resource)
when { !context.undoable };
"#;
    let g = gateway_with("before_image_max_bytes = 4096", Some(POLICY));
    // Undoable: runs.
    run(&g, "UPDATE accounts SET note = 'small' WHERE id = 1");
    assert_eq!(
        direct(&g, "SELECT note FROM accounts WHERE id = 1"),
        "small"
    );
    // No key, and over the cap: each waits for an approver, and is denied here.
    for (sql, why) in [
        (
            "UPDATE nokey SET b = 'x' WHERE a = 1",
            "no primary or unique key",
        ),
        (
            "UPDATE accounts SET note = 'big' WHERE id <= 500",
            "over the cap",
        ),
    ] {
        let conn = g.alice();
        let psql = g.cluster.bindir().join("psql");
        let sql_owned = sql.to_owned();
        let client = std::thread::spawn(move || {
            std::process::Command::new(psql)
                .args([conn.as_str(), "-X", "-At", "-c", sql_owned.as_str()])
                .output()
                .unwrap()
        });
        let line = waiting_request(&g, "test.irreversible");
        if why == "over the cap" {
            assert!(line.contains(why), "{line}");
        }
        let id = line.split_whitespace().next().unwrap();
        let denied = g.weir(&["deny", id, "--as", "bob", "--reason", "keep it reversible"]);
        assert!(denied.status.success(), "{}", stderr(&denied));
        let out = client.join().unwrap();
        assert!(
            stderr(&out).contains("keep it reversible"),
            "{sql}: {}",
            stderr(&out)
        );
    }
    assert_eq!(direct(&g, "SELECT b FROM nokey WHERE a = 1"), "one");
    assert_eq!(
        direct(&g, "SELECT count(*) FROM accounts WHERE note = 'big'"),
        "0"
    );
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_http_api_previews_and_applies_an_undo_for_approvers() {
    let mut g = gateway("");
    let http_port = weir::cluster::free_port().unwrap();
    let config = std::fs::read_to_string(&g.config).unwrap().replacen(
        "[gateway]\n",
        &format!("[gateway]\nhttp_listen = \"127.0.0.1:{http_port}\"\n"),
        1,
    );
    std::fs::write(&g.config, config).unwrap();
    g.terminate();
    g.restart();
    let api = format!("http://127.0.0.1:{http_port}");
    let bob = format!("Authorization: Bearer {BOB_TOKEN}");
    let alice = format!("Authorization: Bearer {ALICE_TOKEN}");
    let original = digest(&g, "accounts", "id");

    run(&g, "DELETE FROM accounts WHERE id BETWEEN 20 AND 29");
    let seq = seq_of(&g, "BETWEEN");
    let url = format!("{api}/v1/audit/events/{seq}/undo");
    // A developer sees no preview.
    let (status, body) = curl(&["-H", &alice, &url]);
    assert_eq!(status, 403, "{body}");
    let (status, body) = curl(&["-H", &bob, &url]);
    assert_eq!(status, 200, "{body}");
    let preview: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(preview["rows"], 10, "{preview}");
    assert_eq!(preview["kind"], "delete");
    assert_eq!(preview["may_apply"], true);
    let sql = preview["sql"].as_str().unwrap();
    assert_eq!(sql.matches("INSERT INTO").count(), 10, "{sql}");
    // Applied: every row back; not twice.
    let (status, body) = curl(&["-X", "POST", "-H", &bob, &url]);
    assert_eq!(status, 200, "{body}");
    let applied: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(applied["restored"], 10, "{applied}");
    assert_eq!(applied["refused"], 0);
    assert_eq!(digest(&g, "accounts", "id"), original);
    let (status, body) = curl(&["-X", "POST", "-H", &bob, &url]);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already undone"), "{body}");

    // In production it waits for another approver (bob may not approve his own undo).
    let out = g.psql(
        &g.conninfo("alice", ALICE_TOKEN)
            .replace("dbname=app", "dbname=prod"),
        "UPDATE accounts SET owner = 'via http' WHERE id = 30",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let seq = seq_of(&g, "owner = $");
    let url = format!("{api}/v1/audit/events/{seq}/undo");
    let (status, body) = curl(&["-X", "POST", "-H", &bob, &url]);
    assert_eq!(status, 202, "{body}");
    let waiting: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = waiting["approval"].as_str().unwrap().to_owned();
    let approved = g.weir(&["approve", &id, "--as", "dana"]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    let deadline = Instant::now() + Duration::from_secs(20);
    while direct(&g, "SELECT owner FROM accounts WHERE id = 30") != "owner 30" {
        assert!(Instant::now() < deadline, "not undone\n{}", g.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = exported(&g);
    let undo = events.iter().rev().find(|e| e["event"] == "undo").unwrap();
    assert_eq!(undo["statement_seq"], seq);
    assert_eq!(undo["identity"], "bob");
    assert_eq!(undo["outcome"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_with_bound_parameters_is_undone() {
    let g = tokio::task::spawn_blocking(|| gateway("")).await.unwrap();
    let original = digest(&g, "accounts", "id");
    // tokio-postgres binds its parameters in binary.
    let client = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let n = client
        .execute(
            "UPDATE accounts SET note = $1, balance = balance * 2 WHERE id BETWEEN $2 AND $3 AND owner <> $4",
            &[&"from a driver", &100i32, &149i32, &"nobody"],
        )
        .await
        .unwrap();
    assert_eq!(n, 50);
    let n = client
        .execute("DELETE FROM accounts WHERE id = $1", &[&7i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(client);
    let g = tokio::task::spawn_blocking(move || {
        for needle in ["BETWEEN", "DELETE FROM accounts WHERE id = $1"] {
            let seq = seq_of(&g, needle);
            let applied = undo(&g, seq, &["--apply", "--as", "bob"]);
            assert!(applied.status.success(), "{needle}: {}", stderr(&applied));
        }
        g
    })
    .await
    .unwrap();
    assert_eq!(digest(&g, "accounts", "id"), original);
    tokio::task::spawn_blocking(move || drop(g)).await.unwrap();
}

#[test]
fn a_client_cannot_name_weirs_capture_statement() {
    let g = gateway("");
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    c.send(&[
        weir_wire::frontend::Message::Parse(weir_wire::frontend::Parse {
            name: bytes::Bytes::from_static(b"weir\x1fcapture"),
            query: bytes::Bytes::from_static(b"SELECT 1"),
            param_types: Vec::new(),
        }),
        weir_wire::frontend::Message::Sync,
    ]);
    match c.recv() {
        weir_wire::backend::Message::ErrorResponse(f) => {
            assert_eq!(f.code(), Some("08P01"), "{f:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bounded_writes_keep_images_within_the_bound_after_approval_and_not_when_they_fail() {
    let g = gateway("[policy]\nbulk_write_rows = 100\n");
    let prod = g
        .conninfo("alice", ALICE_TOKEN)
        .replace("dbname=app", "dbname=prod");
    let original = digest(&g, "accounts", "id");
    // Within the bound: one bracket for the bound and the capture.
    let out = g.psql(&prod, "UPDATE accounts SET note = 'few' WHERE id <= 50");
    assert!(stdout(&out).contains("UPDATE 50"), "{}", stderr(&out));
    let few = seq_of(&g, "id <= $");
    // Over it: rolled back, approved, then run for real with its image.
    let psql = g.cluster.bindir().join("psql");
    let conn = prod.clone();
    let client = std::thread::spawn(move || {
        std::process::Command::new(psql)
            .args([
                conn.as_str(),
                "-X",
                "-At",
                "-c",
                "UPDATE accounts SET note = 'many' WHERE id > 500",
            ])
            .output()
            .unwrap()
    });
    let id = request_id(&waiting_request(&g, "would change 500 rows"));
    assert!(g.weir(&["approve", &id, "--as", "bob"]).status.success());
    let out = client.join().unwrap();
    assert!(stdout(&out).contains("UPDATE 500"), "{}", stderr(&out));
    let many = seq_of(&g, "id > $");
    // A write that fails keeps nothing and leaves nothing.
    let out = g.psql(
        &prod,
        "UPDATE accounts SET balance = balance / 0 WHERE id <= 3",
    );
    assert!(
        stderr(&out).contains("division by zero"),
        "{}",
        stderr(&out)
    );
    let failed = seq_of(&g, "balance / $");
    let refused = undo(&g, failed, &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("changed nothing"),
        "{}",
        stderr(&refused)
    );
    // Both images undo (in production each undo waits for an approver: dana).
    for seq in [many, few] {
        let config = g.config.clone();
        let clock = g.clock_file();
        let applying = std::thread::spawn(move || {
            std::process::Command::new(weir_bin())
                .args([
                    "undo",
                    &seq.to_string(),
                    "--apply",
                    "--as",
                    "bob",
                    "--config",
                ])
                .arg(&config)
                .env("WEIR_CLOCK_FILE", clock)
                .output()
                .unwrap()
        });
        let id = request_id(&waiting_request(&g, "weir.undo-needs-approval"));
        assert!(g.weir(&["approve", &id, "--as", "dana"]).status.success());
        let out = applying.join().unwrap();
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    }
    assert_eq!(digest(&g, "accounts", "id"), original);
}

#[test]
fn in_the_clients_transaction_the_image_is_on_record_before_its_commit() {
    let g = gateway("");
    let original = digest(&g, "accounts", "id");
    run(
        &g,
        "BEGIN;\nUPDATE accounts SET note = 'in a transaction' WHERE id = 2;\nDELETE FROM accounts WHERE id = 3;\nCOMMIT;\n",
    );
    let events = exported(&g);
    let seq_where = |f: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .find(|e| f(e))
            .map(|e| e["seq"].as_u64().unwrap())
            .unwrap()
    };
    let commit = seq_where(&|e| {
        e["event"] == "statement"
            && e["sql"]
                .as_str()
                .is_some_and(|s| s.trim_end_matches(';').eq_ignore_ascii_case("commit"))
    });
    for needle in ["note = $", "DELETE FROM accounts"] {
        let change = events
            .iter()
            .find(|e| e["event"] == "statement" && e["sql"].as_str().unwrap_or("").contains(needle))
            .unwrap()["change"]
            .clone();
        let image = seq_where(&|e| e["event"] == "before_image" && e["change"] == change);
        assert!(image < commit, "{needle}: image {image}, COMMIT {commit}");
    }
    for needle in ["DELETE FROM accounts", "note = $"] {
        let out = undo(&g, seq_of(&g, needle), &["--apply", "--as", "bob"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(digest(&g, "accounts", "id"), original);
}
