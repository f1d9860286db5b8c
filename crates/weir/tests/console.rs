//! The web console in a real browser: Debian's chromium driven by playwright-core
//! (`tests/clients/console/console.mjs`) against `weir serve`, with real psql clients
//! waiting, connected and ended. Also the console's HTTP boundary with curl: sign-in,
//! cookie flags, CSRF, security headers, and policy per operator.
//!
//! `WEIR_CONSOLE_SCREENSHOTS=DIR` keeps a screenshot of each page there
//! (`scripts/console-screenshots` refreshes `docs/console/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const OLGA_TOKEN: &str = "olga-operator-token-1";
const CAROL_TOKEN: &str = "carol-test-token-3";
const DAVE_TOKEN: &str = "dave-test-token-4";
const AUDREY_TOKEN: &str = "audrey-auditor-token-5";

struct Setup {
    g: Gateway,
    api: String,
}

fn setup() -> Setup {
    let http_port = weir::cluster::free_port().unwrap();
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, dir| {
            cluster
                .psql(
                    "app",
                    "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 10);",
                )
                .unwrap();
            std::fs::write(
                dir.join("approve.cedar"),
                "@id(\"test.deletes\")\n@outcome(\"approve\")\n@reason(\"deletes need a second pair of eyes\")\nforbid (principal, action == Weir::Action::\"delete\", resource);\n",
            )
            .unwrap();
            format!(
                r#"
[[identity.static]]
name = "olga"
kind = "human"
groups = ["dba", "weir-admins"]
token = "{OLGA_TOKEN}"

[[identity.static]]
name = "carol"
kind = "human"
groups = ["developers"]
token = "{CAROL_TOKEN}"

[[identity.static]]
name = "dave"
kind = "human"
groups = ["developers"]
token = "{DAVE_TOKEN}"

[[identity.static]]
name = "audrey"
kind = "human"
groups = ["weir-auditors"]
token = "{AUDREY_TOKEN}"

[policy]
files = ["approve.cedar"]

[audit]
before_images = true
"#
            )
        },
    );
    let config = std::fs::read_to_string(&g.config).unwrap().replacen(
        "[gateway]\n",
        &format!("[gateway]\nhttp_listen = \"127.0.0.1:{http_port}\"\n"),
        1,
    );
    std::fs::write(&g.config, config).unwrap();
    let mut g = g;
    g.terminate();
    g.restart();
    Setup {
        g,
        api: format!("http://127.0.0.1:{http_port}"),
    }
}

/// A psql session kept open (stdin held): what the console lists and ends.
fn held_psql(g: &Gateway, user: &str, token: &str) -> Child {
    let mut child = Command::new(g.cluster.bindir().join("psql"))
        .arg(g.conninfo(user, token))
        .args(["-X", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT 'connected';\n")
        .unwrap();
    child
}

/// curl: (status, headers, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().unwrap_or(0),
        head.to_lowercase(),
        body.to_owned(),
    )
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn live_identities(s: &Setup) -> Vec<String> {
    let (_, _, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {OLGA_TOKEN}"),
        &format!("{}/v1/sessions", s.api),
    ]);
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["identity"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_console_in_chromium_approves_ends_searches_verifies_and_simulates() {
    let s = setup();
    let g = &s.g;
    let node_dir = repo_root().join("tests/clients/console");
    let mut carol = held_psql(g, "carol", CAROL_TOKEN);
    let mut dave = held_psql(g, "dave", DAVE_TOKEN);
    wait_for("carol's and dave's sessions", || {
        let live = live_identities(&s);
        live.contains(&"carol".to_owned()) && live.contains(&"dave".to_owned())
    });
    // Dave asks for access; the browser approves it and later revokes the grant.
    let out = g.weir(&[
        "request",
        "app",
        "--for",
        "1h",
        "--reason",
        "fix INC-7",
        "--as",
        "dave",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let access = stdout(&out).lines().last().unwrap().trim().to_owned();
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| g.psql(&g.alice(), "DELETE FROM items WHERE id = 1;\n"));
        let mut cmd = Command::new("node");
        cmd.arg(node_dir.join("console.mjs"))
            .current_dir(&node_dir)
            .env("WEIR_URL", &s.api)
            .env("WEIR_TOKEN", OLGA_TOKEN)
            .env("WEIR_WAITING", "alice")
            .env("WEIR_END", "carol")
            .env("WEIR_KEEP", "dave")
            .env("WEIR_TARGET", "app")
            .env("WEIR_ACCESS", &access);
        if let Ok(dir) = std::env::var("WEIR_CONSOLE_SCREENSHOTS") {
            std::fs::create_dir_all(&dir).unwrap();
            cmd.env("WEIR_SCREENSHOTS", dir);
        }
        let out = cmd.output().expect("node");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            g.log()
        );
        let steps: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let step = |name: &str| {
            steps
                .iter()
                .find(|v| v["step"] == name)
                .unwrap_or_else(|| panic!("no step {name} in {text}"))
                .clone()
        };
        // The waiting client got its result once the browser approved.
        let done = waiting.join().unwrap();
        assert!(stdout(&done).contains("DELETE 1"), "{}", stderr(&done));
        let approved = step("approved");
        let events = g.audit_events();
        assert!(
            events.iter().any(|e| e["event"] == "approval"
                && e["id"] == approved["id"]
                && e.to_string().contains("olga")),
            "the approval is on record with its approver"
        );
        // The approved DELETE was undone from the console: the row is back.
        let undone = step("undone");
        assert!(
            undone["result"]
                .as_str()
                .unwrap()
                .contains("restored 1 row(s), refused 0"),
            "{undone}"
        );
        assert_eq!(
            g.cluster
                .psql("app", "SELECT count(*) FROM items WHERE id = 1")
                .unwrap()
                .trim(),
            "1"
        );
        // The cross-site POST was refused, and dave's session lives on.
        assert!(step("cross_site_refused")["status"].as_u64().unwrap() >= 400);
        assert!(live_identities(&s).contains(&"dave".to_owned()));
        // Carol's session was ended: her next statement finds it closed, with the reason.
        let mut stdin = carol.stdin.take().unwrap();
        let _ = stdin.write_all(b"SELECT 'still here';\n");
        drop(stdin);
        let out = carol.wait_with_output().unwrap();
        assert!(!stdout(&out).contains("still here"), "{}", stdout(&out));
        assert!(stderr(&out).contains("ended by olga"), "{}", stderr(&out));
        assert!(events.iter().any(|e| e["event"] == "admin"
            && e["action"] == "session.end"
            && e["actor"] == "olga"));
        // Search found alice's DELETE; the replay showed her session; verify said ok.
        let audit = step("audit");
        assert!(audit["rows"].as_u64().unwrap() >= 1);
        assert!(audit["replayed"].as_u64().unwrap() >= 2);
        assert!(audit["verdict"].as_str().unwrap().starts_with("ok "));
        // The access request was approved in the browser, and its grant revoked there.
        assert_eq!(step("access_approved")["id"], access.as_str());
        let revoked = step("grant_revoked");
        let events = g.audit_events();
        assert!(
            events.iter().any(|e| e["event"] == "grant"
                && e["decision"] == "revoked"
                && e["by"] == "olga"
                && e["id"] == revoked["id"]),
            "the revocation is on record"
        );
        let sim = step("simulated");
        assert_eq!(sim["decisions"], serde_json::json!(["allow", "approve"]));
        assert_eq!(sim["rules"][1], "test.deletes");
    });
    drop(dave.stdin.take());
    let _ = dave.wait();
}

#[test]
fn the_console_boundary_holds_cookie_csrf_headers_and_policy() {
    let s = setup();
    let api = &s.api;

    // Nothing but the sign-in page without a session; the page is locked down.
    let (status, head, body) = curl(&[&format!("{api}/")]);
    assert_eq!(status, 200);
    assert!(body.contains("Sign in"));
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-frame-options: deny"));
    assert!(!body.contains("<script>"), "no inline script");
    let (status, _, _) = curl(&[&format!("{api}/v1/sessions")]);
    assert_eq!(status, 401);
    let (status, _, _) = curl(&[&format!("{api}/console/me")]);
    assert_eq!(status, 401);

    // A wrong token: no cookie.
    let (status, head, _) = curl(&[
        "-X",
        "POST",
        "-d",
        "{\"token\":\"wrong\"}",
        &format!("{api}/console/login"),
    ]);
    assert_eq!(status, 401);
    assert!(!head.contains("set-cookie"));

    // Sign in as the auditor: the cookie's flags, and what policy lets her do.
    let (status, head, body) = curl(&[
        "-X",
        "POST",
        "-d",
        &format!("{{\"token\":\"{AUDREY_TOKEN}\"}}"),
        &format!("{api}/console/login"),
    ]);
    assert_eq!(status, 200, "{body}");
    let set = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap()
        .to_owned();
    assert!(set.contains("httponly") && set.contains("samesite=strict") && set.contains("path=/"));
    let cookie = set
        .trim_start_matches("set-cookie:")
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["identity"], "audrey");
    assert_eq!(me["may"]["read_audit"], true);
    assert_eq!(me["may"]["end_session"], false);
    assert_eq!(me["may"]["revoke_grant"], false);
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    assert!(!body.contains(AUDREY_TOKEN), "the token is not echoed");

    // With the cookie: reads work; a change without the CSRF token, or from another origin,
    // is refused; with it, it is judged by policy.
    let c = format!("Cookie: {cookie}");
    let (status, _, _) = curl(&["-H", &c, &format!("{api}/v1/audit/events?limit=2")]);
    assert_eq!(status, 200);
    // The newest events, in seq order; from seq 1, the oldest.
    let seqs = |body: &str| -> Vec<u64> {
        serde_json::from_str::<Value>(body).unwrap()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    // The two sign-in attempts are on record (indexed within milliseconds).
    let mut all = Vec::new();
    wait_for("two events in the trail", || {
        let (_, _, body) = curl(&["-H", &c, &format!("{api}/v1/audit/events?limit=1000")]);
        all = seqs(&body);
        all.len() >= 2
    });
    // Events only grow: the newest two now end at or after the last one seen before.
    let (_, _, body) = curl(&["-H", &c, &format!("{api}/v1/audit/events?limit=2")]);
    let newest = seqs(&body);
    assert_eq!(newest.len(), 2, "{newest:?}");
    assert!(
        newest[0] < newest[1] && newest[1] >= *all.last().unwrap(),
        "{newest:?} {all:?}"
    );
    let (_, _, body) = curl(&["-H", &c, &format!("{api}/v1/audit/events?limit=1&from=1")]);
    assert_eq!(seqs(&body), vec![1]);
    let (status, _, body) = curl(&["-H", &c, "-X", "POST", &format!("{api}/v1/audit/verify")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Weir-CSRF"));
    let x = format!("X-Weir-CSRF: {csrf}");
    let (status, _, body) = curl(&[
        "-H",
        &c,
        "-H",
        &x,
        "-H",
        "Origin: http://evil.example",
        "-X",
        "POST",
        &format!("{api}/v1/audit/verify"),
    ]);
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = curl(&[
        "-H",
        &c,
        "-H",
        &x,
        "-H",
        "Sec-Fetch-Site: cross-site",
        "-X",
        "POST",
        &format!("{api}/v1/audit/verify"),
    ]);
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = curl(&[
        "-H",
        &c,
        "-H",
        &x,
        "-X",
        "POST",
        &format!("{api}/v1/audit/verify"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ok"], true);
    // The auditor may not end sessions.
    let mut dave = held_psql(&s.g, "dave", DAVE_TOKEN);
    wait_for("dave's session", || {
        live_identities(&s).contains(&"dave".to_owned())
    });
    let (_, _, body) = curl(&["-H", &c, &format!("{api}/v1/sessions")]);
    let id = serde_json::from_str::<Value>(&body).unwrap()[0]["session"]
        .as_u64()
        .unwrap();
    let (status, _, _) = curl(&[
        "-H",
        &c,
        "-H",
        &x,
        "-X",
        "POST",
        &format!("{api}/v1/sessions/{id}/end"),
    ]);
    assert_eq!(status, 403);
    // A developer sees no one's sessions, cannot read the trail, and lists only their own
    // approval requests.
    let bearer = format!("Authorization: Bearer {CAROL_TOKEN}");
    let (_, _, body) = curl(&["-H", &bearer, &format!("{api}/v1/sessions")]);
    assert_eq!(body.trim(), "[]");
    let (status, _, _) = curl(&["-H", &bearer, &format!("{api}/v1/audit/events")]);
    assert_eq!(status, 403);
    // Export streams JSON lines, each with its seq.
    let (status, head, body) = curl(&["-H", &c, &format!("{api}/v1/audit/export")]);
    assert_eq!(status, 200);
    assert!(head.contains("application/x-ndjson"));
    let first: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    // Sign-out ends the console session: the cookie no longer works.
    let (status, _, _) = curl(&[
        "-H",
        &c,
        "-H",
        &x,
        "-X",
        "POST",
        &format!("{api}/console/logout"),
    ]);
    assert_eq!(status, 204);
    let (status, _, _) = curl(&["-H", &c, &format!("{api}/console/me")]);
    assert_eq!(status, 401);
    drop(dave.stdin.take());
    let _ = dave.wait();
    // No token in the gateway's log.
    let log = s.g.log();
    for t in [AUDREY_TOKEN, CAROL_TOKEN, DAVE_TOKEN, OLGA_TOKEN] {
        assert!(!log.contains(t), "token {t} in the log");
    }
}
