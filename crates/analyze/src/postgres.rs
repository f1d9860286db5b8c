//! PostgreSQL statements analyzed on libpg_query's parse tree (the server's own grammar).
//!
//! Completeness over cleverness: rather than a hand-written visitor that must know every one
//! of the parser's 270 node types (and silently skips the ones it forgets — the way a function
//! call hides from analysis), the tree is turned into a generic value and walked whole. Every
//! `RangeVar` (table reference) and every `FuncCall` anywhere in a statement is seen, whatever
//! node holds it. What *does* need node-specific knowledge — the statement kind, which relation
//! a statement writes, WHERE, LIMIT, COPY's source, SET's name — is read from the few node types
//! that carry it, and a statement type not in the table below is [`StatementKind::Unknown`].
//!
//! INVARIANT: facts never depend on the *value* of a constant (only on whether an expression
//! is constant). Two texts that differ only in constants have the same facts, which is what
//! lets [`crate::Analyzer`] cache by normalized text.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::{AnalyzeError, CopyEndpoint, CopyFacts, StatementFacts, StatementKind};

/// Analyzes every statement of `sql` (a Query string or a Parse's text).
pub fn analyze_sql(sql: &str) -> Result<Vec<StatementFacts>, AnalyzeError> {
    // libpg_query is C behind a safe wrapper; its Rust side has `panic!` paths. A panic here
    // must deny the statement, not take the session down with an unclear error.
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .map_err(|_| AnalyzeError::Internal("parser panicked".into()))?
        .map_err(|e| AnalyzeError::Parse(parse_message(e)))?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let value =
            serde_json::to_value(node).map_err(|e| AnalyzeError::Internal(e.to_string()))?;
        out.push(statement(&value));
    }
    if out.is_empty() {
        out.push(StatementFacts::new(StatementKind::Empty));
    }
    Ok(out)
}

fn parse_message(e: pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m,
        other => other.to_string(),
    }
}

/// The single `{"Variant": {...}}` entry of a tagged node, looking through the `{"node": …}`
/// wrapper that the tree puts around every node held in a list or an optional field.
fn tagged(v: &Value) -> Option<(&str, &Map<String, Value>)> {
    let mut obj = v.as_object()?;
    loop {
        if obj.len() != 1 {
            return None;
        }
        let (k, inner) = obj.iter().next()?;
        let inner = inner.as_object()?;
        if k == "node" {
            obj = inner;
            continue;
        }
        return Some((k.as_str(), inner));
    }
}

/// What kind a top-level statement node is. Every statement type the parser produces is
/// listed; anything else is Unknown, which policy denies.
fn kind_of(node: &str) -> StatementKind {
    use StatementKind as K;
    match node {
        // ReturnStmt only occurs inside SQL-standard function bodies (BEGIN ATOMIC … END).
        "SelectStmt" | "ReturnStmt" => K::Select,
        "InsertStmt" => K::Insert,
        "UpdateStmt" => K::Update,
        "DeleteStmt" => K::Delete,
        "MergeStmt" => K::Merge,
        "DropStmt"
        | "DropdbStmt"
        | "DropRoleStmt"
        | "DropTableSpaceStmt"
        | "DropOwnedStmt"
        | "DropSubscriptionStmt"
        | "DropUserMappingStmt" => K::Drop,
        "TruncateStmt" => K::Truncate,
        "GrantStmt"
        | "GrantRoleStmt"
        | "AlterDefaultPrivilegesStmt"
        | "CreateRoleStmt"
        | "AlterRoleStmt"
        | "AlterRoleSetStmt"
        | "ReassignOwnedStmt" => K::Privilege,
        "CopyStmt" => K::Copy,
        "TransactionStmt" => K::Transaction,
        "VariableSetStmt" | "ConstraintsSetStmt" => K::Set,
        "VariableShowStmt" => K::Show,
        "ExplainStmt" => K::Explain,
        "PrepareStmt" => K::Prepare,
        "ExecuteStmt" => K::Execute,
        "DeallocateStmt" => K::Deallocate,
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => K::Cursor,
        "ListenStmt" | "UnlistenStmt" | "NotifyStmt" => K::Notify,
        "DoStmt" => K::Do,
        "CallStmt" => K::Call,
        "LockStmt" => K::Lock,
        "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "CheckPointStmt" | "RefreshMatViewStmt" => {
            K::Maintenance
        }
        "DiscardStmt" => K::Discard,
        "LoadStmt" => K::Load,
        "AlterSystemStmt" => K::AlterSystem,
        "CreateTableAsStmt"
        | "CreateSchemaStmt"
        | "AlterTableStmt"
        | "ReplicaIdentityStmt"
        | "AlterCollationStmt"
        | "AlterDomainStmt"
        | "CreateStmt"
        | "CreateTableSpaceStmt"
        | "AlterTableSpaceOptionsStmt"
        | "AlterTableMoveAllStmt"
        | "CreateExtensionStmt"
        | "AlterExtensionStmt"
        | "AlterExtensionContentsStmt"
        | "CreateFdwStmt"
        | "AlterFdwStmt"
        | "CreateForeignServerStmt"
        | "AlterForeignServerStmt"
        | "CreateForeignTableStmt"
        | "CreateUserMappingStmt"
        | "AlterUserMappingStmt"
        | "ImportForeignSchemaStmt"
        | "CreatePolicyStmt"
        | "AlterPolicyStmt"
        | "CreateAmStmt"
        | "CreateTrigStmt"
        | "CreateEventTrigStmt"
        | "AlterEventTrigStmt"
        | "CreatePlangStmt"
        | "CreateSeqStmt"
        | "AlterSeqStmt"
        | "DefineStmt"
        | "CreateDomainStmt"
        | "CreateOpClassStmt"
        | "CreateOpFamilyStmt"
        | "AlterOpFamilyStmt"
        | "CommentStmt"
        | "SecLabelStmt"
        | "IndexStmt"
        | "CreateStatsStmt"
        | "AlterStatsStmt"
        | "CreateFunctionStmt"
        | "AlterFunctionStmt"
        | "RenameStmt"
        | "AlterObjectDependsStmt"
        | "AlterObjectSchemaStmt"
        | "AlterOwnerStmt"
        | "AlterOperatorStmt"
        | "AlterTypeStmt"
        | "RuleStmt"
        | "CompositeTypeStmt"
        | "CreateEnumStmt"
        | "CreateRangeStmt"
        | "AlterEnumStmt"
        | "ViewStmt"
        | "CreatedbStmt"
        | "AlterDatabaseStmt"
        | "AlterDatabaseRefreshCollStmt"
        | "AlterDatabaseSetStmt"
        | "CreateConversionStmt"
        | "CreateCastStmt"
        | "CreateTransformStmt"
        | "AlterTsdictionaryStmt"
        | "AlterTsconfigurationStmt"
        | "CreatePublicationStmt"
        | "AlterPublicationStmt"
        | "CreateSubscriptionStmt"
        | "AlterSubscriptionStmt" => K::Ddl,
        _ => K::Unknown,
    }
}

/// Languages whose functions run arbitrary code on the server as its OS user.
const UNTRUSTED_LANGUAGES: &[&str] = &[
    "c",
    "internal",
    "plpython3u",
    "plpythonu",
    "plperlu",
    "pltclu",
    "plsh",
    "plv8u",
];

fn statement(value: &Value) -> StatementFacts {
    let Some((name, body)) = tagged(value) else {
        return StatementFacts::new(StatementKind::Unknown);
    };
    let mut f = StatementFacts::new(kind_of(name));
    f.node = name.to_owned();
    match name {
        "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
            // MERGE restricts rows by its join condition.
            let field = if name == "MergeStmt" {
                "join_condition"
            } else {
                "where_clause"
            };
            let w = body.get(field).filter(|w| !w.is_null());
            f.has_where = w.is_some();
            f.where_effective = w.is_some_and(|w| !tautology(w));
            f.unrestricted_write = !f.where_effective;
        }
        "SelectStmt" => {
            f.has_limit = body.get("limit_count").is_some_and(|l| !l.is_null());
            if body.get("into_clause").is_some_and(|i| !i.is_null()) {
                // SELECT ... INTO creates and fills a table.
                f.kind = StatementKind::Ddl;
                f.writes = true;
            }
        }
        "CreateTableAsStmt" => f.writes = true,
        "CopyStmt" => {
            let from = body
                .get("is_from")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let program = body
                .get("is_program")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let file = body.get("filename").and_then(Value::as_str).unwrap_or("");
            let endpoint = if program {
                CopyEndpoint::Program(file.to_owned())
            } else if file.is_empty() {
                CopyEndpoint::Client
            } else {
                CopyEndpoint::ServerFile(file.to_owned())
            };
            f.writes = from;
            f.copy = Some(CopyFacts { from, endpoint });
        }
        "VariableSetStmt" => {
            f.setting = body.get("name").and_then(Value::as_str).map(str::to_owned);
        }
        "ExplainStmt" => {
            let analyze = body
                .get("options")
                .and_then(Value::as_array)
                .is_some_and(|opts| opts.iter().any(|o| def_name(o) == Some("analyze")));
            if let Some(inner) = body.get("query") {
                let inner = statement(inner);
                if analyze {
                    // EXPLAIN ANALYZE runs the statement: it is that statement.
                    let mut inner = inner;
                    inner.explain_analyze = true;
                    return inner;
                }
                f.tables_read.extend(inner.tables_read.iter().cloned());
                f.tables_read.extend(inner.tables_written.iter().cloned());
                f.functions.extend(inner.functions.iter().cloned());
                return f;
            }
        }
        "PrepareStmt" | "DeclareCursorStmt" => {
            if let Some(inner) = body.get("query") {
                f.inner = Some(Box::new(statement(inner)));
            }
            f.name = body
                .get("name")
                .or_else(|| body.get("portalname"))
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        "ExecuteStmt" => {
            f.name = body.get("name").and_then(Value::as_str).map(str::to_owned);
            f.unknown_effect = true;
        }
        "DoStmt" => {
            f.unknown_effect = true;
            let lang = body
                .get("args")
                .and_then(Value::as_array)
                .and_then(|args| args.iter().find(|a| def_name(a) == Some("language")))
                .and_then(def_string)
                .unwrap_or_else(|| "plpgsql".into());
            f.untrusted_language = UNTRUSTED_LANGUAGES.contains(&lang.as_str());
            f.language = Some(lang);
        }
        "CallStmt" => f.unknown_effect = true,
        "CreateFunctionStmt" => {
            let lang = body
                .get("options")
                .and_then(Value::as_array)
                .and_then(|opts| opts.iter().find(|o| def_name(o) == Some("language")))
                .and_then(def_string);
            if let Some(lang) = lang {
                f.untrusted_language = UNTRUSTED_LANGUAGES.contains(&lang.as_str());
                f.language = Some(lang);
            }
        }
        "TransactionStmt" => {
            f.transaction = body
                .get("kind")
                .and_then(Value::as_i64)
                .map(transaction_kind);
        }
        _ => {}
    }
    walk(name, body, &mut f);
    f
}

fn transaction_kind(k: i64) -> &'static str {
    // TransactionStmtKind, in protobuf numbering (0 is "undefined").
    match k {
        1 => "begin",
        2 => "start",
        3 => "commit",
        4 => "rollback",
        5 => "savepoint",
        6 => "release",
        7 => "rollback_to",
        8 => "prepare",
        9 => "commit_prepared",
        10 => "rollback_prepared",
        _ => "unknown",
    }
}

fn def_name(v: &Value) -> Option<&str> {
    let (name, body) = tagged(v)?;
    (name == "DefElem").then(|| body.get("defname").and_then(Value::as_str))?
}

fn def_string(v: &Value) -> Option<String> {
    let (_, body) = tagged(v)?;
    let arg = body.get("arg")?;
    let (kind, s) = tagged(arg)?;
    (kind == "String").then(|| s.get("sval").and_then(Value::as_str).map(str::to_lowercase))?
}

/// Statement nodes whose `relation` field is the table they write.
fn writes_relation(node: &str) -> bool {
    matches!(
        node,
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
    )
}

/// Walks the whole statement, collecting table references and function calls.
fn walk(top: &str, body: &Map<String, Value>, f: &mut StatementFacts) {
    // (value, enclosing statement node, is this a written relation)
    let mut stack: Vec<(&Value, &str, bool)> = Vec::new();
    let copy_from = f.copy.as_ref().is_some_and(|c| c.from);
    for (k, v) in body {
        let written = (k == "relation"
            && (writes_relation(top) || (top == "CopyStmt" && copy_from)))
            || (k == "relations" && top == "TruncateStmt")
            || (k == "relation" && f.kind == StatementKind::Ddl);
        stack.push((v, top, written));
    }
    if top == "DropStmt" {
        collect_drop_objects(body, f);
    }
    while let Some((v, stmt, written)) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, stmt, written))),
            Value::Object(obj) => {
                if obj.contains_key("relname") && obj.contains_key("inh") {
                    let name = table_name(obj);
                    if written {
                        f.tables_written.insert(name);
                    } else {
                        f.tables_read.insert(name);
                    }
                    continue;
                }
                if let Some((node, inner)) = tagged(v) {
                    if node == "RangeVar" {
                        let name = table_name(inner);
                        if written {
                            f.tables_written.insert(name);
                        } else {
                            f.tables_read.insert(name);
                        }
                        continue;
                    }
                    if node == "FuncCall" {
                        if let Some(name) = function_name(inner) {
                            f.functions.insert(name);
                        }
                    }
                    if writes_relation(node) {
                        f.writes = true;
                        if node != top {
                            f.nested_write = true;
                            if matches!(node, "UpdateStmt" | "DeleteStmt")
                                && inner
                                    .get("where_clause")
                                    .filter(|w| !w.is_null())
                                    .is_none_or(tautology)
                            {
                                f.unrestricted_write = true;
                            }
                        }
                    }
                    if node.ends_with("Stmt")
                        && node != top
                        && kind_of(node) == StatementKind::Unknown
                    {
                        f.unknown_nested = true;
                    }
                    for (k, child) in inner {
                        stack.push((child, node, k == "relation" && writes_relation(node)));
                    }
                    continue;
                }
                stack.extend(obj.values().map(|c| (c, stmt, written)));
            }
            _ => {}
        }
    }
    if matches!(
        f.kind,
        StatementKind::Insert
            | StatementKind::Update
            | StatementKind::Delete
            | StatementKind::Merge
    ) {
        f.writes = true;
    }
}

fn table_name(obj: &Map<String, Value>) -> String {
    let schema = obj.get("schemaname").and_then(Value::as_str).unwrap_or("");
    let rel = obj.get("relname").and_then(Value::as_str).unwrap_or("");
    if schema.is_empty() {
        rel.to_owned()
    } else {
        format!("{schema}.{rel}")
    }
}

fn strings(list: &Value) -> Option<Vec<String>> {
    list.as_array()?
        .iter()
        .map(|n| {
            let (kind, s) = tagged(n)?;
            (kind == "String").then(|| s.get("sval").and_then(Value::as_str).map(str::to_owned))?
        })
        .collect()
}

fn function_name(call: &Map<String, Value>) -> Option<String> {
    let parts = strings(call.get("funcname")?)?;
    Some(parts.join(".").to_lowercase())
}

/// DROP names its objects as lists of strings, not RangeVars.
fn collect_drop_objects(body: &Map<String, Value>, f: &mut StatementFacts) {
    let Some(objects) = body.get("objects").and_then(Value::as_array) else {
        return;
    };
    for o in objects {
        if let Some((_, list)) = tagged(o) {
            if let Some(parts) = list.get("items").and_then(strings) {
                f.tables_written.insert(parts.join("."));
            }
        }
    }
}

/// Whether a WHERE clause fails to restrict rows: a constant expression (`true`, `1 = 1`,
/// `$1 = $1` — parameters are constants at execution), a comparison of a column with itself
/// (`id = id`), an OR with such a branch, an AND of only such terms.
fn tautology(w: &Value) -> bool {
    if !mentions_column(w) {
        return true;
    }
    let Some((node, body)) = tagged(w) else {
        return false;
    };
    match node {
        "BoolExpr" => {
            let args: Vec<&Value> = body
                .get("args")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            match body.get("boolop").and_then(Value::as_i64) {
                Some(2) => args.iter().any(|a| tautology(a)), // OR_EXPR
                Some(1) => !args.is_empty() && args.iter().all(|a| tautology(a)), // AND_EXPR
                _ => false,
            }
        }
        "AExpr" => {
            let op = body.get("name").and_then(strings).unwrap_or_default();
            let same = match (body.get("lexpr"), body.get("rexpr")) {
                (Some(l), Some(r)) => same_ignoring_location(l, r),
                _ => false,
            };
            // AEXPR_OP (1) with an operator true for equal operands, or IS NOT DISTINCT FROM (5).
            let kind = body.get("kind").and_then(Value::as_i64);
            same && (matches!(kind, Some(5))
                || matches!(op.first().map(String::as_str), Some("=" | ">=" | "<=")))
        }
        _ => false,
    }
}

fn mentions_column(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => {
                if o.contains_key("ColumnRef") {
                    return true;
                }
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    false
}

fn same_ignoring_location(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys = |o: &Map<String, Value>| {
                o.keys()
                    .filter(|k| *k != "location")
                    .cloned()
                    .collect::<BTreeSet<_>>()
            };
            keys(x) == keys(y)
                && x.iter()
                    .filter(|(k, _)| *k != "location")
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_ignoring_location(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_ignoring_location(v, w))
        }
        _ => a == b,
    }
}
