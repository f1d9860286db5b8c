//! Sensitivity flows with the data: a write that copies values of a sensitive column into
//! another column (INSERT … SELECT, UPDATE … SET, MERGE, CREATE TABLE AS, SELECT INTO, a
//! temporary table) marks that column sensitive, in Weir's store and its audit trail, so later
//! reads are masked in every session and for every identity until an operator clears the tag.
//! The copies are ones content detection cannot recognize (digits only, reversed, base64):
//! lineage is what is tested.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::{Duration, Instant};

const SEED: &str = "
CREATE TABLE people (id int PRIMARY KEY, nick text, ssn text);
INSERT INTO people VALUES (1, 'pat', '901020037'), (2, 'sam', '987654321');
CREATE TABLE copies (v text);
CREATE TABLE copies_prod (v text);
CREATE TABLE products (id int PRIMARY KEY, name text);
INSERT INTO products VALUES (1, 'lamp'), (2, 'desk');
CREATE TABLE merged (id int PRIMARY KEY, v text);
CREATE TABLE stats (n bigint, label text);
CREATE TABLE by_driver (id int, v text);
";

/// The SSNs, reversed and in base64: none of them may come back in clear.
const CLEAR: &[&str] = &[
    "901020037",
    "987654321",
    "730020109",
    "123456789",
    "OTAxMDIwMDM3",
    "OTg3NjU0MzIx",
];

fn gateway() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, dir| {
            c.psql("app", SEED).unwrap();
            std::fs::write(
                dir.join("unmask.cedar"),
                r#"@id("ops.dba-sees-ssn")
permit(principal in Weir::Group::"dba", action == Weir::Action::"unmask", resource)
when { context.column == "public.people.ssn" };
"#,
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
files = ["unmask.cedar"]

[approvals]
timeout = "60s"
approvers = ["dba"]
"#,
                c.port
            )
        },
    )
}

fn no_clear(what: &str, out: &str) {
    for v in CLEAR {
        assert!(!out.contains(v), "{what}: {v} in clear:\n{out}");
    }
}

/// Result lines, without psql's command tags.
fn rows(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| {
            !l.is_empty()
                && !matches!(
                    l.split_whitespace().next(),
                    Some("INSERT" | "UPDATE" | "SELECT" | "MERGE" | "CREATE" | "DELETE")
                )
        })
        .collect()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success() && !stderr(out).contains("ERROR"),
        "{}",
        stderr(out)
    );
    stdout(out)
}

#[test]
fn copies_of_a_sensitive_column_are_masked_in_every_session_until_cleared() {
    let mut g = gateway();
    let alice = g.alice();
    // Each route, in a development target (no approval asked).
    ok(&g.psql(
        &alice,
        "INSERT INTO copies SELECT reverse(ssn) FROM people;
UPDATE products SET name = p.ssn FROM people p WHERE p.id = products.id;
MERGE INTO merged m USING people p ON m.id = p.id
  WHEN NOT MATCHED THEN INSERT VALUES (p.id, encode(p.ssn::bytea, 'base64'));
CREATE TABLE ctas AS SELECT id, ssn || '' AS digits FROM people;
SELECT id, reverse(ssn) INTO sinto FROM people;
",
    ));
    // The same session, a temporary table: masked at once.
    let temp = ok(&g.psql(
        &alice,
        "CREATE TEMP TABLE tmp AS SELECT reverse(ssn) AS r FROM people;
SELECT r FROM tmp;
",
    ));
    no_clear("temp table", &temp);
    assert_eq!(rows(&temp).len(), 2, "{temp}");

    let reads = "SELECT v FROM copies; SELECT name FROM products; SELECT v FROM merged;
SELECT digits FROM ctas; SELECT reverse FROM sinto;";
    // New sessions, another identity too (bob may see people.ssn in clear, not its copies).
    for (who, conninfo) in [("alice", g.alice()), ("bob", g.conninfo("bob", BOB_TOKEN))] {
        let out = ok(&g.psql(&conninfo, reads));
        no_clear(who, &out);
        assert_eq!(rows(&out).len(), 10, "{out}");
    }
    // Directly, the copies are there: what Weir masks is real data.
    let direct = g
        .cluster
        .psql("app", "SELECT v FROM copies ORDER BY v")
        .unwrap();
    assert!(direct.contains("730020109"), "{direct}");

    // On record: the store's tags, and the trail.
    let tags = ok(&g.weir(&["tags", "list"]));
    for column in [
        "public.copies.v <- public.people.ssn",
        "public.products.name <- public.people.ssn",
        "public.merged.v <- public.people.ssn",
        "public.ctas.digits <- public.people.ssn",
        "public.sinto.#2 <- public.people.ssn",
        "pg_temp.tmp.r <- public.people.ssn",
    ] {
        assert!(tags.contains(column), "{column} not in:\n{tags}");
    }
    let derived: Vec<serde_json::Value> = g
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "sensitivity_derived")
        .collect();
    assert!(
        derived.iter().any(|e| e["identity"] == "alice"
            && e["tags"].as_array().unwrap().iter().any(|t| t
                .as_str()
                .unwrap()
                .starts_with("public.copies.v <- public.people.ssn"))),
        "{derived:?}"
    );

    // The tags outlive the gateway, and the HTTP API lists them.
    let http_port = weir::cluster::free_port().unwrap();
    let config = std::fs::read_to_string(&g.config).unwrap().replacen(
        "[gateway]\n",
        &format!("[gateway]\nhttp_listen = \"127.0.0.1:{http_port}\"\n"),
        1,
    );
    std::fs::write(&g.config, config).unwrap();
    g.terminate();
    g.restart();
    no_clear("after a restart", &ok(&g.psql(&g.alice(), reads)));
    let api = std::process::Command::new("curl")
        .args(["-s", "-f", "-H"])
        .arg(format!("Authorization: Bearer {ALICE_TOKEN}"))
        .arg(format!(
            "http://127.0.0.1:{http_port}/v1/derived-tags?target=app"
        ))
        .output()
        .unwrap();
    assert!(api.status.success(), "{}", stderr(&api));
    let listed: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["column"] == "public.copies.v"
                && t["source"] == "public.people.ssn"
                && t["label"] == "ssn"),
        "{listed}"
    );

    // An operator reviews and clears one tag: that column is shown again, the others stay
    // masked.
    let id = tags
        .lines()
        .find(|l| l.contains("public.copies.v <-"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    ok(&g.weir(&["tags", "clear", &id, "--reason", "test data"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ok(&g.psql(&g.alice(), "SELECT v FROM copies ORDER BY v;"));
        if out.contains("730020109") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still masked after clearing: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    no_clear(
        "others",
        &ok(&g.psql(&g.alice(), "SELECT name FROM products;")),
    );
    assert!(!ok(&g.weir(&["tags", "list"])).contains("public.copies.v <-"));
    // The clearing is in the trail (written by the CLI, not the gateway's log).
    let trail = ok(&g.weir(&["audit", "export", "--format", "jsonl"]));
    assert!(
        trail
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| e["event"]["event"] == "admin" && e["event"]["action"] == "tag.clear"),
        "no tag.clear in the trail"
    );
}

#[test]
fn copies_of_nothing_sensitive_are_untouched() {
    let g = gateway();
    let out = ok(&g.psql(
        &g.alice(),
        "INSERT INTO stats SELECT count(ssn), 'people' FROM people;
INSERT INTO stats (label) SELECT nick FROM people;
INSERT INTO stats SELECT 1, 'x' FROM people WHERE ssn IS NOT NULL;
INSERT INTO products VALUES (9, 'const');
UPDATE products SET name = upper(name) WHERE id = 9;
CREATE TABLE nicks AS SELECT id, nick FROM people;
SELECT n, label FROM stats ORDER BY label, n;
SELECT name FROM products WHERE id = 9;
SELECT nick FROM nicks ORDER BY id;
",
    ));
    assert_eq!(
        rows(&out),
        ["|pat", "2|people", "|sam", "1|x", "1|x", "CONST", "pat", "sam"],
        "{out}"
    );
    assert_eq!(ok(&g.weir(&["tags", "list"])).trim(), "");
}

#[test]
fn in_production_a_sensitive_copy_needs_approval_unless_you_may_see_it() {
    let g = gateway();
    let prod =
        |user: &str, token: &str| g.conninfo(user, token).replace("dbname=app", "dbname=prod");
    let alice = prod("alice", ALICE_TOKEN);
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            g.psql(
                &alice,
                "INSERT INTO copies_prod SELECT reverse(ssn) FROM people;\n",
            )
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            let out = stdout(&g.weir(&["approvals"]));
            if let Some(l) = out.lines().next() {
                break l.to_owned();
            }
            assert!(Instant::now() < deadline, "no pending request\n{}", g.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            line.contains("weir.sensitive-copy-needs-approval-in-production"),
            "{line}"
        );
        let id = line.split_whitespace().next().unwrap().to_owned();
        assert!(g
            .weir(&["deny", &id, "--as", "bob", "--reason", "no"])
            .status
            .success());
        let out = client.join().unwrap();
        assert!(stderr(&out).contains(&id), "{}", stderr(&out));
    });
    let count = |t: &str| {
        g.cluster
            .psql("app", &format!("SELECT count(*) FROM {t}"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(count("copies_prod"), "0");
    // bob may see people.ssn in clear: his copy runs without asking (and is still tagged).
    ok(&g.psql(
        &prod("bob", BOB_TOKEN),
        "INSERT INTO copies_prod SELECT reverse(ssn) FROM people;\n",
    ));
    assert_eq!(count("copies_prod"), "2");
    no_clear(
        "alice reads bob's copy",
        &ok(&g.psql(&alice, "SELECT v FROM copies_prod;")),
    );
}

#[test]
fn the_extended_protocol_is_traced_the_same() {
    let g = gateway();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&g.alice(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let n = client
            .execute(
                "INSERT INTO by_driver SELECT id, reverse(ssn) FROM people WHERE id >= $1",
                &[&1i32],
            )
            .await
            .unwrap();
        assert_eq!(n, 2);
        let (reader, conn) =
            tokio_postgres::connect(&g.conninfo("bob", BOB_TOKEN), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let rows = reader
            .query("SELECT v FROM by_driver ORDER BY id", &[])
            .await
            .unwrap();
        let values: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        assert_eq!(values.len(), 2);
        no_clear("extended protocol", &values.join("\n"));
    });
}
