//! The audit trail: durable before a statement runs, hash-chained and signed, verified by
//! `weir audit verify` (which names the first bad event), readable by search, export, tail
//! and replay, and complete across SIGKILLs under load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn db(g: &Gateway) -> rusqlite::Connection {
    rusqlite::Connection::open(g.dir.path().join("weir.db")).unwrap()
}

fn verify(g: &Gateway) -> (bool, String) {
    let out = g.weir(&["audit", "verify"]);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn the_trail_verifies_and_names_the_first_tampered_event() {
    let mut g = Gateway::start();
    let out = g.psql(
        &g.alice(),
        "CREATE TABLE people (id int, email text);\nINSERT INTO people VALUES (1, 'jane.doe@example.com');\nSELECT * FROM people WHERE email = 'jane.doe@example.com';\nselec 1;\n",
    );
    // Masked for the client (see tests/masking.rs); the trail must not hold it either.
    assert!(
        stdout(&out).contains("j***@example.com"),
        "{}",
        stderr(&out)
    );
    // An administrative action recorded by the CLI while the gateway writes the same trail:
    // the gateway's next batch continues after it.
    let created = g.weir(&["token", "create", "--name", "ci", "--kind", "service"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let after = g.psql(&g.alice(), "SELECT count(*) FROM people;\n");
    assert_eq!(stdout(&after).trim(), "1", "{}", stderr(&after));
    assert_eq!(g.terminate().code(), Some(0));

    let (ok, text) = verify(&g);
    assert!(ok, "{text}");
    let out = g.weir(&["audit", "search", "--event", "admin"]);
    assert!(stdout(&out).contains("token.create"), "{}", stdout(&out));
    let n: u64 = text
        .strip_prefix("ok ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(n >= 8, "{text}");

    // Export: one JSON line per event with its chain fields; literals are not in the trail.
    let out = g.weir(&["audit", "export", "--format", "jsonl"]);
    let export = stdout(&out);
    assert_eq!(
        export
            .lines()
            .filter(|l| l.starts_with("{\"seq\":"))
            .count() as u64,
        n,
        "{export}"
    );
    assert!(
        export.lines().any(|l| l.contains(",\"checkpoint\":{")),
        "{export}"
    );
    assert!(
        !export.contains("jane.doe"),
        "the trail holds a value:\n{export}"
    );
    assert!(
        export.contains("SELECT * FROM people WHERE email = $1"),
        "{export}"
    );
    let first: serde_json::Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["event"]["event"], "connection_opened");
    let out = g.weir(&["audit", "export", "--format", "csv", "--event", "statement"]);
    let csv = stdout(&out);
    assert!(csv.starts_with("seq,time,event,session,identity"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.contains("INSERT INTO people VALUES ($1, $2)")),
        "{csv}"
    );

    // Search and replay.
    let out = g.weir(&[
        "audit",
        "search",
        "--identity",
        "alice",
        "--decision",
        "deny",
    ]);
    let found = stdout(&out);
    assert_eq!(found.lines().count(), 1, "{found}");
    assert!(found.contains("weir.parse"), "{found}");
    // Four statements name the table, and one completion masked its email column.
    let out = g.weir(&["audit", "search", "--text", "people", "--since", "1h"]);
    assert_eq!(stdout(&out).lines().count(), 5, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("masked=public.people.email"),
        "{}",
        stdout(&out)
    );
    let session = first["event"]["session"].to_string();
    let out = g.weir(&["audit", "replay", &session]);
    let replay = stdout(&out);
    let events: Vec<&str> = replay
        .lines()
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"connection_opened"), "{replay}");
    assert_eq!(events.last(), Some(&"connection_closed"), "{replay}");
    assert!(replay.contains("[\"INSERT 0 1\"] rows=1"), "{replay}");
    let out = g.weir(&["audit", "tail", "--no-follow", "-n", "2"]);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));

    // Tampering, one kind at a time (each undone before the next).
    let c = db(&g);
    let body = |seq: i64| -> String {
        c.query_row("SELECT body FROM audit_events WHERE seq = ?", [seq], |r| {
            r.get(0)
        })
        .unwrap()
    };
    // Altered.
    let original = body(5);
    c.execute(
        "UPDATE audit_events SET body = body || ' ' WHERE seq = 5",
        [],
    )
    .unwrap();
    let (ok, text) = verify(&g);
    assert!(
        !ok && text.contains("event 5: hash does not match"),
        "{text}"
    );
    c.execute(
        "UPDATE audit_events SET body = ? WHERE seq = 5",
        [&original],
    )
    .unwrap();
    assert!(verify(&g).0);
    // Removed.
    c.execute(
        "CREATE TABLE saved AS SELECT * FROM audit_events WHERE seq = 4",
        [],
    )
    .unwrap();
    c.execute("DELETE FROM audit_events WHERE seq = 4", [])
        .unwrap();
    let (ok, text) = verify(&g);
    assert!(!ok && text.contains("event 4: missing"), "{text}");
    c.execute("INSERT INTO audit_events SELECT * FROM saved", [])
        .unwrap();
    assert!(verify(&g).0);
    // Reordered (two events' contents swapped).
    let (b2, b3) = (body(2), body(3));
    c.execute("UPDATE audit_events SET body = ? WHERE seq = 2", [&b3])
        .unwrap();
    c.execute("UPDATE audit_events SET body = ? WHERE seq = 3", [&b2])
        .unwrap();
    let (ok, text) = verify(&g);
    assert!(!ok && text.contains("event 2:"), "{text}");
    c.execute("UPDATE audit_events SET body = ? WHERE seq = 2", [&b2])
        .unwrap();
    c.execute("UPDATE audit_events SET body = ? WHERE seq = 3", [&b3])
        .unwrap();
    assert!(verify(&g).0);
    // Appended by hand, with a correct chain hash.
    let (last, head): (i64, Vec<u8>) = c
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let prev: [u8; 32] = head.try_into().unwrap();
    let forged = "{\"event\":\"admin\",\"actor\":\"nobody\",\"action\":\"x\",\"subject\":\"y\"}";
    let hash = weir_audit::chain::record_hash(last as u64 + 1, 1, &prev, forged);
    c.execute(
        "INSERT INTO audit_events (seq, ts_us, prev, hash, body, kind) VALUES (?, 1, ?, ?, ?, 'admin')",
        rusqlite::params![last + 1, &prev[..], &hash[..], forged],
    )
    .unwrap();
    let (ok, text) = verify(&g);
    assert!(
        !ok && text.contains(&format!(
            "event {}: not covered by a signed checkpoint",
            last + 1
        )),
        "{text}"
    );
    c.execute("DELETE FROM audit_events WHERE seq = ?", [last + 1])
        .unwrap();
    assert!(verify(&g).0);
    // The tail cut off.
    c.execute("DELETE FROM audit_events WHERE seq > ?", [last - 2])
        .unwrap();
    let (ok, text) = verify(&g);
    assert!(
        !ok && text.contains(&format!("event {}: missing", last - 1)) && text.contains("truncated"),
        "{text}"
    );

    // An auditor verifies with the exported public key alone.
    let key = stdout(&g.weir(&["audit", "public-key"])).trim().to_owned();
    let file = g.dir.path().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    let verify_file = |path: &std::path::Path| {
        let out = Command::new(weir_bin())
            .args(["audit", "verify", "--public-key", &key, "--file"])
            .arg(path)
            .output()
            .unwrap();
        (out.status.success(), stdout(&out))
    };
    let (ok, text) = verify_file(&file);
    assert!(ok && text.starts_with(&format!("ok {n} events")), "{text}");
    std::fs::write(
        &file,
        export.replacen("connection_opened", "connection_0pened", 1),
    )
    .unwrap();
    let (ok, text) = verify_file(&file);
    assert!(
        !ok && text.contains("event 1: hash does not match"),
        "{text}"
    );
    assert_eq!(key.len(), 64, "{key}");
    std::fs::remove_file(g.dir.path().join("audit.key")).unwrap();
    let out = g.weir(&["audit", "verify", "--public-key", &key]);
    assert!(stdout(&out).contains("truncated"), "{}", stdout(&out));
}

/// Statements PostgreSQL logged (`log_statement = all`) in database `app`, as sent.
fn logged_statements(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(text) = line.strip_prefix("[app] LOG:  statement: ") {
            if let Some(c) = current.take() {
                out.push(c);
            }
            current = Some(text.to_owned());
        } else if let (Some(c), Some(cont)) = (current.as_mut(), line.strip_prefix('\t')) {
            c.push('\n');
            c.push_str(cont);
        } else if let Some(c) = current.take() {
            out.push(c);
        }
    }
    out.extend(current);
    out
}

/// Nothing described by a lost event persists or was seen, however often the gateway is
/// killed under mixed load (writes in transactions and reads, `log_statement = all`), and
/// the chain still verifies. Write-ahead lets reads and in-transaction writes run while
/// their events flush, so PostgreSQL may have run statements the trail does not hold; the
/// test proves they are only
/// - reads whose results no client received (the reading client records every result it
///   got, and each has its event), or
/// - writes whose transaction did not commit (every transaction marks its statements and its
///   history row with one number; every committed row's marker has its events),
///
/// and counts them.
#[test]
fn nothing_is_lost_across_sigkill_under_load() {
    let mut g = Gateway::start_with(
        Options {
            fast: true,
            settings: vec![
                ("log_statement".into(), "all".into()),
                ("log_line_prefix".into(), "'[%d] '".into()),
            ],
        },
        "\n[audit]\nfull_text_targets = [\"app\"]\n",
    );
    let pgbench = g.cluster.bindir().join("pgbench");
    let init = Command::new(&pgbench)
        .args(["-i", "-s", "1", "-q"])
        .arg(g.alice())
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    // TPC-B's shape, with one marker per transaction in every statement and in the row it
    // commits (pgbench substitutes variables inside comments too).
    let script = g.dir.path().join("marked.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000 * :scale)\n\
         \\set delta random(-5000, 5000)\n\
         \\set m random(1, 2000000000)\n\
         BEGIN /* m:m */;\n\
         UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid /* m:m */;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid /* m:m */;\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :m, CURRENT_TIMESTAMP) /* m:m */;\n\
         END /* m:m */;\n",
    )
    .unwrap();

    // A reader that records every result it received, across kills.
    let stop = Arc::new(AtomicBool::new(false));
    let (conninfo, stop2) = (g.alice(), Arc::clone(&stop));
    let reader = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut received: Vec<i64> = Vec::new();
            let mut n: i64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, conn)) =
                    tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                while !stop2.load(Ordering::Relaxed) {
                    n += 1;
                    let sql = format!(
                        "SELECT {n}::int8 AS r, abalance FROM pgbench_accounts WHERE aid = {}",
                        n % 100_000 + 1
                    );
                    match client.simple_query(&sql).await {
                        Ok(msgs) => {
                            for m in msgs {
                                if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                                    received.push(row.get(0).unwrap().parse().unwrap());
                                }
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            received
        })
    });

    const KILLS: u32 = 12;
    for round in 0..KILLS {
        let mut load = Command::new(&pgbench)
            .args(["-c", "3", "-j", "2", "-T", "30", "-n", "-f"])
            .arg(&script)
            .arg(g.alice())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill once this round has put load through (at least 100 more statements reached
        // PostgreSQL, and a varying moment after that), however fast the machine is.
        let before =
            logged_statements(&std::fs::read_to_string(g.cluster.log_path()).unwrap()).len();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while logged_statements(&std::fs::read_to_string(g.cluster.log_path()).unwrap()).len()
            < before + 100
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50 * u64::from(round % 5)));
        g.kill9();
        let _ = load.wait();
        g.restart();
    }
    stop.store(true, Ordering::Relaxed);
    let received = reader.join().unwrap();
    assert_eq!(g.terminate().code(), Some(0));
    // What PostgreSQL ran, before the test's own queries join it.
    let pg_log = std::fs::read_to_string(g.cluster.log_path()).unwrap();

    let (ok, text) = verify(&g);
    assert!(ok, "{text}");

    let out = g.weir(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "--event",
        "statement",
    ]);
    let mut recorded: HashMap<String, i64> = HashMap::new();
    for line in stdout(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["event"]["decision"] == "allow" {
            *recorded
                .entry(v["event"]["sql"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let marker = |sql: &str| -> Option<String> {
        let at = sql.find("/* m")? + 4;
        let rest = sql.get(at..)?;
        Some(rest.get(..rest.find(' ')?)?.to_owned())
    };
    let with_event: std::collections::HashSet<String> =
        recorded.keys().filter_map(|s| marker(s)).collect();

    // (a) Every committed transaction's marker has its events.
    let committed: Vec<String> = g
        .cluster
        .psql(
            "app",
            "SELECT delta FROM pgbench_history WHERE tid = 1 AND bid = 1",
        )
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        committed.len() > 50,
        "only {} transactions committed",
        committed.len()
    );
    let unrecorded_commits: Vec<&String> = committed
        .iter()
        .filter(|m| !with_event.contains(*m))
        .collect();
    assert!(
        unrecorded_commits.is_empty(),
        "committed without events: {unrecorded_commits:?}"
    );
    for m in &committed {
        let end = format!("END /* m{m} */;");
        assert!(
            recorded.contains_key(&end),
            "the COMMIT of committed transaction {m} has its event"
        );
    }

    // (b) Every result a client received has its event.
    assert!(
        received.len() > 100,
        "only {} reads received",
        received.len()
    );
    for r in &received {
        let sql = format!(
            "SELECT {r}::int8 AS r, abalance FROM pgbench_accounts WHERE aid = {}",
            r % 100_000 + 1
        );
        assert!(
            recorded.contains_key(&sql),
            "read {r} was received without its event"
        );
    }

    // (c) What PostgreSQL ran without an event: only reads nobody received and writes whose
    // transaction did not commit.
    let received: std::collections::HashSet<i64> = received.into_iter().collect();
    let committed: std::collections::HashSet<String> = committed.into_iter().collect();
    let logged = logged_statements(&pg_log);
    assert!(
        logged.len() > 100 * KILLS as usize,
        "only {} statements logged",
        logged.len()
    );
    let (mut reads, mut uncommitted, mut begins) = (0, 0, 0);
    let mut violations = Vec::new();
    for s in &logged {
        match recorded.get_mut(s) {
            Some(n) if *n > 0 => {
                *n -= 1;
                continue;
            }
            _ => {}
        }
        if s.starts_with("SELECT ") && s.contains("::int8 AS r") {
            let r: i64 = s
                .trim_start_matches("SELECT ")
                .split("::")
                .next()
                .unwrap()
                .parse()
                .unwrap();
            if received.contains(&r) {
                violations.push(s.clone());
            } else {
                reads += 1;
            }
        } else if s.starts_with("BEGIN /* m") {
            begins += 1;
        } else if s.starts_with("END /* m") {
            violations.push(s.clone());
        } else if let Some(m) = marker(s) {
            if committed.contains(&m) {
                violations.push(s.clone());
            } else if s.starts_with("SELECT ") {
                reads += 1;
            } else {
                uncommitted += 1;
            }
        } else if !s.starts_with("select count(*) from pgbench_branches") {
            // pgbench's own look at the scale is the one unmarked statement.
            violations.push(s.clone());
        }
    }
    eprintln!(
        "{KILLS} SIGKILLs: {} statements reached PostgreSQL, {} statement events in the trail ({text}); \
         {} transactions committed, {} reads received; run without an event: {reads} reads no client received, \
         {uncommitted} writes of transactions that did not commit, {begins} BEGINs",
        logged.len(),
        stdout(&out).lines().count(),
        committed.len(),
        received.len(),
    );
    assert!(
        violations.is_empty(),
        "ran without an event and not allowed to: {:?}",
        &violations[..violations.len().min(5)]
    );
}
