//! Approval channels beyond the CLI, end to end: the HTTP API (curl, bearer tokens), the
//! generic webhook (a local receiver checks Weir's signature and calls back, signed), and
//! Slack (a local stand-in for the Web API receives chat.postMessage; interactivity requests
//! are built and signed the way Slack documents them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

const WEBHOOK_SECRET: &str = "webhook-shared-secret";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TOKEN: &str = "xoxb-test-bot-token";

/// One HTTP request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

/// A local HTTP server standing in for the webhook receiver and the Slack Web API: answers
/// `{"ok":true}` to everything and keeps what it was sent.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let keep = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let mut seen = keep.lock().unwrap();
                // chat.postMessage answers with the message's channel and ts, as Slack does.
                let answer = if path.ends_with("/chat.postMessage") {
                    let n = seen.iter().filter(|s| s.path == path).count();
                    format!(
                        "{{\"ok\":true,\"channel\":\"C0DBAPPROVE\",\"ts\":\"1700000000.{n:06}\"}}"
                    )
                } else {
                    "{\"ok\":true}".to_owned()
                };
                seen.push(Seen {
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                drop(seen);
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Receiver { port, seen }
    }

    /// The `chat.update` of the message posted `n`-th (from 0), waiting for it to arrive.
    fn update_of(&self, n: usize) -> Value {
        let ts = format!("1700000000.{n:06}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.path == "/slack/chat.update")
                .map(|s| serde_json::from_str::<Value>(&s.body).unwrap())
                .find(|v| v["ts"] == ts.as_str());
            if let Some(v) = found {
                return v;
            }
            assert!(Instant::now() < deadline, "message {ts} was not updated");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first request to `path` after `skip` of them, waiting for it to arrive.
    fn wait_for(&self, path: &str, skip: usize) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.path == path)
                .nth(skip)
            {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "nothing was sent to {path}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hmac_hex(secret: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Setup {
    g: Gateway,
    api: String,
    receiver: Receiver,
}

fn setup() -> Setup {
    let receiver = Receiver::start();
    let http_port = weir::cluster::free_port().unwrap();
    let r = receiver.port;
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
            std::fs::write(dir.join("webhook.secret"), WEBHOOK_SECRET).unwrap();
            std::fs::write(dir.join("slack.secret"), SLACK_SECRET).unwrap();
            std::fs::write(dir.join("slack.token"), SLACK_TOKEN).unwrap();
            format!(
                r#"
[policy]
files = ["approve.cedar"]

[approvals]
webhook = "http://127.0.0.1:{r}/hook"
webhook_secret_file = "webhook.secret"
slack_api = "http://127.0.0.1:{r}/slack"
slack_channel = "C0DBAPPROVE"
slack_bot_token_file = "slack.token"
slack_signing_secret_file = "slack.secret"
[approvals.slack_users]
U0BOB = "bob"
U0ALICE = "alice"
"#
            )
        },
    );
    // The HTTP listener is set in [gateway]; add it there and restart.
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
        receiver,
    }
}

/// curl: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn wait_request(s: &Setup, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = curl(&[
            "-H",
            &format!("Authorization: Bearer {BOB_TOKEN}"),
            &format!("{}/v1/approvals", s.api),
        ]);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if v.as_array().unwrap().len() == n {
            return v[0]["id"].as_str().unwrap_or("").to_owned();
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_api_webhook_and_slack_decide_waiting_statements() {
    let s = setup();
    let g = &s.g;
    std::thread::scope(|scope| {
        // 1. The HTTP API, with bearer tokens; policy judges the caller.
        let client = scope.spawn(|| g.psql(&g.alice(), "DELETE FROM items WHERE id = 1;\n"));
        let id = wait_request(&s, 1);
        let (status, _) = curl(&[&format!("{}/v1/approvals", s.api)]);
        assert_eq!(status, 401);
        let (status, body) = curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {ALICE_TOKEN}"),
            &format!("{}/v1/approvals/{id}/approve", s.api),
        ]);
        assert_eq!(status, 403, "{body}");
        let (status, body) = curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {BOB_TOKEN}"),
            "-d",
            "{\"reason\": \"looks right\"}",
            &format!("{}/v1/approvals/{id}/approve", s.api),
        ]);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "approved");
        assert_eq!(v["decided_by"], "bob");
        assert_eq!(stdout(&client.join().unwrap()).trim(), "DELETE 1");

        // The webhook got the request, signed; Slack got a message with buttons.
        let hook = s.receiver.wait_for("/hook", 0);
        let ts = &hook.headers["x-weir-timestamp"];
        let expected = format!(
            "sha256={}",
            hmac_hex(WEBHOOK_SECRET, format!("{ts}.{}", hook.body).as_bytes())
        );
        assert_eq!(hook.headers["x-weir-signature"], expected);
        let payload: Value = serde_json::from_str(&hook.body).unwrap();
        assert_eq!(payload["type"], "approval.requested");
        assert_eq!(payload["id"], id.as_str());
        assert_eq!(payload["identity"], "alice");
        assert_eq!(payload["facts"][0]["kind"], "delete");
        assert_eq!(payload["facts"][0]["tables_written"][0], "public.items");
        assert!(payload["statement"]
            .as_str()
            .unwrap()
            .starts_with("DELETE FROM items WHERE id = $1"));
        assert_eq!(
            payload["callback"],
            format!("{}/v1/webhook/decide", s.api).as_str()
        );
        let slack = s.receiver.wait_for("/slack/chat.postMessage", 0);
        assert_eq!(
            slack.headers["authorization"],
            format!("Bearer {SLACK_TOKEN}")
        );
        let msg: Value = serde_json::from_str(&slack.body).unwrap();
        assert_eq!(msg["channel"], "C0DBAPPROVE");
        let buttons = &msg["blocks"][3]["elements"];
        assert_eq!(buttons[0]["action_id"], "weir_approve");
        assert_eq!(buttons[0]["value"], id.as_str());
        assert_eq!(buttons[1]["action_id"], "weir_deny");
        // Approved over HTTP: the Slack message shows it, without buttons.
        let update = s.receiver.update_of(0);
        assert_eq!(update["channel"], "C0DBAPPROVE");
        let text = update["text"].as_str().unwrap();
        assert!(
            text.contains(&id) && text.contains("*approved* by bob"),
            "{text}"
        );
        assert_eq!(update["blocks"].as_array().unwrap().len(), 1, "{update}");

        // 2. The webhook's callback: signed, naming the approver.
        let client = scope.spawn(|| {
            g.psql(
                &g.alice(),
                "\\set VERBOSITY verbose\nDELETE FROM items WHERE id = 2 OR id = 3;\n",
            )
        });
        let id = wait_request(&s, 1);
        let body =
            json!({"id": id, "decision": "deny", "approver": "bob", "reason": "ticket missing"})
                .to_string();
        let ts = now_s().to_string();
        let good = format!(
            "sha256={}",
            hmac_hex(WEBHOOK_SECRET, format!("{ts}.{body}").as_bytes())
        );
        let post = |sig: &str, ts: &str| {
            curl(&[
                "-X",
                "POST",
                "-H",
                &format!("X-Weir-Timestamp: {ts}"),
                "-H",
                &format!("X-Weir-Signature: {sig}"),
                "-d",
                &body,
                &format!("{}/v1/webhook/decide", s.api),
            ])
        };
        assert_eq!(post("sha256=00", &ts).0, 401);
        let old = (now_s() - 3600).to_string();
        assert_eq!(post(&good, &old).0, 401);
        let (status, answer) = post(&good, &ts);
        assert_eq!(status, 200, "{answer}");
        let se = stderr(&client.join().unwrap());
        assert!(
            se.contains(&format!(
                "42501: weir: approval request {id} was denied by bob: ticket missing"
            )),
            "{se}"
        );
        let text = s.receiver.update_of(1)["text"].as_str().unwrap().to_owned();
        assert!(text.contains("*denied* by bob: ticket missing"), "{text}");

        // 3. Slack: a button press, signed as Slack signs it, by a mapped user.
        let client =
            scope.spawn(|| g.psql(&g.alice(), "DELETE FROM items WHERE id = 4 OR id = 5;\n"));
        let id = wait_request(&s, 1);
        let press = |user: &str, action: &str| {
            let payload = json!({
                "type": "block_actions",
                "user": {"id": user, "username": "someone", "team_id": "T1"},
                "api_app_id": "A1",
                "token": "legacy-verification-token",
                "container": {"type": "message", "message_ts": "1.2", "channel_id": "C0DBAPPROVE"},
                "trigger_id": "1.2.3",
                "team": {"id": "T1", "domain": "example"},
                "channel": {"id": "C0DBAPPROVE", "name": "db-approvals"},
                "response_url": format!("http://127.0.0.1:{}/slack-response", s.receiver.port),
                "actions": [{
                    "action_id": action,
                    "block_id": format!("weir_{id}"),
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": id,
                    "type": "button",
                    "action_ts": "1.3"
                }]
            });
            serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
        };
        let slack_post = |body: &str, sig: Option<String>| {
            let ts = now_s().to_string();
            let sig = sig.unwrap_or_else(|| {
                format!(
                    "v0={}",
                    hmac_hex(SLACK_SECRET, format!("v0:{ts}:{body}").as_bytes())
                )
            });
            curl(&[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/x-www-form-urlencoded",
                "-H",
                &format!("X-Slack-Request-Timestamp: {ts}"),
                "-H",
                &format!("X-Slack-Signature: {sig}"),
                "--data-binary",
                body,
                &format!("{}/v1/slack/interactivity", s.api),
            ])
        };
        // Forged: refused, nothing changes.
        assert_eq!(
            slack_post(&press("U0BOB", "weir_approve"), Some("v0=00".into())).0,
            401
        );
        // A user Slack vouches for but Weir does not know: acknowledged, nothing changes.
        assert_eq!(slack_post(&press("U0MALLORY", "weir_approve"), None).0, 200);
        let reply = s.receiver.wait_for("/slack-response", 0);
        assert!(reply.body.contains("not mapped"), "{}", reply.body);
        // The requester cannot approve their own.
        assert_eq!(slack_post(&press("U0ALICE", "weir_approve"), None).0, 200);
        let reply = s.receiver.wait_for("/slack-response", 1);
        assert!(reply.body.contains("own request"), "{}", reply.body);
        assert_eq!(wait_request(&s, 1), id);
        // Bob approves.
        assert_eq!(slack_post(&press("U0BOB", "weir_approve"), None).0, 200);
        assert_eq!(stdout(&client.join().unwrap()).trim(), "DELETE 2");
        let reply = s.receiver.wait_for("/slack-response", 2);
        let v: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["replace_original"], true);
        assert_eq!(v["text"], format!("request {id} approved by bob").as_str());
    });
    // Access requests are announced the same way.
    let out = g.weir(&[
        "request", "app", "--for", "1h", "--reason", "INC-7", "--as", "alice",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hook = s.receiver.wait_for("/hook", 3);
    let payload: Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(payload["statement"], "ACCESS app FOR 1h");
    assert_eq!(payload["reason"], "INC-7");
    // Approved at the CLI: the Slack message (the fourth posted) shows it.
    let access = payload["id"].as_str().unwrap().to_owned();
    let out = g.weir(&["approve", &access, "--as", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = s.receiver.update_of(3)["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains(&access) && text.contains("*approved* by bob"),
        "{text}"
    );
    // Every decision is in the trail, with its channel.
    let out = g.weir(&["audit", "search", "--decision", "approved"]);
    let text = stdout(&out);
    assert!(
        text.contains("via http") && text.contains("via slack"),
        "{text}"
    );
    let out = g.weir(&["audit", "search", "--decision", "denied"]);
    assert!(stdout(&out).contains("via webhook"), "{}", stdout(&out));
    assert_eq!(
        g.cluster
            .psql("app", "SELECT count(*) FROM items")
            .unwrap()
            .trim(),
        "7"
    );
}
