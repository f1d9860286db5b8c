//! Lineage of writes: which columns each value a write copies into a table derives from.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use weir_analyze::postgres::analyze_sql;
use weir_analyze::Sink;

/// The statement's flows as `table.sink <- a, b` lines, sorted.
fn flows(sql: &str) -> Vec<String> {
    let v = analyze_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(v.len(), 1, "{sql}");
    let mut out: Vec<String> = v[0]
        .flows
        .iter()
        .map(|f| {
            let sink = match &f.sink {
                Sink::Column(c) => c.clone(),
                Sink::Position(i) => format!("#{i}"),
                Sink::Spread(c) => format!("spread({})", c.join(",")),
                Sink::Every => "*".into(),
            };
            let from: Vec<String> = f.from.iter().map(|c| c.to_string()).collect();
            let created = if f.creates { " (new)" } else { "" };
            format!("{}.{sink}{created} <- {}", f.table, from.join(", "))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn insert_select_by_position_and_by_column_list() {
    assert_eq!(
        flows(
            "INSERT INTO products (sku, name, price_cents) SELECT 'L' || id, ssn, 1 FROM customers"
        ),
        [
            "products.name <- customers.ssn",
            "products.sku <- customers.id"
        ]
    );
    assert_eq!(
        flows("INSERT INTO products SELECT c.id, reverse(c.ssn) FROM customers c"),
        [
            "products.#0 <- customers.id",
            "products.#1 <- customers.ssn"
        ]
    );
}

#[test]
fn values_rows_with_subqueries() {
    assert_eq!(
        flows("INSERT INTO notes (body) VALUES ((SELECT ssn FROM customers LIMIT 1)), ('x')"),
        ["notes.body <- customers.ssn"]
    );
}

#[test]
fn update_set_and_multi_assignment() {
    assert_eq!(
        // A subquery's every column counts, its WHERE's too.
        flows("UPDATE products SET name = (SELECT c.ssn FROM customers c WHERE c.id = 1) WHERE id = 2"),
        ["products.name <- customers.id, customers.ssn"]
    );
    assert_eq!(
        flows("UPDATE customers SET notes = ssn WHERE id = 1"),
        ["customers.notes <- customers.ssn"]
    );
    assert_eq!(
        flows("UPDATE products p SET name = c.email FROM customers c WHERE c.id = p.id"),
        ["products.name <- customers.email"]
    );
    let multi = flows(
        "UPDATE products SET (name, sku) = (SELECT email, ssn FROM customers LIMIT 1) WHERE id = 1",
    );
    assert!(
        multi
            .iter()
            .any(|f| f.starts_with("products.name <-") && f.contains("email")),
        "{multi:?}"
    );
}

#[test]
fn merge_and_on_conflict() {
    let m = flows(
        "MERGE INTO products p USING customers c ON p.id = c.id \
         WHEN MATCHED THEN UPDATE SET name = c.ssn \
         WHEN NOT MATCHED THEN INSERT (id, name) VALUES (c.id, c.email)",
    );
    assert_eq!(
        m,
        [
            "products.id <- customers.id",
            "products.name <- customers.email",
            "products.name <- customers.ssn"
        ]
    );
    let c = flows(
        "INSERT INTO products (id, name) SELECT id, ssn FROM customers \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    );
    assert!(
        c.contains(&"products.name <- customers.ssn".to_string()),
        "{c:?}"
    );
    assert!(
        c.iter()
            .any(|f| f.starts_with("products.name <- ") && f.contains("name")),
        "{c:?}"
    );
}

#[test]
fn create_table_as_and_select_into_name_new_columns() {
    assert_eq!(
        flows("CREATE TABLE copy AS SELECT ssn, reverse(email) AS r, upper(email) FROM customers"),
        [
            "copy.#2 (new) <- customers.email",
            "copy.r (new) <- customers.email",
            "copy.ssn (new) <- customers.ssn"
        ]
    );
    assert_eq!(
        flows("CREATE TABLE copy (a, b) AS SELECT ssn, email FROM customers"),
        [
            "copy.a (new) <- customers.ssn",
            "copy.b (new) <- customers.email"
        ]
    );
    assert_eq!(
        flows("SELECT ssn INTO TEMP t2 FROM customers"),
        ["pg_temp.t2.ssn (new) <- customers.ssn"]
    );
    assert_eq!(
        flows("CREATE TEMP TABLE t3 AS SELECT * FROM customers"),
        ["pg_temp.t3.spread() (new) <- customers.*"]
    );
}

#[test]
fn stars_and_set_operations() {
    assert_eq!(
        flows("INSERT INTO archive SELECT * FROM customers WHERE id < 10"),
        ["archive.spread() <- customers.*"]
    );
    assert_eq!(
        flows("INSERT INTO archive SELECT 1, * FROM customers"),
        ["archive.* <- customers.*"]
    );
    let u =
        flows("INSERT INTO names (n) SELECT name FROM products UNION SELECT ssn FROM customers");
    assert_eq!(u.len(), 1, "{u:?}");
    assert!(
        u[0].starts_with("names.* <- ") && u[0].contains("ssn"),
        "{u:?}"
    );
}

#[test]
fn nested_writes_in_ctes() {
    let f = flows(
        "WITH moved AS (INSERT INTO products (name) SELECT ssn FROM customers RETURNING id) \
         SELECT count(*) FROM moved",
    );
    // `moved` is read too, so `ssn` is left unattributed: the masking stage then looks for
    // it in every table the statement names.
    assert_eq!(f, ["products.name <- ssn"]);
}

#[test]
fn no_flow_without_a_column() {
    for sql in [
        "INSERT INTO products (name) VALUES ('x')",
        "INSERT INTO products (name) VALUES ($1)",
        "UPDATE products SET name = 'y' WHERE id = 1",
        "INSERT INTO stats (n) SELECT count(ssn) FROM customers",
        "INSERT INTO stats (n) SELECT 1 FROM customers WHERE ssn IS NOT NULL",
        "SELECT ssn FROM customers",
        "DELETE FROM customers WHERE ssn = '1'",
    ] {
        assert!(flows(sql).is_empty(), "{sql}: {:?}", flows(sql));
    }
}
