//! tokio-postgres through the gateway: prepared statements and binary results, simple and
//! batch queries, transactions, COPY both ways (text and binary), pipelining, portals, cancel
//! (and Weir's own cancel keys), LISTEN/NOTIFY and notices, error passthrough, and a large
//! streamed result.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, IsolationLevel, NoTls, SimpleQueryMessage};
use weir_wire::backend::{Authentication, Message as B, TxStatus};
use weir_wire::frontend::Message as F;
use weir_wire::startup::StartupPacket;

/// Upper bound for anything that should be immediate (a cancel taking effect, a
/// notification arriving). Generous: only a hang should ever hit it.
const PATIENCE: Duration = Duration::from_secs(10);

async fn alice(g: &Gateway) -> Client {
    g.connect("alice", ALICE_TOKEN).await.unwrap()
}

/// A client whose asynchronous messages (notices, notifications) are forwarded to a channel.
async fn client_with_messages(
    g: &Gateway,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>) {
    let (client, mut conn) = tokio_postgres::connect(&g.alice(), NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
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
    (client, rx)
}

async fn next_message(rx: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>) -> AsyncMessage {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("no asynchronous message within 10 s")
        .expect("connection closed")
}

fn rows_of(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn command_counts(msgs: &[SimpleQueryMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Prepared statements and binary results
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_run_many_times_with_params() {
    let g = Gateway::start();
    let c = alice(&g).await;
    c.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    // Two named statements, prepared once, used alternately many times.
    let insert = c
        .prepare("INSERT INTO kv VALUES ($1, $2) RETURNING k * 10")
        .await
        .unwrap();
    let lookup = c.prepare("SELECT v FROM kv WHERE k = $1").await.unwrap();
    assert_eq!(insert.params(), &[Type::INT4, Type::TEXT]);
    assert_eq!(lookup.columns()[0].type_(), &Type::TEXT);
    for k in 0..300i32 {
        let v = format!("value {k} ✓");
        let ten: i32 = c.query_one(&insert, &[&k, &v]).await.unwrap().get(0);
        assert_eq!(ten, k * 10);
        let got: String = c.query_one(&lookup, &[&k]).await.unwrap().get(0);
        assert_eq!(got, v);
    }
    // execute() reports affected rows through a prepared UPDATE.
    let update = c
        .prepare("UPDATE kv SET v = v || '!' WHERE k < $1")
        .await
        .unwrap();
    assert_eq!(c.execute(&update, &[&100i32]).await.unwrap(), 100);
    assert_eq!(c.execute(&update, &[&0i32]).await.unwrap(), 0);

    // Statements prepared and dropped over and over: each drop closes it on the server, so
    // the upstream session does not accumulate them.
    for i in 0..200i32 {
        let s = c.prepare(&format!("SELECT {i} + $1::int4")).await.unwrap();
        let r: i32 = c.query_one(&s, &[&1i32]).await.unwrap().get(0);
        assert_eq!(r, i + 1);
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n < 20, "{n} prepared statements left on the server");
    // The long-lived statements still work after all that.
    let got: String = c.query_one(&lookup, &[&299i32]).await.unwrap().get(0);
    assert_eq!(got, "value 299 ✓");

    // An unnamed statement with explicit types (no separate prepare round trip).
    let row = c
        .query_typed_one(
            "SELECT $1 || '-' || $2",
            &[(&"a", Type::TEXT), (&7i32, Type::INT4)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "a-7");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_results_of_every_common_type() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let stmt = c
        .prepare(
            "SELECT $1::int4, $2::int8, $3::text, $4::bytea, $5::float8, $6::bool, \
             $7::int4, $8::int4[], $9::int2, $10::float4, $11::text[], $12::int4[]",
        )
        .await
        .unwrap();
    let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    type Case = (i32, i64, String, Vec<u8>, f64, bool, Option<i32>);
    let cases: Vec<Case> = vec![
        (0, 0, String::new(), vec![], 0.0, false, None),
        (
            i32::MAX,
            i64::MIN,
            "héllo wörld 🦀".into(),
            vec![0, 255, 7],
            -1.5e300,
            true,
            Some(-42),
        ),
        (
            i32::MIN,
            i64::MAX,
            "x".repeat(70_000),
            blob,
            f64::INFINITY,
            true,
            Some(0),
        ),
    ];
    for (a, b, t, by, f, bo, n) in cases {
        let arr = vec![1i32, -2, 3, i32::MAX];
        let texts = vec!["a".to_string(), String::new(), "ç,\"{}".to_string()];
        let with_nulls: Vec<Option<i32>> = vec![Some(1), None, Some(3)];
        let row = c
            .query_one(
                &stmt,
                &[
                    &a,
                    &b,
                    &t,
                    &by,
                    &f,
                    &bo,
                    &n,
                    &arr,
                    &-7i16,
                    &0.25f32,
                    &texts,
                    &with_nulls,
                ],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), a);
        assert_eq!(row.get::<_, i64>(1), b);
        assert_eq!(row.get::<_, String>(2), t);
        assert_eq!(row.get::<_, Vec<u8>>(3), by);
        assert_eq!(row.get::<_, f64>(4), f);
        assert_eq!(row.get::<_, bool>(5), bo);
        assert_eq!(row.get::<_, Option<i32>>(6), n);
        assert_eq!(row.get::<_, Vec<i32>>(7), arr);
        assert_eq!(row.get::<_, i16>(8), -7);
        assert_eq!(row.get::<_, f32>(9), 0.25);
        assert_eq!(row.get::<_, Vec<String>>(10), texts);
        assert_eq!(row.get::<_, Vec<Option<i32>>>(11), with_nulls);
    }
    // NaN survives the binary round trip too.
    let nan: f64 = c
        .query_one("SELECT $1::float8", &[&f64::NAN])
        .await
        .unwrap()
        .get(0);
    assert!(nan.is_nan());
    // A whole row of NULLs, from a table, in binary.
    c.batch_execute("CREATE TABLE n (a int, b text, c bytea, d int[])")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO n VALUES ($1, $2, $3, $4)",
        &[
            &None::<i32>,
            &None::<String>,
            &None::<Vec<u8>>,
            &None::<Vec<i32>>,
        ],
    )
    .await
    .unwrap();
    let row = c.query_one("SELECT * FROM n", &[]).await.unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), None);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, Option<Vec<u8>>>(2), None);
    assert_eq!(row.get::<_, Option<Vec<i32>>>(3), None);
    // A 10 MiB bytea parameter and result (one 10 MiB Bind, one 10 MiB DataRow).
    let big: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let row = c
        .query_one("SELECT $1::bytea, length($1::bytea)", &[&big])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1), 10 * 1024 * 1024);
    assert!(row.get::<_, &[u8]>(0) == big.as_slice());
}

// ---------------------------------------------------------------------------------------------
// Simple query protocol
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn simple_query_with_several_statements() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let msgs = c
        .simple_query(
            "SELECT 1 AS one; SELECT 'two', NULL; CREATE TABLE s (i int); \
             INSERT INTO s SELECT generate_series(1, 5); SELECT i FROM s ORDER BY i",
        )
        .await
        .unwrap();
    let rows = rows_of(&msgs);
    assert_eq!(rows[0], vec![Some("1".to_string())]);
    assert_eq!(rows[1], vec![Some("two".to_string()), None]);
    assert_eq!(
        rows[2..]
            .iter()
            .map(|r| r[0].clone().unwrap())
            .collect::<Vec<_>>(),
        ["1", "2", "3", "4", "5"]
    );
    assert_eq!(command_counts(&msgs), vec![1, 1, 0, 5, 5]);

    // An error stops the rest of the string; the statements before it in the same implicit
    // transaction are rolled back with it.
    let err = c
        .simple_query("INSERT INTO s VALUES (100); SELECT 1/0; INSERT INTO s VALUES (101)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let msgs = c
        .simple_query("SELECT count(*) FROM s WHERE i >= 100")
        .await
        .unwrap();
    assert_eq!(rows_of(&msgs), vec![vec![Some("0".to_string())]]);

    // An empty query string and a comment-only one.
    assert!(rows_of(&c.simple_query("").await.unwrap()).is_empty());
    assert!(rows_of(&c.simple_query("-- nothing").await.unwrap()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_execute_runs_every_statement() {
    let g = Gateway::start();
    let c = alice(&g).await;
    c.batch_execute(
        "CREATE TABLE b (id serial PRIMARY KEY, name text NOT NULL);
         INSERT INTO b (name) VALUES ('a'), ('b'), ('c');
         UPDATE b SET name = upper(name) WHERE id > 1;
         DELETE FROM b WHERE id = 1;
         CREATE INDEX ON b (name);",
    )
    .await
    .unwrap();
    let names: Vec<String> = c
        .query("SELECT name FROM b ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["B", "C"]);
    let err = c
        .batch_execute("INSERT INTO b (name) VALUES ('d'); INSERT INTO b (name) VALUES (NULL)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::NOT_NULL_VIOLATION));
    let n: i64 = c
        .query_one("SELECT count(*) FROM b", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the batch's implicit transaction was not rolled back");
}

// ---------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn transactions_commit_rollback_and_errors() {
    let g = Gateway::start();
    let mut c = alice(&g).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();

    // Commit.
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&c).await, 2);

    // Rollback.
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (3)", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&c).await, 2);

    // Dropping a transaction without commit rolls it back.
    {
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO t VALUES (4)", &[]).await.unwrap();
    }
    assert_eq!(count(&c).await, 2);

    // An error mid-transaction: every later statement fails with 25P02 until ROLLBACK, and
    // nothing of the transaction survives.
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (5)", &[]).await.unwrap();
    let err = tx
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let err = tx
        .execute("INSERT INTO t VALUES (6)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    let err = tx.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    tx.rollback().await.unwrap();
    assert_eq!(count(&c).await, 2);

    // COMMIT of a failed transaction reports ROLLBACK and keeps nothing.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    assert!(c.batch_execute("SELECT 1/0").await.is_err());
    let msgs = c.simple_query("COMMIT").await.unwrap();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))),
        "{msgs:?}"
    );
    assert_eq!(count(&c).await, 2);

    // Savepoints: the inner failure is undone, the outer work commits.
    let mut tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (10)", &[]).await.unwrap();
    {
        let sp = tx.savepoint("sp_inner").await.unwrap();
        sp.execute("INSERT INTO t VALUES (11)", &[]).await.unwrap();
        assert!(sp.execute("INSERT INTO t VALUES (10)", &[]).await.is_err());
        sp.rollback().await.unwrap();
    }
    tx.execute("INSERT INTO t VALUES (12)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i32> = c
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 2, 10, 12]);

    // A read-only serializable transaction.
    let tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .read_only(true)
        .start()
        .await
        .unwrap();
    let level: String = tx
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "serializable");
    let err = tx
        .execute("INSERT INTO t VALUES (13)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    tx.rollback().await.unwrap();

    // The client is fine afterwards.
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

async fn count(c: &Client) -> i64 {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn portals_fetch_in_chunks() {
    let g = Gateway::start();
    let mut c = alice(&g).await;
    let tx = c.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT i FROM generate_series(1, 1000) i", &[])
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        // Execute with a row limit: each chunk ends with PortalSuspended.
        let rows = tx.query_portal(&portal, 128).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 128);
        got.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(got, (1..=1000).collect::<Vec<_>>());
    tx.commit().await.unwrap();
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

// ---------------------------------------------------------------------------------------------
// COPY
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_text_then_copy_out_100k_rows() {
    let g = Gateway::start();
    let c = alice(&g).await;
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
        sink.send(Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);
    let (n, sum): (i64, i64) = {
        let r = c
            .query_one("SELECT count(*), sum(id)::int8 FROM t", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((n, sum), (100_000, 4_999_950_000));

    let stream = c
        .copy_out("COPY (SELECT id, name FROM t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let text = String::from_utf8(chunks.concat()).unwrap();
    let mut lines = 0;
    for (i, line) in text.lines().enumerate() {
        assert_eq!(line, format!("{i}\tname {i}"));
        lines += 1;
    }
    assert_eq!(lines, 100_000);
    assert!(text.ends_with('\n'));
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_out_of_a_generated_series_verifies_every_row() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let stream = c
        .copy_out(
            "COPY (SELECT i, i * 2, 'row ' || i, i % 3 = 0 FROM generate_series(1, 100000) i) \
             TO STDOUT WITH (FORMAT csv)",
        )
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut text = Vec::new();
    while let Some(chunk) = stream.try_next().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).unwrap();
    let expected: String = (1..=100_000i64)
        .map(|i| {
            format!(
                "{i},{},row {i},{}\n",
                i * 2,
                if i % 3 == 0 { "t" } else { "f" }
            )
        })
        .collect();
    assert!(text == expected, "COPY OUT content differs");

    // An error in the middle of COPY OUT ends the stream with that error.
    let stream = c
        .copy_out("COPY (SELECT 1 / (50000 - i) FROM generate_series(1, 100000) i) TO STDOUT")
        .await;
    let err = match stream {
        Err(e) => e,
        Ok(s) => s.try_collect::<Vec<Bytes>>().await.unwrap_err(),
    };
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_copy_in_and_out() {
    let g = Gateway::start();
    let c = alice(&g).await;
    c.batch_execute("CREATE TABLE bc (id int8, payload bytea, note text)")
        .await
        .unwrap();
    let types = [Type::INT8, Type::BYTEA, Type::TEXT];
    let sink = c
        .copy_in("COPY bc FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_util::pin_mut!(writer);
    for i in 0..20_000i64 {
        let payload: Vec<u8> = (0..(i % 64) as u8).collect();
        let note: Option<String> = (i % 5 != 0).then(|| format!("n{i}\t\\\n"));
        writer.as_mut().write(&[&i, &payload, &note]).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 20_000);

    let stream = c
        .copy_out("COPY (SELECT * FROM bc ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .unwrap();
    let rows = BinaryCopyOutStream::new(stream, &types);
    futures_util::pin_mut!(rows);
    let mut i = 0i64;
    while let Some(row) = rows.try_next().await.unwrap() {
        assert_eq!(row.get::<i64>(0), i);
        let payload: Vec<u8> = (0..(i % 64) as u8).collect();
        assert_eq!(row.get::<Vec<u8>>(1), payload);
        let note: Option<String> = (i % 5 != 0).then(|| format!("n{i}\t\\\n"));
        assert_eq!(row.get::<Option<String>>(2), note);
        i += 1;
    }
    assert_eq!(i, 20_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_abandoned_copy_in_leave_the_client_usable() {
    let g = Gateway::start();
    let c = alice(&g).await;
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();

    // Bad data: the server fails the COPY; nothing is loaded.
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let sent = sink
        .send(Bytes::from_static(b"1\n2\nnot a number\n4\n"))
        .await;
    let err = match sent {
        Err(e) => e,
        Ok(()) => sink.finish().await.unwrap_err(),
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // A sink dropped before finish aborts the COPY (CopyFail).
    {
        let sink = c.copy_in::<_, Bytes>("COPY t FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"7\n8\n")).await.unwrap();
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // And a good COPY afterwards works.
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"9\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
}

/// After a COPY FROM STDIN in the extended protocol (what tokio-postgres sends: Bind,
/// Execute, Sync; CopyData…; CopyDone, Sync), PostgreSQL answers the two Syncs with ONE
/// ReadyForQuery — it ignores Sync during copy-in mode. The gateway's tracker expects a
/// ReadyForQuery per Sync, so after each such COPY it stays one request behind for the rest
/// of the session: the completion record of request N carries the results of request N+1,
/// and the last request's completion is never recorded.
#[tokio::test(flavor = "multi_thread")]
async fn copy_in_keeps_request_tracking_in_step() {
    let g = Gateway::start();
    let c = alice(&g).await;
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\n2\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    c.batch_execute("SELECT 'marker' AS after_copy")
        .await
        .unwrap();
    // The marker's statement event names its request id; its completion must follow.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = g.audit_events();
        let request = events
            .iter()
            .find(|e| e["event"] == "statement" && e["sql"] == "SELECT $1 AS after_copy")
            .map(|e| e["request"].clone());
        if let Some(request) = request {
            if let Some(done) = events
                .iter()
                .find(|e| e["event"] == "completed" && e["request"] == request)
            {
                assert_eq!(done["tags"], serde_json::json!(["SELECT 1"]), "{done}");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the request after a COPY was never recorded as completed: {:#?}",
            events
                .iter()
                .filter(|e| e["event"] == "statement" || e["event"] == "completed")
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same lag, made visible to the client: each extended-protocol COPY FROM STDIN leaves one
/// request the tracker believes is still in flight. After 1,024 of them the pipeline window
/// (PIPELINE_DEPTH) is permanently full and the frontend half stops reading: the 1,025th
/// COPY in the session hangs forever.
#[tokio::test(flavor = "multi_thread")]
async fn many_copy_ins_in_one_session_do_not_hang() {
    let g = Gateway::start();
    let c = alice(&g).await;
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let stmt = c.prepare("COPY t FROM STDIN").await.unwrap();
    for i in 0..1100 {
        let done = tokio::time::timeout(PATIENCE, async {
            let sink = c.copy_in(&stmt).await.unwrap();
            futures_util::pin_mut!(sink);
            sink.send(Bytes::from(format!("{i}\n"))).await.unwrap();
            sink.finish().await.unwrap()
        })
        .await;
        assert_eq!(done.unwrap_or_else(|_| panic!("COPY number {i} hung")), 1);
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1100);
}

// ---------------------------------------------------------------------------------------------
// Pipelining
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_queries_come_back_in_order() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let stmt = c
        .prepare("SELECT $1::int4, pg_sleep(0.001)::text")
        .await
        .unwrap();
    let futures: Vec<_> = (0..300i32)
        .map(|i| {
            let (c, stmt) = (&c, &stmt);
            async move { c.query_one(stmt, &[&i]).await.unwrap().get::<_, i32>(0) }
        })
        .collect();
    let got = futures_util::future::join_all(futures).await;
    assert_eq!(got, (0..300).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_queries_with_errors_in_between() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let ok = c.prepare("SELECT $1::int4 * 2").await.unwrap();
    let bad = c.prepare("SELECT 1 / ($1::int4 - $1::int4)").await.unwrap();
    // Prepared statements, unprepared queries (which prepare first) and simple queries, all
    // in flight at once; every 7th fails. Each error must land on its own query only.
    let futures: Vec<_> = (0..210i32)
        .map(|i| {
            let (c, ok, bad) = (&c, &ok, &bad);
            async move {
                match i % 7 {
                    3 => c
                        .query_one(bad, &[&i])
                        .await
                        .map(|_| -1)
                        .map_err(|e| e.code().cloned()),
                    5 => c
                        .simple_query(&format!("SELECT {i} * 2"))
                        .await
                        .map(|m| rows_of(&m)[0][0].as_ref().unwrap().parse::<i32>().unwrap())
                        .map_err(|e| e.code().cloned()),
                    6 => c
                        .query_one(&format!("SELECT {i}::int4 * 2 AS v{i}"), &[])
                        .await
                        .map(|r| r.get::<_, i32>(0))
                        .map_err(|e| e.code().cloned()),
                    _ => c
                        .query_one(ok, &[&i])
                        .await
                        .map(|r| r.get::<_, i32>(0))
                        .map_err(|e| e.code().cloned()),
                }
            }
        })
        .collect();
    let got = futures_util::future::join_all(futures).await;
    for (i, r) in got.into_iter().enumerate() {
        let i = i32::try_from(i).unwrap();
        if i % 7 == 3 {
            assert_eq!(r, Err(Some(SqlState::DIVISION_BY_ZERO)), "query {i}");
        } else {
            assert_eq!(r, Ok(i * 2), "query {i}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------------

/// Waits until the upstream reports `sql` running.
async fn wait_active(watcher: &Client, sql: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&sql],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} never became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_running_query() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let token = c.cancel_token();
    let watcher = alice(&g).await;
    let query = tokio::spawn(async move {
        let start = Instant::now();
        let r = c.simple_query("SELECT pg_sleep(30)").await;
        (r.map(|_| ()), start.elapsed(), c)
    });
    wait_active(&watcher, "SELECT pg_sleep(30)").await;
    token.cancel_query(NoTls).await.unwrap();
    let (r, elapsed, c) = tokio::time::timeout(PATIENCE, query)
        .await
        .expect("the cancelled query did not end within 10 s")
        .unwrap();
    assert_eq!(r.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
    assert!(elapsed < PATIENCE, "{elapsed:?}");
    // The session is still usable, with the extended protocol too.
    let v: i32 = c
        .query_one("SELECT $1::int4", &[&5i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 5);
    // A prepared query cancelled the same way.
    let token = c.cancel_token();
    let stmt = c.prepare("SELECT pg_sleep($1)").await.unwrap();
    let query = tokio::spawn(async move {
        let r = c.query(&stmt, &[&30f64]).await;
        (r.map(|_| ()), c)
    });
    wait_active(&watcher, "SELECT pg_sleep($1)").await;
    token.cancel_query(NoTls).await.unwrap();
    let (r, c) = tokio::time::timeout(PATIENCE, query)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
    let v: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

/// A minimal raw session (std TCP), to see the BackendKeyData the gateway issues, which
/// tokio-postgres keeps private.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
    /// What was sent last, for failure messages.
    last: String,
}

impl Raw {
    fn login(port: u16) -> (Raw, i32, Bytes) {
        let s = raw(port);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = Raw {
            s,
            buf: BytesMut::new(),
            last: "startup".into(),
        };
        let mut out = BytesMut::new();
        StartupPacket::Startup {
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "app".into()),
            ],
        }
        .encode(&mut out);
        r.s.write_all(&out).unwrap();
        assert!(matches!(
            r.recv(),
            B::Authentication(Authentication::CleartextPassword)
        ));
        r.send(&F::Password(Bytes::from(format!("{ALICE_TOKEN}\0"))));
        let (msgs, _) = r.until_ready();
        let (pid, key) = msgs
            .iter()
            .find_map(|m| match m {
                B::BackendKeyData {
                    process_id,
                    secret_key,
                } => Some((*process_id, secret_key.clone())),
                _ => None,
            })
            .expect("BackendKeyData");
        (r, pid, key)
    }

    fn send(&mut self, m: &F) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        self.s.write_all(&out).unwrap();
    }

    fn query(&mut self, sql: &str) {
        self.last = sql.to_owned();
        self.send(&F::Query(Bytes::copy_from_slice(sql.as_bytes())));
    }

    fn recv(&mut self) -> B {
        loop {
            if let Some(h) = weir_wire::Header::parse(&self.buf, 1 << 30).unwrap() {
                if self.buf.len() >= h.frame_len() {
                    let frame = self.buf.split_to(h.frame_len()).freeze();
                    return B::decode(h.tag, frame.slice(5..)).unwrap();
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .s
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("no answer to {:?} within 30 s: {e}", self.last));
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn until_ready(&mut self) -> (Vec<B>, TxStatus) {
        let mut msgs = Vec::new();
        loop {
            match self.recv() {
                B::ReadyForQuery(s) => return (msgs, s),
                m => msgs.push(m),
            }
        }
    }

    /// The text of the first column of the first DataRow.
    fn scalar(&mut self, sql: &str) -> String {
        self.query(sql);
        let (msgs, _) = self.until_ready();
        assert!(first_error(&msgs).is_none(), "{msgs:?}");
        msgs.iter()
            .find_map(|m| match m {
                B::DataRow(r) => r[0]
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                _ => None,
            })
            .unwrap()
    }
}

/// Sends a CancelRequest and waits until the gateway has dealt with it (it closes the
/// connection without an answer; for a known key only after the upstream closed its own).
fn send_cancel(port: u16, pid: i32, key: &[u8]) {
    let mut s = raw(port);
    let mut out = BytesMut::new();
    StartupPacket::Cancel {
        process_id: pid,
        secret_key: Bytes::copy_from_slice(key),
    }
    .encode(&mut out);
    s.write_all(&out).unwrap();
    assert!(read_all(&mut s).is_empty(), "a CancelRequest got an answer");
}

fn wait_active_sync(g: &Gateway, sql: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = g
            .cluster
            .psql(
                "app",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}' AND state = 'active'"
                ),
            )
            .unwrap();
        if n.trim() != "0" {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} never became active");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cancel_keys_are_weirs_own_and_a_wrong_secret_cancels_nothing() {
    let g = Gateway::start();
    let (mut a, pid, key) = Raw::login(g.port);
    assert_eq!(key.len(), 4);
    let upstream_pid: i32 = a.scalar("SELECT pg_backend_pid()").parse().unwrap();
    assert_ne!(
        pid, upstream_pid,
        "the client learned the upstream's pid in BackendKeyData"
    );
    // Each session gets its own key.
    let (_b, pid_b, key_b) = Raw::login(g.port);
    assert!(pid_b != pid || key_b != key);

    // Wrong keys, while a query runs: nothing is cancelled.
    a.query("SELECT pg_sleep(4)");
    wait_active_sync(&g, "SELECT pg_sleep(4)");
    let wrong: Vec<u8> = key.iter().map(|b| b ^ 0x5a).collect();
    send_cancel(g.port, pid, &wrong);
    send_cancel(g.port, upstream_pid, &key);
    send_cancel(g.port, pid.wrapping_add(1), &key);
    send_cancel(g.port, pid_b, &key);
    let (msgs, status) = a.until_ready();
    assert!(
        first_error(&msgs).is_none(),
        "a CancelRequest with a wrong key cancelled the query: {msgs:?}"
    );
    assert_eq!(status, TxStatus::Idle);

    // The right key cancels it, at once.
    a.query("SELECT pg_sleep(60)");
    wait_active_sync(&g, "SELECT pg_sleep(60)");
    let start = Instant::now();
    send_cancel(g.port, pid, &key);
    let (msgs, _) = a.until_ready();
    assert_eq!(first_error(&msgs).map(|e| e.0).as_deref(), Some("57014"));
    assert!(start.elapsed() < PATIENCE);
    assert_eq!(a.scalar("SELECT 'usable'"), "usable");

    // A session's own notifications carry the pid Weir gave it (libpq compares be_pid with
    // PQbackendPID to recognise them), not the upstream's.
    a.query("LISTEN self_chan");
    a.until_ready();
    a.query("NOTIFY self_chan, 'me'");
    let (msgs, _) = a.until_ready();
    let sender = msgs
        .iter()
        .find_map(|m| match m {
            B::NotificationResponse {
                process_id,
                channel,
                payload,
            } => {
                assert_eq!(&channel[..], b"self_chan");
                assert_eq!(&payload[..], b"me");
                Some(*process_id)
            }
            _ => None,
        })
        .expect("own notification");
    assert_eq!(sender, pid);
}

// ---------------------------------------------------------------------------------------------
// LISTEN/NOTIFY and notices
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn notifications_arrive_while_idle_in_order() {
    let g = Gateway::start();
    let (listener, mut rx) = client_with_messages(&g).await;
    listener.batch_execute("LISTEN weir_test").await.unwrap();
    let sender = alice(&g).await;
    let sender_upstream_pid: i32 = sender
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for i in 0..50 {
        sender
            .batch_execute(&format!("NOTIFY weir_test, 'payload {i} ✓'"))
            .await
            .unwrap();
    }
    // The listener issues no query: the gateway forwards what the server sends an idle
    // session as it arrives.
    let mut pids = Vec::new();
    let mut i = 0;
    while i < 50 {
        if let AsyncMessage::Notification(n) = next_message(&mut rx).await {
            assert_eq!(n.channel(), "weir_test");
            assert_eq!(n.payload(), format!("payload {i} ✓"));
            pids.push(n.process_id());
            i += 1;
        }
    }
    // The sender is named by its Weir pid, not the upstream's.
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_ne!(pids[0], sender_upstream_pid);

    // A notification sent in a transaction arrives only after COMMIT.
    let mut tx_sender = alice(&g).await;
    let tx = tx_sender.transaction().await.unwrap();
    tx.batch_execute("NOTIFY weir_test, 'in tx'").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.try_recv().is_err(),
        "notification delivered before COMMIT"
    );
    tx.commit().await.unwrap();
    loop {
        if let AsyncMessage::Notification(n) = next_message(&mut rx).await {
            assert_eq!(n.payload(), "in tx");
            break;
        }
    }
    // UNLISTEN stops delivery; the connection is still fine.
    listener.batch_execute("UNLISTEN weir_test").await.unwrap();
    sender
        .batch_execute("NOTIFY weir_test, 'after unlisten'")
        .await
        .unwrap();
    listener.batch_execute("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(m) = rx.try_recv() {
        if let AsyncMessage::Notification(n) = m {
            panic!("notification after UNLISTEN: {}", n.payload());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_arrive_with_their_fields() {
    let g = Gateway::start();
    let (c, mut rx) = client_with_messages(&g).await;
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hi'; END $$")
        .await
        .unwrap();
    match next_message(&mut rx).await {
        AsyncMessage::Notice(n) => {
            assert_eq!(n.message(), "hi");
            assert_eq!(n.severity(), "NOTICE");
            assert_eq!(n.code(), &SqlState::SUCCESSFUL_COMPLETION);
        }
        other => panic!("{other:?}"),
    }
    // Warnings with detail and hint, in the extended protocol, between the rows of a result.
    c.batch_execute(
        "CREATE FUNCTION weir_warn(i int) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
           RAISE WARNING 'careful %', i USING DETAIL = 'some detail', HINT = 'a hint', ERRCODE = '01000';
           RETURN i;
         END $$",
    )
    .await
    .unwrap();
    let rows = c
        .query("SELECT weir_warn(i) FROM generate_series(1, 3) i", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for i in 1..=3 {
        match next_message(&mut rx).await {
            AsyncMessage::Notice(n) => {
                assert_eq!(n.severity(), "WARNING");
                assert_eq!(n.message(), format!("careful {i}"));
                assert_eq!(n.detail(), Some("some detail"));
                assert_eq!(n.hint(), Some("a hint"));
                assert_eq!(n.code(), &SqlState::WARNING);
            }
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_pass_through_with_their_fields() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let err = c.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let db = err.as_db_error().unwrap();
    assert_eq!(db.severity(), "ERROR");
    assert_eq!(db.message(), "division by zero");
    // The same through the simple protocol.
    let err = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));

    c.batch_execute("CREATE TABLE u (id int CONSTRAINT u_pk PRIMARY KEY)")
        .await
        .unwrap();
    c.execute("INSERT INTO u VALUES (1)", &[]).await.unwrap();
    let err = c
        .execute("INSERT INTO u VALUES ($1)", &[&1i32])
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::UNIQUE_VIOLATION);
    assert_eq!(db.constraint(), Some("u_pk"));
    assert_eq!(db.table(), Some("u"));
    assert!(
        db.detail().unwrap_or("").contains("(id)=(1)"),
        "{:?}",
        db.detail()
    );

    // An error while preparing (Parse) carries its position.
    let err = c.prepare("SELECT no_such_column FROM u").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::UNDEFINED_COLUMN);
    assert!(
        matches!(db.position(), Some(ErrorPosition::Original(8))),
        "{:?}",
        db.position()
    );
    // Text the analyzer cannot parse never reaches the server: Weir denies it (fail closed).
    let err = c.prepare("SELECT 1 FROM WHERE").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert!(
        db.message().starts_with("weir: denied by"),
        "{}",
        db.message()
    );
    let err = c
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    // A value the server rejects at Bind (text-format input is not possible through
    // tokio-postgres, so: a bytea that is not valid UTF-8 cast to text inside the query).
    let err = c
        .query(
            "SELECT convert_from($1::bytea, 'UTF8')",
            &[&vec![0xffu8, 0xfe]],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE));
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

// ---------------------------------------------------------------------------------------------
// Large results and messages
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn large_result_streams_through() {
    let g = Gateway::start();
    let c = alice(&g).await;
    let stream = c
        .query_raw(
            "select repeat('x', 1000) from generate_series(1, 200000)",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(row) = stream.try_next().await.unwrap() {
        let v: &str = row.get(0);
        assert!(v.bytes().all(|b| b == b'x'));
        bytes += v.len() as u64;
        rows += 1;
    }
    assert_eq!(rows, 200_000);
    assert_eq!(bytes, 200_000_000);
    assert_eq!(stream.rows_affected(), Some(200_000));
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_max_message_size_ends_only_that_session() {
    let mut g = Gateway::start();
    let c = alice(&g).await;
    // One Bind carrying a 65 MiB parameter: over the default 64 MiB max_message_size.
    let big = vec![b'a'; 65 * 1024 * 1024];
    let r = c.query("SELECT length($1::bytea)", &[&big]).await;
    let err = r.unwrap_err();
    assert!(
        err.code() == Some(&SqlState::PROTOCOL_VIOLATION) || err.is_closed() || c.is_closed(),
        "{err:?}"
    );
    assert!(g.alive(), "{}", g.log());
    // Other sessions, and new ones, are unaffected.
    let d = alice(&g).await;
    let one: i32 = d.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
