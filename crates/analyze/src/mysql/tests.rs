use super::*;

fn facts(sql: &str) -> Vec<StatementFacts> {
    analyze_sql(sql, &Mode::new("shop")).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn one(sql: &str) -> StatementFacts {
    let mut f = facts(sql);
    assert_eq!(f.len(), 1, "{sql}");
    f.remove(0)
}

fn refused(sql: &str, mode: &Mode) -> bool {
    matches!(analyze_sql(sql, mode), Err(AnalyzeError::LexingMode(_)))
}

#[test]
fn what_the_server_could_read_differently_is_refused() {
    let m = Mode::new("shop");
    assert!(refused("SELECT /*!99999 ssn, */ 1 FROM customers", &m));
    assert!(refused("SELECT /*M!100000 ssn, */ 1 FROM customers", &m));
    assert!(refused("SELECT id FROM customers WHERE id = 5 || 1", &m));
    assert!(refused(
        "SELECT \"a\"",
        &m.clone().with_sql_mode("ANSI_QUOTES")
    ));
    assert!(refused(
        "SELECT 'a\\'",
        &m.clone()
            .with_sql_mode("STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES")
    ));
    assert!(refused("SET NAMES sjis", &m));
    assert!(refused("SET NAMES 'gbk'", &m));
    assert!(refused("SET character_set_client = big5", &m));
    assert!(refused("SET @@session.character_set_client = @x", &m));
    assert!(!refused("SET NAMES utf8mb4", &m));
    assert!(matches!(
        analyze_sql("SELECT 'a\0'", &m),
        Err(AnalyzeError::Parse(_))
    ));
    assert!(matches!(
        analyze(b"SELECT '\xff'", &m),
        Err(AnalyzeError::NotUtf8)
    ));
    // MariaDB's SET STATEMENT … FOR would run its statement in another sql_mode.
    assert!(analyze_sql("SET STATEMENT sql_mode='ANSI_QUOTES' FOR SELECT 1", &m).is_err());
    assert!(
        unsafe_charset("sjis_japanese_ci") && unsafe_charset("CP932") && !unsafe_charset("latin1")
    );
}

#[test]
fn comments_are_read_as_the_server_reads_them() {
    // `--x` is not a comment to MySQL: `1 - -x`, and the FROM is seen.
    let f = one("SELECT 1 --x FROM customers");
    assert!(f.tables_read.contains("shop.customers"));
    let f = one("SELECT 1 # a comment\n, ssn FROM customers");
    assert!(f.tables_read.contains("shop.customers"));
    // Comments do not nest.
    assert!(analyze_sql("SELECT /* a /* b */ 1 */ 2", &Mode::new("shop")).is_err());
}

#[test]
fn tables_are_qualified_with_the_database() {
    let f = one("SELECT c.email FROM customers c JOIN other.secret s ON s.id = c.id");
    assert_eq!(
        f.tables_read,
        ["other.secret", "shop.customers"].map(String::from).into()
    );
    assert!(f.columns.contains(&Column {
        table: Some("shop.customers".into()),
        name: "email".into()
    }));
    assert_eq!(foreign_name(&f, "shop").as_deref(), Some("other.secret"));
    assert_eq!(
        foreign_name(&one("SELECT * FROM information_schema.tables"), "shop"),
        None
    );
    assert!(foreign_name(&one("USE other"), "shop").is_some());
    assert!(foreign_name(&one("USE shop"), "shop").is_none());
    assert!(foreign_name(&one("SELECT other.secret.v FROM customers"), "shop").is_some());
    // A CTE may shadow the table it reads: its name counts as a table too.
    let f = one("WITH customers AS (SELECT * FROM customers) SELECT ssn FROM customers");
    assert!(f.tables_read.contains("shop.customers"));
    assert!(foreign_name(&one("DROP TABLE other.secret"), "shop").is_some());
    assert!(foreign_name(&one("DROP DATABASE other"), "shop").is_some());
    assert!(foreign_name(&one("GRANT SELECT ON other.* TO u"), "shop").is_some());
    assert!(foreign_name(&one("GRANT SELECT ON *.* TO u"), "shop").is_some());
    assert!(foreign_name(&one("GRANT SELECT ON shop.customers TO u"), "shop").is_none());
    assert!(foreign_name(&one("SHOW TABLES FROM other"), "shop").is_some());
    assert!(foreign_name(&one("SHOW TABLES"), "shop").is_none());
    assert!(foreign_name(&one("RENAME TABLE customers TO other.c"), "shop").is_some());
}

#[test]
fn kinds_and_writes() {
    use StatementKind as K;
    let kinds: Vec<K> = facts(
        "SELECT 1; INSERT INTO t VALUES (1); UPDATE t SET a = 1 WHERE id = 2; DELETE FROM t WHERE id = 3; \
         CREATE TABLE n (id int); ALTER TABLE n ADD c int; DROP TABLE n; TRUNCATE TABLE t; \
         GRANT SELECT ON shop.* TO u; BEGIN; COMMIT; ROLLBACK; SAVEPOINT s; SET autocommit = 0; \
         SHOW TABLES; EXPLAIN SELECT 1; CALL p(); USE shop",
    )
    .iter()
    .map(|f| f.kind)
    .collect();
    assert_eq!(
        kinds,
        vec![
            K::Select,
            K::Insert,
            K::Update,
            K::Delete,
            K::Ddl,
            K::Ddl,
            K::Drop,
            K::Truncate,
            K::Privilege,
            K::Transaction,
            K::Transaction,
            K::Transaction,
            K::Transaction,
            K::Set,
            K::Show,
            K::Explain,
            K::Call,
            K::Set
        ]
    );
    let f = one("INSERT INTO customers (email) SELECT v FROM other.secret");
    assert_eq!(f.tables_written, ["shop.customers".to_owned()].into());
    assert!(f.tables_read.contains("other.secret"));
    assert_eq!(one("SET GLOBAL max_connections = 10").kind, K::AlterSystem);
    assert_eq!(
        one("SET @@global.max_connections = 10").kind,
        K::AlterSystem
    );
    assert!(one("CALL p()").unknown_effect);
    assert!(one("KILL 12").hazards.contains("kills_sessions"));
}

#[test]
fn where_clauses_that_restrict_nothing_count_as_none() {
    for sql in [
        "DELETE FROM t",
        "DELETE FROM t WHERE 1",
        "DELETE FROM t WHERE true",
        "UPDATE t SET a = 1 WHERE 1 = 1",
        "UPDATE t SET a = 1 WHERE id = id",
        "DELETE FROM t WHERE id = 3 OR 1",
        "DELETE FROM t WHERE '1'",
        "DELETE FROM t LIMIT 5",
    ] {
        assert!(one(sql).unrestricted_write, "{sql}");
    }
    for sql in [
        "DELETE FROM t WHERE id = 3",
        "UPDATE t SET a = 1 WHERE id > 0 AND 1 = 1",
    ] {
        assert!(!one(sql).unrestricted_write, "{sql}");
    }
    assert_eq!(
        one("UPDATE t SET a = 1 WHERE id = ? AND b = 'x'").key_equalities,
        ["b".to_owned(), "id".to_owned()].into()
    );
}

#[test]
fn functions_files_and_state() {
    let f = one("SELECT my_udf(email), concat(a, b) FROM customers");
    assert!(f.user_functions.contains("my_udf") && !f.user_functions.contains("concat"));
    let f = one("SELECT load_file('/etc/passwd')");
    assert!(matches!(
        f.copy.as_ref().map(|c| &c.endpoint),
        Some(CopyEndpoint::ServerFile(_))
    ));
    // INTO OUTFILE and LOAD DATA do not parse: refused as unparseable.
    assert!(analyze_sql(
        "SELECT ssn INTO OUTFILE '/tmp/x' FROM customers",
        &Mode::new("shop")
    )
    .is_err());
    assert!(analyze_sql(
        "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t",
        &Mode::new("shop")
    )
    .is_err());
    let f = one("SELECT get_lock(ssn, 0) FROM customers");
    assert!(f.changes_state && f.state_sinks.iter().any(|c| c.name == "ssn"));
    let f = one("SET @x = (SELECT ssn FROM customers LIMIT 1)");
    assert!(f.state_sinks.iter().any(|c| c.name == "ssn"), "{f:?}");
    let f = one("SELECT ssn INTO @v FROM customers LIMIT 1");
    assert!(f.state_sinks.iter().any(|c| c.name == "ssn"));
    assert!(one("SELECT * FROM customers FOR UPDATE").locks_rows);
}

#[test]
fn outputs_trace_computed_columns() {
    let f = one("SELECT concat(email, 'x') AS e, count(ssn), id FROM customers");
    let outputs = f.outputs.expect("outputs");
    assert_eq!(outputs[0][0].name, "email");
    assert!(outputs[1].is_empty());
    assert_eq!(f.outputs_counted.expect("counted")[1][0].name, "ssn");
    assert!(one("SELECT * FROM customers").outputs.is_none());
    assert!(one("SELECT a FROM t UNION SELECT b FROM u")
        .outputs
        .is_none());
}

#[test]
fn normalized_text_keeps_no_constant() {
    let a = analyze(
        b"SELECT * FROM customers WHERE email = 'ann@example.com' AND id = 42 LIMIT 10; SHOW TABLES LIKE 'secret%'",
        &Mode::new("shop"),
    )
    .expect("analyzes");
    assert!(
        !a.normalized.contains("ann@example.com"),
        "{}",
        a.normalized
    );
    assert!(!a.normalized.contains("42"), "{}", a.normalized);
    assert!(!a.normalized.contains("secret%"), "{}", a.normalized);
    let m = Mode::new("shop");
    let c = analyze(
        b"SELECT * FROM customers WHERE email = 'a@b.c' AND id = 42 LIMIT 10",
        &m,
    )
    .expect("analyzes");
    let b = analyze(
        b"SELECT * FROM customers WHERE email = 'x' AND id = 1 LIMIT 3",
        &m,
    )
    .expect("analyzes");
    assert_eq!(c.fingerprint, b.fingerprint);
    // Optimizer hints are comments that printing keeps: not normalizable, only the size.
    let h = analyze(
        b"SELECT /*+ MAX_EXECUTION_TIME(123456789) */ id FROM customers",
        &m,
    )
    .expect("analyzes");
    assert!(!h.normalized.contains("123456789"), "{}", h.normalized);
    assert!(analyze(b"SELECT * FROM customers WHERE id = ?", &Mode::new("shop")).is_ok());
}

#[test]
fn no_input_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    let mut seen = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            for stmt in text.split(";\n") {
                let _ = analyze_sql(stmt, &Mode::new("shop"));
                seen += 1;
            }
        }
    }
    let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(analyze_sql(&deep, &Mode::new("shop")).is_err());
    let _ = seen;
}

#[test]
fn a_where_of_parameters_alone_restricts_nothing() {
    // A prepared statement's parameter may be 1: `WHERE ?` is all rows, as in PostgreSQL.
    for sql in [
        "DELETE FROM customers WHERE ?",
        "DELETE FROM customers WHERE ? = ?",
        "UPDATE customers SET notes = ? WHERE ? >= 0",
        "DELETE FROM customers WHERE id = 1 OR ?",
        "DELETE FROM customers WHERE EXISTS (SELECT 1)",
    ] {
        let f = one(sql);
        assert!(!f.where_effective, "{sql}");
        assert!(f.unrestricted_write, "{sql}");
    }
    for sql in [
        "DELETE FROM customers WHERE id = ?",
        "UPDATE customers SET notes = ? WHERE id = ? AND ?",
    ] {
        assert!(one(sql).where_effective, "{sql}");
    }
}

#[test]
fn kill_names_what_it_kills() {
    assert_eq!(one("KILL 5").name.as_deref(), Some("connection 5"));
    assert_eq!(one("KILL QUERY 7").name.as_deref(), Some("query 7"));
    assert_eq!(
        one("KILL CONNECTION 9").name.as_deref(),
        Some("connection 9")
    );
    // MariaDB's `KILL QUERY ID n` and `KILL USER u` do not parse: refused.
    assert!(analyze_sql("KILL USER weir", &Mode::new("shop")).is_err());
}

/// Lineage of writes, as on the PostgreSQL side: which written column each copied value
/// lands in, and what it derives from.
#[test]
fn writes_that_copy_columns_have_flows() {
    use crate::Sink;
    let show = |sql: &str| -> Vec<String> {
        one(sql)
            .flows
            .iter()
            .map(|f| {
                let sink = match &f.sink {
                    Sink::Column(c) => c.clone(),
                    Sink::Position(i) => format!("#{i}"),
                    Sink::Spread(c) => format!("spread{c:?}"),
                    Sink::Every => "every".into(),
                };
                let from: Vec<String> = f.from.iter().map(|c| c.to_string()).collect();
                format!(
                    "{}.{sink}{} <- {}",
                    f.table,
                    if f.creates { " (new)" } else { "" },
                    from.join(",")
                )
            })
            .collect()
    };
    assert_eq!(
        show("INSERT INTO products (sku, name, price_cents) SELECT CONCAT('L', id), REVERSE(ssn), 1 FROM customers"),
        ["shop.products.sku <- shop.customers.id", "shop.products.name <- shop.customers.ssn"]
    );
    assert_eq!(
        show("REPLACE INTO products SELECT id, email, 'x', 1 FROM customers"),
        [
            "shop.products.#0 <- shop.customers.id",
            "shop.products.#1 <- shop.customers.email"
        ]
    );
    assert_eq!(
        show("INSERT INTO notes_copy SELECT * FROM customers"),
        ["shop.notes_copy.spread[] <- shop.customers.*"]
    );
    assert_eq!(
        show("INSERT INTO t (a) VALUES ((SELECT ssn FROM customers LIMIT 1))"),
        ["shop.t.a <- shop.customers.ssn"]
    );
    assert_eq!(
        show("INSERT INTO t (a, b) VALUES (1, 2) ON DUPLICATE KEY UPDATE b = (SELECT ssn FROM customers LIMIT 1)"),
        // Two tables in the statement: `ssn` is not attributed, and an unattributed source
        // counts as every sensitive column the statement reads.
        ["shop.t.b <- ssn"]
    );
    assert_eq!(
        show("UPDATE customers SET notes = CONCAT(ssn, email) WHERE id = 1"),
        ["shop.customers.notes <- shop.customers.email,shop.customers.ssn"]
    );
    assert_eq!(
        show("UPDATE products p JOIN customers c ON c.id = p.id SET p.name = c.ssn"),
        ["shop.products.name <- shop.customers.ssn"]
    );
    assert_eq!(
        show("CREATE TABLE x SELECT id, ssn AS s FROM customers"),
        [
            "shop.x.#0 (new) <- shop.customers.id",
            "shop.x.#1 (new) <- shop.customers.ssn"
        ]
    );
    assert_eq!(
        show("CREATE TABLE x (n int) SELECT ssn FROM customers"),
        ["shop.x.every (new) <- shop.customers.ssn"]
    );
    assert_eq!(
        show("INSERT INTO t SELECT ssn FROM customers UNION SELECT name FROM products"),
        // Unattributed (two tables): each counts as every sensitive column read.
        ["shop.t.every <- name,ssn"]
    );
    // A table named like a built-in (`x()`, `user()`) is a table after TABLE / INTO.
    assert!(analyze_sql("CREATE TABLE x (n int)", &Mode::new("shop")).is_ok());
    assert!(analyze_sql("INSERT INTO user (id) VALUES (1)", &Mode::new("shop")).is_ok());
    assert!(analyze_sql("SELECT count (ssn) FROM customers", &Mode::new("shop")).is_err());
    assert!(analyze_sql(
        "SELECT TRIM(LEADING 'x' FROM concat (ssn)) FROM customers",
        &Mode::new("shop")
    )
    .is_err());
    // Constants and counts copy nothing.
    assert!(show("INSERT INTO t (a) VALUES (1), ('x')").is_empty());
    assert!(show("INSERT INTO t (a) SELECT COUNT(*) FROM customers").is_empty());
    assert!(show("UPDATE products SET price_cents = 5 WHERE id = 1").is_empty());
    // `@v := expr` keeps the value in the session.
    let f = one("SELECT @v := ssn FROM customers LIMIT 1");
    assert!(f.state_sinks.iter().any(|c| c.name == "ssn"), "{f:?}");
}

#[test]
fn show_warnings_is_named() {
    for sql in ["SHOW WARNINGS", "SHOW ERRORS", "SHOW WARNINGS LIMIT 5"] {
        let f = one(sql);
        assert_eq!(f.name.as_deref(), Some("warnings"), "{sql}");
    }
    assert_eq!(one("SHOW VARIABLES").name, None);
}

#[test]
fn the_cache_keys_by_text_and_mode() {
    let analyzer = crate::Analyzer::new();
    let sql = b"SELECT email FROM customers WHERE id = 1";
    let a = analyzer.analyze_mysql(sql, &Mode::new("shop")).unwrap();
    let b = analyzer.analyze_mysql(sql, &Mode::new("shop")).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "a second lookup analyzed again");
    // Another database, another mode: analyzed as read there.
    let other = analyzer.analyze_mysql(sql, &Mode::new("other")).unwrap();
    assert_eq!(
        other.statements[0].tables_read.iter().next().unwrap(),
        "other.customers"
    );
    let quoted = b"SELECT \"email\" FROM customers";
    let plain = analyzer.analyze_mysql(quoted, &Mode::new("shop")).unwrap();
    let ansi = analyzer.analyze_mysql(quoted, &Mode::new("shop").with_sql_mode("ANSI_QUOTES"));
    assert!(
        plain.statements[0].columns.is_empty(),
        "a string, not a column"
    );
    assert!(ansi.is_err() || !ansi.unwrap().statements[0].columns.is_empty());
    // Refusals are not kept, and stay refusals.
    assert!(analyzer
        .analyze_mysql(b"SELECT 1 || 1", &Mode::new("shop"))
        .is_err());
    assert!(analyzer
        .analyze_mysql(b"SELECT 1 || 1", &Mode::new("shop"))
        .is_err());
}
