//! Lexing differentials: session state that makes the server read a statement's bytes
//! differently from Weir's parser (`standard_conforming_strings`, `backslash_quote`, a
//! client-only multibyte `client_encoding`). Weir keeps every session in the mode it reads
//! and refuses the rest; the server is the oracle for what "reads the same" means.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::Write;

use bytes::Bytes;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use weir_wire::backend::Message as B;
use weir_wire::frontend::Message as F;

/// A production target on the same database as `app`, where DROP is denied.
const PROD: &str = r#"
[[target]]
name = "prod"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:PGPORT"
database = "app"
user = "postgres"
password_file = "upstream-password"
"#;

fn gateway() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, _| {
            c.psql(
                "app",
                "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1);
                 CREATE FUNCTION flip() RETURNS void LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$;
                 CREATE FUNCTION harmless() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            )
            .unwrap();
            PROD.replace("PGPORT", &c.port.to_string())
        },
    )
}

fn victim_exists(g: &Gateway) -> bool {
    g.cluster
        .psql(
            "app",
            "SELECT count(*) FROM pg_class WHERE relname = 'victim'",
        )
        .unwrap()
        .trim()
        == "1"
}

fn prod(g: &Gateway) -> String {
    g.alice().replace("dbname=app", "dbname=prod")
}

/// The classic smuggle: with backslashes escaping, the server reads a literal `a'` and then a
/// DROP; with standard strings (Weir's parser) it is two literals that a newline joins into
/// one, holding the DROP's text.
const SMUGGLE: &str = "SELECT 'a\\'\n'; DROP TABLE victim; --'";

#[test]
fn statements_that_leave_the_lexing_mode_are_refused_everywhere() {
    let g = gateway();
    for sql in [
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO false",
        "SET SESSION standard_conforming_strings = 0",
        "BEGIN; SET LOCAL standard_conforming_strings = off; COMMIT",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true)",
        "SELECT set_config('client_encoding', 'SJIS', false)",
        "SET backslash_quote = on",
        "SET client_encoding = 'SJIS'",
        "SET client_encoding TO 'Shift_JIS'",
        "SET NAMES 'GBK'",
        "SET client_encoding = 'BIG5'",
        "SET client_encoding = 'UHC'",
        "SET client_encoding = 'GB18030'",
        "SET client_encoding = 'win932'",
        "ALTER ROLE postgres SET standard_conforming_strings = off",
        "ALTER DATABASE app SET client_encoding = 'SJIS'",
        "ALTER SYSTEM SET standard_conforming_strings = off",
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql SET standard_conforming_strings = off AS 'SELECT 1'",
    ] {
        for target in [g.alice(), prod(&g)] {
            let out = g.psql(&target, &format!("{sql};\n"));
            let err = stderr(&out);
            assert!(
                err.contains("weir: denied by weir.lexing-mode"),
                "{sql} on {target}: {err}"
            );
        }
        let check = g.weir(&["policy", "check", "--as", "alice", "--target", "app", sql]);
        assert!(
            stdout(&check).contains("deny weir.lexing-mode"),
            "{sql}: {}",
            stdout(&check)
        );
    }
    // Nothing changed on the server: its defaults are untouched.
    let settings = g
        .cluster
        .psql(
            "app",
            "SELECT count(*) FROM pg_db_role_setting; SHOW standard_conforming_strings",
        )
        .unwrap();
    assert_eq!(settings.split_whitespace().collect::<Vec<_>>(), ["0", "on"]);
    // The values Weir reads stay allowed, and the smuggle is read alike by both.
    let out = g.psql(
        &prod(&g),
        "SET standard_conforming_strings = on;\nSET client_encoding = 'LATIN1';\nSET client_encoding TO DEFAULT;\nRESET client_encoding;\nSET backslash_quote = safe_encoding;\nSHOW client_encoding;\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("ERROR"), "{}", stderr(&out));
    let out = g.psql(&prod(&g), &format!("{SMUGGLE}\n"));
    assert!(
        stdout(&out).contains("; DROP TABLE victim; --"),
        "{}",
        stdout(&out)
    );
    assert!(victim_exists(&g));
}

#[test]
fn role_and_database_defaults_cannot_put_a_session_in_another_mode() {
    let g = gateway();
    // Planted behind Weir's back (directly on the server), as a later session would find them.
    g.cluster
        .psql(
            "app",
            "ALTER DATABASE app SET standard_conforming_strings = off; ALTER ROLE postgres SET backslash_quote = on",
        )
        .unwrap();
    // Weir starts every upstream session with standard_conforming_strings = on, so neither
    // the default nor RESET / DISCARD ALL returns to off.
    let out = g.psql(
        &prod(&g),
        &format!("SHOW standard_conforming_strings;\nRESET standard_conforming_strings;\nSHOW standard_conforming_strings;\nDISCARD ALL;\nSHOW standard_conforming_strings;\n{SMUGGLE}\n"),
    );
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| matches!(*l, "on" | "off"))
            .collect::<Vec<_>>(),
        ["on", "on", "on"],
        "{}",
        stderr(&out)
    );
    assert!(victim_exists(&g));

    // A client-only client_encoding as the database's default: a client that names no
    // encoding would get it, so the session is refused before anything is forwarded.
    g.cluster
        .psql("app", "ALTER DATABASE app SET client_encoding = 'SJIS'")
        .unwrap();
    let mut s = raw(g.port);
    let mut out = bytes::BytesMut::new();
    weir_wire::startup::StartupPacket::Startup {
        minor: 0,
        params: vec![
            ("user".into(), "alice".into()),
            ("database".into(), "prod".into()),
        ],
    }
    .encode(&mut out);
    s.write_all(&out).unwrap();
    let _ = read_some(&mut s); // AuthenticationCleartextPassword
    let mut pw = BytesMut::new();
    F::Password(Bytes::from(format!("{ALICE_TOKEN}\0"))).encode(&mut pw);
    s.write_all(&pw).unwrap();
    let reply = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    assert!(
        reply.contains("22023") && reply.contains("weir.lexing-mode") && reply.contains("SJIS"),
        "{reply}"
    );
    // A client that names UTF8 (psql at a terminal, every driver) still connects.
    let out = std::process::Command::new(g.cluster.bindir().join("psql"))
        .arg(prod(&g))
        .args(["-XAtc", "SHOW client_encoding"])
        .env("PGCLIENTENCODING", "UTF8")
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "UTF8", "{}", stderr(&out));
}

use bytes::BytesMut;

fn read_some(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn startup_parameters_cannot_choose_another_mode() {
    let g = gateway();
    for (name, value) in [
        ("client_encoding", "SJIS"),
        ("client_encoding", "BIG5"),
        ("standard_conforming_strings", "off"),
    ] {
        let mut s = raw(g.port);
        let mut out = BytesMut::new();
        weir_wire::startup::StartupPacket::Startup {
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "prod".into()),
                (name.into(), value.into()),
            ],
        }
        .encode(&mut out);
        s.write_all(&out).unwrap();
        let _ = read_some(&mut s);
        let mut pw = BytesMut::new();
        F::Password(Bytes::from(format!("{ALICE_TOKEN}\0"))).encode(&mut pw);
        s.write_all(&pw).unwrap();
        let reply = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
        assert!(
            reply.contains("22023") && reply.contains("weir.lexing-mode"),
            "{name}={value}: {reply}"
        );
    }
    // psql with PGCLIENTENCODING=SJIS: refused with the reason.
    let out = std::process::Command::new(g.cluster.bindir().join("psql"))
        .arg(prod(&g))
        .args(["-XAtc", "SELECT 1"])
        .env("PGCLIENTENCODING", "SJIS")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("weir.lexing-mode"),
        "{}",
        stderr(&out)
    );
    // LATIN1 is read alike by both: allowed.
    let out = std::process::Command::new(g.cluster.bindir().join("psql"))
        .arg(prod(&g))
        .args(["-XAtc", "SHOW client_encoding"])
        .env("PGCLIENTENCODING", "LATIN1")
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "LATIN1", "{}", stderr(&out));
}

/// A function changes the mode where Weir cannot see it: the server's ParameterStatus is the
/// check of last resort, and nothing pipelined behind the function is forwarded before it.
#[test]
fn a_mode_changed_out_of_sight_closes_the_session_before_more_is_forwarded() {
    let g = gateway();
    // Simple protocol: the function call and the smuggle in one write, two Query messages.
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    c.send(&[
        F::Query(Bytes::from_static(b"SELECT flip()")),
        F::Query(Bytes::from(SMUGGLE.to_owned())),
    ]);
    let mut seen = Vec::new();
    let closed = loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.recv())) {
            Ok(m) => seen.push(m),
            Err(_) => break true,
        }
        if seen.len() > 50 {
            break false;
        }
    };
    assert!(closed, "{seen:?}");
    let (code, message) = first_error(&seen).unwrap();
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("weir.lexing-mode"), "{message}");
    assert!(
        message.contains("standard_conforming_strings = off"),
        "{message}"
    );
    assert!(victim_exists(&g), "the smuggled DROP ran");

    // A set_config whose setting is not a constant: the same barrier and check.
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    c.send(&[
        F::Query(Bytes::from_static(
            b"SELECT set_config(n, 'off', false) FROM (VALUES ('standard_conforming_strings')) v(n)",
        )),
        F::Query(Bytes::from(SMUGGLE.to_owned())),
    ]);
    let mut seen = Vec::new();
    while let Ok(m) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.recv())) {
        seen.push(m);
        assert!(seen.len() < 50, "{seen:?}");
    }
    let (code, message) = first_error(&seen).unwrap();
    assert_eq!(code, "22023", "{message}");
    assert!(victim_exists(&g), "the smuggled DROP ran");

    // Extended protocol: more SQL text after an Execute of code Weir cannot see, in one
    // request, is refused (the server would lex it after the code ran).
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    c.send(&[
        F::Parse(weir_wire::frontend::Parse {
            name: Bytes::new(),
            query: Bytes::from_static(b"SELECT harmless()"),
            param_types: vec![],
        }),
        F::Bind(weir_wire::frontend::Bind {
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
        F::Parse(weir_wire::frontend::Parse {
            name: Bytes::new(),
            query: Bytes::from_static(b"SELECT 1"),
            param_types: vec![],
        }),
        F::Sync,
    ]);
    let (msgs, _) = c.until_ready();
    let (code, message) = first_error(&msgs).unwrap();
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("weir.lexing-mode"), "{message}");
    // The same with a Sync in between runs.
    c.send(&[
        F::Query(Bytes::from_static(b"SELECT harmless()")),
        F::Query(Bytes::from_static(b"SELECT 2")),
    ]);
    let (first, _) = c.until_ready();
    let (second, _) = c.until_ready();
    assert!(first_error(&first).is_none(), "{first:?}");
    assert!(first_error(&second).is_none(), "{second:?}");
    assert!(seen_data(&second, "2"), "{second:?}");
}

fn seen_data(msgs: &[B], value: &str) -> bool {
    msgs.iter().any(|m| match m {
        B::DataRow(values) => values
            .iter()
            .any(|v| v.as_deref() == Some(value.as_bytes())),
        _ => false,
    })
}

// ---------------------------------------------------------------------------------------
// The server as the oracle: for every mode Weir allows, the statements and literals Weir's
// parser reads equal what the server runs.

/// A deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Bytes that matter to a lexer: quotes, backslashes, comment and statement delimiters, and
/// multibyte characters whose last byte follows a lead byte in SJIS/BIG5/GBK (Ё is D0 81, so
/// `Ё\` is D0 81 5C, and 81 5C is one SJIS character).
const PIECES: &[&str] = &[
    "a", "\\", "'", "''", "\\'", ";", "--", "/*", "*/", "\n", " ", "$", "$$", "Ё", "é", "ü", "表",
    "ソ", "\\\\", "\\x41", "E'", "\"", "x",
];

fn literal(rng: &mut Rng) -> String {
    let mut content = String::new();
    for _ in 0..(rng.next() % 6) {
        content.push_str(rng.pick(PIECES));
    }
    let open = rng.pick(&["'", "E'", "e'", "$$", "U&'", "N'"]);
    let close = if open == "$$" { "$$" } else { "'" };
    format!("{open}{content}{close}")
}

fn case(rng: &mut Rng) -> String {
    let statements = 1 + rng.next() % 3;
    let mut sql = String::new();
    for i in 0..statements {
        if i > 0 {
            sql.push_str(rng.pick(&["; ", ";", ";\n"]));
        }
        sql.push_str("SELECT ");
        for j in 0..(1 + rng.next() % 2) {
            if j > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&literal(rng));
        }
    }
    sql
}

/// What Weir's parser reads: per statement, the string constants of its select list.
fn weir_reading(sql: &str) -> Option<Vec<Vec<String>>> {
    weir_analyze::postgres::analyze_sql(sql).ok()?;
    let parsed = pg_query::parse(sql, 0).ok()?;
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let node = raw.stmt.as_ref()?.node.as_ref()?;
        let v = serde_json::to_value(node).ok()?;
        let mut consts: Vec<(i64, String)> = Vec::new();
        let mut stack = vec![&v];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Array(a) => stack.extend(a),
                serde_json::Value::Object(o) => {
                    if let Some(c) = o.get("AConst") {
                        let loc = c["location"].as_i64().unwrap_or(0);
                        let s = c["val"]["Sval"]["sval"].as_str().unwrap_or("").to_owned();
                        consts.push((loc, s));
                        continue;
                    }
                    stack.extend(o.values());
                }
                _ => {}
            }
        }
        consts.sort();
        out.push(consts.into_iter().map(|(_, s)| s).collect());
    }
    Some(out)
}

/// What the server ran: per statement that returned rows, its values; and whether it
/// stopped with an error.
async fn server_reading(c: &tokio_postgres::Client, sql: &str) -> (Vec<Vec<String>>, bool) {
    let mut out = Vec::new();
    match c.simple_query(sql).await {
        Ok(msgs) => {
            for m in msgs {
                if let SimpleQueryMessage::Row(r) = m {
                    out.push(
                        (0..r.len())
                            .map(|i| match r.try_get(i) {
                                Ok(v) => v.unwrap_or("").to_owned(),
                                Err(_) => "<not UTF-8>".to_owned(),
                            })
                            .collect(),
                    );
                }
            }
            (out, false)
        }
        Err(_) => (out, true),
    }
}

async fn direct(g: &Gateway, setup: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=app",
            g.cluster.port, g.cluster.password
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    c.batch_execute(setup).await.unwrap();
    c
}

/// Runs `cases` generated texts in one mode; returns how many the server and Weir read
/// differently.
async fn differentials(c: &tokio_postgres::Client, seed: u64, cases: usize) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut found = Vec::new();
    for _ in 0..cases {
        let sql = case(&mut rng);
        let Some(weir) = weir_reading(&sql) else {
            continue; // Weir refuses what it cannot parse: nothing runs.
        };
        let (server, failed) = server_reading(c, &sql).await;
        let agree = if failed {
            // Stopped by an error (at lexing, nothing ran): whatever ran must be a prefix
            // of what Weir read.
            server.len() <= weir.len() && server.iter().zip(&weir).all(|(s, w)| s == w)
        } else {
            server == weir
        };
        if !agree {
            found.push(format!(
                "{sql:?}: weir {weir:?}, server {server:?} (error: {failed})"
            ));
        }
    }
    found
}

#[tokio::test]
async fn in_every_mode_weir_allows_the_server_reads_what_weir_reads() {
    let g = gateway();
    const CASES: usize = 3000;
    for (i, setup) in [
        "SET client_encoding = 'UTF8'",
        "SET client_encoding = 'LATIN1'",
        "SET client_encoding = 'WIN1252'",
        "SET client_encoding = 'EUC_JP'",
        "SET client_encoding = 'KOI8R'",
        "SET client_encoding = 'UTF8'; SET backslash_quote = off",
        "SET client_encoding = 'LATIN1'; SET backslash_quote = safe_encoding",
    ]
    .into_iter()
    .enumerate()
    {
        let c = direct(&g, setup).await;
        let found = differentials(&c, 0x9E37_79B9_7F4A_7C15 ^ i as u64, CASES).await;
        assert!(
            found.is_empty(),
            "{setup}: {} differentials, e.g. {:#?}",
            found.len(),
            &found[..found.len().min(5)]
        );
    }
    // The oracle sees differentials where they exist: in the modes Weir refuses.
    for setup in [
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SJIS'",
        "SET client_encoding = 'BIG5'",
        "SET client_encoding = 'GBK'",
    ] {
        let c = direct(&g, setup).await;
        let found = differentials(&c, 7, CASES).await;
        assert!(
            !found.is_empty(),
            "{setup}: the oracle found no differential"
        );
        eprintln!("{setup}: {} of {CASES} texts read differently", found.len());
    }
}
