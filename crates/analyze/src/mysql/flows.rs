//! Lineage of writes for MySQL: which table columns a write copies values into, and which
//! columns those values derive from (`StatementFacts::flows`), as the PostgreSQL analyzer
//! finds them.

use super::*;

/// What a write copies into tables (`StatementFacts::flows`): INSERT / REPLACE … SELECT or
/// VALUES, ON DUPLICATE KEY UPDATE, UPDATE's SET (multi-table too), CREATE TABLE … SELECT.
/// Where the text does not tell which column a value lands in, the flow goes to every
/// column (`Sink::Every`); where a select list has a `*`, its tables' stars are sources.
pub(super) fn flows(s: &Statement, names: &Names<'_>) -> Vec<Flow> {
    let mut out = Vec::new();
    match s {
        Statement::Insert(i) => {
            let TableObject::TableName(n) = &i.table else {
                return out;
            };
            let Some(table) = names.qualify(&name_of(n)) else {
                return out;
            };
            let columns: Vec<String> = i.columns.iter().map(name_of).collect();
            let into = Into {
                table: &table,
                creates: false,
                temporary: false,
                columns: &columns,
                shifted: false,
            };
            if let Some(q) = &i.source {
                query_flows(q, &into, names.db, &mut out);
            }
            if let Some(ast::OnInsert::DuplicateKeyUpdate(assignments)) = &i.on {
                assignment_flows(assignments, Some(&table), names, &mut out);
            }
        }
        Statement::Update(u) => assignment_flows(&u.assignments, None, names, &mut out),
        Statement::CreateTable(c) => {
            let (Some(q), Some(table)) = (&c.query, names.qualify(&name_of(&c.name))) else {
                return out;
            };
            let into = Into {
                table: &table,
                creates: true,
                temporary: c.temporary,
                columns: &[],
                // `CREATE TABLE t (a int) SELECT …`: the selected columns follow the
                // declared ones (or fill those of the same name).
                shifted: !c.columns.is_empty(),
            };
            query_flows(q, &into, names.db, &mut out);
        }
        _ => {}
    }
    out
}

/// The table a query's values are written into.
struct Into<'a> {
    table: &'a str,
    creates: bool,
    temporary: bool,
    /// The statement's column list (INSERT's), empty when it has none.
    columns: &'a [String],
    /// Positions do not say which column a value lands in.
    shifted: bool,
}

fn query_flows(q: &ast::Query, into: &Into<'_>, db: &str, out: &mut Vec<Flow>) {
    let g = gather(q);
    let sub = Names::new(&g, db);
    let flow = |sink: Sink, from: Vec<Column>| Flow {
        table: into.table.to_owned(),
        creates: into.creates,
        temporary: into.temporary,
        sink,
        from,
    };
    let at = |j: usize| match into.columns.get(j) {
        _ if into.shifted => Sink::Every,
        Some(c) => Sink::Column(c.clone()),
        None => Sink::Position(j),
    };
    let stars = |tables: &BTreeSet<String>| -> Vec<Column> {
        tables
            .iter()
            .map(|t| Column {
                table: Some(t.clone()),
                name: "*".into(),
            })
            .collect()
    };
    match q.body.as_ref() {
        SetExpr::Values(v) => {
            for row in &v.rows {
                for (j, e) in row.iter().enumerate() {
                    let (read, _) = columns_of(e, &sub);
                    if !read.is_empty() {
                        out.push(flow(at(j), read));
                    }
                }
            }
            return;
        }
        SetExpr::Select(select) if !into.shifted => {
            if let [item] = select.projection.as_slice() {
                let star = match item {
                    SelectItem::Wildcard(_) if sub.tables.len() == 1 => {
                        sub.tables.iter().next().cloned()
                    }
                    SelectItem::QualifiedWildcard(
                        ast::SelectItemQualifiedWildcardKind::ObjectName(n),
                        _,
                    ) => {
                        let parts = name_parts(n);
                        match parts.as_slice() {
                            [t] => sub
                                .aliases
                                .get(t)
                                .cloned()
                                .unwrap_or_else(|| sub.qualify(t)),
                            _ => sub.qualify(&parts.join(".")),
                        }
                    }
                    _ => None,
                };
                if let Some(t) = star {
                    let from = vec![Column {
                        table: Some(t),
                        name: "*".into(),
                    }];
                    out.push(flow(Sink::Spread(into.columns.to_vec()), from));
                    return;
                }
            }
            if let Some(outputs) = outputs(q, &sub, false) {
                for (j, from) in outputs.into_iter().enumerate() {
                    if !from.is_empty() {
                        out.push(flow(at(j), from));
                    }
                }
                return;
            }
        }
        _ => {}
    }
    // A set operation, a `*` among other entries, a shifted CREATE: some column, from any
    // value the query reads.
    let (mut from, _) = columns_of(q, &sub);
    if g.wildcard {
        from.extend(stars(&sub.tables));
    }
    if !from.is_empty() {
        out.push(flow(Sink::Every, from));
    }
}

/// `SET col = expr` (UPDATE, ON DUPLICATE KEY UPDATE): a flow into `col` from what `expr`
/// reads. `table` is the written table when the statement has one (INSERT's).
fn assignment_flows(
    assignments: &[ast::Assignment],
    table: Option<&str>,
    names: &Names<'_>,
    out: &mut Vec<Flow>,
) {
    for a in assignments {
        let AssignmentTarget::ColumnName(n) = &a.target else {
            continue;
        };
        let parts = name_parts(n);
        let Some((last, q)) = parts.split_last() else {
            continue;
        };
        let written = match table {
            Some(t) => Some(t.to_owned()),
            None => names.column(q, last).table,
        };
        let (from, _) = columns_of(&a.value, names);
        if from.is_empty() {
            continue;
        }
        match written {
            Some(t) => out.push(Flow {
                table: t,
                creates: false,
                temporary: false,
                sink: Sink::Column(last.clone()),
                from,
            }),
            // A column of a multi-table UPDATE that names no table: every written table.
            None => {
                for t in &names.tables {
                    out.push(Flow {
                        table: t.clone(),
                        creates: false,
                        temporary: false,
                        sink: Sink::Column(last.clone()),
                        from: from.clone(),
                    });
                }
            }
        }
    }
}
