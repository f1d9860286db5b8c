//! Several gateways on one PostgreSQL store (`store = "postgres://…"`): real `weir serve`
//! processes, each with its own config, listen port and signing key, in front of one target
//! cluster, sharing a second cluster as the store. What one gateway records (a token, an
//! approval, a grant, audit events) the others see; faults (a gateway killed, the store
//! stopped) are survived.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{stderr, stdout, weir_bin, ALICE_TOKEN, BOB_TOKEN};

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir::cluster::{Cluster, Options};

const POLICY: &str = r#"
@id("test.deletes-need-approval")
@outcome("approve")
@reason("deletes need a second pair of eyes")
forbid (principal, action == Weir::Action::"delete", resource);
"#;

/// The target cluster, the store cluster, and the gateways.
struct Fleet {
    target: Cluster,
    store: Cluster,
    nodes: Vec<Node>,
}

struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn fast() -> Options {
    Options {
        fast: true,
        ..Default::default()
    }
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        let target = Cluster::start(fast()).unwrap();
        target.psql("postgres", "CREATE DATABASE app").unwrap();
        target
            .psql(
                "app",
                "CREATE TABLE items (id int PRIMARY KEY, name text, ssn text);
                 INSERT INTO items SELECT g, 'item ' || g, '078-05-' || (1000 + g) FROM generate_series(1, 20) g;",
            )
            .unwrap();
        // The store keeps its commits (no `fast`): "durable" means what it says here.
        let store = Cluster::start(Options::default()).unwrap();
        store.psql("postgres", "CREATE DATABASE weirstore").unwrap();
        let mut fleet = Fleet {
            target,
            store,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            let node = fleet.node();
            fleet.nodes.push(node);
        }
        for i in 0..n {
            fleet.nodes[i].spawn();
        }
        fleet
    }

    fn store_url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/weirstore?sslmode=disable",
            self.store.password, self.store.port
        )
    }

    /// A gateway's directory and config (not started).
    fn node(&self) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("weir-node-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("upstream-password"), &self.target.password).unwrap();
        std::fs::write(dir.path().join("approve.cedar"), POLICY).unwrap();
        let port = weir::cluster::free_port().unwrap();
        let config = dir.path().join("weir.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[gateway]
postgres_listen = "127.0.0.1:{port}"
store = "{store}"

[[identity.static]]
name = "alice"
kind = "human"
groups = ["developers"]
token = "{ALICE_TOKEN}"

[[identity.static]]
name = "bob"
kind = "human"
groups = ["dba"]
token = "{BOB_TOKEN}"

[policy]
files = ["approve.cedar"]

[approvals]
timeout = "120s"
approvers = ["dba"]

[[target]]
name = "app"
engine = "postgres"
environment = "development"
upstream = "127.0.0.1:{pg}"
database = "app"
user = "postgres"
password_file = "upstream-password"
[target.columns."public.items.ssn"]
mask = "hash"

[[target]]
name = "prod"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:{pg}"
database = "app"
user = "postgres"
password_file = "upstream-password"
"#,
                store = self.store_url(),
                pg = self.target.port,
            ),
        )
        .unwrap();
        Node {
            dir,
            config,
            port,
            child: None,
        }
    }

    fn psql(&self, port: u16, user: &str, token: &str, script: &str) -> Output {
        self.psql_db(port, "app", user, token, script)
    }

    /// psql through the gateway at `port` to target `db`.
    fn psql_db(&self, port: u16, db: &str, user: &str, token: &str, script: &str) -> Output {
        let mut child = Command::new(self.target.bindir().join("psql"))
            .arg(format!(
                "host=127.0.0.1 port={port} dbname={db} user={user} password={token} sslmode=disable"
            ))
            .args(["-X", "-v", "ON_ERROR_STOP=0", "-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weir.log")).unwrap_or_default()
    }

    fn weir(&self, args: &[&str]) -> Output {
        Command::new(weir_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weir.log"))
            .unwrap();
        let before = self.log().matches("weir is listening").count();
        self.child = Some(
            Command::new(weir_bin())
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches("weir is listening").count() == before {
            if let Ok(Some(st)) = self.child.as_mut().unwrap().try_wait() {
                panic!("weir serve exited with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "weir serve did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The pending requests as `weir approvals` lists them through `node`.
fn pending(node: &Node, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = node.weir(&["approvals"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let ids: Vec<String> = stdout(&out)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        if ids.len() == n {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} pending, have {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify(node: &Node, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let out = node.weir(&args);
    (out.status.success(), stdout(&out), stderr(&out))
}

#[test]
fn three_gateways_share_tokens_approvals_and_one_trail() {
    let fleet = Fleet::start(3);
    let (a, b, c) = (&fleet.nodes[0], &fleet.nodes[1], &fleet.nodes[2]);

    // A token made through one gateway's config logs in at another.
    let out = a.weir(&["token", "create", "--name", "ci-bot", "--kind", "service"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out)
        .split_whitespace()
        .find(|w| w.starts_with("weir_"))
        .unwrap()
        .to_owned();
    let got = fleet.psql(b.port, "ci-bot", &token, "SELECT count(*) FROM items;\n");
    assert_eq!(stdout(&got).trim(), "20", "{}", stderr(&got));

    // The masking hash key is the store's: one value hashes the same through every gateway.
    let hashed: Vec<String> = fleet
        .nodes
        .iter()
        .map(|n| {
            let out = fleet.psql(
                n.port,
                "alice",
                ALICE_TOKEN,
                "SELECT ssn FROM items WHERE id = 3;\n",
            );
            stdout(&out).trim().to_owned()
        })
        .collect();
    assert!(
        !hashed[0].is_empty() && !hashed[0].contains("1003"),
        "{hashed:?}"
    );
    assert!(hashed.iter().all(|h| *h == hashed[0]), "{hashed:?}");

    // A statement waiting on gateway A is released by an approval given through C.
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            fleet.psql(
                a.port,
                "alice",
                ALICE_TOKEN,
                "DELETE FROM items WHERE id = 1;\n",
            )
        });
        let ids = pending(b, 1);
        let approved = c.weir(&["approve", &ids[0], "--as", "bob"]);
        assert!(approved.status.success(), "{}", stderr(&approved));
        let started = Instant::now();
        let out = client.join().unwrap();
        assert!(
            stdout(&out).contains("DELETE 1"),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        eprintln!(
            "released {} ms after the approval returned",
            started.elapsed().as_millis()
        );
    });
    assert_eq!(
        fleet
            .target
            .psql("app", "SELECT count(*) FROM items")
            .unwrap()
            .trim(),
        "19"
    );

    // Every gateway writes its own chain; any config verifies all of them.
    for n in &fleet.nodes {
        let out = fleet.psql(n.port, "alice", ALICE_TOKEN, "SELECT 1;\n");
        assert!(out.status.success());
    }
    let (ok, out, err) = verify(b, &[]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("ok "), "{out}");
    assert_eq!(err.matches(": ok ").count(), 3, "{err}");

    // The keys as a set: all three verify; two of three leave a chain unaccounted for.
    let keys: Vec<String> = fleet
        .nodes
        .iter()
        .map(|n| stdout(&n.weir(&["audit", "public-key"])).trim().to_owned())
        .collect();
    let all = keys.join(",");
    let (ok, out, err) = verify(a, &["--public-key", &all]);
    assert!(ok, "{out}{err}");
    let two = keys[..2].join(",");
    let (ok, out, _) = verify(a, &["--public-key", &two]);
    assert!(!ok && out.starts_with("FAILED"), "{out}");

    // The export verifies on its own, chain by chain, with the set of keys.
    let out = c.weir(&["audit", "export", "--format", "jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = c.dir.path().join("export.jsonl");
    std::fs::write(&file, &out.stdout).unwrap();
    let lines = stdout(&out);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(
        first["chain"].is_string() && first["chain_seq"].is_u64(),
        "{first}"
    );
    let checked = Command::new(weir_bin())
        .args(["audit", "verify", "--file"])
        .arg(&file)
        .args(["--public-key", &all])
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        stdout(&checked),
        stderr(&checked)
    );
    let checked = Command::new(weir_bin())
        .args(["audit", "verify", "--file"])
        .arg(&file)
        .args(["--public-key", &two])
        .output()
        .unwrap();
    assert!(!checked.status.success(), "{}", stdout(&checked));

    // Search sees every gateway's events, in one order.
    let out = a.weir(&["audit", "search", "--identity", "ci-bot"]);
    assert!(
        stdout(&out).contains("SELECT count(*) FROM items"),
        "{}",
        stdout(&out)
    );

    // Tampering with one gateway's chain in the store is found, and named.
    fleet
        .store
        .psql(
            "weirstore",
            "UPDATE audit_events SET body = replace(body, 'SELECT 1', 'SELECT 2') WHERE body LIKE '%SELECT 1%'",
        )
        .unwrap();
    let (ok, out, err) = verify(a, &[]);
    assert!(!ok, "{out}{err}");
    assert!(out.starts_with("FAILED chain "), "{out}");
}

#[test]
fn the_store_going_away_refuses_statements_and_they_resume_by_themselves() {
    let mut fleet = Fleet::start(2);
    let port = fleet.nodes[0].port;
    let ok = fleet.psql(port, "alice", ALICE_TOKEN, "SELECT count(*) FROM items;\n");
    assert_eq!(stdout(&ok).trim(), "20", "{}", stderr(&ok));
    let before = {
        let (ok, out, err) = verify(&fleet.nodes[1], &[]);
        assert!(ok, "{out}{err}");
        out
    };

    fleet.store.stop();
    // A session opened before the outage: its statements are refused, with 58000.
    let out = fleet.psql(
        port,
        "alice",
        ALICE_TOKEN,
        "\\set VERBOSITY verbose\nSELECT count(*) FROM items;\n",
    );
    let err = stderr(&out);
    assert!(
        !stdout(&out).contains("20"),
        "a statement ran unaudited: {}",
        stdout(&out)
    );
    assert!(
        err.contains("58000") || err.contains("08006") || err.contains("audit"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(10));
    fleet.store.start_again().unwrap();

    // Back by themselves: no restart of either gateway.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = fleet.psql(port, "alice", ALICE_TOKEN, "SELECT count(*) FROM items;\n");
        if stdout(&out).trim() == "20" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not resume: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out, err) = verify(&fleet.nodes[1], &[]);
    assert!(ok, "{out}{err}");
    assert_ne!(out, before);
}

#[test]
fn a_gateway_killed_under_load_leaves_every_chain_verifiable() {
    let mut fleet = Fleet::start(3);
    let ports: Vec<u16> = fleet.nodes.iter().map(|n| n.port).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let loads: Vec<_> = ports
            .iter()
            .map(|&port| {
                let fleet = &fleet;
                let stop = &stop;
                s.spawn(move || {
                    let mut rounds = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = fleet.psql(
                            port,
                            "alice",
                            ALICE_TOKEN,
                            &"SELECT count(*) FROM items;\n".repeat(20),
                        );
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY of the test's logic: the load threads only read `fleet.psql`, which
        // touches no node; the kill goes through a raw pid.
        let pid = fleet.nodes[1].child.as_ref().unwrap().id();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        // The others keep serving.
        for &p in [ports[0], ports[2]].iter() {
            let out = fleet.psql(p, "alice", ALICE_TOKEN, "SELECT count(*) FROM items;\n");
            assert_eq!(stdout(&out).trim(), "20", "{}", stderr(&out));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for l in loads {
            assert!(l.join().unwrap() > 0);
        }
    });
    fleet.nodes[1].kill9();
    fleet.nodes[1].spawn();
    let out = fleet.psql(
        ports[1],
        "alice",
        ALICE_TOKEN,
        "SELECT count(*) FROM items;\n",
    );
    assert_eq!(stdout(&out).trim(), "20", "{}", stderr(&out));
    let (ok, out, err) = verify(&fleet.nodes[0], &[]);
    assert!(ok, "{out}{err}");
    assert_eq!(err.matches(": ok ").count(), 3, "{err}");
}

#[test]
fn a_grant_given_through_one_gateway_holds_on_another_and_revoking_it_anywhere_ends_the_session() {
    let fleet = Fleet::start(3);
    let (a, b, c) = (&fleet.nodes[0], &fleet.nodes[1], &fleet.nodes[2]);
    let out = a.weir(&[
        "request", "prod", "--for", "2h", "--reason", "INC-7", "--as", "alice",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let request = stdout(&out).lines().last().unwrap().trim().to_owned();
    let ok = b.weir(&["approve", &request, "--as", "bob"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let grants = stdout(&c.weir(&["grants"]));
    let grant = grants
        .lines()
        .find(|l| l.contains("alice") && l.contains("prod"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{grants}"))
        .to_owned();
    // Gateways read grants every 250 ms.
    std::thread::sleep(Duration::from_secs(1));
    std::thread::scope(|s| {
        // A session on C relies on the grant that A's request and B's approval made.
        let session = s.spawn(|| {
            fleet.psql_db(
                c.port,
                "prod",
                "alice",
                ALICE_TOKEN,
                "CREATE INDEX items_name ON items (name);\nSELECT pg_sleep(5);\nSELECT 'after';\n",
            )
        });
        std::thread::sleep(Duration::from_millis(2500));
        let out = a.weir(&["revoke", &grant]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = session.join().unwrap();
        assert!(
            stdout(&out)
                .lines()
                .next()
                .is_some_and(|l| l.contains("CREATE INDEX") || l.is_empty()),
            "{}",
            stdout(&out)
        );
        assert!(
            !stdout(&out).contains("after"),
            "the session outlived the revoked grant: {}",
            stdout(&out)
        );
        assert!(stderr(&out).contains(&grant), "{}", stderr(&out));
    });
    assert!(fleet
        .target
        .psql(
            "app",
            "SELECT indexname FROM pg_indexes WHERE indexname = 'items_name'"
        )
        .unwrap()
        .contains("items_name"));
}
