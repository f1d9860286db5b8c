//! Identity: static identities and store-issued tokens; no identity, no connection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

fn connections_received(g: &Gateway) -> usize {
    std::fs::read_to_string(g.cluster.log_path())
        .unwrap_or_default()
        .matches("connection received")
        .count()
}

fn logged_cluster() -> Gateway {
    Gateway::start_with(
        Options {
            fast: true,
            settings: vec![("log_connections".into(), "on".into())],
        },
        "",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_get_28p01_and_never_reach_the_upstream() {
    let g = logged_cluster();
    // Create and revoke a store token, and one that expires at once.
    let out = g.weir(&[
        "token",
        "create",
        "--name",
        "ci",
        "--kind",
        "service",
        "--groups",
        "ci,deploy",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revoked = stdout(&out).lines().last().unwrap().to_owned();
    assert!(g.weir(&["token", "revoke", "ci"]).status.success());
    let out = g.weir(&[
        "token", "create", "--name", "short", "--kind", "agent", "--ttl", "1s",
    ]);
    let expired = stdout(&out).lines().last().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(2100));

    let before = connections_received(&g);
    for (user, token, why) in [
        ("alice", "wrong-token", "wrong"),
        ("alice", "", "missing"),
        ("alice", BOB_TOKEN, "someone else's static token"),
        ("ci", revoked.as_str(), "revoked"),
        ("short", expired.as_str(), "expired"),
        (
            "nobody",
            ALICE_TOKEN,
            "unknown user with a valid token of another",
        ),
    ] {
        let err = g
            .connect(user, token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{why}: connected"));
        let code = err.as_db_error().map(|e| e.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("28P01"), "{why}: {err}");
    }
    assert_eq!(
        connections_received(&g),
        before,
        "a refused client caused an upstream connection"
    );
    let failures = g
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "auth_failed")
        .count();
    assert!(failures >= 6, "auth failures are audited");
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_token_works_for_its_identity_only() {
    let g = Gateway::start();
    let out = g.weir(&[
        "token", "create", "--name", "etl", "--kind", "service", "--ttl", "24h",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).lines().last().unwrap().to_owned();
    assert!(token.starts_with("weir_") && token.len() > 40, "{token}");

    let client = g.connect("etl", &token).await.unwrap();
    let row = client.query_one("select 7::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);

    // The token is someone else's when presented under another name.
    let err = g.connect("alice", &token).await.err().unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");

    // The store keeps only a hash: the token text is nowhere in the database file, nor in
    // the trail's journal beside it.
    let db = std::fs::read(g.dir.path().join("weir.db")).unwrap();
    let wal = std::fs::read(g.dir.path().join("weir.db-wal")).unwrap_or_default();
    let mut files = vec![db, wal];
    for entry in std::fs::read_dir(g.dir.path().join("weir.db-trail")).unwrap() {
        files.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(files.len() >= 4, "the journal holds a lock and a segment");
    for bytes in &files {
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()));
    }

    let list = stdout(&g.weir(&["token", "list"]));
    assert!(list.contains("etl") && list.contains("active"), "{list}");
    assert!(!list.contains(&token));
    // The gateway records when the token was last used (written within a poll interval).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list = stdout(&g.weir(&["token", "list"]));
        let line = list.lines().find(|l| l.contains("etl")).unwrap().to_owned();
        if !line.contains("never") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Revocation ends the live session within a second, and refuses new connections.
    let revoked_at = std::time::Instant::now();
    assert!(g.weir(&["token", "revoke", "etl"]).status.success());
    while !client.is_closed() {
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(10),
            "the session outlived its token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    eprintln!(
        "session closed {:?} after the revocation",
        revoked_at.elapsed()
    );
    let err = g.connect("etl", &token).await.err().unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
    assert!(stdout(&g.weir(&["token", "list"])).contains("revoked"));
}

#[test]
fn upstream_password_never_reaches_client_or_log() {
    let g = Gateway::start();
    let out = g.psql(
        &g.alice(),
        "SHOW password_encryption;\nSELECT current_user;\n",
    );
    assert!(stdout(&out).contains("postgres"));
    assert!(!stdout(&out).contains(&g.cluster.password));
    assert!(
        !g.log().contains(&g.cluster.password),
        "the upstream password is in the log"
    );
}

#[test]
fn config_with_unknown_key_is_refused_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        "[gateway]\npostgres_listen = \"127.0.0.1:1\"\nlisten = \"x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("listen") && err.contains("line 3"), "{err}");
}

/// An agent is an agent whatever it claims: its token does not log in under a person's
/// name, it cannot take a person's name, and policy and the trail see its kind, groups and
/// attributes as issued, so a group that makes a person powerful does not make it so.
#[test]
fn an_agent_cannot_present_itself_as_a_human() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, dir| {
            std::fs::write(
                dir.join("teams.cedar"),
                concat!(
                    "@id(\"test.payments-deletes\")\n@reason(\"only the payments team deletes\")\n",
                    "forbid(principal, action == Weir::Action::\"delete\", resource)\n",
                    "unless { principal.hasTag(\"team\") && principal.getTag(\"team\") == \"payments\" };\n",
                ),
            )
            .unwrap();
            format!(
                r#"
[[target]]
name = "prod"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:{}"
database = "app"
user = "postgres"
password_file = "upstream-password"

[policy]
files = ["*.cedar"]

[approvals]
timeout = "0s"
"#,
                cluster.port
            )
        },
    );
    let setup = g.psql(
        &g.alice(),
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3);\n",
    );
    assert!(setup.status.success(), "{}", stderr(&setup));

    // Issued as an agent in the dba group, with the payments team as an attribute.
    let out = g.weir(&[
        "token",
        "create",
        "--name",
        "copilot",
        "--kind",
        "agent",
        "--groups",
        "dba",
        "--attr",
        "team=payments",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("(agent, groups: dba, attributes: team=payments)"),
        "{}",
        stdout(&out)
    );
    let token = stdout(&out).lines().last().unwrap().to_owned();
    let list = stdout(&g.weir(&["token", "list"]));
    let line = list.lines().find(|l| l.contains("copilot")).unwrap();
    assert!(
        line.contains("agent") && line.ends_with("team=payments"),
        "{list}"
    );

    // It cannot take a person's name: a static one, an address from the IdP, or a name
    // already held by an identity of another kind.
    for (name, why) in [
        ("bob", "static identity"),
        ("dana@example.com", "shaped like a person's address"),
    ] {
        let out = g.weir(&["token", "create", "--name", name, "--kind", "agent"]);
        assert!(!out.status.success(), "{name}");
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
    let out = g.weir(&[
        "token", "create", "--name", "pat", "--kind", "human", "--groups", "dba",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = g.weir(&["token", "create", "--name", "pat", "--kind", "agent"]);
    assert!(
        stderr(&out).contains("is already the name of a human"),
        "{}",
        stderr(&out)
    );

    // Its token does not log in under a person's name.
    for user in ["bob", "alice", "pat"] {
        let out = g.psql(&g.conninfo(user, &token), "SELECT 1;\n");
        assert!(!out.status.success(), "{user}");
        assert!(
            stderr(&out).contains(&format!("weir: authentication failed for \"{user}\"")),
            "{user}: {}",
            stderr(&out)
        );
    }

    // Under its own name, it is an agent: the dba group does not lift the production
    // guard that bob, a human dba, passes.
    let prod = |user: &str, token: &str| {
        format!(
            "host=127.0.0.1 port={} dbname=prod user={user} password={token} sslmode=disable",
            g.port
        )
    };
    let out = g.psql(
        &prod("copilot", &token),
        "SELECT count(*) FROM t;\nDELETE FROM t WHERE id = 1;\n",
    );
    assert_eq!(stdout(&out).trim(), "3", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("weir: denied by weir.agents-read-only-in-production"),
        "{}",
        stderr(&out)
    );
    // Its attribute reaches policy as a tag: in development it may delete, alice may not.
    let out = g.psql(
        &g.conninfo("copilot", &token),
        "DELETE FROM t WHERE id = 1;\n",
    );
    assert_eq!(stdout(&out).trim(), "DELETE 1", "{}", stderr(&out));
    let out = g.psql(&g.alice(), "DELETE FROM t WHERE id = 2;\n");
    assert!(
        stderr(&out).contains("weir: denied by test.payments-deletes"),
        "{}",
        stderr(&out)
    );

    // The trail records kind, how it was proven, groups and attributes.
    let opened: Vec<serde_json::Value> = g
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "connection_opened")
        .collect();
    let copilot = opened
        .iter()
        .find(|e| e["identity"] == "copilot")
        .expect("copilot's session is in the trail");
    assert_eq!(copilot["identity_kind"], "agent");
    assert_eq!(copilot["auth"], "token");
    assert_eq!(copilot["groups"], serde_json::json!(["dba"]));
    assert_eq!(
        copilot["attributes"],
        serde_json::json!({"team": "payments"})
    );
    let alice = opened.iter().find(|e| e["identity"] == "alice").unwrap();
    assert_eq!(alice["identity_kind"], "human");
    assert_eq!(alice["auth"], "static");
    assert_eq!(alice["groups"], serde_json::json!(["developers"]));
    let search = stdout(&g.weir(&[
        "audit",
        "search",
        "--identity",
        "copilot",
        "--event",
        "connection_opened",
    ]));
    assert!(
        search.contains("copilot (agent via token) prod")
            && search.contains("groups=dba attrs=team=payments"),
        "{search}"
    );
}

/// Failing to log in cannot flood the trail: past 20 failures a minute from one address, the
/// rest are counted and summed up in one `auth_throttled` event when the minute is over. The
/// limit condenses the record only: a good token from the same address still logs in.
#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_from_one_address_are_counted_past_twenty_a_minute() {
    let g = Gateway::start();
    for _ in 0..25 {
        let err = g.connect("alice", "not-a-token").await.err().unwrap();
        let code = err.as_db_error().map(|e| e.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("28P01"), "{err}");
    }
    let kinds = |g: &Gateway, kind: &str| {
        g.audit_events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&g, "auth_failed").len(), 20);
    assert!(kinds(&g, "auth_throttled").is_empty());
    let client = g.connect("alice", ALICE_TOKEN).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);

    // A minute later the next failure opens a new window, after the last one's summary.
    g.set_clock_offset(61);
    assert!(g.connect("alice", "still-not-a-token").await.is_err());
    let throttled = kinds(&g, "auth_throttled");
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert_eq!(throttled[0]["failures"], 5);
    assert_eq!(throttled[0]["client_addr"], "127.0.0.1");
    assert_eq!(throttled[0]["claimed"], serde_json::json!(["alice"]));
    assert_eq!(kinds(&g, "auth_failed").len(), 21);
    let out = g.weir(&["audit", "search", "--text", "auth_throttled"]);
    assert!(
        stdout(&out).contains(
            "from 127.0.0.1: 5 more failed logins within 60 s, counted, not recorded one by one (as alice)"
        ),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
