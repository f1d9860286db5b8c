//! The pipeline seam: a request is decided before anything is forwarded; a denied request
//! never runs, aborts the transaction like a failed statement, and every request is audited
//! before it is forwarded. The core's analyzer denies text it cannot read (invalid UTF-8),
//! which is how these tests provoke a denial.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use bytes::Bytes;
use weir_wire::backend::{Message as B, TxStatus};
use weir_wire::frontend::{Bind, Message as F, Parse};

fn q(sql: &[u8]) -> F {
    F::Query(Bytes::copy_from_slice(sql))
}

fn parse(sql: &[u8]) -> F {
    F::Parse(Parse {
        name: Bytes::new(),
        query: Bytes::copy_from_slice(sql),
        param_types: vec![],
    })
}

fn bind() -> F {
    F::Bind(Bind {
        portal: Bytes::new(),
        statement: Bytes::new(),
        param_formats: vec![],
        params: vec![],
        result_formats: vec![],
    })
}

fn exec() -> F {
    F::Execute {
        portal: Bytes::new(),
        max_rows: 0,
    }
}

const BAD: &[u8] = b"INSERT INTO t VALUES (2) -- \xff";

#[test]
fn denied_statement_aborts_the_transaction_and_never_runs() {
    let g = Gateway::start();
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    c.send(&[q(b"CREATE TABLE t (x int)")]);
    assert_eq!(c.until_ready().1, TxStatus::Idle);
    c.send(&[q(b"BEGIN")]);
    c.until_ready();
    c.send(&[q(b"INSERT INTO t VALUES (1)")]);
    assert_eq!(c.until_ready().1, TxStatus::InTransaction);

    c.send(&[q(BAD)]);
    let (msgs, status) = c.until_ready();
    let (code, message) = first_error(&msgs).unwrap();
    assert_eq!(code, "42501");
    assert!(
        message.starts_with("weir: denied by weir.analyze"),
        "{message}"
    );
    // The server aborted the transaction, exactly as for a failed statement.
    assert_eq!(status, TxStatus::Failed);

    c.send(&[q(b"COMMIT")]);
    let (msgs, status) = c.until_ready();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, B::CommandComplete(t) if t.as_ref() == b"ROLLBACK")),
        "{msgs:?}"
    );
    assert_eq!(status, TxStatus::Idle);
    c.send(&[q(b"SELECT count(*) FROM t")]);
    let (msgs, _) = c.until_ready();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, B::DataRow(v) if v[0].as_deref() == Some(&b"0"[..]))),
        "{msgs:?}"
    );

    // Outside a transaction the session simply goes on.
    c.send(&[q(BAD)]);
    let (msgs, status) = c.until_ready();
    assert_eq!(first_error(&msgs).unwrap().0, "42501");
    assert_eq!(status, TxStatus::Idle);
    c.send(&[q(b"SELECT 1")]);
    assert!(first_error(&c.until_ready().0).is_none());
}

#[test]
fn denied_extended_batch_is_not_forwarded_and_pipelining_keeps_order() {
    let g = Gateway::start();
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    c.send(&[q(b"CREATE TABLE t (x int)")]);
    c.until_ready();

    // Three pipelined requests: allowed, denied, allowed. Answers come back in order.
    c.send(&[
        parse(b"INSERT INTO t VALUES (1)"),
        bind(),
        exec(),
        F::Sync,
        parse(BAD),
        bind(),
        exec(),
        F::Sync,
        parse(b"SELECT count(*) FROM t"),
        bind(),
        exec(),
        F::Sync,
    ]);
    let (first, s1) = c.until_ready();
    assert!(first_error(&first).is_none(), "{first:?}");
    assert_eq!(s1, TxStatus::Idle);
    let (second, _) = c.until_ready();
    assert_eq!(first_error(&second).unwrap().0, "42501");
    assert!(
        !second
            .iter()
            .any(|m| matches!(m, B::ParseComplete | B::BindComplete)),
        "{second:?}"
    );
    let (third, _) = c.until_ready();
    assert!(
        third
            .iter()
            .any(|m| matches!(m, B::DataRow(v) if v[0].as_deref() == Some(&b"1"[..]))),
        "{third:?}"
    );

    // A denial in a Flush-terminated batch: the error comes at once, the rest of the batch up
    // to Sync is skipped, as the server does after an error.
    c.send(&[parse(BAD), F::Flush]);
    assert!(matches!(c.recv(), B::ErrorResponse(_)));
    c.send(&[bind(), exec(), F::Sync]);
    let (rest, status) = c.until_ready();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(status, TxStatus::Idle);
    c.send(&[q(b"SELECT count(*) FROM t")]);
    let (msgs, _) = c.until_ready();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, B::DataRow(v) if v[0].as_deref() == Some(&b"1"[..]))),
        "{msgs:?}"
    );
}

#[test]
fn every_request_is_audited_before_its_completion() {
    let g = Gateway::start();
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    c.send(&[q(b"SELECT 41 + 1")]);
    c.until_ready();
    c.send(&[q(BAD)]);
    c.until_ready();
    c.send(&[
        parse(b"SELECT $1::int"),
        F::Bind(Bind {
            portal: Bytes::new(),
            statement: Bytes::new(),
            param_formats: vec![],
            params: vec![Some(Bytes::from_static(b"7"))],
            result_formats: vec![],
        }),
        exec(),
        F::Sync,
    ]);
    c.until_ready();
    c.send(&[F::Terminate]);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let events = g.audit_events();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"connection_opened"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"connection_closed"), "{kinds:?}");
    // The session's statements (Weir's own catalog query is recorded as identity "weir").
    let statements: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "statement" && e["identity"] == "alice")
        .collect();
    assert_eq!(statements.len(), 3, "{events:?}");
    // Recorded normalized: the trail keeps the statement's shape, not its values.
    assert_eq!(statements[0]["sql"], "SELECT $1 + $2");
    assert_eq!(statements[0]["statements"][0]["kind"], "select");
    assert_eq!(
        statements[0]["fingerprint"].as_str().map(str::len),
        Some(16)
    );
    assert_eq!(statements[0]["decision"], "allow");
    assert_eq!(statements[0]["identity"], "alice");
    assert_eq!(statements[1]["decision"], "deny");
    assert_eq!(statements[1]["rule"], "weir.analyze");
    assert_eq!(statements[2]["via"], "execute");
    // Each allowed statement's event comes before its completion, which carries the outcome.
    for s in [statements[0], statements[2]] {
        let req = &s["request"];
        let at = events
            .iter()
            .position(|e| e["event"] == "statement" && &e["request"] == req)
            .unwrap();
        let done = events
            .iter()
            .position(|e| e["event"] == "completed" && &e["request"] == req)
            .unwrap();
        assert!(at < done);
        assert_eq!(events[done]["rows"], 1);
    }
}

#[test]
fn deep_pipeline_in_one_write_is_answered_in_full() {
    // Far more requests than the gateway keeps in flight, all in one write: it must forward,
    // wait for answers and go on, never stall.
    let g = Gateway::start();
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    let n = 5000;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(parse(format!("SELECT {i}").as_bytes()));
        batch.push(bind());
        batch.push(exec());
        batch.push(F::Sync);
    }
    let writer = {
        let mut stream = c.stream.try_clone().unwrap();
        let mut out = bytes::BytesMut::new();
        for m in &batch {
            m.encode(&mut out);
        }
        std::thread::spawn(move || std::io::Write::write_all(&mut stream, &out).unwrap())
    };
    for i in 0..n {
        let (msgs, _) = c.until_ready();
        let want = i.to_string();
        assert!(
            msgs.iter()
                .any(|m| matches!(m, B::DataRow(v) if v[0].as_deref() == Some(want.as_bytes()))),
            "{i}: {msgs:?}"
        );
    }
    writer.join().unwrap();
}
