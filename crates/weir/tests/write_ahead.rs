//! Write-ahead, with the server as the oracle: durable before visible, not durable before
//! forwarded.
//!
//! The trail is held still by taking the lock of its journal (`weir.db-trail/lock`, from the
//! test, a real lock the gateway's writer waits on, as it would for another appender). While it is held, the test
//! looks at what PostgreSQL has run (`pg_stat_activity`, through a direct connection) and at
//! what each client has received:
//!
//! - a pure read and a write inside a transaction block have *run* at the server, and their
//!   clients have *received nothing*;
//! - a write in autocommit and a COMMIT have not reached the server at all.
//!
//! Released in time, everything completes. Held past the writer's busy timeout, the batch
//! fails: the held answers are replaced by 58000, the sessions close, and the transaction
//! that wrote is rolled back (the row is not in the table).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

fn gateway() -> Gateway {
    let g = Gateway::start();
    g.cluster
        .psql(
            "app",
            "CREATE TABLE t (id int PRIMARY KEY, v text); GRANT ALL ON t TO PUBLIC;",
        )
        .unwrap();
    g
}

/// What the server has run for the app database: each client backend's last statement and
/// its state.
fn server_activity(g: &Gateway) -> String {
    g.cluster
        .psql(
            "postgres",
            "SELECT state || ': ' || query FROM pg_stat_activity \
             WHERE datname = 'app' AND backend_type = 'client backend' ORDER BY query",
        )
        .unwrap()
}

/// Holds the trail still: the lock every appender of its journal takes (`weir.db-trail/lock`,
/// as another process appending would hold it).
struct TrailLock(std::fs::File);

impl TrailLock {
    fn release(self) {
        self.0.unlock().unwrap();
    }
}

fn lock_trail(g: &Gateway) -> TrailLock {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(g.dir.path().join("weir.db-trail").join("lock"))
        .unwrap();
    f.lock().unwrap();
    TrailLock(f)
}

async fn first_value(c: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned).unwrap_or_default()),
        _ => None,
    }))
}

fn rows_in_t(g: &Gateway) -> String {
    g.cluster
        .psql("app", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_for_their_events_and_writes_wait_where_they_could_commit() {
    let g = gateway();
    let reader = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let writer = std::sync::Arc::new(g.connect("bob", BOB_TOKEN).await.unwrap());
    let autocommit = g.connect("bob", BOB_TOKEN).await.unwrap();
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .batch_execute("INSERT INTO t VALUES (1, 'before')")
        .await
        .unwrap();

    let lock = lock_trail(&g);
    let read = tokio::spawn(async move {
        let v = first_value(&reader, "SELECT 'overlapped read'").await;
        (reader, v)
    });
    let w = std::sync::Arc::clone(&writer);
    let write = tokio::spawn(async move {
        w.batch_execute("INSERT INTO t VALUES (2, 'in block')")
            .await
    });
    let auto = tokio::spawn(async move {
        let r = autocommit
            .batch_execute("INSERT INTO t VALUES (3, 'autocommit')")
            .await;
        (autocommit, r)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = server_activity(&g);
    assert!(
        seen.contains("idle: SELECT 'overlapped read'"),
        "the read ran while its event was flushing:\n{seen}"
    );
    assert!(
        seen.contains("idle in transaction: INSERT INTO t VALUES (2, 'in block')"),
        "the write in a transaction block ran while its event was flushing:\n{seen}"
    );
    assert!(
        !seen.contains("(3, 'autocommit')"),
        "a write in autocommit waits for its event before it is forwarded:\n{seen}"
    );
    assert!(!read.is_finished(), "no result before its event is durable");
    assert!(
        !write.is_finished(),
        "no answer before its event is durable"
    );
    assert!(!auto.is_finished());
    assert_eq!(rows_in_t(&g), "", "nothing committed yet");

    // COMMIT is never forwarded before its event is durable.
    lock.release();
    let (_, v) = read.await.unwrap();
    assert_eq!(v.unwrap().as_deref(), Some("overlapped read"));
    write.await.unwrap().unwrap();
    let (_, r) = auto.await.unwrap();
    r.unwrap();
    let lock = lock_trail(&g);
    let w = std::sync::Arc::clone(&writer);
    let commit = tokio::spawn(async move { w.batch_execute("COMMIT").await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rows_in_t(&g), "3", "the COMMIT waits for its event");
    assert!(server_activity(&g).contains("idle in transaction: INSERT INTO t VALUES (2"));
    lock.release();
    commit.await.unwrap().unwrap();
    assert_eq!(rows_in_t(&g), "1,2,3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_event_withholds_the_result_and_rolls_the_transaction_back() {
    let g = gateway();
    let reader = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let writer = g.connect("bob", BOB_TOKEN).await.unwrap();
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (1, 'recorded')")
        .await
        .unwrap();

    // Held past the writer's lock timeout (10 s): the batch fails.
    let lock = lock_trail(&g);
    let read = tokio::spawn(async move { first_value(&reader, "SELECT 'never seen'").await });
    let write = tokio::spawn(async move {
        let r = writer
            .batch_execute("INSERT INTO t VALUES (2, 'lost')")
            .await;
        (writer, r)
    });
    let read = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the read is answered once the batch fails")
        .unwrap();
    let err = read.expect_err("a result whose event failed is withheld");
    let text = format!("{err:?}");
    assert!(
        err.code().map(|c| c.code()) == Some("58000") || text.contains("58000"),
        "58000, not a result: {text}"
    );
    let (writer, r) = tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .unwrap()
        .unwrap();
    let err = r.expect_err("the write's answer is withheld");
    assert!(
        format!("{err:?}").contains("not recorded in the audit trail"),
        "{err:?}"
    );
    // The session is closed: its transaction cannot commit.
    assert!(writer.batch_execute("COMMIT").await.is_err());
    lock.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rows_in_t(&g), "", "nothing of the transaction persists");
    assert!(
        !server_activity(&g).contains("'lost'"),
        "the session that wrote is gone"
    );
    let verify = g.weir(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(stdout(&verify).starts_with("ok "), "{}", stdout(&verify));
}

/// A COMMIT sent with Flush instead of Sync gets no ReadyForQuery, so the last transaction
/// status Weir saw ("in a block") is stale: the next write runs in autocommit and must wait
/// for its event like any autocommit write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_sync_leaves_no_stale_transaction_status() {
    use bytes::Bytes;
    use weir_wire::backend::Message as B;
    use weir_wire::frontend::Message as F;
    let g = gateway();
    let port = g.port;
    let mut c = tokio::task::spawn_blocking(move || {
        let mut c = RawClient::connect(port, "bob", BOB_TOKEN, "app");
        c.send(&[F::Query(Bytes::from_static(b"BEGIN"))]);
        c.until_ready();
        let [parse, bind, execute] = run_unnamed("COMMIT");
        c.send(&[parse, bind, execute, F::Flush]);
        loop {
            if let B::CommandComplete(_) = c.recv() {
                break;
            }
        }
        c
    })
    .await
    .unwrap();
    let lock = lock_trail(&g);
    let mut c = tokio::task::spawn_blocking(move || {
        c.send(&[F::Query(Bytes::from_static(
            b"INSERT INTO t VALUES (5, 'after a flushed commit')",
        ))]);
        c
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = server_activity(&g);
    assert!(
        !seen.contains("after a flushed commit"),
        "a write in autocommit is not forwarded before its event is durable:\n{seen}"
    );
    lock.release();
    let (msgs, status) = tokio::task::spawn_blocking(move || {
        // The Execute's Flush left the extended request open; its Sync comes with the Query.
        c.send(&[F::Sync]);
        let mut all = Vec::new();
        for _ in 0..2 {
            let (m, s) = c.until_ready();
            all.extend(m);
            if s == weir_wire::backend::TxStatus::Idle && !all.is_empty() {
                return (all, s);
            }
        }
        (all, weir_wire::backend::TxStatus::Idle)
    })
    .await
    .unwrap();
    assert!(first_error(&msgs).is_none(), "{msgs:?}");
    assert_eq!(status, weir_wire::backend::TxStatus::Idle);
    assert_eq!(rows_in_t(&g), "5");
}

/// A read of a view runs the view's rule, which may call a function that writes (and, in
/// autocommit, commits): it waits for its event like a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_that_writes_is_not_read_before_its_event_is_durable() {
    let g = gateway();
    g.cluster
        .psql(
            "app",
            "CREATE TABLE side (x int); GRANT ALL ON side TO PUBLIC; \
             CREATE FUNCTION touch() RETURNS int LANGUAGE sql AS 'INSERT INTO side VALUES (1) RETURNING 1'; \
             CREATE VIEW touching AS SELECT touch() AS x; GRANT SELECT ON touching TO PUBLIC;",
        )
        .unwrap();
    let reader = g.connect("bob", BOB_TOKEN).await.unwrap();
    // The catalog is loaded by a first statement.
    reader.batch_execute("SELECT 1").await.unwrap();
    let lock = lock_trail(&g);
    let read = tokio::spawn(async move { first_value(&reader, "SELECT x FROM touching").await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let side = |g: &Gateway| g.cluster.psql("app", "SELECT count(*) FROM side").unwrap();
    assert_eq!(side(&g).trim(), "0", "the view's write waits for the event");
    lock.release();
    assert_eq!(read.await.unwrap().unwrap().as_deref(), Some("1"));
    assert_eq!(side(&g).trim(), "1");
}
