//! Fastpath function calls (the FunctionCall message that libpq's and pgjdbc's large-object
//! APIs use) are decided as the `SELECT schema.fn($1, …)` they stand for, recorded as such,
//! and run; an OID Weir cannot resolve, the server-side file functions for a non-admin and a
//! function whose result Weir cannot mask are refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use bytes::Bytes;
use weir_wire::backend::Message as B;
use weir_wire::frontend::{FunctionCall, Message as F};

#[test]
fn psql_large_object_commands_work_through_the_gateway() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |_, _| String::new(),
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 + 7) as u8).collect();
    std::fs::write(&input, &data).unwrap();

    let out = g.psql(
        &g.alice(),
        &format!("\\lo_import '{}' 'weir test'\n", input.display()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // psql prints `lo_import <oid>`.
    let oid: u32 = stdout(&out)
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no oid in {:?}", stdout(&out)));
    let list = g.psql(&g.alice(), "\\lo_list\n");
    assert!(stdout(&list).contains("weir test"), "{}", stdout(&list));
    let out = g.psql(
        &g.alice(),
        &format!("\\lo_export {oid} '{}'\n", output.display()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), data);
    let out = g.psql(&g.alice(), &format!("\\lo_unlink {oid}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        g.cluster
            .psql("app", "SELECT count(*) FROM pg_largeobject_metadata")
            .unwrap()
            .trim(),
        "0"
    );
    // On record as the SQL call it stands for.
    let calls: Vec<String> = g
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "statement" && e["via"] == "function_call")
        .map(|e| e["sql"].as_str().unwrap().to_owned())
        .collect();
    for f in [
        "lo_creat",
        "lo_open",
        "lowrite",
        "loread",
        "lo_close",
        "lo_unlink",
    ] {
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with(&format!("SELECT \"pg_catalog\".\"{f}\"("))),
            "{f} not in {calls:?}"
        );
    }
}

/// Sends one FunctionCall on a logged-in raw connection; the first error, if any, and the
/// response value.
fn call(c: &mut RawClient, oid: i32, args: &[&[u8]]) -> (Option<(String, String)>, Option<Bytes>) {
    c.send(&[F::FunctionCall(FunctionCall {
        oid,
        arg_formats: vec![],
        args: args
            .iter()
            .map(|a| Some(Bytes::copy_from_slice(a)))
            .collect(),
        result_format: 0,
    })]);
    let (msgs, _) = c.until_ready();
    let value = msgs.iter().find_map(|m| match m {
        B::FunctionCallResponse(v) => v.clone(),
        _ => None,
    });
    (first_error(&msgs), value)
}

#[test]
fn what_sql_would_refuse_the_fastpath_refuses_too() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, _| {
            c.psql(
                "app",
                "CREATE FUNCTION secret_of(int) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN '123-45-6789'; END $$;",
            )
            .unwrap();
            String::new()
        },
    );
    let oid_of = |f: &str| -> i32 {
        g.cluster
            .psql("app", &format!("SELECT '{f}'::regprocedure::oid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut c = RawClient::connect(g.port, "alice", ALICE_TOKEN, "app");
    // A built-in that reads nothing sensitive runs: lo_creat(-1) makes a large object.
    let (err, value) = call(&mut c, oid_of("lo_creat(integer)"), &[b"-1"]);
    assert!(err.is_none(), "{err:?}");
    assert!(value.is_some());
    // The server-side file functions stay under the server-files rule.
    let (err, _) = call(&mut c, oid_of("lo_import(text)"), &[b"/etc/passwd"]);
    let (code, message) = err.unwrap();
    assert_eq!(code, "42501");
    assert!(
        message.starts_with("weir: denied by weir.server-files-and-programs"),
        "{message}"
    );
    // A function Weir cannot see into: its answer could not be masked.
    let (err, value) = call(&mut c, oid_of("secret_of(integer)"), &[b"1"]);
    let (code, message) = err.unwrap();
    assert_eq!(code, "42501");
    assert!(
        message.starts_with("weir: denied by weir.protocol.function_call"),
        "{message}"
    );
    assert!(value.is_none());
    // An OID no function has.
    let (err, _) = call(&mut c, 999_999_999, &[]);
    let (code, message) = err.unwrap();
    assert_eq!(code, "42501");
    assert!(message.contains("not one Weir can resolve"), "{message}");
}

/// PostgreSQL's own `largeobject.sql` (its `\lo_*` commands, libpq's large-object calls and
/// the server-side functions), run by psql straight at one database and through Weir at an
/// identical one, as an admin identity with masking off: the outputs differ only in OIDs.
#[test]
fn the_regression_suites_large_object_file_runs_as_it_does_directly() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, _| {
            c.psql("postgres", "CREATE DATABASE direct").unwrap();
            "[[identity.static]]\nname = \"root\"\nkind = \"human\"\ngroups = [\"weir-admins\"]\ntoken = \"root-test-token\"\n\n[masking]\nenabled = false\n".into()
        },
    );
    let sql = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/largeobject.sql");
    let run = |conninfo: &str, tag: &str| -> String {
        // Where the file reads its data and writes its results; the server writes there too.
        let dir = tempfile::Builder::new().prefix(tag).tempdir().unwrap();
        let work = dir.path().to_owned();
        for sub in ["results", "data"] {
            std::fs::create_dir_all(work.join(sub)).unwrap();
        }
        let lines: String = (0..2000)
            .map(|i| format!("{i}\t{}\tline\n", i * 7))
            .collect();
        std::fs::write(work.join("data/tenk.data"), lines).unwrap();
        let _ = Command::new("chmod")
            .args(["-R", "a+rwx"])
            .arg(&work)
            .status();
        let out = Command::new(g.cluster.bindir().join("psql"))
            .arg(conninfo)
            .args(["-X", "-a", "-q", "-v", "ON_ERROR_STOP=0", "-f"])
            .arg(&sql)
            .env("PG_ABS_SRCDIR", &work)
            .env("PG_ABS_BUILDDIR", &work)
            .env("PGTZ", "UTC")
            .output()
            .unwrap();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        std::mem::forget(dir); // the server may still hold files there; the OS cleans /tmp
        normalize(&text, &work)
    };
    let direct = run(&g.cluster.conninfo("direct"), "weir-lo-direct");
    let through = run(&g.conninfo("root", "root-test-token"), "weir-lo-weir");
    // It ran (psql echoes every statement with -a), through the fastpath calls too.
    assert!(through.lines().count() > 400, "{through}");
    assert!(through.contains("\\lo_import :filename"), "{through}");
    assert!(!through.contains("weir: denied"), "{through}");
    if direct != through {
        let d: Vec<&str> = direct.lines().collect();
        let t: Vec<&str> = through.lines().collect();
        let first = d
            .iter()
            .zip(&t)
            .position(|(a, b)| a != b)
            .unwrap_or(d.len().min(t.len()));
        panic!(
            "outputs differ from line {first}:\n--- direct\n{}\n--- through weir\n{}",
            d[first.saturating_sub(3)..(first + 8).min(d.len())].join("\n"),
            t[first.saturating_sub(3)..(first + 8).min(t.len())].join("\n")
        );
    }
}

use std::process::Command;

/// The run's output with what differs between two runs by design left out: OIDs (numbers of
/// five digits and more), the working directory, psql's file name and line prefixes.
fn normalize(text: &str, work: &std::path::Path) -> String {
    let text = text.replace(&work.display().to_string(), "WORK");
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("largeobject.sql:") {
            Some(i) => {
                let rest = &line[i + "largeobject.sql:".len()..];
                let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                format!("psql:FILE:N{rest}")
            }
            None => line.to_owned(),
        };
        let mut digits = String::new();
        for c in line.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if !digits.is_empty() {
                if digits.len() >= 5 {
                    out.push_str("OID");
                } else {
                    out.push_str(&digits);
                }
                digits.clear();
            }
            out.push(c);
        }
        out.pop();
        out.push('\n');
    }
    out
}
