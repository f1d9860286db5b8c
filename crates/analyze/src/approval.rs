//! What an approval covers: "the same statement" for the auto-repeat window.
//!
//! libpg_query's fingerprint drops every constant, but a constant can be code (a DO block's
//! body, a function body, SQL given as text), a name (a role, a setting), a path (COPY's file
//! or program, `lo_import`), or a value that decides the effect (`set_config`, ALTER SYSTEM).
//! So the repeat key is the whole parse tree, locations aside, with only the constants in a
//! short list of *data* positions left out:
//! - an operand of a comparison in WHERE, HAVING or a join's ON (`id = 5`, `x IN (1, 2)`,
//!   `name LIKE 'a%'`), through AND / OR / NOT only — not inside a function call, a CASE or a
//!   subquery's select list;
//! - a value of INSERT … VALUES and of UPDATE … SET (`SET status = 'paid'`);
//! - LIMIT and OFFSET.
//!
//! Every other constant is part of the key. A parameter (`$1`) in a data position is data; a
//! parameter anywhere else (`query_to_xml($1, …)`) makes the statement not reusable: each run
//! asks again, since its value decides what runs.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What an approval of a statement text covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalScope {
    /// The repeat key (hex SHA-256 of the canonical tree): equal for texts that differ only
    /// in data constants.
    pub key: String,
    /// Some constant is part of the key: the approval covers this exact code, name, path or
    /// setting.
    pub exact: bool,
    /// Some constant is data: other values there are covered.
    pub any_values: bool,
    /// An approval of it may be reused at all (no parameter in a code position).
    pub reusable: bool,
    /// The text as an approver should see it: data constants as `$n`, everything else as
    /// written.
    pub shown: String,
}

/// The reach of an approval that can never be reused.
pub const ONE_RUN: &str = "this run only (a parameter decides what it runs)";

impl ApprovalScope {
    /// How the approval's reach reads to an approver.
    pub fn describe(&self) -> &'static str {
        match (self.reusable, self.exact, self.any_values) {
            (false, _, _) => ONE_RUN,
            (true, true, true) => {
                "this exact statement, with any values in WHERE, VALUES, SET and LIMIT"
            }
            (true, true, false) => "this exact statement",
            (true, false, _) => "this statement with any values",
        }
    }
}

/// The repeat key and reach of an approval of several texts (a request's statements): one
/// key over all of them, reusable only if each is; `None` when none was given.
pub fn combined(scopes: &[&ApprovalScope]) -> Option<(String, &'static str)> {
    let (first, rest) = scopes.split_first()?;
    if scopes.iter().any(|s| !s.reusable) {
        return None;
    }
    let key = rest
        .iter()
        .fold(first.key.clone(), |k, s| format!("{k}+{}", s.key));
    // The narrowest reach of the parts: any exact one makes the whole exact.
    let reach = scopes.iter().find(|s| s.exact).unwrap_or(first).describe();
    Some((key, reach))
}

/// Bounds the walk: a tree deeper than this is not reusable.
const MAX_DEPTH: usize = 500;

struct Walk {
    exact: bool,
    data: Vec<i64>,
    reusable: bool,
}

/// The approval scope of one SQL text (every statement of it); `None` when it does not
/// parse (such a text never runs anyway).
pub fn scope(sql: &str) -> Option<ApprovalScope> {
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .ok()?
        .ok()?;
    let mut w = Walk {
        exact: false,
        data: Vec::new(),
        reusable: true,
    };
    let mut canonical = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let v = serde_json::to_value(node).ok()?;
        canonical.push(canon(&v, Pos::Code, &mut w, 0)?);
    }
    let bytes = serde_json::to_vec(&canonical).ok()?;
    let key = hex::encode(Sha256::digest(&bytes));
    Some(ApprovalScope {
        key,
        exact: w.exact,
        any_values: !w.data.is_empty(),
        reusable: w.reusable,
        shown: shown(sql, &w.data),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pos {
    Code,
    /// Inside WHERE / HAVING / ON, through boolean operators and comparisons only.
    Condition,
    /// A constant here is data.
    Data,
}

fn canon(v: &Value, pos: Pos, w: &mut Walk, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    Some(match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| canon(i, pos, w, depth + 1))
                .collect::<Option<_>>()?,
        ),
        Value::Object(obj) => {
            if let (1, Some(inner)) = (obj.len(), obj.get("node")) {
                let mut m = Map::new();
                m.insert("node".to_owned(), canon(inner, pos, w, depth + 1)?);
                return Some(Value::Object(m));
            }
            if let Some((tag, body)) = single(obj) {
                match tag {
                    "AConst" if pos == Pos::Data => {
                        w.data
                            .push(body.get("location").and_then(Value::as_i64).unwrap_or(-1));
                        return Some(Value::String("$data".into()));
                    }
                    "AConst" => w.exact = true,
                    "ParamRef" if pos != Pos::Data => w.reusable = false,
                    // A DO block's or a function's body, an option's value: strings in
                    // DefElems.
                    "DefElem" if body.get("arg").and_then(single_tag) == Some("String") => {
                        w.exact = true;
                    }
                    _ => {}
                }
                let inner = canon_fields(tag, body, pos, w, depth)?;
                let mut m = Map::new();
                m.insert(tag.to_owned(), inner);
                return Some(Value::Object(m));
            }
            canon_fields("", obj, pos, w, depth)?
        }
        other => other.clone(),
    })
}

/// A node's fields, each in the position its meaning gives it.
fn canon_fields(
    tag: &str,
    body: &Map<String, Value>,
    pos: Pos,
    w: &mut Walk,
    depth: usize,
) -> Option<Value> {
    let mut out = Map::new();
    for (k, v) in body {
        if k == "location" || k == "stmt_location" || k == "stmt_len" {
            continue;
        }
        let child = match (tag, k.as_str()) {
            (_, "where_clause" | "having_clause" | "quals" | "join_condition") => Pos::Condition,
            ("SelectStmt", "limit_count" | "limit_offset") => Pos::Data,
            ("SelectStmt", "values_lists") => Pos::Data,
            ("ResTarget", "val") if pos == Pos::Data => Pos::Data,
            ("UpdateStmt", "target_list") => Pos::Data,
            // The wrappers a condition is made of.
            ("BoolExpr", "args") | ("NullTest", "arg") | ("BooleanTest", "arg")
                if pos == Pos::Condition =>
            {
                Pos::Condition
            }
            ("AExpr", "lexpr" | "rexpr") if pos == Pos::Condition => Pos::Data,
            ("TypeCast", "arg") if pos == Pos::Data => Pos::Data,
            ("List", "items") if pos == Pos::Data => Pos::Data,
            // An untagged object's fields (a typed message field) keep their position.
            ("", _) => pos,
            _ => Pos::Code,
        };
        // A VALUES row is a List of expressions; SET targets are ResTargets: keep Data
        // through them, but an expression node (a function call, an operator) is code.
        let child = match (child, single_tag(v)) {
            (Pos::Data, Some(t))
                if !matches!(t, "AConst" | "TypeCast" | "List" | "ResTarget" | "ParamRef") =>
            {
                Pos::Code
            }
            (c, _) => c,
        };
        out.insert(k.clone(), canon(v, child, w, depth + 1)?);
    }
    Some(Value::Object(out))
}

fn single(obj: &Map<String, Value>) -> Option<(&str, &Map<String, Value>)> {
    if obj.len() != 1 {
        return None;
    }
    let (k, v) = obj.iter().next()?;
    Some((k.as_str(), v.as_object()?))
}

fn single_tag(v: &Value) -> Option<&str> {
    let obj = v.as_object()?;
    let (k, _) = single(obj)?;
    if k == "node" {
        return v.get("node").and_then(single_tag);
    }
    Some(k)
}

/// `sql` with the data constants at `locations` replaced by `$1`, `$2`, … (in text order).
fn shown(sql: &str, locations: &[i64]) -> String {
    let Ok(scanned) = pg_query::scan(sql) else {
        return sql.to_owned();
    };
    let mut starts: Vec<usize> = locations
        .iter()
        .filter_map(|l| usize::try_from(*l).ok())
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let tokens = &scanned.tokens;
    let mut out = String::with_capacity(sql.len());
    let mut at = 0usize;
    let mut n = 0;
    for start in starts {
        // Tokens come in text order: a binary search keeps long texts fast.
        let Ok(i) = tokens.binary_search_by_key(&start, |t| usize::try_from(t.start).unwrap_or(0))
        else {
            continue;
        };
        // `-5` is one constant written as two tokens.
        let mut end_token = i;
        if sql.get(start..start + 1) == Some("-") && i + 1 < tokens.len() {
            end_token = i + 1;
        }
        let Some(end) = tokens
            .get(end_token)
            .and_then(|t| usize::try_from(t.end).ok())
        else {
            continue;
        };
        if start < at || end > sql.len() {
            continue;
        }
        n += 1;
        out.push_str(sql.get(at..start).unwrap_or(""));
        out.push_str(&format!("${n}"));
        at = end;
    }
    out.push_str(sql.get(at..).unwrap_or(""));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        scope(sql).unwrap().key
    }

    #[test]
    fn code_constants_are_part_of_the_key_and_data_is_not() {
        assert_ne!(
            key("DO $$ BEGIN RAISE NOTICE 'hello'; END $$"),
            key("DO $$ BEGIN DELETE FROM orders; END $$")
        );
        assert_ne!(
            key("SELECT query_to_xml('select 1', true, false, '')"),
            key("SELECT query_to_xml('select email from customers', true, false, '')")
        );
        assert_ne!(
            key("SELECT set_config('app.x', 'a', false)"),
            key("SELECT set_config('role', 'a', false)")
        );
        assert_ne!(
            key("COPY t TO PROGRAM 'true'"),
            key("COPY t TO PROGRAM 'rm -rf /'")
        );
        assert_ne!(
            key("CREATE INDEX ON orders (status)"),
            key("CREATE INDEX ON orders (id)")
        );
        assert_ne!(key("SET search_path = a"), key("SET search_path = b"));
        assert_eq!(
            key("UPDATE orders SET status = 'paid' WHERE id = 7"),
            key("UPDATE orders SET status = 'void' WHERE id = 8")
        );
        assert_eq!(
            key("SELECT * FROM orders WHERE id IN (1, 2) AND note LIKE 'x%' LIMIT 5 OFFSET 1"),
            key("SELECT * FROM orders WHERE id IN (3, 4) AND note LIKE 'y%' LIMIT 9 OFFSET 2")
        );
        assert_eq!(
            key("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')"),
            key("INSERT INTO t (a, b) VALUES (3, 'z'), (4, 'w')")
        );
        // A constant inside a function call in WHERE is code.
        assert_ne!(
            key("SELECT 1 FROM t WHERE set_config('role', 'a', false) = 'a'"),
            key("SELECT 1 FROM t WHERE set_config('role', 'b', false) = 'a'")
        );
        assert!(scope("SELECT 1 FROM t WHERE id = $1").unwrap().reusable);
        assert!(
            !scope("SELECT query_to_xml($1, true, false, '')")
                .unwrap()
                .reusable
        );
    }

    #[test]
    fn the_approver_sees_code_and_not_data() {
        let s = scope("DO $$ BEGIN DELETE FROM orders WHERE id > 0; END $$").unwrap();
        assert_eq!(
            s.shown,
            "DO $$ BEGIN DELETE FROM orders WHERE id > 0; END $$"
        );
        assert!(s.exact);
        assert_eq!(s.describe(), "this exact statement");
        let s = scope("UPDATE orders SET status = 'paid' WHERE id = -7").unwrap();
        assert_eq!(s.shown, "UPDATE orders SET status = $1 WHERE id = $2");
        assert_eq!(s.describe(), "this statement with any values");
    }
}
