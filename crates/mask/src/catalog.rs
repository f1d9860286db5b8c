//! Which source columns are sensitive: the upstream's catalog, classified once.
//!
//! PostgreSQL's RowDescription names, for each result column that is a plain column of a
//! table or view, that relation's OID and the column's number — whatever the column is
//! called in the query. A [`Catalog`] maps (OID, number) to the source column and what
//! masks it, built from one catalog query per target (the proxy runs it and reloads after
//! DDL) and classified by [`Rules`]: explicit tags first, then the column's name.
//!
//! Views: a view column is sensitive if its own name is, if it carries the name of a
//! sensitive column the view reads, or if it carries none of the names of the columns the
//! view reads (computed or renamed) while the view reads a sensitive column. That last rule
//! over-masks a computed column of a view over sensitive data rather than guess.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::classify::{self, Class};
use crate::strategy::Strategy;

/// Why a column is masked, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sensitive {
    /// What it is: a class (`email`, `card`, …) or the operator's tag.
    pub label: Arc<str>,
    pub strategy: Strategy,
}

/// A source column: `schema.table.column`, and whether it is sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    pub qualified: Arc<str>,
    /// The column's type (`pg_attribute.atttypid`).
    pub type_oid: u32,
    pub sensitive: Option<Sensitive>,
}

/// The operator's tags and defaults for one target (`[target.tables]`, `[target.columns]`,
/// `[masking] default_strategy`).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `schema.table.column` → tag and strategy. A strategy of `None` with no tag means
    /// "not sensitive" (`mask = "none"`): the operator overrides the name rules.
    pub columns: BTreeMap<String, ColumnRule>,
    /// `schema.table` → rule for every column of the table.
    pub tables: BTreeMap<String, ColumnRule>,
    /// Replaces each class's own default strategy.
    pub default_strategy: Option<Strategy>,
    /// `[masking] clean_functions`, lower case: functions the operator vouches for.
    pub clean_functions: std::collections::BTreeSet<String>,
    /// Tags Weir derived from writes that copied sensitive values (see [`crate::derived`]),
    /// not yet cleared by an operator: `schema.table.column`, `schema.table.#n` (column
    /// number n) or `schema.table.*` (every column) → how it is masked. They win over the
    /// operator's tags and the name rules: the column now holds a copy of sensitive data.
    pub derived: BTreeMap<String, Sensitive>,
}

/// One function of the catalog's second query (not in `pg_catalog`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRow {
    pub schema: String,
    pub name: String,
    pub language: String,
    /// A SQL-language function's body (`prosrc`).
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRule {
    /// `sensitivity = "…"`.
    pub tag: Option<String>,
    /// `mask = "…"`; `Some(None)` is `mask = "none"`.
    pub mask: Option<Option<Strategy>>,
}

impl Rules {
    /// The strategy for a class when nothing more specific is configured.
    pub fn strategy_for(&self, class: Class) -> Strategy {
        self.default_strategy.unwrap_or(match class {
            Class::Email => Strategy::Email,
            Class::Card | Class::Phone | Class::Ssn | Class::Iban => Strategy::Partial,
            Class::BirthDate => Strategy::Null,
            Class::Password | Class::Secret | Class::Address => Strategy::Redact,
        })
    }

    fn fallback(&self) -> Strategy {
        self.default_strategy.unwrap_or(Strategy::Redact)
    }

    /// A derived tag for column `column` (number `attnum`) of `schema.table`. A session's
    /// temporary schema (`pg_temp_N`) is `pg_temp`.
    pub fn derived_for(&self, table: &str, column: &str, attnum: i16) -> Option<Sensitive> {
        if self.derived.is_empty() {
            return None;
        }
        let table = match table.split_once('.') {
            Some((schema, rel)) if schema.starts_with("pg_temp_") => format!("pg_temp.{rel}"),
            _ => table.to_owned(),
        };
        [
            format!("{table}.{column}"),
            format!("{table}.#{attnum}"),
            format!("{table}.*"),
        ]
        .iter()
        .find_map(|k| self.derived.get(k))
        .cloned()
    }

    /// Classifies one table column: column tag, then table tag, then the column's name.
    pub fn classify(&self, table: &str, column: &str) -> Option<Sensitive> {
        let by_name = classify::by_name(column);
        let from_rule = |rule: &ColumnRule| -> Option<Option<Sensitive>> {
            match (&rule.mask, &rule.tag) {
                (Some(None), _) => Some(None),
                (Some(Some(s)), tag) => Some(Some(Sensitive {
                    label: Arc::from(
                        tag.as_deref()
                            .or(by_name.map(Class::as_str))
                            .unwrap_or("tagged"),
                    ),
                    strategy: *s,
                })),
                (None, Some(tag)) => Some(Some(Sensitive {
                    label: Arc::from(tag.as_str()),
                    strategy: by_name
                        .map(|c| self.strategy_for(c))
                        .unwrap_or_else(|| self.fallback()),
                })),
                (None, None) => None,
            }
        };
        if let Some(decided) = self
            .columns
            .get(&format!("{table}.{column}"))
            .and_then(from_rule)
        {
            return decided;
        }
        // A table's tag marks the table for policy; it masks every column only with `mask`.
        if let Some(rule) = self.tables.get(table) {
            if let Some(Some(s)) = rule.mask {
                return Some(Sensitive {
                    label: Arc::from(rule.tag.as_deref().unwrap_or("tagged")),
                    strategy: s,
                });
            }
        }
        by_name.map(|c| Sensitive {
            label: Arc::from(c.as_str()),
            strategy: self.strategy_for(c),
        })
    }
}

/// What [`Catalog::column`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Column(&'a SourceColumn),
    /// A system column (`ctid`, `xmin`) of a known relation.
    System,
    /// A relation made after the catalog loaded, or not yet committed: the caller decides
    /// without the catalog and has it reloaded.
    UnknownRelation,
}

/// One row of the catalog query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRow {
    pub table_oid: u32,
    pub attnum: i16,
    pub schema: String,
    pub table: String,
    pub column: String,
    pub type_oid: u32,
    /// A view or materialized view…
    pub is_view: bool,
    /// …and the `schema.table.column`s it reads.
    pub view_reads: Vec<String>,
    /// The relation's row type and the array type of that (0 when none): a value of either
    /// type holds the relation's columns, so it is as sensitive as they are.
    pub row_types: [u32; 2],
    /// The unique indexes this column is a key column of: (index OID, its number of key
    /// columns). Immediate, valid, non-partial, on plain columns only.
    pub unique_keys: Vec<(u32, u16)>,
    /// Writing the relation may do more than change its rows: it is not a plain table, it
    /// has a rule, a user trigger or inheritance children, or this column is an identity or
    /// has a default that calls a function (a sequence's `nextval`).
    pub side_effects: bool,
    /// Reading the relation may run code the statement does not show: a view (its rule
    /// may call any function), a foreign table, or a table with row-level security (its
    /// policies may).
    pub read_runs_code: bool,
}

impl CatalogRow {
    /// A text column of a plain table and nothing else known: not a view, no row types, no
    /// unique key, writes and reads that run no code. Tests, benches and fuzz targets start
    /// from it and set what they need.
    pub fn column(
        table_oid: u32,
        attnum: i16,
        schema: &str,
        table: &str,
        column: &str,
    ) -> CatalogRow {
        CatalogRow {
            table_oid,
            attnum,
            schema: schema.into(),
            table: table.into(),
            column: column.into(),
            type_oid: 25,
            is_view: false,
            view_reads: Vec::new(),
            row_types: [0, 0],
            unique_keys: Vec::new(),
            side_effects: false,
            read_runs_code: false,
        }
    }
}

/// The classified catalog of one target.
#[derive(Debug, Default)]
pub struct Catalog {
    columns: HashMap<(u32, i16), SourceColumn>,
    tables: HashSet<u32>,
    /// `schema.table` → its sensitive columns' names (tables and views with any).
    sensitive_by_table: HashMap<String, Vec<(Arc<str>, Sensitive)>>,
    /// Every column name that is sensitive in some table.
    sensitive_names: HashMap<String, Sensitive>,
    /// `schema.table` → the names of its columns.
    names: HashMap<String, HashSet<String>>,
    /// `schema.table` → its columns' keys in column-number order (what `COPY table` writes).
    ordered: HashMap<String, Vec<(i16, u32)>>,
    /// A relation's row type (and its array type) → `schema.table`: whole-row values, also
    /// nested in arrays, in other composites or in columns of a composite type.
    row_types: HashMap<u32, String>,
    /// `schema.table` → its unique keys, each the names of its key columns.
    unique_keys: HashMap<String, Vec<Vec<String>>>,
    /// `schema.table` → whether writing it changes its rows and nothing else (see
    /// [`CatalogRow::side_effects`]): `true` only when no column says otherwise.
    rows_only: HashMap<String, bool>,
    /// `schema.table` → whether reading it runs no code beyond what the statement shows.
    plain_reads: HashMap<String, bool>,
    /// A view → the `schema.table.column`s its rule reads: a write into an updatable view
    /// lands in them.
    view_reads: HashMap<String, Vec<String>>,
    /// Functions outside `pg_catalog`, as `schema.name` and as `name`: whether their results
    /// can carry a sensitive value Weir cannot trace (`false`: clean).
    opaque_functions: HashMap<String, bool>,
}

/// How many levels of composites in composites are followed when classifying columns of a
/// composite type; deeper nesting is found by content, or not at all.
const NESTING: usize = 8;

impl Catalog {
    /// Builds and classifies. Tables first, then views (which look up what they read).
    pub fn build(rows: Vec<CatalogRow>, rules: &Rules) -> Catalog {
        let mut c = Catalog::default();
        for r in &rows {
            for t in r.row_types.into_iter().filter(|t| *t != 0) {
                c.row_types
                    .entry(t)
                    .or_insert_with(|| format!("{}.{}", r.schema, r.table));
            }
        }
        let mut keys: HashMap<(String, u32), (u16, Vec<String>)> = HashMap::new();
        for r in &rows {
            let only = c
                .rows_only
                .entry(format!("{}.{}", r.schema, r.table))
                .or_insert(true);
            *only &= !r.side_effects;
            let plain = c
                .plain_reads
                .entry(format!("{}.{}", r.schema, r.table))
                .or_insert(true);
            *plain &= !r.read_runs_code;
            for &(index, n) in &r.unique_keys {
                keys.entry((format!("{}.{}", r.schema, r.table), index))
                    .or_insert_with(|| (n, Vec::new()))
                    .1
                    .push(r.column.clone());
            }
        }
        for ((table, _), (n, columns)) in keys {
            if columns.len() == usize::from(n) {
                c.unique_keys.entry(table).or_default().push(columns);
            }
        }
        let (views, tables): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.is_view);
        // A column of a composite type (a table's row type, `CREATE TYPE … AS`) holds that
        // type's columns: it is as sensitive as they are. Classified from the inside out.
        let mut classified: HashMap<(u32, i16), Option<Sensitive>> = tables
            .iter()
            .map(|r| {
                let table = format!("{}.{}", r.schema, r.table);
                let sensitive = rules
                    .derived_for(&table, &r.column, r.attnum)
                    .or_else(|| rules.classify(&table, &r.column));
                ((r.table_oid, r.attnum), sensitive)
            })
            .collect();
        for _ in 0..NESTING {
            let mut sensitive_types: HashMap<String, Sensitive> = HashMap::new();
            for r in &tables {
                if let Some(Some(s)) = classified.get(&(r.table_oid, r.attnum)) {
                    sensitive_types
                        .entry(format!("{}.{}", r.schema, r.table))
                        .or_insert_with(|| whole(s));
                }
            }
            let mut changed = false;
            for r in &tables {
                let entry = classified.entry((r.table_oid, r.attnum)).or_default();
                if entry.is_some() {
                    continue;
                }
                let holds = c
                    .row_types
                    .get(&r.type_oid)
                    .and_then(|t| sensitive_types.get(t));
                if let Some(s) = holds {
                    *entry = Some(s.clone());
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for r in tables {
            let table = format!("{}.{}", r.schema, r.table);
            let sensitive = classified.remove(&(r.table_oid, r.attnum)).flatten();
            c.add(r, table, sensitive);
        }
        for r in views {
            let table = format!("{}.{}", r.schema, r.table);
            let reads = c.view_reads.entry(table.clone()).or_default();
            for q in &r.view_reads {
                if !reads.contains(q) {
                    reads.push(q.clone());
                }
            }
            let sensitive = rules
                .derived_for(&table, &r.column, r.attnum)
                .or_else(|| rules.classify(&table, &r.column))
                .or_else(|| {
                    let read: Vec<Option<&SourceColumn>> =
                        r.view_reads.iter().map(|q| c.by_qualified(q)).collect();
                    let same_name = read.iter().flatten().find(|s| {
                        s.qualified
                            .rsplit('.')
                            .next()
                            .is_some_and(|n| n == r.column)
                    });
                    match same_name {
                        Some(s) => s.sensitive.clone(),
                        None => read.iter().flatten().find_map(|s| s.sensitive.clone()),
                    }
                });
            // A whole row of a sensitive table (`CREATE VIEW v AS SELECT c FROM customers c`):
            // the view's rule names no column of it.
            let sensitive = sensitive.or_else(|| c.row_type_sensitive(r.type_oid).map(|(_, s)| s));
            c.add(r, table, sensitive);
        }
        c
    }

    fn add(&mut self, r: CatalogRow, table: String, sensitive: Option<Sensitive>) {
        let qualified: Arc<str> = Arc::from(format!("{table}.{}", r.column));
        self.names
            .entry(table.clone())
            .or_default()
            .insert(r.column.clone());
        let order = self.ordered.entry(table.clone()).or_default();
        let at = order.partition_point(|(n, _)| *n < r.attnum);
        order.insert(at, (r.attnum, r.table_oid));
        if let Some(s) = &sensitive {
            self.sensitive_by_table
                .entry(table)
                .or_default()
                .push((Arc::from(r.column.as_str()), s.clone()));
            self.sensitive_names
                .entry(r.column.clone())
                .or_insert_with(|| s.clone());
        }
        self.tables.insert(r.table_oid);
        self.columns.insert(
            (r.table_oid, r.attnum),
            SourceColumn {
                qualified,
                type_oid: r.type_oid,
                sensitive,
            },
        );
    }

    fn by_qualified(&self, q: &str) -> Option<&SourceColumn> {
        // Views are few and read few columns: a scan at build time is fine.
        self.columns.values().find(|s| &*s.qualified == q)
    }

    /// The source column a RowDescription field names.
    pub fn column(&self, table_oid: u32, attnum: i16) -> Lookup<'_> {
        match self.columns.get(&(table_oid, attnum)) {
            Some(s) => Lookup::Column(s),
            // System columns (ctid, xmin: negative numbers) of a known table.
            None if self.tables.contains(&table_oid) => Lookup::System,
            None => Lookup::UnknownRelation,
        }
    }

    /// The sensitive columns of `schema.table`.
    pub fn sensitive_columns(&self, table: &str) -> &[(Arc<str>, Sensitive)] {
        self.sensitive_by_table
            .get(table)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A column name sensitive in some table (for columns the analysis could not attribute).
    pub fn sensitive_name(&self, column: &str) -> Option<&Sensitive> {
        self.sensitive_names.get(column)
    }

    /// The columns of `schema.table` in column-number order, or `None` for a table the
    /// catalog does not know.
    pub fn columns_in_order(&self, table: &str) -> Option<Vec<&SourceColumn>> {
        self.ordered.get(table).map(|cols| {
            cols.iter()
                .filter_map(|(n, oid)| self.columns.get(&(*oid, *n)))
                .collect()
        })
    }

    /// The column `name` of `schema.table`.
    pub fn column_by_name(&self, table: &str, name: &str) -> Option<&SourceColumn> {
        let suffix = format!("{table}.{name}");
        self.ordered
            .get(table)?
            .iter()
            .filter_map(|(n, oid)| self.columns.get(&(*oid, *n)))
            .find(|c| *c.qualified == *suffix)
    }

    /// Whether `schema.table` has a column of this name (false for unknown tables).
    pub fn has_column(&self, table: &str, column: &str) -> bool {
        self.names.get(table).is_some_and(|n| n.contains(column))
    }

    /// For a view, the `schema.table.column`s its rule reads; `None` for anything else.
    pub fn view_reads(&self, view: &str) -> Option<&[String]> {
        self.view_reads.get(view).map(Vec::as_slice)
    }

    /// Whether some session has a temporary table of this name (in a `pg_temp_N` schema).
    pub fn has_temp_table(&self, name: &str) -> bool {
        self.temp_table_columns(name).is_some()
    }

    /// The columns, in order, of a temporary table of this name (the first found, if
    /// several sessions have one).
    pub fn temp_table_columns(&self, name: &str) -> Option<Vec<&SourceColumn>> {
        let table = self
            .ordered
            .keys()
            .filter(|t| {
                t.split_once('.')
                    .is_some_and(|(s, rel)| s.starts_with("pg_temp_") && rel == name)
            })
            .min()?
            .clone();
        self.columns_in_order(&table)
    }

    /// Whether the catalog knows a relation of this OID.
    pub fn knows_table(&self, table_oid: u32) -> bool {
        self.tables.contains(&table_oid)
    }

    /// Classifies the target's functions: clean when the operator vouches for them
    /// (`[masking] clean_functions`) or when they are SQL functions whose body reads no table
    /// or view with a sensitive column and calls only built-ins; opaque otherwise (other
    /// languages, SQL from text, bodies that read sensitive data or that do not parse).
    pub fn add_functions(&mut self, functions: Vec<FunctionRow>, rules: &Rules) {
        for f in functions {
            let name = f.name.to_lowercase();
            let qualified = format!("{}.{name}", f.schema.to_lowercase());
            let vouched =
                rules.clean_functions.contains(&qualified) || rules.clean_functions.contains(&name);
            let opaque = !vouched
                && match (f.language.as_str(), &f.body) {
                    ("sql", Some(body)) => self.body_is_opaque(body),
                    _ => true,
                };
            self.opaque_functions.insert(qualified, opaque);
            let e = self.opaque_functions.entry(name).or_insert(false);
            *e |= opaque;
        }
    }

    fn body_is_opaque(&self, body: &str) -> bool {
        let Ok(statements) = weir_analyze::postgres::analyze_sql(body) else {
            return true;
        };
        statements.iter().any(|s| {
            s.unknown_effect
                || !s.user_functions.is_empty()
                || s.tables_read.iter().chain(&s.tables_written).any(|t| {
                    // As written: unqualified names could be any schema's table.
                    let last = t.rsplit('.').next().unwrap_or(t);
                    self.sensitive_by_table.iter().any(|(table, cols)| {
                        !cols.is_empty() && (table == t || table.rsplit('.').next() == Some(last))
                    })
                })
        })
    }

    /// Whether a called function (lower case, as written) may return values Weir cannot
    /// trace: true for opaque functions and for functions the catalog does not know.
    pub fn function_is_opaque(&self, name: &str) -> bool {
        self.opaque_functions.get(name).copied().unwrap_or(true)
    }

    /// Whether `columns` hold every key column of some unique key of `schema.table`: a
    /// statement whose WHERE fixes them to values matches at most one row.
    /// The unique keys of `schema.table`, each the names of its key columns (empty for a
    /// table the catalog does not know).
    pub fn unique_keys(&self, table: &str) -> &[Vec<String>] {
        self.unique_keys.get(table).map_or(&[], Vec::as_slice)
    }

    pub fn covers_unique_key(
        &self,
        table: &str,
        columns: &std::collections::BTreeSet<String>,
    ) -> bool {
        self.unique_keys
            .get(table)
            .is_some_and(|keys| keys.iter().any(|k| k.iter().all(|c| columns.contains(c))))
    }

    /// Whether a write into `schema.table` changes its rows and nothing else: a plain table
    /// with no rule, user trigger, inheritance child, identity or function default. Such a
    /// write inside a transaction has no effect that outlives its rollback. `false` for a
    /// relation the catalog does not know.
    pub fn writes_only_rows(&self, table: &str) -> bool {
        self.rows_only.get(table).copied().unwrap_or(false)
    }

    /// Whether reading `schema.table` runs no code the statement does not show (a plain or
    /// partitioned table or a materialized view, without row-level security). `false` for
    /// a relation the catalog does not know.
    pub fn reads_run_no_code(&self, table: &str) -> bool {
        self.plain_reads.get(table).copied().unwrap_or(false)
    }

    /// For a value of a relation's row type (or an array of it), the first sensitive column
    /// it holds, as `schema.table.column`, with how the whole value is masked.
    pub fn row_type_sensitive(&self, type_oid: u32) -> Option<(String, Sensitive)> {
        let table = self.row_types.get(&type_oid)?;
        let (name, s) = self.sensitive_columns(table).first()?;
        Some((format!("{table}.{name}"), whole(s)))
    }
}

/// How a value that holds a sensitive column among others (a whole row, a composite) is
/// masked: its text cannot keep the column's shape, so redacted (NULL for types other than
/// text), or NULL / a keyed hash when the column asks for one.
fn whole(s: &Sensitive) -> Sensitive {
    Sensitive {
        label: Arc::clone(&s.label),
        strategy: match s.strategy {
            Strategy::Null | Strategy::Hash => s.strategy,
            _ => Strategy::Redact,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn row(oid: u32, n: i16, table: &str, column: &str, reads: &[&str]) -> CatalogRow {
        CatalogRow {
            is_view: !reads.is_empty(),
            view_reads: reads.iter().map(|s| s.to_string()).collect(),
            ..CatalogRow::column(oid, n, "public", table, column)
        }
    }

    #[test]
    fn tags_beat_names_and_views_follow_what_they_read() {
        let mut rules = Rules::default();
        rules.columns.insert(
            "public.customers.notes".into(),
            ColumnRule {
                tag: None,
                mask: Some(Some(Strategy::Redact)),
            },
        );
        rules.columns.insert(
            "public.customers.token_bucket".into(),
            ColumnRule {
                tag: None,
                mask: Some(None),
            },
        );
        let c = Catalog::build(
            vec![
                row(10, 1, "customers", "id", &[]),
                row(10, 2, "customers", "email", &[]),
                row(10, 3, "customers", "notes", &[]),
                row(10, 4, "customers", "token_bucket", &[]),
                row(
                    20,
                    1,
                    "contacts",
                    "id",
                    &["public.customers.id", "public.customers.email"],
                ),
                row(
                    20,
                    2,
                    "contacts",
                    "contact",
                    &["public.customers.id", "public.customers.email"],
                ),
            ],
            &rules,
        );
        let strategy = |oid, n| match c.column(oid, n) {
            Lookup::Column(s) => s.sensitive.as_ref().map(|s| s.strategy),
            other => panic!("{other:?}"),
        };
        assert_eq!(strategy(10, 1), None);
        assert_eq!(strategy(10, 2), Some(Strategy::Email));
        assert_eq!(strategy(10, 3), Some(Strategy::Redact));
        assert_eq!(strategy(10, 4), None);
        assert_eq!(strategy(20, 1), None, "same name as a plain column");
        assert_eq!(strategy(20, 2), Some(Strategy::Email), "renamed: masked");
        assert_eq!(c.column(10, -1), Lookup::System);
        assert_eq!(c.column(99, 1), Lookup::UnknownRelation);
        assert_eq!(c.sensitive_columns("public.customers").len(), 2);
        let order: Vec<&str> = c
            .columns_in_order("public.customers")
            .unwrap()
            .iter()
            .map(|s| &*s.qualified)
            .collect();
        assert_eq!(
            order,
            [
                "public.customers.id",
                "public.customers.email",
                "public.customers.notes",
                "public.customers.token_bucket"
            ]
        );
        assert!(c.column_by_name("public.customers", "email").is_some());
    }
}
