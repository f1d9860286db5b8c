//! Sensitivity that flows with the data: a write that copies a value derived from a sensitive
//! column (`INSERT … SELECT`, `UPDATE … SET`, MERGE, CREATE TABLE AS, SELECT INTO) makes the
//! column it writes sensitive too, with the source's label and strategy.
//!
//! [`derived_tags`] reads a statement's flows (`StatementFacts::flows`, lineage from the parse
//! tree) against the target's catalog and says which columns become sensitive. The gateway
//! records them (store and audit trail) before the write runs; the catalog is rebuilt with
//! them ([`crate::Rules::derived`]), so later reads are masked in every session, for every
//! identity, until an operator clears the tag.

use std::sync::Arc;

use weir_analyze::{Column, Flow, Sink, StatementFacts};

use crate::catalog::{Catalog, Sensitive};
use crate::strategy::Strategy;

/// A column that holds a copy of a sensitive value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DerivedTag {
    /// `schema.table.column`; `schema.table.#n` for the n-th column (from 1) of a table
    /// the statement creates, which the server names; `schema.table.*` for every column of
    /// the table (the statement does not tell which one gets the value). Temporary tables
    /// are `pg_temp.table`.
    pub column: String,
    /// The source's label: its class (`ssn`, `email`, …) or the operator's tag.
    pub label: Arc<str>,
    pub strategy: Strategy,
    /// The sensitive column the value derives from (`schema.table.column`).
    pub source: String,
}

impl std::fmt::Display for DerivedTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} <- {} ({}, {})",
            self.column,
            self.source,
            self.label,
            self.strategy.as_str()
        )
    }
}

/// The columns that a statement's writes make sensitive, each once. Empty when it copies
/// nothing sensitive (constants, parameters, non-sensitive columns, counts).
pub fn derived_tags(f: &StatementFacts, catalog: &Catalog) -> Vec<DerivedTag> {
    let mut out = Vec::new();
    for flow in &f.flows {
        flow_tags(f, flow, catalog, &mut out);
    }
    // A write into an updatable view lands in the table under it: the column of the same
    // name among those the view reads, or, when none has it, every column the view reads.
    let mut through_views = Vec::new();
    for t in &out {
        let Some((view, column)) = t.column.rsplit_once('.') else {
            continue;
        };
        let Some(reads) = catalog.view_reads(view) else {
            continue;
        };
        let same: Vec<&String> = reads
            .iter()
            .filter(|q| q.rsplit('.').next() == Some(column))
            .collect();
        let under: Vec<&String> = if same.is_empty() {
            reads.iter().collect()
        } else {
            same
        };
        for q in under {
            through_views.push(DerivedTag {
                column: q.clone(),
                ..t.clone()
            });
        }
    }
    out.extend(through_views);
    out.sort();
    out.dedup_by(|a, b| a.column == b.column && a.label == b.label);
    out
}

/// The table a flow writes, as the catalog names it: a temporary table is `pg_temp.name`
/// (each session's temporary schema is `pg_temp_N`), also when the statement names it
/// without a schema and the search_path would have given another.
fn written_table(flow: &Flow, catalog: &Catalog) -> String {
    if flow.temporary || catalog.columns_in_order(&flow.table).is_some() {
        return flow.table.clone();
    }
    let name = flow.table.rsplit('.').next().unwrap_or(&flow.table);
    if !flow.creates && catalog.has_temp_table(name) {
        return format!("pg_temp.{name}");
    }
    flow.table.clone()
}

fn flow_tags(f: &StatementFacts, flow: &Flow, catalog: &Catalog, out: &mut Vec<DerivedTag>) {
    // The common case, decided without copying the facts: every source is a plain column
    // of a known table, none sensitive, and no function hides what it reads
    // (`SET abalance = abalance + $1`).
    let plain = !f.unknown_effect
        && f.user_functions.is_empty()
        && flow.from.iter().all(|c| {
            c.table.as_deref().is_some_and(|t| {
                catalog.has_column(t, &c.name)
                    && !catalog
                        .sensitive_columns(t)
                        .iter()
                        .any(|(name, _)| **name == *c.name)
            })
        });
    if plain {
        return;
    }
    let table = written_table(flow, catalog);
    // Names of the written table's columns in order, when the catalog knows it.
    let order: Option<Vec<String>> = catalog
        .columns_in_order(&table)
        .or_else(|| temp_columns(&table, catalog))
        .map(|cols| {
            cols.iter()
                .map(|c| c.qualified.rsplit('.').next().unwrap_or("").to_owned())
                .collect()
        });
    let mut push = |column: String, source: String, s: Sensitive| {
        // A copy into a column already masked the same way adds nothing.
        let same = column
            .rsplit_once('.')
            .and_then(|(t, c)| catalog.column_by_name(t, c))
            .and_then(|c| c.sensitive.as_ref())
            .is_some_and(|had| *had == s);
        if !same && column != source {
            out.push(DerivedTag {
                column,
                label: s.label,
                strategy: s.strategy,
                source,
            });
        }
    };
    // `INSERT INTO t SELECT * FROM s`, `CREATE TABLE t AS SELECT * FROM s`: column by column.
    if let (Sink::Spread(names), [star]) = (&flow.sink, flow.from.as_slice()) {
        let source_cols = star
            .table
            .as_deref()
            .filter(|_| star.name == "*")
            .and_then(|s| catalog.columns_in_order(s));
        if let Some(source_cols) = source_cols {
            for (k, c) in source_cols.iter().enumerate() {
                let Some(s) = &c.sensitive else { continue };
                let source_name = c.qualified.rsplit('.').next().unwrap_or("");
                let dest = if let Some(n) = names.get(k) {
                    n.clone()
                } else if flow.creates {
                    source_name.to_owned()
                } else if let Some(n) = order.as_ref().and_then(|o| o.get(k)) {
                    n.clone()
                } else {
                    "*".to_owned()
                };
                push(
                    format!("{table}.{dest}"),
                    c.qualified.to_string(),
                    s.clone(),
                );
            }
            return;
        }
    }
    let Some((source, s)) = lineage(f, &flow.from, catalog) else {
        return;
    };
    let dest = match &flow.sink {
        Sink::Column(c) => c.clone(),
        Sink::Position(i) if flow.creates => format!("#{}", i + 1),
        Sink::Position(i) => match order.as_ref().and_then(|o| o.get(*i)) {
            Some(n) => n.clone(),
            None => "*".to_owned(),
        },
        Sink::Spread(_) | Sink::Every => "*".to_owned(),
    };
    push(format!("{table}.{dest}"), source, s);
}

/// The columns of a temporary table (`pg_temp.name`), whichever session's schema holds it.
fn temp_columns<'a>(
    table: &str,
    catalog: &'a Catalog,
) -> Option<Vec<&'a crate::catalog::SourceColumn>> {
    let name = table.strip_prefix("pg_temp.")?;
    catalog.temp_table_columns(name)
}

/// The first sensitive column among `from`, by the rules that mask a computed result
/// column: one sensitive column keeps its strategy, several are redacted, a reference Weir
/// cannot resolve counts every sensitive column the statement reads.
fn lineage(f: &StatementFacts, from: &[Column], catalog: &Catalog) -> Option<(String, Sensitive)> {
    let mut value = f.clone();
    value.node = String::new();
    value.outputs = Some(vec![from.to_vec()]);
    value.outputs_counted = None;
    crate::masker::computed(Some(&value), 0, true, catalog)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::catalog::{CatalogRow, Rules};
    use weir_analyze::{Analyzer, Scope};

    fn row(oid: u32, attnum: i16, schema: &str, table: &str, column: &str) -> CatalogRow {
        CatalogRow::column(oid, attnum, schema, table, column)
    }

    fn catalog() -> Catalog {
        Catalog::build(
            vec![
                row(1, 1, "public", "customers", "id"),
                row(1, 2, "public", "customers", "email"),
                row(1, 3, "public", "customers", "ssn"),
                row(1, 4, "public", "customers", "notes"),
                row(2, 1, "public", "products", "id"),
                row(2, 2, "public", "products", "name"),
                row(2, 3, "public", "products", "price_cents"),
                row(3, 1, "pg_temp_3", "scratch", "v"),
            ],
            &Rules::default(),
        )
    }

    fn tags(sql: &str) -> Vec<String> {
        let a = Analyzer::new().analyze(sql.as_bytes()).unwrap();
        let scope = Scope::new("app", None);
        let f = scope.resolve_facts(&a.statements[0]);
        derived_tags(&f, &catalog())
            .iter()
            .map(|t| t.to_string())
            .collect()
    }

    #[test]
    fn copies_of_sensitive_columns_are_tagged() {
        assert_eq!(
            tags("INSERT INTO products (id, name, price_cents) SELECT id, reverse(ssn), 1 FROM customers"),
            ["public.products.name <- public.customers.ssn (ssn, partial)"]
        );
        assert_eq!(
            tags("INSERT INTO products SELECT id, email FROM customers"),
            ["public.products.name <- public.customers.email (email, email)"]
        );
        assert_eq!(
            tags("UPDATE customers SET notes = ssn || email WHERE id = 1"),
            ["public.customers.notes <- public.customers.email (email, redact)"]
        );
        assert_eq!(
            tags("CREATE TABLE x AS SELECT id, ssn AS s, upper(email) FROM customers"),
            [
                "public.x.#3 <- public.customers.email (email, email)",
                "public.x.s <- public.customers.ssn (ssn, partial)"
            ]
        );
        assert_eq!(
            tags("CREATE TABLE x AS SELECT * FROM customers"),
            [
                "public.x.email <- public.customers.email (email, email)",
                "public.x.ssn <- public.customers.ssn (ssn, partial)"
            ]
        );
        // A temporary table named without its schema.
        assert_eq!(
            tags("INSERT INTO scratch SELECT ssn FROM customers"),
            ["pg_temp.scratch.v <- public.customers.ssn (ssn, partial)"]
        );
        // A table the catalog does not know, by position: every column.
        assert_eq!(
            tags("INSERT INTO elsewhere SELECT ssn FROM customers"),
            ["public.elsewhere.* <- public.customers.ssn (ssn, partial)"]
        );
    }

    #[test]
    fn a_copy_into_a_view_tags_the_table_under_it() {
        let mut rows = vec![
            row(1, 1, "public", "customers", "id"),
            row(1, 2, "public", "customers", "ssn"),
            row(2, 1, "public", "products", "id"),
            row(2, 2, "public", "products", "name"),
        ];
        for (n, col) in [(1, "id"), (2, "name")] {
            let mut v = row(4, n, "public", "pv", col);
            v.is_view = true;
            v.view_reads = vec!["public.products.id".into(), "public.products.name".into()];
            rows.push(v);
        }
        let catalog = Catalog::build(rows, &Rules::default());
        let a = Analyzer::new()
            .analyze(b"INSERT INTO pv (id, name) SELECT id, ssn FROM customers")
            .unwrap();
        let f = Scope::new("app", None).resolve_facts(&a.statements[0]);
        let got: Vec<String> = derived_tags(&f, &catalog)
            .iter()
            .map(|t| t.column.clone())
            .collect();
        assert_eq!(got, ["public.products.name", "public.pv.name"]);
    }

    #[test]
    fn copies_of_nothing_sensitive_are_not() {
        for sql in [
            "INSERT INTO products (id, name) SELECT id, 'x' FROM customers",
            "INSERT INTO products (price_cents) SELECT count(ssn) FROM customers",
            "INSERT INTO products (name) VALUES ('a'), ($1)",
            "UPDATE products SET name = upper(name) WHERE id = 1",
            "INSERT INTO products SELECT * FROM products",
            // Into a column that is already masked the same way.
            "INSERT INTO customers (email) SELECT email FROM customers",
        ] {
            assert!(tags(sql).is_empty(), "{sql}: {:?}", tags(sql));
        }
    }
}
