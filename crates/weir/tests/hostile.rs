//! Hostile protocol input: each case gets a protocol error and a closed connection, never a
//! crash or an allocation sized by the peer; the gateway keeps serving everyone else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use weir_wire::backend::Message as B;
use weir_wire::frontend::Message as F;
use weir_wire::startup::{StartupPacket, PROTOCOL_3_0, SSL_REQUEST_CODE};

/// Sends `bytes` on a fresh connection and returns everything the gateway answers before it
/// closes the connection. Fails if the gateway does not close it within 10 s.
fn exchange(g: &Gateway, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = raw(g.port);
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let start = Instant::now();
    let out = read_all(&mut s);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "connection was not closed"
    );
    out
}

/// The SQLSTATE of an ErrorResponse at the start of `bytes`.
fn error_code(bytes: &[u8]) -> Option<String> {
    let h = weir_wire::Header::parse(bytes, 1 << 20).ok()??;
    let body = bytes::Bytes::copy_from_slice(bytes.get(5..h.frame_len())?);
    match B::decode(h.tag, body).ok()? {
        B::ErrorResponse(f) => f.code().map(str::to_owned),
        _ => None,
    }
}

/// After every case: the gateway is alive and serves a normal client.
fn still_serving(g: &mut Gateway) {
    assert!(g.alive(), "weir serve died:\n{}", g.log());
    let out = g.psql(&g.alice(), "SELECT 'fine';\n");
    assert_eq!(stdout(&out).trim(), "fine", "{}", stderr(&out));
}

fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    StartupPacket::Startup {
        minor: 0,
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
    .encode(&mut out);
    out
}

#[test]
fn hostile_startup_packets() {
    let mut g = Gateway::start();

    // Length below the minimum.
    let out = exchange(&g, &[0, 0, 0, 4, 0, 0, 0, 0], false);
    assert_eq!(error_code(&out).as_deref(), Some("08P01"));
    still_serving(&mut g);

    // Length far above the 10,000-byte limit: refused from the header alone.
    let out = exchange(&g, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], false);
    assert_eq!(error_code(&out).as_deref(), Some("08P01"));
    still_serving(&mut g);

    // 10,000 parameters.
    let mut body = BytesMut::new();
    body.put_i32(0);
    body.put_i32(PROTOCOL_3_0);
    for i in 0..10_000 {
        body.put_slice(format!("p{i}\0v\0").as_bytes());
    }
    body.put_u8(0);
    let len = body.len() as i32;
    body[..4].copy_from_slice(&len.to_be_bytes());
    let out = exchange(&g, &body, false);
    assert_eq!(error_code(&out).as_deref(), Some("08P01"));
    still_serving(&mut g);

    // A truncated startup packet, then the client goes away.
    let full = startup_bytes(&[("user", "alice"), ("database", "app")]);
    let out = exchange(&g, &full[..full.len() - 5], true);
    assert!(
        out.is_empty() || error_code(&out).as_deref() == Some("08P01"),
        "{out:?}"
    );
    still_serving(&mut g);

    // Protocol 2.0.
    let mut v2 = BytesMut::new();
    v2.put_i32(8);
    v2.put_i32(2 << 16);
    let out = exchange(&g, &v2, false);
    assert_eq!(error_code(&out).as_deref(), Some("08P01"));
    still_serving(&mut g);

    // Garbage right behind an SSLRequest, in the same write: refused before any 'S', so
    // nothing sent in clear can be taken as coming over TLS (CVE-2021-23214).
    let mut ssl = BytesMut::new();
    ssl.put_i32(8);
    ssl.put_i32(SSL_REQUEST_CODE);
    ssl.put_slice(b"Q\0\0\0\x0dselect 1\0");
    let out = exchange(&g, &ssl, false);
    assert_ne!(out.first(), Some(&b'S'), "{out:?}");
    assert_eq!(error_code(&out).as_deref(), Some("08P01"));
    still_serving(&mut g);

    // SSLRequest answered, then garbage instead of a TLS ClientHello.
    let mut s = raw(g.port);
    s.write_all(&ssl[..8]).unwrap();
    let mut answer = [0u8; 1];
    std::io::Read::read_exact(&mut s, &mut answer).unwrap();
    assert_eq!(&answer, b"S");
    s.write_all(b"this is not a TLS handshake at all, not even close......")
        .unwrap();
    let _ = read_all(&mut s);
    still_serving(&mut g);

    // An unknown request code and a startup without a user.
    let mut odd = BytesMut::new();
    odd.put_i32(8);
    odd.put_i32(1234 << 16 | 5678);
    assert_eq!(
        error_code(&exchange(&g, &odd, false)).as_deref(),
        Some("08P01")
    );
    let out = exchange(&g, &startup_bytes(&[("database", "app")]), false);
    assert_eq!(error_code(&out).as_deref(), Some("28000"));
    still_serving(&mut g);
}

#[test]
fn gssapi_encryption_request_is_answered_n() {
    let g = Gateway::start();
    let mut s = raw(g.port);
    let mut gss = BytesMut::new();
    StartupPacket::GssEncRequest.encode(&mut gss);
    s.write_all(&gss).unwrap();
    let mut answer = [0u8; 1];
    std::io::Read::read_exact(&mut s, &mut answer).unwrap();
    assert_eq!(&answer, b"N");
    // The same connection goes on with a normal startup.
    s.write_all(&startup_bytes(&[("user", "alice"), ("database", "app")]))
        .unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut s, &mut first).unwrap();
    assert_eq!(&first, b"R");
}

/// An authenticated raw session, for hostile messages after startup.
fn session(g: &Gateway) -> RawClient {
    RawClient::connect(g.port, "alice", ALICE_TOKEN, "app")
}

fn after_auth(g: &Gateway, bytes: &[u8]) -> Vec<u8> {
    let mut c = session(g);
    c.stream.write_all(bytes).unwrap();
    let start = Instant::now();
    let out = read_all(&mut c.stream);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "connection was not closed"
    );
    out
}

#[test]
fn hostile_messages_after_authentication() {
    let mut g = Gateway::start();

    // A length field below 4.
    assert_eq!(
        error_code(&after_auth(&g, b"Q\0\0\0\x02")).as_deref(),
        Some("08P01")
    );
    still_serving(&mut g);

    // A length far above max_message_size: refused from the header, nothing read or allocated.
    let before = Instant::now();
    assert_eq!(
        error_code(&after_auth(&g, b"Q\x7f\xff\xff\xffselect")).as_deref(),
        Some("08P01")
    );
    assert!(before.elapsed() < Duration::from_secs(5));
    still_serving(&mut g);

    // An unknown tag.
    assert_eq!(
        error_code(&after_auth(&g, b"z\0\0\0\x04")).as_deref(),
        Some("08P01")
    );
    still_serving(&mut g);

    // A Bind claiming 32,767 parameters in a short body.
    assert_eq!(
        error_code(&after_auth(&g, b"B\0\0\0\x0c\0\0\x7f\xff\0\0\0\0")).as_deref(),
        Some("08P01")
    );
    still_serving(&mut g);

    // A password message after authentication.
    assert_eq!(
        error_code(&after_auth(&g, b"p\0\0\0\x09token")).as_deref(),
        Some("08P01")
    );
    still_serving(&mut g);

    // A truncated frame, then EOF: the session ends without an answer or a crash.
    let mut c = session(&g);
    c.stream.write_all(b"Q\0\0\0\x20select").unwrap();
    c.stream.shutdown(Shutdown::Write).unwrap();
    let _ = read_all(&mut c.stream);
    still_serving(&mut g);
}

#[test]
fn fastpath_function_call_is_denied_and_the_session_goes_on() {
    let g = Gateway::start();
    let mut c = session(&g);
    c.send(&[F::FunctionCall(weir_wire::frontend::FunctionCall {
        oid: 764, // lo_import
        arg_formats: vec![],
        args: vec![Some(bytes::Bytes::from_static(b"/etc/passwd"))],
        result_format: 0,
    })]);
    let (msgs, _) = c.until_ready();
    let (code, message) = first_error(&msgs).unwrap();
    assert_eq!(code, "42501");
    assert!(
        message.starts_with("weir: denied by weir.protocol.function_call"),
        "{message}"
    );
    c.send(&[F::Query(bytes::Bytes::from_static(b"SELECT 1"))]);
    let (msgs, _) = c.until_ready();
    assert!(first_error(&msgs).is_none(), "{msgs:?}");
}

#[test]
fn startup_options_and_replication_are_refused() {
    let g = Gateway::start();
    let out = exchange(
        &g,
        &startup_bytes(&[
            ("user", "alice"),
            ("database", "app"),
            ("options", "-c session_replication_role=replica"),
        ]),
        false,
    );
    assert_eq!(error_code(&out).as_deref(), Some("0A000"));
    let out = exchange(
        &g,
        &startup_bytes(&[
            ("user", "alice"),
            ("database", "app"),
            ("replication", "database"),
        ]),
        false,
    );
    assert_eq!(error_code(&out).as_deref(), Some("42501"));
}
