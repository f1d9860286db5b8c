//! Before-images: what Weir runs to capture the rows an UPDATE or DELETE is about to change.
//!
//! The capture is a `SELECT to_jsonb(alias.*) … FOR UPDATE OF alias` over the write's own
//! relation, FROM/USING list and WHERE, taken from libpg_query's parse tree and deparsed, so
//! it reads the same rows the write will (the lock keeps them from changing in between; the
//! gateway runs it in the write's transaction). Rows travel as JSON: date and time values are
//! ISO 8601 whatever the session's DateStyle, and `jsonb_populate_record` reads every type
//! back. Writes whose rows cannot be captured this way are not undoable, with a reason:
//! anything else than one UPDATE or DELETE, a WITH clause (a data-modifying CTE would run
//! twice), `WHERE CURRENT OF`, parameters, or a volatile function in what selects the rows.

use pg_query::protobuf::{node::Node as N, Node, RangeVar};

/// What to run before (and, for an UPDATE, after) the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturePlan {
    pub kind: WriteKind,
    /// `SELECT to_jsonb(alias.*) FROM … WHERE … FOR UPDATE OF alias`: one JSON object per
    /// row the write will change (a row joined twice by FROM/USING appears twice).
    pub capture_sql: String,
    /// The columns an UPDATE assigns (none for a DELETE): a key that contains one of them
    /// cannot find the row again.
    pub set_columns: Vec<String>,
    /// For a statement with bound parameters: which of the write's parameters (0-based)
    /// the capture's `$1`, `$2`, … are.
    pub params: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Update,
    Delete,
}

impl WriteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Update => "update",
            WriteKind::Delete => "delete",
        }
    }
}

/// Functions whose value differs between the capture and the write even in one
/// transaction (or that change state): a WHERE that calls one selects different rows twice.
const VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "clock_timestamp",
    "statement_timestamp",
    "timeofday",
    "nextval",
    "setval",
    "currval",
    "lastval",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "txid_current",
    "pg_current_xact_id",
    "pg_sleep",
    "dblink",
];

/// The capture for `sql` (one statement), or why its rows cannot be captured. With
/// `bound`, `sql` is an extended-protocol statement whose Execute bound parameters: the
/// capture refers to the ones its FROM and WHERE use, renumbered from `$1`
/// ([`CapturePlan::params`] says which), so the server infers their types from the same
/// expressions as in the write, and the write's own bytes (text or binary) bind them.
pub fn capture_plan_bound(sql: &str, bound: bool) -> Result<CapturePlan, String> {
    let mut plan = capture_plan_inner(sql, bound)?;
    if bound {
        let (renumbered, params) = renumber_params(&plan.capture_sql)?;
        plan.capture_sql = renumbered;
        plan.params = params;
    }
    Ok(plan)
}

/// [`capture_plan_bound`] for a text with no parameters.
pub fn capture_plan(sql: &str) -> Result<CapturePlan, String> {
    capture_plan_inner(sql, false)
}

/// `sql` with its parameters renumbered `$1`, `$2`, … in order of first use, and the
/// original (0-based) index of each.
fn renumber_params(sql: &str) -> Result<(String, Vec<usize>), String> {
    let scanned = pg_query::scan(sql).map_err(|e| format!("the capture does not scan: {e}"))?;
    let mut out = String::with_capacity(sql.len());
    let mut order: Vec<usize> = Vec::new();
    let mut at = 0usize;
    for t in &scanned.tokens {
        if t.token != pg_query::protobuf::Token::Param as i32 {
            continue;
        }
        let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            return Err("a parameter token out of range".into());
        };
        let original = sql
            .get(start..end)
            .and_then(|p| p.strip_prefix('$'))
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .ok_or("a parameter token that is not $n")?;
        let new = match order.iter().position(|o| *o == original) {
            Some(i) => i,
            None => {
                order.push(original);
                order.len() - 1
            }
        };
        out.push_str(sql.get(at..start).ok_or("a parameter token out of range")?);
        out.push_str(&format!("${}", new + 1));
        at = end;
    }
    out.push_str(sql.get(at..).unwrap_or(""));
    Ok((out, order))
}

fn capture_plan_inner(sql: &str, bound: bool) -> Result<CapturePlan, String> {
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .map_err(|_| "the parser failed".to_owned())?
        .map_err(|e| format!("it does not parse: {e}"))?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Err("the text holds more than one statement".into());
    };
    let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return Err("the text is empty".into());
    };
    let (kind, relation, from, where_clause, with, set_columns) = match node {
        N::UpdateStmt(u) => (
            WriteKind::Update,
            u.relation.clone(),
            u.from_clause.clone(),
            u.where_clause.clone(),
            u.with_clause.is_some(),
            u.target_list
                .iter()
                .filter_map(|t| match &t.node {
                    Some(N::ResTarget(r)) => Some(r.name.clone()),
                    _ => None,
                })
                .collect(),
        ),
        N::DeleteStmt(d) => (
            WriteKind::Delete,
            d.relation.clone(),
            d.using_clause.clone(),
            d.where_clause.clone(),
            d.with_clause.is_some(),
            Vec::new(),
        ),
        _ => return Err("only UPDATE and DELETE keep before-images".into()),
    };
    if with {
        return Err("it has a WITH clause".into());
    }
    let relation = relation.ok_or("it names no table")?;
    let mut probe = Vec::new();
    probe.extend(from.iter().cloned());
    probe.extend(where_clause.iter().map(|w| (**w).clone()));
    let text = serde_json::to_string(&probe).map_err(|e| e.to_string())?;
    if text.contains("\"CurrentOfExpr\"") {
        return Err("it updates WHERE CURRENT OF a cursor".into());
    }
    if !bound && text.contains("\"ParamRef\"") {
        return Err("its WHERE has parameters".into());
    }
    if let Some(f) = called_functions(&text)
        .into_iter()
        .find(|f| VOLATILE.contains(&f.as_str()))
    {
        return Err(format!(
            "its WHERE calls {f}(), which selects other rows each time"
        ));
    }
    let alias = alias_of(&relation);
    let template = format!(
        "SELECT to_jsonb({q}.*) FROM weir_capture FOR UPDATE OF {q}",
        q = quote_ident(&alias)
    );
    let mut select = pg_query::parse(&template, 0).map_err(|e| e.to_string())?;
    let Some(N::SelectStmt(s)) = select
        .protobuf
        .stmts
        .first_mut()
        .and_then(|r| r.stmt.as_mut())
        .and_then(|n| n.node.as_mut())
    else {
        return Err("the capture template did not parse".into());
    };
    s.from_clause = std::iter::once(Node {
        node: Some(N::RangeVar(relation)),
    })
    .chain(from)
    .collect();
    s.where_clause = where_clause;
    let capture_sql = pg_query::deparse(&select.protobuf, Default::default())
        .map_err(|e| format!("the capture does not deparse: {e}"))?;
    Ok(CapturePlan {
        kind,
        capture_sql,
        set_columns,
        params: Vec::new(),
    })
}

/// The name the write's relation goes by in its own WHERE: its alias, else its name.
fn alias_of(r: &RangeVar) -> String {
    match &r.alias {
        Some(a) if !a.aliasname.is_empty() => a.aliasname.clone(),
        _ => r.relname.clone(),
    }
}

/// Every function name called in a serialized parse tree (the last part of each FuncCall's
/// name), lower case.
fn called_functions(json: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut stack = vec![&value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(f) = m.get("FuncCall") {
                    if let Some(last) = f
                        .get("funcname")
                        .and_then(|n| n.as_array())
                        .and_then(|a| a.last())
                        .and_then(|n| n.pointer("/node/String/sval"))
                        .and_then(|s| s.as_str())
                    {
                        out.push(last.to_ascii_lowercase());
                    }
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out
}

/// `name` as a quoted identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `s` as a standard-conforming string literal (the session's lexing mode is fixed to
/// `standard_conforming_strings = on`).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A `schema.table` name (as the analysis resolves it) as quoted identifiers.
pub fn quote_qualified(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_with_alias_and_from() {
        let p = capture_plan(
            "UPDATE accounts a SET balance = balance - 1, note = 'x' FROM branches b WHERE a.bid = b.bid AND b.name = 'n'",
        )
        .unwrap();
        assert_eq!(p.kind, WriteKind::Update);
        assert_eq!(p.set_columns, ["balance", "note"]);
        assert_eq!(
            p.capture_sql,
            "SELECT to_jsonb(a.*) FROM accounts a, branches b WHERE a.bid = b.bid AND b.name = 'n' FOR UPDATE OF a"
        );
    }

    #[test]
    fn delete_keeps_only_and_schema() {
        let p = capture_plan("DELETE FROM ONLY public.\"Orders\" WHERE id IN (SELECT 1)").unwrap();
        assert_eq!(p.kind, WriteKind::Delete);
        assert_eq!(
            p.capture_sql,
            "SELECT to_jsonb(\"Orders\".*) FROM ONLY public.\"Orders\" WHERE id IN (SELECT 1) FOR UPDATE OF \"Orders\""
        );
    }

    #[test]
    fn what_cannot_be_captured() {
        for (sql, why) in [
            ("UPDATE t SET a = 1 WHERE id = $1", "parameters"),
            ("DELETE FROM t WHERE random() < 0.5", "random"),
            ("WITH x AS (DELETE FROM u RETURNING id) DELETE FROM t WHERE id IN (SELECT id FROM x)", "WITH"),
            ("DELETE FROM t WHERE CURRENT OF c", "CURRENT OF"),
            ("INSERT INTO t VALUES (1)", "only UPDATE and DELETE"),
            ("DELETE FROM t WHERE id = 1; DELETE FROM t WHERE id = 2", "more than one"),
        ] {
            let e = capture_plan(sql).unwrap_err();
            assert!(e.contains(why), "{sql}: {e}");
        }
    }

    #[test]
    fn parameters_are_renumbered() {
        let p = capture_plan_bound(
            "UPDATE t SET a = $1 WHERE b = $3 AND c IS NOT DISTINCT FROM $2 AND d <> '$1' AND e = $3",
            true,
        )
        .unwrap();
        assert_eq!(
            p.capture_sql,
            "SELECT to_jsonb(t.*) FROM t WHERE b = $1 AND c IS NOT DISTINCT FROM $2 AND d <> '$1' AND e = $1 FOR UPDATE OF t"
        );
        assert_eq!(p.params, [2, 1]);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            quote_qualified("public.we\"ird"),
            "\"public\".\"we\"\"ird\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
