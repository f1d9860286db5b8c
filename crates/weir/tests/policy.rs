//! Policy at the gateway: every statement decided by the built-in Cedar policy, denials with
//! the rule's name, `weir policy check` and `weir policy test` as the contract states them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

fn production() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, dir| {
            std::fs::write(
                dir.join("ops.cedar"),
                concat!(
                    "@id(\"ops.no-secrets\")\n@reason(\"the secrets table is off limits\")\n",
                    "forbid(principal, action, resource) when { context.tables_read.contains(\"public.secrets\") };\n",
                    "@id(\"ops.no-pci\")\n@reason(\"card data stays in the vault\")\n",
                    "forbid(principal, action, resource) when { context.sensitivity.contains(\"pci\") };\n",
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
[target.tables."sales.cards"]
sensitivity = "pci"

[[identity.static]]
name = "claude"
kind = "agent"
groups = ["agents"]
token = "claude-test-token"

[policy]
files = ["*.cedar"]

[approvals]
timeout = "0s"
"#,
                cluster.port
            )
        },
    )
}

fn prod(g: &Gateway, user: &str, token: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=prod user={user} password={token} sslmode=disable",
        g.port
    )
}

#[test]
fn built_in_policy_guards_production_and_names_the_rule() {
    let g = production();
    let setup = g.psql(
        &g.alice(),
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2); CREATE TABLE secrets (s text);\n",
    );
    assert!(setup.status.success(), "{}", stderr(&setup));

    let out = g.psql(
        &prod(&g, "alice", ALICE_TOKEN),
        "SELECT count(*) FROM t;\nDROP TABLE t;\nDELETE FROM t;\nDELETE FROM t WHERE 1 = 1;\nALTER TABLE t ADD COLUMN x int;\nSELECT * FROM secrets;\nSELECT pg_read_file('/etc/passwd');\nselec 1;\nDELETE FROM t WHERE id = 2;\nSELECT count(*) FROM t;\n",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(se.contains("weir: denied by weir.no-drop-in-production: DROP and TRUNCATE are not allowed in production"), "{se}");
    assert_eq!(
        se.matches("weir: denied by weir.where-required-in-production")
            .count(),
        2,
        "{se}"
    );
    assert!(
        se.contains("weir: denied by weir.ddl-needs-approval-in-production: approval required"),
        "{se}"
    );
    assert!(
        se.contains("weir: denied by ops.no-secrets: the secrets table is off limits"),
        "{se}"
    );
    assert!(
        se.contains("weir: denied by weir.server-files-and-programs"),
        "{se}"
    );
    assert!(se.contains("weir: denied by weir.parse"), "{se}");
    // Nothing denied ran: the table is still there with its rows, less the one allowed delete.
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        vec!["2", "DELETE 1", "1"],
        "{so}"
    );
    // Every denial is an audit event naming its rule.
    let denied: Vec<_> = g
        .audit_events()
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .collect();
    assert!(
        denied
            .iter()
            .any(|e| e["rule"] == "weir.no-drop-in-production"),
        "{denied:?}"
    );

    // An agent is read-only in production.
    let out = g.psql(
        &prod(&g, "claude", "claude-test-token"),
        "SELECT count(*) FROM t;\nINSERT INTO t VALUES (3);\n",
    );
    assert_eq!(stdout(&out).trim(), "1");
    assert!(
        stderr(&out).contains("weir: denied by weir.agents-read-only-in-production"),
        "{}",
        stderr(&out)
    );

    // Development stays frictionless.
    let out = g.psql(&g.alice(), "DELETE FROM t;\nDROP TABLE t;\n");
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{}",
        stderr(&out)
    );
}

/// What a session did earlier changes what its statements mean: `EXECUTE` runs what it
/// prepared, and unqualified names are in the schemas of its search_path.
#[test]
fn decisions_follow_the_session_scope() {
    let g = production();
    let setup = g.psql(
        &g.alice(),
        "CREATE SCHEMA sales; CREATE TABLE sales.cards (pan text); INSERT INTO sales.cards VALUES ('4111111111111111'); CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2);\n",
    );
    assert!(setup.status.success(), "{}", stderr(&setup));

    // An agent may EXECUTE what it prepared as a read; an EXECUTE Weir cannot resolve is an
    // unknown effect, which needs approval.
    let out = g.psql(
        &prod(&g, "claude", "claude-test-token"),
        "PREPARE n AS SELECT count(*) FROM orders;\nEXECUTE n;\nEXECUTE other;\nDEALLOCATE n;\nEXECUTE n;\n",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        ["PREPARE", "2", "DEALLOCATE"],
        "{so}\n{se}"
    );
    assert_eq!(
        se.matches(
            "weir: denied by weir.unknown-effect-needs-approval-in-production: approval required"
        )
        .count(),
        2,
        "{se}"
    );

    // A write prepared in one request and executed in a later one is still that write.
    let out = g.psql(
        &prod(&g, "alice", ALICE_TOKEN),
        "PREPARE one AS DELETE FROM orders WHERE id = $1;\nEXECUTE one(1);\nSELECT count(*) FROM orders;\n",
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["PREPARE", "DELETE 1", "1"],
        "{}",
        stderr(&out)
    );

    // The tag on sales.cards follows the table when the search_path reaches it unqualified.
    let out = g.psql(
        &prod(&g, "alice", ALICE_TOKEN),
        "SELECT count(*) FROM orders;\nSET search_path = sales, public;\nSELECT * FROM cards;\nRESET search_path;\nSELECT * FROM cards;\nSELECT * FROM public.orders;\n",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(
        se.matches("weir: denied by ops.no-pci: card data stays in the vault")
            .count(),
        2,
        "after a RESET the session may still reach sales (a ROLLBACK can undo a SET): {se}"
    );
    assert!(!so.contains("4111"), "{so}");
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        ["1", "SET", "RESET", "2"],
        "{so}\n{se}"
    );
}

#[test]
fn policy_check_prints_one_line_per_statement() {
    let g = production();
    let out = g.weir(&[
        "policy",
        "check",
        "--as",
        "alice",
        "--target",
        "prod",
        "SELECT 1; DROP TABLE t; ALTER TABLE t ADD x int; DELETE FROM t",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        vec![
            "allow",
            "deny weir.no-drop-in-production",
            "approve weir.ddl-needs-approval-in-production",
            "deny weir.where-required-in-production"
        ]
    );
    let out = g.weir(&[
        "policy",
        "check",
        "--as",
        "claude",
        "--target",
        "prod",
        "UPDATE t SET id = 1 WHERE id = 2",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "approve weir.agents-read-only-in-production"
    );
}

#[test]
fn policy_test_files_pass_and_fail() {
    let g = production();
    let file = g.dir.path().join("cases.toml");
    std::fs::write(
        &file,
        r#"
[[case]]
name = "developers read production"
identity = "alice"
target = "prod"
sql = "SELECT * FROM t WHERE id = 1"
expect = "allow"

[[case]]
name = "no drop in production"
identity = "alice"
target = "prod"
sql = "SELECT 1; DROP TABLE t"
expect = "allow; deny weir.no-drop-in-production"

[[case]]
name = "inline agent"
identity = "bot"
kind = "agent"
environment = "production"
sql = "INSERT INTO t VALUES (1)"
expect = "approve"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["policy", "test"])
        .arg(&file)
        .arg("--config")
        .arg(&g.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).ends_with("3 passed, 0 failed\n"),
        "{}",
        stdout(&out)
    );

    std::fs::write(&file, "[[case]]\nname = \"wrong\"\nidentity = \"alice\"\ntarget = \"prod\"\nsql = \"DROP TABLE t\"\nexpect = \"allow\"\n").unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["policy", "test"])
        .arg(&file)
        .arg("--config")
        .arg(&g.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("FAIL wrong: expected allow, got deny weir.no-drop-in-production"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_invalid_policy_stops_startup_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource)\nwhen { context.nope };\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("pw"), "x").unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        "[gateway]\npostgres_listen = \"127.0.0.1:1\"\n[policy]\nfiles = [\"bad.cedar\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.cedar:2"), "{}", stderr(&out));
}
