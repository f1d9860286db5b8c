//! Hostile protocol input over raw TCP. Every case must end in a protocol error (an
//! ErrorResponse with SQLSTATE 08P01 where the gateway can still answer, or just a closed
//! connection) and a CLOSED connection — never a crash, a hang, or an allocation sized by the
//! peer. After every case the gateway process must still be alive, must not have logged a
//! panic, and must still serve a normal psql session.
//!
//! The one deliberate exception is the fastpath FunctionCall: it is a *denial* (42501), not a
//! protocol violation, so the session stays usable.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use weir_wire::backend::{Authentication, Message as B, TxStatus};
use weir_wire::frontend::{Bind, FunctionCall, Message as F, Parse};
use weir_wire::startup::{StartupPacket, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE};

/// How long any single answer (or the close) may take. Generous: a refusal is immediate.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A tiny protocol-level client: one backend message at a time, and EOF as a first-class result.
// ---------------------------------------------------------------------------------------------

struct Wire {
    s: TcpStream,
    buf: BytesMut,
}

/// What a read produced.
enum Read1 {
    Msg(B),
    /// The gateway closed the connection (FIN or RST).
    Closed,
}

impl Wire {
    fn open(g: &Gateway) -> Wire {
        let s = raw(g.port);
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Wire {
            s,
            buf: BytesMut::new(),
        }
    }

    /// Writes `bytes`. A write error is ignored: the gateway may legitimately have closed the
    /// connection already (it refuses from the header, before the rest arrives).
    fn write(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    fn send(&mut self, msgs: &[F]) {
        let mut out = BytesMut::new();
        for m in msgs {
            m.encode(&mut out);
        }
        self.write(&out);
    }

    fn half_close(&mut self) {
        let _ = self.s.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into the buffer; false on EOF/reset. Panics when the gateway neither
    /// answers nor closes within [`PATIENCE`].
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the gateway neither answered nor closed the connection within {PATIENCE:?}")
            }
            // Reset, broken pipe…: the connection is gone.
            Err(_) => false,
        }
    }

    /// One untagged byte (the answer to SSLRequest / GSSENCRequest), or None on close.
    fn byte(&mut self) -> Option<u8> {
        if self.buf.is_empty() && !self.fill() {
            return None;
        }
        let b = self.buf[0];
        let _ = self.buf.split_to(1);
        Some(b)
    }

    /// One backend message, or `Closed`. Undecodable bytes from the gateway fail the test.
    fn recv(&mut self) -> Read1 {
        loop {
            if let Some(h) = weir_wire::Header::parse(&self.buf, 1 << 30).unwrap() {
                if self.buf.len() >= h.frame_len() {
                    let frame = self.buf.split_to(h.frame_len()).freeze();
                    let msg = B::decode(h.tag, frame.slice(5..))
                        .unwrap_or_else(|e| panic!("gateway sent an undecodable message: {e}"));
                    return Read1::Msg(msg);
                }
            }
            if !self.fill() {
                assert!(
                    self.buf.is_empty(),
                    "connection closed in the middle of a message: {:?}",
                    self.buf
                );
                return Read1::Closed;
            }
        }
    }

    fn recv_msg(&mut self) -> B {
        match self.recv() {
            Read1::Msg(m) => m,
            Read1::Closed => panic!("connection closed unexpectedly"),
        }
    }

    /// Everything up to and including ReadyForQuery.
    fn until_ready(&mut self) -> (Vec<B>, TxStatus) {
        let mut msgs = Vec::new();
        loop {
            match self.recv_msg() {
                B::ReadyForQuery(s) => return (msgs, s),
                m => msgs.push(m),
            }
        }
    }

    /// Every message until the gateway closes the connection; fails if it does not close it
    /// within [`PATIENCE`] of the last message.
    fn until_closed(&mut self) -> Vec<B> {
        let mut msgs = Vec::new();
        loop {
            match self.recv() {
                Read1::Msg(m) => msgs.push(m),
                Read1::Closed => return msgs,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// `msgs` (everything the gateway said before closing) is exactly one FATAL ErrorResponse
/// with `code`.
fn assert_fatal(msgs: &[B], code: &str) {
    match msgs {
        [B::ErrorResponse(f)] => {
            assert_eq!(f.code(), Some(code), "{f:?}");
            assert_eq!(
                f.get(b'S').map(|b| b.as_ref()),
                Some(&b"FATAL"[..]),
                "{f:?}"
            );
        }
        other => panic!("expected one FATAL {code} ErrorResponse, got {other:?}"),
    }
}

/// Either silence or a single FATAL 08P01: for cases where the client already went away.
fn assert_silent_or_protocol_error(msgs: &[B]) {
    if !msgs.is_empty() {
        assert_fatal(msgs, "08P01");
    }
}

/// After every case: the gateway is alive, logged no panic, and serves a normal client.
fn still_serving(g: &mut Gateway) {
    assert!(g.alive(), "weir serve died:\n{}", g.log());
    let log = g.log();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    let out = g.psql(&g.alice(), "SELECT 'still ' || 'fine';\n");
    assert_eq!(stdout(&out).trim(), "still fine", "{}", stderr(&out));
}

/// The upstream sessions opened for hostile clients are gone too (the gateway ended them
/// with the client): only the probe itself remains on database `app`.
fn upstream_sessions_end(g: &Gateway) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = g
            .cluster
            .psql(
                "app",
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .unwrap();
        if n.trim() == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "upstream sessions left behind: {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Building packets
// ---------------------------------------------------------------------------------------------

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

fn alice_startup() -> BytesMut {
    startup_bytes(&[("user", "alice"), ("database", "app")])
}

/// An untagged 8-byte request: length 8 and a code.
fn request(code: i32) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_i32(8);
    out.put_i32(code);
    out
}

/// A startup packet with `n` parameters (`p0=v`, `p1=v`, …) and a correct length field.
fn startup_with_params(n: usize) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(0);
    body.put_i32(PROTOCOL_3_0);
    for i in 0..n {
        body.put_slice(format!("p{i}\0v\0").as_bytes());
    }
    body.put_u8(0);
    let len = i32::try_from(body.len()).unwrap();
    body[..4].copy_from_slice(&len.to_be_bytes());
    body
}

/// Logs in as alice over raw TCP the way the brief describes: StartupMessage, answer the
/// AuthenticationCleartextPassword with a PasswordMessage carrying the token, read until
/// ReadyForQuery. Returns the connection and the BackendKeyData the gateway issued.
fn login(g: &Gateway) -> (Wire, i32, Bytes) {
    match try_login(g) {
        Ok(done) => done,
        Err(first) => {
            // Seen rarely in CI under full load: the first login after start closed with no
            // message and nothing in the gateway log. Record it loudly, check the gateway is
            // still up, and try once more, so that the hostile case this login only sets up
            // is still tested; a second failure fails the test.
            let alive = std::process::Command::new("kill")
                .args(["-0", &g.pid().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            eprintln!("WARNING: login failed once (gateway alive: {alive}): {first}");
            assert!(alive, "the gateway died: {first}");
            try_login(g).unwrap_or_else(|again| panic!("{again}"))
        }
    }
}

fn try_login(g: &Gateway) -> Result<(Wire, i32, Bytes), String> {
    let mut w = Wire::open(g);
    w.write(&alice_startup());
    match w.recv_msg() {
        B::Authentication(Authentication::CleartextPassword) => {}
        other => panic!("expected AuthenticationCleartextPassword, got {other:?}"),
    }
    w.send(&[F::Password(Bytes::from(format!("{ALICE_TOKEN}\0")))]);
    let mut msgs = Vec::new();
    let status = loop {
        match w.recv() {
            Read1::Msg(B::ReadyForQuery(s)) => break s,
            Read1::Msg(m) => msgs.push(m),
            Read1::Closed => {
                return Err(format!(
                "login: the gateway closed the connection after {msgs:?}\n--- gateway log ---\n{}",
                g.log()
            ))
            }
        }
    };
    assert_eq!(status, TxStatus::Idle);
    assert!(
        matches!(msgs.first(), Some(B::Authentication(Authentication::Ok))),
        "{msgs:?}"
    );
    let key = msgs
        .iter()
        .find_map(|m| match m {
            B::BackendKeyData {
                process_id,
                secret_key,
            } => Some((*process_id, secret_key.clone())),
            _ => None,
        })
        .expect("BackendKeyData");
    Ok((w, key.0, key.1))
}

/// Logs in, sends `bytes` after authentication, and returns everything until the close.
fn after_login(g: &Gateway, bytes: &[u8]) -> Vec<B> {
    let (mut w, _, _) = login(g);
    w.write(bytes);
    w.until_closed()
}

fn query(sql: &str) -> F {
    F::Query(Bytes::copy_from_slice(sql.as_bytes()))
}

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    weir_wire::frame::write_frame(&mut out, tag, |o| o.put_slice(body));
    out
}

// ---------------------------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------------------------

#[test]
fn startup_length_below_eight_is_a_protocol_error() {
    let mut g = Gateway::start();
    for len in [0i32, 4, 7, -1, i32::MIN] {
        let mut w = Wire::open(&g);
        let mut p = BytesMut::new();
        p.put_i32(len);
        p.put_i32(PROTOCOL_3_0);
        w.write(&p);
        assert_fatal(&w.until_closed(), "08P01");
        still_serving(&mut g);
    }
}

#[test]
fn startup_length_above_ten_thousand_is_refused_from_the_header() {
    let mut g = Gateway::start();
    // Only the 8-byte header is sent: the gateway must refuse without waiting for the body
    // it announced (until_closed fails if it waits).
    for len in [10_001i32, 1 << 20, i32::MAX] {
        let mut w = Wire::open(&g);
        let mut p = BytesMut::new();
        p.put_i32(len);
        p.put_i32(PROTOCOL_3_0);
        w.write(&p);
        let start = Instant::now();
        assert_fatal(&w.until_closed(), "08P01");
        assert!(start.elapsed() < PATIENCE);
        still_serving(&mut g);
    }
}

#[test]
fn startup_with_ten_thousand_parameters_is_refused() {
    let mut g = Gateway::start();
    // 10,000 parameters do not fit in 10,000 bytes: the length alone rules it out.
    let mut w = Wire::open(&g);
    let p = startup_with_params(10_000);
    assert!(p.len() > 10_000);
    w.write(&p);
    assert_fatal(&w.until_closed(), "08P01");
    still_serving(&mut g);

    // A packet that fits the size but not the parameter limit (64) is refused by the count.
    let mut w = Wire::open(&g);
    let p = startup_with_params(1_000);
    assert!(p.len() <= 10_000, "{}", p.len());
    w.write(&p);
    assert_fatal(&w.until_closed(), "08P01");
    still_serving(&mut g);

    // Duplicate parameters and a missing terminator are malformed too.
    for bad in [
        &b"user\0alice\0user\0bob\0\0"[..],
        &b"user\0alice\0database\0app"[..],
    ] {
        let mut p = BytesMut::new();
        p.put_i32(i32::try_from(8 + bad.len()).unwrap());
        p.put_i32(PROTOCOL_3_0);
        p.put_slice(bad);
        let mut w = Wire::open(&g);
        w.write(&p);
        assert_fatal(&w.until_closed(), "08P01");
        still_serving(&mut g);
    }
}

#[test]
fn truncated_startup_then_half_close_ends_the_connection() {
    let mut g = Gateway::start();
    let full = alice_startup();
    for cut in [2, 4, 8, full.len() - 1] {
        let mut w = Wire::open(&g);
        w.write(&full[..cut]);
        w.half_close();
        assert_silent_or_protocol_error(&w.until_closed());
        still_serving(&mut g);
    }
}

#[test]
fn garbage_in_the_same_write_as_ssl_request_is_refused_without_s() {
    // CVE-2021-23214: bytes sent in clear behind an SSLRequest must not be read as if they
    // had come over TLS. The gateway must refuse *before* answering 'S'.
    let mut g = Gateway::start();
    let mut p = request(SSL_REQUEST_CODE);
    query("SELECT 'injected'").encode(&mut p);
    let mut w = Wire::open(&g);
    w.write(&p);
    assert!(w.fill(), "closed without an answer");
    assert_ne!(
        w.buf[0], b'S',
        "the gateway accepted TLS after injected bytes"
    );
    assert_fatal(&w.until_closed(), "08P01");
    still_serving(&mut g);
}

#[test]
fn ssl_request_followed_by_garbage_instead_of_client_hello_fails_the_handshake() {
    let mut g = Gateway::start();
    let mut w = Wire::open(&g);
    w.write(&request(SSL_REQUEST_CODE));
    assert_eq!(w.byte(), Some(b'S'));
    w.write(b"this is not a TLS ClientHello, not even close; it is just plain text\r\n\r\n");
    // Whatever the TLS layer answers (an alert, or nothing), the connection must close.
    let start = Instant::now();
    loop {
        let mut chunk = [0u8; 1024];
        match w.s.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("connection not closed after a failed TLS handshake")
            }
            Err(_) => break,
        }
        assert!(start.elapsed() < PATIENCE);
    }
    still_serving(&mut g);
}

#[test]
fn protocol_version_two_and_unknown_request_codes_are_refused() {
    let mut g = Gateway::start();
    // 1234.5678-5680 are CancelRequest, SSLRequest and GSSENCRequest; 1234.5681 is unknown.
    for code in [2 << 16, 1 << 16, 4 << 16, 1234 << 16 | 5681, 0] {
        let mut w = Wire::open(&g);
        let mut p = request(code);
        // protocol 2 startup packets carry a fixed-size body; the header decides anyway
        p.put_slice(&[0u8; 8]);
        let len = i32::try_from(p.len()).unwrap();
        p[..4].copy_from_slice(&len.to_be_bytes());
        w.write(&p);
        assert_fatal(&w.until_closed(), "08P01");
        still_serving(&mut g);
    }
}

#[test]
fn gssenc_request_is_answered_n_and_startup_goes_on() {
    let mut g = Gateway::start();
    let mut w = Wire::open(&g);
    w.write(&request(GSSENC_REQUEST_CODE));
    assert_eq!(w.byte(), Some(b'N'));
    // The same connection goes on with a normal startup and a query.
    w.write(&alice_startup());
    assert!(matches!(
        w.recv_msg(),
        B::Authentication(Authentication::CleartextPassword)
    ));
    w.send(&[F::Password(Bytes::from(format!("{ALICE_TOKEN}\0")))]);
    w.until_ready();
    w.send(&[query("SELECT 'after gss'")]);
    let (msgs, _) = w.until_ready();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, B::DataRow(r) if r[0].as_deref() == Some(&b"after gss"[..]))),
        "{msgs:?}"
    );

    // Extra bytes behind a GSSENCRequest in the same write are refused, like for SSL.
    let mut w = Wire::open(&g);
    let mut p = request(GSSENC_REQUEST_CODE);
    p.put_slice(&alice_startup());
    w.write(&p);
    assert!(w.fill(), "closed without an answer");
    assert_ne!(
        w.buf[0], b'N',
        "answered a GSSENCRequest with bytes behind it"
    );
    assert_fatal(&w.until_closed(), "08P01");
    still_serving(&mut g);
}

#[test]
fn cancel_request_with_an_unknown_key_gets_no_answer() {
    let mut g = Gateway::start();
    let mut w = Wire::open(&g);
    let mut p = BytesMut::new();
    StartupPacket::Cancel {
        process_id: 12345,
        secret_key: Bytes::from_static(b"nope"),
    }
    .encode(&mut p);
    w.write(&p);
    assert!(w.until_closed().is_empty());
    // A cancel request with a key of the wrong length is malformed.
    let mut w = Wire::open(&g);
    let mut p = BytesMut::new();
    p.put_i32(14);
    p.put_i32(weir_wire::startup::CANCEL_REQUEST_CODE);
    p.put_i32(1);
    p.put_slice(b"ab");
    w.write(&p);
    assert_silent_or_protocol_error(&w.until_closed());
    still_serving(&mut g);
}

#[test]
fn hostile_password_messages_during_authentication() {
    let mut g = Gateway::start();
    let cases: Vec<(&str, BytesMut)> = vec![
        // A query where the password belongs.
        ("query instead of password", {
            let mut b = BytesMut::new();
            query("SELECT 1").encode(&mut b);
            b
        }),
        // A password frame announcing more than a startup packet may hold.
        ("oversized password", {
            let mut b = BytesMut::new();
            b.put_u8(b'p');
            b.put_i32(i32::MAX);
            b
        }),
        ("password length below 4", {
            let mut b = BytesMut::new();
            b.put_u8(b'p');
            b.put_i32(3);
            b
        }),
    ];
    for (what, bytes) in cases {
        let mut w = Wire::open(&g);
        w.write(&alice_startup());
        assert!(
            matches!(
                w.recv_msg(),
                B::Authentication(Authentication::CleartextPassword)
            ),
            "{what}"
        );
        w.write(&bytes);
        let msgs = w.until_closed();
        assert_fatal(&msgs, "08P01");
        still_serving(&mut g);
    }
}

#[test]
fn startup_options_replication_and_missing_user_are_refused() {
    let mut g = Gateway::start();
    let cases: [(&[(&str, &str)], &str); 3] = [
        // Settings in `options` would bypass policy.
        (
            &[
                ("user", "alice"),
                ("database", "app"),
                ("options", "-c session_replication_role=replica"),
            ],
            "0A000",
        ),
        // Replication connections run no statements Weir could decide.
        (
            &[
                ("user", "alice"),
                ("database", "app"),
                ("replication", "database"),
            ],
            "42501",
        ),
        (&[("database", "app")], "28000"),
    ];
    for (params, code) in cases {
        let mut w = Wire::open(&g);
        w.write(&startup_bytes(params));
        assert_fatal(&w.until_closed(), code);
        still_serving(&mut g);
    }
}

/// The documented limit: "Startup, TLS handshake and authentication together must finish
/// within `connect_timeout` (default 10 s), so idle half-open connections cannot pin slots."
/// Each GSSENCRequest is answered 'N' and the startup loop starts a *fresh* timeout for the
/// next packet, so a client that sends one every few seconds holds its slot forever
/// (PostgreSQL refuses a second GSSENCRequest on the same connection).
#[test]
fn repeated_gssenc_requests_cannot_outlive_connect_timeout() {
    let mut g = Gateway::start();
    let mut w = Wire::open(&g);
    let start = Instant::now();
    let mut answered = 0;
    let closed_at = loop {
        w.write(&request(GSSENC_REQUEST_CODE));
        match w.byte() {
            Some(b'N') => answered += 1,
            // Refused (an 'E'…) or closed: either ends the slow startup.
            _ => break start.elapsed(),
        }
        if start.elapsed() > Duration::from_secs(25) {
            panic!(
                "an unauthenticated connection stayed open for {:?} ({answered} GSSENCRequests answered 'N'); connect_timeout is 10 s",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(closed_at < Duration::from_secs(15), "{closed_at:?}");
    still_serving(&mut g);
}

// ---------------------------------------------------------------------------------------------
// After authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn message_length_below_four_is_a_protocol_error() {
    let mut g = Gateway::start();
    for len in [0i32, 1, 3, -1, i32::MIN] {
        let mut b = BytesMut::new();
        b.put_u8(b'Q');
        b.put_i32(len);
        b.put_slice(b"select 1\0");
        assert_fatal(&after_login(&g, &b), "08P01");
        still_serving(&mut g);
    }
    upstream_sessions_end(&g);
}

#[test]
fn message_length_above_max_message_size_is_refused_from_the_header() {
    let mut g = Gateway::start();
    // 0x7fffffff, and the smallest length over the default 64 MiB maximum. Only the header
    // and a few bytes are sent: the gateway must answer at once, without reading (or
    // reserving memory for) the announced body.
    for len in [i32::MAX, 64 * 1024 * 1024 + 1] {
        let mut b = BytesMut::new();
        b.put_u8(b'Q');
        b.put_i32(len);
        b.put_slice(b"select");
        let start = Instant::now();
        let msgs = after_login(&g, &b);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_fatal(&msgs, "08P01");
        still_serving(&mut g);
    }
    upstream_sessions_end(&g);
}

#[test]
fn unknown_message_tag_is_a_protocol_error() {
    let mut g = Gateway::start();
    for tag in [b'z', 0u8, 0xff, b'R', b'Z'] {
        assert_fatal(&after_login(&g, &frame(tag, b"")), "08P01");
        still_serving(&mut g);
    }
    upstream_sessions_end(&g);
}

#[test]
fn counts_larger_than_the_body_are_protocol_errors() {
    let mut g = Gateway::start();
    // Bind: portal "", statement "", 0 parameter formats, then 32,767 parameters claimed
    // with only one (short) value present.
    let mut bind = BytesMut::new();
    bind.put_slice(b"\0\0");
    bind.put_i16(0);
    bind.put_i16(i16::MAX);
    bind.put_i32(4);
    bind.put_slice(b"\0\0\0\x01");
    // Bind claiming 32,767 parameter *formats*; and a negative count.
    let mut formats = BytesMut::new();
    formats.put_slice(b"\0\0");
    formats.put_i16(i16::MAX);
    let mut negative = BytesMut::new();
    negative.put_slice(b"\0\0");
    negative.put_i16(-1);
    // A value length beyond the body.
    let mut long_value = BytesMut::new();
    long_value.put_slice(b"\0\0");
    long_value.put_i16(0);
    long_value.put_i16(1);
    long_value.put_i32(i32::MAX);
    // Parse claiming 32,767 parameter types.
    let mut parse = BytesMut::new();
    parse.put_slice(b"\0select $1\0");
    parse.put_i16(i16::MAX);
    // FunctionCall claiming 32,767 arguments.
    let mut fcall = BytesMut::new();
    fcall.put_i32(764);
    fcall.put_i16(0);
    fcall.put_i16(i16::MAX);
    // A query without its NUL terminator; a Describe of neither 'S' nor 'P'; trailing bytes.
    let cases = [
        (b'B', &bind[..]),
        (b'B', &formats[..]),
        (b'B', &negative[..]),
        (b'B', &long_value[..]),
        (b'P', &parse[..]),
        (b'F', &fcall[..]),
        (b'Q', &b"select 1"[..]),
        (b'D', &b"Xname\0"[..]),
        (b'S', &b"trailing"[..]),
    ];
    for (tag, body) in cases {
        let msgs = after_login(&g, &frame(tag, body));
        assert_fatal(&msgs, "08P01");
        still_serving(&mut g);
    }
    upstream_sessions_end(&g);
}

#[test]
fn truncated_frame_then_eof_ends_both_sessions() {
    let mut g = Gateway::start();
    // A frame announcing 32 bytes of which 6 arrive, then the client goes away (FIN on the
    // write side, reading on): the gateway closes, and the upstream session ends too.
    let (mut w, _, _) = login(&g);
    w.write(b"Q\0\0\0\x24select");
    w.half_close();
    assert_silent_or_protocol_error(&w.until_closed());
    still_serving(&mut g);
    // The same with a full close and only part of the header.
    let (mut w, _, _) = login(&g);
    w.write(b"Q\0\0");
    drop(w);
    still_serving(&mut g);
    upstream_sessions_end(&g);
}

#[test]
fn password_message_after_authentication_is_a_protocol_error() {
    let mut g = Gateway::start();
    let mut p = BytesMut::new();
    F::Password(Bytes::from(format!("{BOB_TOKEN}\0"))).encode(&mut p);
    assert_fatal(&after_login(&g, &p), "08P01");
    still_serving(&mut g);
    upstream_sessions_end(&g);
}

#[test]
fn fastpath_function_call_is_denied_and_the_session_goes_on() {
    let mut g = Gateway::start();
    let (mut w, _, _) = login(&g);
    let call = F::FunctionCall(FunctionCall {
        oid: 764, // lo_import(text)
        arg_formats: vec![],
        args: vec![Some(Bytes::from_static(b"/etc/passwd"))],
        result_format: 0,
    });
    w.send(std::slice::from_ref(&call));
    let (msgs, status) = w.until_ready();
    let (code, message) = first_error(&msgs).unwrap();
    assert_eq!(code, "42501");
    // Decided as `SELECT pg_catalog.lo_import($1)`: the server-files rule refuses it.
    assert!(
        message.starts_with("weir: denied by weir.server-files-and-programs"),
        "{message}"
    );
    assert!(
        !msgs.iter().any(|m| matches!(m, B::FunctionCallResponse(_))),
        "{msgs:?}"
    );
    assert_eq!(status, TxStatus::Idle);
    // The session is still usable.
    w.send(&[query("SELECT 'usable'")]);
    let (msgs, _) = w.until_ready();
    assert!(first_error(&msgs).is_none(), "{msgs:?}");

    // Inside a transaction the denial aborts it, as a failed statement would.
    w.send(&[query("BEGIN")]);
    w.until_ready();
    w.send(&[call]);
    let (msgs, status) = w.until_ready();
    assert_eq!(first_error(&msgs).unwrap().0, "42501");
    assert_eq!(status, TxStatus::Failed);
    w.send(&[query("ROLLBACK")]);
    let (_, status) = w.until_ready();
    assert_eq!(status, TxStatus::Idle);
    // Nothing was imported.
    w.send(&[query("SELECT count(*) FROM pg_largeobject_metadata")]);
    let (msgs, _) = w.until_ready();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, B::DataRow(r) if r[0].as_deref() == Some(&b"0"[..]))),
        "{msgs:?}"
    );
    w.send(&[F::Terminate]);
    assert!(w.until_closed().is_empty());
    still_serving(&mut g);
}

#[test]
fn undecodable_sql_text_is_denied_not_fatal() {
    let mut g = Gateway::start();
    let (mut w, _, _) = login(&g);
    w.send(&[F::Query(Bytes::from_static(b"SELECT '\xff\xfe'"))]);
    let (msgs, status) = w.until_ready();
    assert_eq!(first_error(&msgs).unwrap().0, "42501", "{msgs:?}");
    assert_eq!(status, TxStatus::Idle);
    w.send(&[query("SELECT 1")]);
    let (msgs, _) = w.until_ready();
    assert!(first_error(&msgs).is_none(), "{msgs:?}");
    still_serving(&mut g);
}

/// Weir runs `Execute` of the portal `"weir\x1fdenied"` in place of a denied request, relying
/// on it not existing ("Weir never forwards a Bind that names it", ABORT_PORTAL in
/// session.rs). But a client's Bind naming that portal is forwarded unchecked. Inside a
/// transaction the portal survives Sync, so the next denial *executes the client's portal*
/// instead of failing: the client gets rows instead of the 42501 denial, the transaction is
/// not aborted (a later COMMIT commits the work around the denied request), and the tracker,
/// which expects an ErrorResponse for the stand-in, is left stuck on that request: later
/// errors are rewritten into the stale denial and no later request ever completes (no audit
/// completion record; after 1,024 more requests the pipeline window is full and the session
/// hangs).
#[test]
fn client_cannot_bind_the_abort_portal() {
    let g = Gateway::start();
    let (mut w, _, _) = login(&g);
    w.send(&[query("BEGIN")]);
    w.until_ready();
    w.send(&[
        F::Parse(Parse {
            name: Bytes::new(),
            query: Bytes::from_static(b"SELECT 'smuggled'"),
            param_types: vec![],
        }),
        F::Bind(Bind {
            portal: Bytes::from_static(b"weir\x1fdenied"),
            statement: Bytes::new(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }),
        F::Sync,
    ]);
    // The gateway may refuse the reserved name (an error, or 08P01 and a close). If it
    // forwards the Bind, the portal outlives Sync inside the transaction, and the denial
    // below must still be a denial.
    match w.recv() {
        Read1::Closed => return,
        Read1::Msg(B::ErrorResponse(f)) if f.code() == Some("08P01") => {
            assert!(
                matches!(w.recv(), Read1::Closed),
                "the session must end after 08P01"
            );
            return;
        }
        Read1::Msg(_) => {}
    }
    w.until_ready();
    w.send(&[F::FunctionCall(FunctionCall {
        oid: 764,
        arg_formats: vec![],
        args: vec![Some(Bytes::from_static(b"/etc/passwd"))],
        result_format: 0,
    })]);
    let (msgs, status) = w.until_ready();
    assert!(
        !msgs.iter().any(|m| matches!(m, B::DataRow(_))),
        "the denial stand-in ran the client's portal: {msgs:?}"
    );
    assert_eq!(first_error(&msgs).map(|e| e.0).as_deref(), Some("42501"));
    assert_eq!(
        status,
        TxStatus::Failed,
        "the denial did not abort the transaction"
    );
    w.send(&[query("ROLLBACK")]);
    w.until_ready();
    // And the tracker is still in step: a real error passes through as itself.
    w.send(&[query("SELECT 1/0")]);
    let (msgs, _) = w.until_ready();
    assert_eq!(first_error(&msgs).map(|e| e.0).as_deref(), Some("22012"));
}

/// A FunctionCall in the middle of an extended-protocol batch is denied at once, while the
/// batch's earlier messages wait for their Sync: the stand-in for the denial is forwarded
/// *ahead of* the Parse/Bind/Execute that the client sent first, so the replies come back
/// out of order (the 42501 before the ParseComplete of the statement sent before it). The
/// gateway must either keep the order or refuse the interleaving as a protocol violation.
#[test]
fn function_call_inside_a_batch_keeps_reply_order() {
    let g = Gateway::start();
    let (mut w, _, _) = login(&g);
    w.send(&[
        F::Parse(Parse {
            name: Bytes::new(),
            query: Bytes::from_static(b"SELECT 'first'"),
            param_types: vec![],
        }),
        F::Bind(Bind {
            portal: Bytes::new(),
            statement: Bytes::new(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }),
        F::Execute {
            portal: Bytes::new(),
            max_rows: 0,
        },
        F::FunctionCall(FunctionCall {
            oid: 764,
            arg_formats: vec![],
            args: vec![Some(Bytes::from_static(b"/etc/passwd"))],
            result_format: 0,
        }),
        F::Sync,
    ]);
    let first = w.recv();
    match first {
        // Refusing the interleaving outright is acceptable.
        Read1::Closed => {}
        Read1::Msg(B::ErrorResponse(f)) if f.code() == Some("08P01") => {
            assert!(w.until_closed().is_empty());
        }
        Read1::Msg(m) => {
            assert!(
                matches!(m, B::ParseComplete),
                "the first reply must answer the Parse sent first, got {m:?}"
            );
        }
    }
}
