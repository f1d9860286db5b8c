//! tokio-postgres through the gateway: prepared statements, binary results, COPY both ways,
//! pipelining, cancel, notifications and notices, error passthrough.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_and_binary_results() {
    let g = Gateway::start();
    let c = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let stmt = c.prepare("SELECT $1::int4 + 1, $2::text, $3::bytea, $4::float8, $5::bool, $6::int8[], NULL::text").await.unwrap();
    for i in 0..50i32 {
        let row = c
            .query_one(
                &stmt,
                &[
                    &i,
                    &"héllo",
                    &vec![0u8, 255, 7],
                    &1.5f64,
                    &true,
                    &vec![1i64, -2, 3],
                ],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(row.get::<_, &str>(1), "héllo");
        assert_eq!(row.get::<_, Vec<u8>>(2), vec![0u8, 255, 7]);
        assert_eq!(row.get::<_, f64>(3), 1.5);
        assert!(row.get::<_, bool>(4));
        assert_eq!(row.get::<_, Vec<i64>>(5), vec![1, -2, 3]);
        assert_eq!(row.get::<_, Option<&str>>(6), None);
    }
    let rows = c
        .simple_query("SELECT 1; SELECT 'two'; SELECT 3")
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_and_errors() {
    let g = Gateway::start();
    let mut c = g.connect("alice", ALICE_TOKEN).await.unwrap();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let err = tx
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let err = tx
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let err = c.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out() {
    let g = Gateway::start();
    let c = g.connect("alice", ALICE_TOKEN).await.unwrap();
    c.batch_execute("CREATE TABLE t (id int, name text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..100 {
        let mut data = String::new();
        for i in 0..1000 {
            let id = chunk * 1000 + i;
            data.push_str(&format!("{id}\tname {id}\n"));
        }
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);

    let stream = c
        .copy_out("COPY (SELECT id, name FROM t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 100_000);
    assert_eq!(text.lines().nth(4242), Some("4242\tname 4242"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_queries_come_back_in_order() {
    let g = Gateway::start();
    let c = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let stmt = c
        .prepare("SELECT $1::int4, pg_sleep(0.001)::text")
        .await
        .unwrap();
    let futures: Vec<_> = (0..200i32)
        .map(|i| {
            let (c, stmt) = (&c, &stmt);
            async move { c.query_one(stmt, &[&i]).await.unwrap().get::<_, i32>(0) }
        })
        .collect();
    let got = futures_util::future::join_all(futures).await;
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_running_query() {
    let g = Gateway::start();
    let c = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let token = c.cancel_token();
    let watcher = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let query = tokio::spawn(async move {
        let start = Instant::now();
        let r = c.simple_query("SELECT pg_sleep(30)").await;
        (r.map(|_| ()), start.elapsed(), c)
    });
    // Cancel once the server reports the query running.
    for _ in 0..100 {
        let n: i64 = watcher
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'", &[])
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel_query(NoTls).await.unwrap();
    let (r, elapsed, c) = query.await.unwrap();
    assert_eq!(r.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // The session is still usable, and its pid is Weir's, not the upstream's.
    let upstream_pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(upstream_pid > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_and_notices_arrive() {
    let g = Gateway::start();
    let (client, mut conn) = tokio_postgres::connect(&g.alice(), NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = futures_util::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(msg) => {
                    let _ = tx.send(msg);
                }
                Err(_) => break,
            }
        }
    });
    client.batch_execute("LISTEN weir_test").await.unwrap();
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .unwrap();
    let other = g.connect("alice", ALICE_TOKEN).await.unwrap();
    other
        .batch_execute("NOTIFY weir_test, 'payload 1'")
        .await
        .unwrap();
    let (mut notice, mut notification) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(notice && notification) && Instant::now() < deadline {
        client.simple_query("SELECT 1").await.unwrap();
        while let Ok(m) = rx.try_recv() {
            match m {
                AsyncMessage::Notice(n) => notice |= n.message() == "hello from plpgsql",
                AsyncMessage::Notification(n) => {
                    notification |= n.channel() == "weir_test" && n.payload() == "payload 1"
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(notice, "notice did not arrive");
    assert!(notification, "notification did not arrive");
}
