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
//! Facts almost never depend on the *value* of a constant, only on whether an expression is
//! constant, so texts that differ only in constants share facts and [`crate::Analyzer`] can
//! cache by normalized text. The exceptions (COPY's file name, `set_config`'s setting name)
//! are safe because the cache stores a normalized entry only after checking that the text and
//! its normalized form analyze to the same facts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::{
    AnalyzeError, Column, CopyEndpoint, CopyFacts, CopyFormat, CopyKind, Flow, PathChange, Sink,
    StatementFacts, StatementKind,
};

/// Names of the functions in `pg_catalog` (PostgreSQL 15, plus what 16-18 added).
static BUILTIN_FUNCTIONS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("pg_catalog_functions.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Built-ins that run SQL handed to them as a string, or read tables named in a string: what
/// they read or write cannot be seen in the statement.
const RUNS_SQL_TEXT: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// Built-ins that change data or server state although they are called from a SELECT.
const CHANGES_STATE: &[&str] = &[
    "nextval",
    "setval",
    "set_config",
    "lo_creat",
    "lo_create",
    "lo_unlink",
    "lo_import",
    "lo_export",
    "lo_put",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "lowrite",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_rotate_logfile_old",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_sync_replication_slots",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_emit_message",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_origin_advance",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_session_reset",
    "pg_replication_origin_xact_setup",
    "pg_replication_origin_xact_reset",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_subscription_stats",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_notify",
    "pg_import_system_collations",
    "gin_clean_pending_list",
    "brin_summarize_range",
    "brin_summarize_new_values",
    "brin_desummarize_range",
    "pg_log_backend_memory_contexts",
    "pg_extension_config_dump",
    "pg_restore_relation_stats",
    "pg_clear_relation_stats",
    "pg_restore_attribute_stats",
    "pg_clear_attribute_stats",
    "pg_stop_making_pinned_objects",
];

/// The operational hazards analysis reports (`StatementFacts::hazards`), for policy's
/// `context.hazards`.
pub const HAZARDS: &[&str] = &[
    "exclusive_lock",
    "rewrite",
    "kills_sessions",
    "server_control",
    "two_phase",
    "sequence_reset",
    "large_objects",
];

/// Built-ins that end or interrupt other sessions.
const KILLS_SESSIONS: &[&str] = &["pg_terminate_backend", "pg_cancel_backend"];

/// Built-ins that act on the server itself: configuration, logs, WAL, recovery, promotion.
const SERVER_CONTROL: &[&str] = &[
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_rotate_logfile_old",
    "pg_promote",
    "pg_switch_wal",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_log_backend_memory_contexts",
    "pg_drop_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
];

/// The hazards of a maintenance, lock or transaction statement, from its node.
fn statement_hazards(name: &str, body: &Map<String, Value>, f: &mut StatementFacts) {
    let option = |field: &str, wanted: &str| {
        body.get(field)
            .and_then(Value::as_array)
            .is_some_and(|opts| opts.iter().any(|o| def_name(o) == Some(wanted)))
    };
    match name {
        // VACUUM FULL rewrites the table under ACCESS EXCLUSIVE; plain VACUUM and ANALYZE
        // take a lock that lets readers and writers on.
        "VacuumStmt" if option("options", "full") => {
            f.hazards.extend(["exclusive_lock", "rewrite"]);
        }
        "ClusterStmt" => f.hazards.extend(["exclusive_lock", "rewrite"]),
        "ReindexStmt" if !option("params", "concurrently") => {
            f.hazards.extend(["exclusive_lock", "rewrite"]);
        }
        "RefreshMatViewStmt"
            if !body
                .get("concurrent")
                .and_then(Value::as_bool)
                .unwrap_or(false) =>
        {
            f.hazards.extend(["exclusive_lock", "rewrite"]);
        }
        // Lock modes as PostgreSQL numbers them: 6 is SHARE ROW EXCLUSIVE, which (like
        // EXCLUSIVE and ACCESS EXCLUSIVE) blocks every writer; ACCESS EXCLUSIVE blocks readers.
        "LockStmt" if body.get("mode").and_then(Value::as_i64).unwrap_or(8) >= 6 => {
            f.hazards.insert("exclusive_lock");
        }
        "CheckPointStmt" => {
            f.hazards.insert("server_control");
        }
        "TransactionStmt"
            if matches!(
                body.get("kind")
                    .and_then(Value::as_i64)
                    .map(transaction_kind),
                Some("prepare" | "commit_prepared" | "rollback_prepared")
            ) =>
        {
            f.hazards.insert("two_phase");
        }
        "AlterSeqStmt" if option("options", "restart") => {
            f.hazards.insert("sequence_reset");
        }
        _ => {}
    }
}

/// The hazards of a call of built-in `base`.
fn call_hazards(base: &str, call: &Map<String, Value>, f: &mut StatementFacts) {
    let args: Vec<&Value> = call
        .get("args")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if KILLS_SESSIONS.contains(&base) {
        // A session ending or cancelling itself is no hazard.
        let own = matches!(args.first().and_then(|a| tagged(a)), Some(("FuncCall", inner))
            if function_name(inner).as_deref().is_some_and(|n| n.rsplit('.').next() == Some("pg_backend_pid")));
        if !own {
            f.hazards.insert("kills_sessions");
        }
    }
    if SERVER_CONTROL.contains(&base) {
        f.hazards.insert("server_control");
    }
    if base == "setval" {
        f.hazards.insert("sequence_reset");
    }
    // lo_unlink of one constant OID removes one object; of anything else (a column, a
    // subquery), as many as the query yields.
    if base == "lo_unlink" && !matches!(args.first().and_then(|a| tagged(a)), Some(("AConst", _))) {
        f.hazards.insert("large_objects");
    }
}

/// Whether a called function (lower case, qualified as written) is a PostgreSQL built-in.
/// `pg_catalog` is searched first whatever the search_path, so an unqualified built-in name
/// is the built-in.
fn builtin(function: &str) -> bool {
    let base = match function.rsplit_once('.') {
        Some(("pg_catalog", base)) => base,
        Some(_) => return false,
        None => function,
    };
    BUILTIN_FUNCTIONS.contains(base)
}

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
        let names_lexing_setting = lexing_mode_kept(&value).map_err(AnalyzeError::LexingMode)?;
        let mut facts = statement(&value);
        // Whether it is refused depends on the value: such texts are cached only as they are.
        facts.value_dependent |= names_lexing_setting;
        out.push(facts);
    }
    if out.is_empty() {
        out.push(StatementFacts::new(StatementKind::Empty));
    }
    Ok(out)
}

/// What statement `index` of `sql` does to the search_path, if it is a SET or RESET of it
/// (or RESET ALL). Parses again: the facts do not carry SET's values (they are constants, and
/// facts are shared by texts that differ only in constants), and changing the search_path is
/// rare enough not to need a cache.
pub fn search_path_change(sql: &str, index: usize) -> Option<PathChange> {
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .ok()?
        .ok()?;
    let node = parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| raw.stmt.as_ref().and_then(|n| n.node.as_ref()))
        .nth(index)?;
    let value = serde_json::to_value(node).ok()?;
    let (kind, body) = tagged(&value)?;
    if kind != "VariableSetStmt" {
        return None;
    }
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    if !matches!(name, Some("search_path") | None) {
        return None;
    }
    let local = body
        .get("is_local")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // VariableSetKind, in protobuf numbering (0 is "undefined").
    Some(match body.get("kind").and_then(Value::as_i64) {
        Some(1) if name.is_some() => {
            let schemas = body
                .get("args")
                .and_then(Value::as_array)
                .map(|args| args.iter().map(string_constant).collect::<Option<Vec<_>>>());
            match schemas.flatten() {
                Some(s) if local => PathChange::Local(s),
                Some(s) => PathChange::Set(s),
                None => PathChange::Unknown,
            }
        }
        Some(2 | 5 | 6) => PathChange::Reset,
        _ => PathChange::Unknown,
    })
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
    statement_hazards(name, body, &mut f);
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
            if name != "MergeStmt" {
                if let Some(w) = w {
                    key_equalities(body, w, &mut f);
                }
            }
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
            let options: Vec<&Value> = body
                .get("options")
                .and_then(Value::as_array)
                .map(|o| o.iter().collect())
                .unwrap_or_default();
            let option = |name: &str| {
                options
                    .iter()
                    .find(|o| def_name(o) == Some(name))
                    .map(|o| def_raw(o))
            };
            let kind = match option("format")
                .flatten()
                .map(|s| s.to_lowercase())
                .as_deref()
            {
                Some("csv") => CopyKind::Csv,
                Some("binary") => CopyKind::Binary,
                _ => CopyKind::Text,
            };
            let header = match option("header") {
                None => false,
                // HEADER alone, or with true / on / 1 / match.
                Some(None) => true,
                Some(Some(v)) => !matches!(v.to_lowercase().as_str(), "false" | "off" | "0"),
            };
            let columns = body
                .get("attlist")
                .and_then(strings)
                .filter(|c| !c.is_empty());
            let query = body.get("query").is_some_and(|q| !q.is_null());
            f.copy = Some(CopyFacts {
                from,
                endpoint,
                format: CopyFormat {
                    kind,
                    delimiter: option("delimiter").flatten(),
                    quote: option("quote").flatten(),
                    escape: option("escape").flatten(),
                    null: option("null").flatten(),
                    header,
                },
                columns,
                query,
            });
            // The options' values (a delimiter, a NULL string) shape the data: these facts
            // are cached only under their exact text.
            if !options.is_empty() {
                f.value_dependent = true;
            }
        }
        "VariableSetStmt" => {
            f.setting = body
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_lowercase)
                .or_else(|| Some("all".into())); // RESET ALL
        }
        "DeallocateStmt" => {
            f.name = body.get("name").and_then(Value::as_str).map(str::to_owned);
        }
        "DiscardStmt" => {
            // DiscardMode, in protobuf numbering (0 is "undefined").
            f.name = Some(
                match body.get("target").and_then(Value::as_i64) {
                    Some(1) => "all",
                    Some(2) => "plans",
                    Some(3) => "sequences",
                    Some(4) => "temp",
                    _ => "unknown",
                }
                .to_owned(),
            );
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
                f.columns.extend(inner.columns.iter().cloned());
                f.functions.extend(inner.functions.iter().cloned());
                f.user_functions
                    .extend(inner.user_functions.iter().cloned());
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
    if f.nested_write {
        // `DELETE … WHERE id = 1` around a data-modifying CTE changes more than one row.
        f.key_equalities.clear();
    }
    if name == "CopyStmt" {
        // COPY (query) TO: the data's columns are the query's result columns.
        if let Some(inner) = body.get("query").filter(|q| !q.is_null()) {
            f.outputs = statement(inner).outputs;
        }
    }
    f
}

/// The target table's columns an UPDATE's or DELETE's WHERE compares for equality with a
/// constant or parameter, through ANDs only (`StatementFacts::key_equalities`). Nothing when
/// the statement joins other tables (FROM / USING) or holds a CTE: a column name could then
/// be another table's. Nested writes clear it after the walk.
fn key_equalities(body: &Map<String, Value>, w: &Value, f: &mut StatementFacts) {
    let joined = ["from_clause", "using_clause"].iter().any(|k| {
        body.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    }) || body.get("with_clause").is_some_and(|c| !c.is_null());
    if joined {
        return;
    }
    let relation = body
        .get("relation")
        .and_then(|r| tagged(r).map(|(_, inner)| inner).or_else(|| r.as_object()));
    let Some(relation) = relation else { return };
    let table = table_name(relation);
    let unqualified = table.rsplit('.').next().unwrap_or(&table).to_owned();
    let alias = relation
        .get("alias")
        .and_then(|a| a.get("aliasname"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let names_target = |q: &str| match &alias {
        Some(a) => q == a,
        None => q == table || q == unqualified,
    };
    let constant = |v: &Value| {
        let mut v = v;
        loop {
            match tagged(v) {
                Some(("AConst" | "ParamRef", _)) => return true,
                Some(("TypeCast", c)) => match c.get("arg") {
                    Some(arg) => v = arg,
                    None => return false,
                },
                _ => return false,
            }
        }
    };
    let mut stack = vec![w];
    while let Some(v) = stack.pop() {
        match tagged(v) {
            // AND_EXPR is 1 in protobuf numbering.
            Some(("BoolExpr", b)) if b.get("boolop").and_then(Value::as_i64) == Some(1) => {
                stack.extend(
                    b.get("args")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
            }
            // AEXPR_OP (1) with the operator `=`.
            Some(("AExpr", e))
                if e.get("kind").and_then(Value::as_i64) == Some(1)
                    && e.get("name").and_then(strings).as_deref() == Some(&["=".to_owned()]) =>
            {
                let (Some(l), Some(r)) = (e.get("lexpr"), e.get("rexpr")) else {
                    continue;
                };
                let column = match (tagged(l), tagged(r)) {
                    (Some(("ColumnRef", c)), _) if constant(r) => column_parts(c),
                    (_, Some(("ColumnRef", c))) if constant(l) => column_parts(c),
                    _ => None,
                };
                match column.as_deref() {
                    Some([name]) => {
                        f.key_equalities.insert(name.clone());
                    }
                    Some([q, name]) if names_target(q) => {
                        f.key_equalities.insert(name.clone());
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// A JSON value that holds something: not null, not an empty array.
fn non_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
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

/// A DefElem's argument as written: a string, a name, a number or a boolean; `None` when it
/// has none (`HEADER` alone).
fn def_raw(v: &Value) -> Option<String> {
    let (_, body) = tagged(v)?;
    let arg = body.get("arg")?;
    let (kind, a) = tagged(arg)?;
    match kind {
        "String" => a.get("sval").and_then(Value::as_str).map(str::to_owned),
        "Boolean" => Some(
            a.get("boolval")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ),
        "Integer" => Some(
            a.get("ival")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_string(),
        ),
        _ => None,
    }
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

/// What the walk gathers besides the facts themselves, to resolve columns at the end.
#[derive(Default)]
struct Names {
    /// Alias → the table it stands for; `None` when one alias names different tables.
    aliases: HashMap<String, Option<String>>,
    /// Column references as written (`["c", "email"]`, `["*"]`).
    columns: Vec<Vec<String>>,
    /// Columns assigned by INSERT's column list or UPDATE's SET, with their table.
    assigned: Vec<(String, String)>,
    /// Columns read in the arguments of a built-in that keeps its arguments in session or
    /// server state (`StatementFacts::state_sinks`).
    sinks: Vec<Vec<String>>,
    /// Values written into tables, with the column references they derive from, as written
    /// (`StatementFacts::flows`).
    flows: Vec<RawFlow>,
}

/// A [`Flow`] before its source columns are attributed to tables.
struct RawFlow {
    table: String,
    /// The value is computed by a query over other tables (INSERT's rows, CREATE TABLE AS),
    /// never from the written row: an unqualified column is one of the tables read.
    from_query: bool,
    creates: bool,
    temporary: bool,
    sink: Sink,
    from: Vec<Vec<String>>,
}

/// Every value that a write in the statement (the top one or one nested in a CTE) copies
/// into a table (`StatementFacts::flows`).
fn flows(top: &str, body: &Map<String, Value>) -> Vec<RawFlow> {
    let mut out = Vec::new();
    write_flows(top, body, &mut out);
    let mut stack: Vec<&Value> = body.values().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(obj) => match tagged(v) {
                Some((node, inner)) => {
                    write_flows(node, inner, &mut out);
                    stack.extend(inner.values());
                }
                None => stack.extend(obj.values()),
            },
            _ => {}
        }
    }
    out
}

/// A relation field (`relation`, `into.rel`), tagged or not, as written; `pg_temp.name` for
/// a temporary one. With whether it is temporary.
fn written_relation(v: Option<&Value>) -> Option<(String, bool)> {
    let v = v?;
    let obj = tagged(v)
        .filter(|(k, _)| *k == "RangeVar")
        .map(|(_, inner)| inner)
        .or_else(|| v.as_object())?;
    let name = table_name(obj);
    if name.is_empty() {
        return None;
    }
    let declared_temp = obj.get("relpersistence").and_then(Value::as_str) == Some("t");
    match name.split_once('.') {
        Some(("pg_temp", _)) => Some((name, true)),
        None if declared_temp => Some((format!("pg_temp.{name}"), true)),
        _ => Some((name, false)),
    }
}

/// The names of a list of ResTargets (INSERT's column list, MERGE INSERT's).
fn target_names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let (kind, t) = tagged(t)?;
            (kind == "ResTarget")
                .then(|| t.get("name").and_then(Value::as_str).map(str::to_owned))?
        })
        .collect()
}

/// The flows of one statement node, when it is a write.
fn write_flows(node: &str, body: &Map<String, Value>, out: &mut Vec<RawFlow>) {
    let into = body.get("into_clause").filter(|i| !i.is_null());
    match node {
        "InsertStmt" => {
            let Some((table, temporary)) = written_relation(body.get("relation")) else {
                return;
            };
            let cols = target_names(body.get("cols"));
            if let Some((_, select)) = body
                .get("select_stmt")
                .and_then(tagged)
                .filter(|(k, _)| *k == "SelectStmt")
            {
                select_flows(&table, false, temporary, &cols, select, out);
            }
            if let Some(conflict) = body
                .get("on_conflict_clause")
                .and_then(|c| tagged(c).map(|(_, inner)| inner).or_else(|| c.as_object()))
            {
                set_flows(&table, temporary, conflict.get("target_list"), out);
            }
        }
        "UpdateStmt" => {
            if let Some((table, temporary)) = written_relation(body.get("relation")) {
                set_flows(&table, temporary, body.get("target_list"), out);
            }
        }
        "MergeStmt" => {
            let Some((table, temporary)) = written_relation(body.get("relation")) else {
                return;
            };
            for clause in body
                .get("merge_when_clauses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(("MergeWhenClause", c)) = tagged(clause) else {
                    continue;
                };
                match c.get("values").and_then(Value::as_array) {
                    // WHEN NOT MATCHED THEN INSERT [(cols)] VALUES (…)
                    Some(values) if !values.is_empty() => {
                        let cols = target_names(c.get("target_list"));
                        for (i, v) in values.iter().enumerate() {
                            push_flow(out, &table, false, temporary, sink_at(&cols, i), v);
                        }
                    }
                    // WHEN MATCHED THEN UPDATE SET …
                    _ => set_flows(&table, temporary, c.get("target_list"), out),
                }
            }
        }
        "CreateTableAsStmt" => {
            let Some(into) = body
                .get("into")
                .and_then(|i| tagged(i).map(|(_, inner)| inner).or_else(|| i.as_object()))
            else {
                return;
            };
            let Some((table, temporary)) = written_relation(into.get("rel")) else {
                return;
            };
            let cols = into.get("col_names").and_then(strings).unwrap_or_default();
            if let Some((_, select)) = body
                .get("query")
                .and_then(tagged)
                .filter(|(k, _)| *k == "SelectStmt")
            {
                select_flows(&table, true, temporary, &cols, select, out);
            }
        }
        "SelectStmt" if into.is_some() => {
            let Some(into) =
                into.and_then(|i| tagged(i).map(|(_, inner)| inner).or_else(|| i.as_object()))
            else {
                return;
            };
            let Some((table, temporary)) = written_relation(into.get("rel")) else {
                return;
            };
            let cols = into.get("col_names").and_then(strings).unwrap_or_default();
            select_flows(&table, true, temporary, &cols, body, out);
        }
        _ => {}
    }
}

/// Column `i` of a write with column list `cols` (empty: none given).
fn sink_at(cols: &[String], i: usize) -> Sink {
    match cols.get(i) {
        Some(c) => Sink::Column(c.clone()),
        None if cols.is_empty() => Sink::Position(i),
        // More values than columns: the server refuses it.
        None => Sink::Every,
    }
}

/// A flow of `value` into `sink`, when it reads any column.
fn push_flow(
    out: &mut Vec<RawFlow>,
    table: &str,
    creates: bool,
    temporary: bool,
    sink: Sink,
    value: &Value,
) {
    let mut from = Vec::new();
    column_refs(value, &mut from);
    if !from.is_empty() {
        out.push(RawFlow {
            table: table.to_owned(),
            from_query: false,
            creates,
            temporary,
            sink,
            from,
        });
    }
}

/// UPDATE's SET, ON CONFLICT DO UPDATE's SET, MERGE's UPDATE SET: each `column = value`.
fn set_flows(table: &str, temporary: bool, list: Option<&Value>, out: &mut Vec<RawFlow>) {
    for t in list.and_then(Value::as_array).into_iter().flatten() {
        let Some(("ResTarget", t)) = tagged(t) else {
            continue;
        };
        let (Some(name), Some(val)) = (t.get("name").and_then(Value::as_str), t.get("val")) else {
            continue;
        };
        push_flow(
            out,
            table,
            false,
            temporary,
            Sink::Column(name.to_owned()),
            val,
        );
    }
}

/// The values a query puts into the columns of `table`: VALUES rows item by item, a plain
/// select list entry by entry (names from `cols`, else a select-list alias, else a plain
/// column's name, else a position), a single `*` spread over the columns, anything else
/// (a set operation, a `*` among other entries) into every column.
fn select_flows(
    table: &str,
    creates: bool,
    temporary: bool,
    cols: &[String],
    select: &Map<String, Value>,
    out: &mut Vec<RawFlow>,
) {
    let start = out.len();
    select_values(table, creates, temporary, cols, select, out);
    for flow in out.iter_mut().skip(start) {
        flow.from_query = true;
    }
}

fn select_values(
    table: &str,
    creates: bool,
    temporary: bool,
    cols: &[String],
    select: &Map<String, Value>,
    out: &mut Vec<RawFlow>,
) {
    if let Some(rows) = select
        .get("values_lists")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    {
        for row in rows {
            let items = tagged(row)
                .and_then(|(_, l)| l.get("items"))
                .and_then(Value::as_array);
            for (i, item) in items.into_iter().flatten().enumerate() {
                push_flow(out, table, creates, temporary, sink_at(cols, i), item);
            }
        }
        return;
    }
    let set_operation = select.get("larg").is_some_and(|l| !l.is_null());
    let targets: Vec<(Option<&str>, &Value)> = select
        .get("target_list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let (kind, t) = tagged(t)?;
            (kind == "ResTarget").then_some(())?;
            let alias = t
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            Some((alias, t.get("val")?))
        })
        .collect();
    let star = |v: &Value| {
        matches!(tagged(v), Some(("ColumnRef", c))
            if column_parts(c).is_some_and(|p| p.last().is_some_and(|l| l == "*")))
    };
    if set_operation || targets.iter().any(|(_, v)| star(v)) {
        let sink = match targets.as_slice() {
            [(_, v)] if !set_operation && star(v) => Sink::Spread(cols.to_vec()),
            _ => Sink::Every,
        };
        let mut from = Vec::new();
        if set_operation {
            for v in select.values() {
                column_refs(v, &mut from);
            }
        } else {
            for (_, v) in &targets {
                column_refs(v, &mut from);
            }
        }
        if !from.is_empty() {
            out.push(RawFlow {
                table: table.to_owned(),
                from_query: false,
                creates,
                temporary,
                sink,
                from,
            });
        }
        return;
    }
    for (i, (alias, v)) in targets.iter().enumerate() {
        let sink = match cols.get(i) {
            Some(c) => Sink::Column(c.clone()),
            None if creates => match (alias, tagged(v)) {
                // The server names a new table's column by its alias, or by the column it is.
                (Some(a), _) => Sink::Column((*a).to_owned()),
                (None, Some(("ColumnRef", c))) => match column_parts(c).and_then(|mut p| p.pop()) {
                    Some(name) => Sink::Column(name),
                    None => Sink::Position(i),
                },
                _ => Sink::Position(i),
            },
            None => sink_at(cols, i),
        };
        push_flow(out, table, creates, temporary, sink, v);
    }
}

/// Built-ins that keep a value where another statement, session or identity can read it
/// back: settings, notification payloads, sequences, advisory-lock keys.
const STATE_SINKS: &[&str] = &[
    "set_config",
    "pg_notify",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_logical_emit_message",
];

/// Every column reference in `v` whose value can reach the result, as written: not those
/// only counted or tested for NULL (`discloses_no_value`).
fn column_refs(v: &Value, out: &mut Vec<Vec<String>>) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => match tagged(v) {
                Some(("ColumnRef", c)) => out.extend(column_parts(c)),
                Some((node, inner)) if discloses_no_value(node, inner) => {}
                _ => stack.extend(o.values()),
            },
            _ => {}
        }
    }
}

impl Names {
    fn table(&mut self, rangevar: &Map<String, Value>, written: bool, f: &mut StatementFacts) {
        let name = table_name(rangevar);
        if let Some(alias) = rangevar
            .get("alias")
            .and_then(|a| a.get("aliasname"))
            .and_then(Value::as_str)
        {
            self.aliases
                .entry(alias.to_owned())
                .and_modify(|t| {
                    if t.as_deref() != Some(name.as_str()) {
                        *t = None;
                    }
                })
                .or_insert_with(|| Some(name.clone()));
        }
        if written {
            f.tables_written.insert(name);
        } else {
            f.tables_read.insert(name);
        }
    }

    /// INSERT's column list and UPDATE's SET targets name columns of the written table.
    fn assignments(&mut self, node: &str, body: &Map<String, Value>) {
        let field = match node {
            "InsertStmt" => "cols",
            "UpdateStmt" => "target_list",
            _ => return,
        };
        let Some(table) = body
            .get("relation")
            .and_then(|r| tagged(r).map(|(_, inner)| inner).or_else(|| r.as_object()))
            .map(table_name)
        else {
            return;
        };
        for target in body
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = tagged(target)
                .filter(|(kind, _)| *kind == "ResTarget")
                .and_then(|(_, t)| t.get("name").and_then(Value::as_str))
            {
                self.assigned.push((table.clone(), name.to_owned()));
            }
        }
    }

    /// Attributes each column to a table where the statement makes it clear: a qualifier
    /// that is an alias or a table, or the only table of the statement.
    fn resolve(self, f: &mut StatementFacts, outputs: Option<Vec<OutputRefs>>) {
        let tables: Vec<String> = f
            .tables_read
            .iter()
            .chain(f.tables_written.iter())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let only = match tables.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        let attribute = |mut parts: Vec<String>| -> Option<Column> {
            if parts.len() == 4 {
                parts.remove(0); // database.schema.table.column
            }
            let name = parts.pop()?;
            let table = if parts.is_empty() {
                only.clone()
            } else {
                let qualifier = parts.join(".");
                match self.aliases.get(&qualifier) {
                    Some(t) => t.clone(),
                    None if tables.contains(&qualifier) => Some(qualifier),
                    None => {
                        let mut by_last = tables.iter().filter(|t| {
                            t.rsplit_once('.')
                                .is_some_and(|(_, last)| last == qualifier)
                        });
                        match (by_last.next(), by_last.next()) {
                            (Some(t), None) => Some(t.clone()),
                            _ => None,
                        }
                    }
                }
            };
            Some(Column { table, name })
        };
        if let Some(outputs) = outputs {
            let (shown, counted): (Vec<_>, Vec<_>) = outputs
                .into_iter()
                .map(|o| {
                    (
                        o.shown.into_iter().filter_map(&attribute).collect(),
                        o.counted.into_iter().filter_map(&attribute).collect(),
                    )
                })
                .unzip();
            f.outputs = Some(shown);
            f.outputs_counted = Some(counted);
        }
        for parts in self.columns {
            if let Some(c) = attribute(parts) {
                f.columns.insert(c);
            }
        }
        f.state_sinks = self.sinks.into_iter().filter_map(&attribute).collect();
        // A query's unqualified column is one of the tables it reads, not the one written.
        let read: Vec<&String> = f
            .tables_read
            .iter()
            .filter(|t| !f.tables_written.contains(*t))
            .collect();
        let only_read = match read.as_slice() {
            [one] => Some((*one).clone()),
            _ => None,
        };
        f.flows = self
            .flows
            .into_iter()
            .filter_map(|raw| {
                let from_query = raw.from_query;
                let from: Vec<Column> = raw
                    .from
                    .into_iter()
                    .filter_map(|parts| {
                        let unqualified = parts.len() == 1;
                        let mut c = attribute(parts)?;
                        if from_query && unqualified && c.table.is_none() {
                            c.table.clone_from(&only_read);
                        }
                        Some(c)
                    })
                    .collect();
                (!from.is_empty()).then_some(Flow {
                    table: raw.table,
                    creates: raw.creates,
                    temporary: raw.temporary,
                    sink: raw.sink,
                    from,
                })
            })
            .collect();
        for (table, name) in self.assigned {
            f.columns.insert(Column {
                table: Some(table),
                name,
            });
        }
    }
}

/// The column references of one select-list entry, as written.
#[derive(Default)]
struct OutputRefs {
    /// Read in a way that can carry their values into the result.
    shown: Vec<Vec<String>>,
    /// Read only through `count(…)`, `IS [NOT] NULL` or `EXISTS (…)`.
    counted: Vec<Vec<String>>,
}

/// Whether a node's result carries none of the values of the columns it reads: `count`
/// (any arguments, DISTINCT, FILTER, OVER: always a number), a NULL test, EXISTS.
fn discloses_no_value(node: &str, body: &Map<String, Value>) -> bool {
    match node {
        "FuncCall" => matches!(
            function_name(body).as_deref(),
            Some("count" | "pg_catalog.count")
        ),
        "NullTest" => true,
        // SubLinkType, in protobuf numbering: 1 is EXISTS_SUBLINK.
        "SubLink" => body.get("sub_link_type").and_then(Value::as_i64) == Some(1),
        _ => false,
    }
}

/// For a plain SELECT, the column references of each select-list entry, in order; `None`
/// for a set operation or a `*` entry (the result's columns are not the list's entries).
fn output_refs(top: &str, body: &Map<String, Value>) -> Option<Vec<OutputRefs>> {
    if top != "SelectStmt" || body.get("larg").is_some_and(|l| !l.is_null()) {
        return None;
    }
    let targets = body.get("target_list")?.as_array()?;
    targets
        .iter()
        .map(|t| {
            let (kind, target) = tagged(t)?;
            if kind != "ResTarget" {
                return None;
            }
            let val = target.get("val")?;
            if let Some(("ColumnRef", c)) = tagged(val) {
                if column_parts(c)?.last().is_some_and(|p| p == "*") {
                    return None;
                }
            }
            let mut refs = OutputRefs::default();
            // (value, inside something that discloses no value)
            let mut stack = vec![(val, false)];
            while let Some((v, counted)) = stack.pop() {
                match v {
                    Value::Array(items) => stack.extend(items.iter().map(|i| (i, counted))),
                    Value::Object(obj) => match tagged(v) {
                        Some(("ColumnRef", c)) if counted => refs.counted.push(column_parts(c)?),
                        Some(("ColumnRef", c)) => refs.shown.push(column_parts(c)?),
                        Some((node, inner)) => {
                            let counted = counted || discloses_no_value(node, inner);
                            stack.extend(obj.values().map(|c| (c, counted)));
                        }
                        None => stack.extend(obj.values().map(|c| (c, counted))),
                    },
                    _ => {}
                }
            }
            Some(refs)
        })
        .collect()
}

/// Walks the whole statement, collecting table references, columns and function calls.
fn walk(top: &str, body: &Map<String, Value>, f: &mut StatementFacts) {
    // (value, enclosing statement node, is this a written relation)
    let mut stack: Vec<(&Value, &str, bool)> = Vec::new();
    let mut names = Names::default();
    let copy_from = f.copy.as_ref().is_some_and(|c| c.from);
    for (k, v) in body {
        if k == "locking_clause" && non_empty(v) {
            f.locks_rows = true;
        }
        // CREATE TABLE … AS and SELECT … INTO write the table they name.
        let written = k == "into"
            || k == "into_clause"
            || (k == "relation" && (writes_relation(top) || (top == "CopyStmt" && copy_from)))
            || (k == "relations" && top == "TruncateStmt")
            || (k == "relation" && f.kind == StatementKind::Ddl);
        stack.push((v, top, written));
    }
    names.assignments(top, body);
    // PREPARE and DECLARE hold a statement that runs later (its own facts are `inner`).
    if !matches!(top, "PrepareStmt" | "DeclareCursorStmt") {
        names.flows = flows(top, body);
    }
    if top == "DropStmt" {
        collect_drop_objects(body, f);
    }
    while let Some((v, stmt, written)) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, stmt, written))),
            Value::Object(obj) => {
                if obj.contains_key("relname") && obj.contains_key("inh") {
                    names.table(obj, written, f);
                    continue;
                }
                if let Some((node, inner)) = tagged(v) {
                    if node == "SelectStmt" && inner.get("locking_clause").is_some_and(non_empty) {
                        f.locks_rows = true;
                    }
                    match node {
                        "RangeVar" => {
                            names.table(inner, written, f);
                            continue;
                        }
                        "FuncCall" => {
                            if let Some(name) = function_name(inner) {
                                let base = name.rsplit('.').next().unwrap_or(&name);
                                if builtin(&name) && STATE_SINKS.contains(&base) {
                                    if let Some(args) = inner.get("args") {
                                        column_refs(args, &mut names.sinks);
                                    }
                                }
                                call(&name, inner, f);
                                f.functions.insert(name);
                            }
                        }
                        "ColumnRef" => {
                            if let Some(parts) = column_parts(inner) {
                                names.columns.push(parts);
                            }
                            continue;
                        }
                        _ => {}
                    }
                    if writes_relation(node) {
                        f.writes = true;
                        if node != top {
                            f.nested_write = true;
                            names.assignments(node, inner);
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
                        let into = k == "into" || k == "into_clause";
                        stack.push((
                            child,
                            node,
                            into || (k == "relation" && writes_relation(node)),
                        ));
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
    // SELECT … INTO creates and fills a table: a write, whatever its kind says.
    if !f.tables_written.is_empty() && f.kind == StatementKind::Select {
        f.writes = true;
    }
    names.resolve(f, output_refs(top, body));
}

/// What a function call means for the facts: built-ins that change state or run SQL text,
/// `set_config`'s setting, and calls of functions that are not built-ins.
fn call(name: &str, call: &Map<String, Value>, f: &mut StatementFacts) {
    if !builtin(name) {
        f.user_functions.insert(name.to_owned());
        return;
    }
    let base = name.rsplit('.').next().unwrap_or(name);
    call_hazards(base, call, f);
    if RUNS_SQL_TEXT.contains(&base) {
        f.unknown_effect = true;
    }
    if CHANGES_STATE.contains(&base) || base.starts_with("binary_upgrade_") {
        f.writes = true;
        f.changes_state = true;
    }
    if base == "set_config" {
        f.value_dependent = true;
        // The setting's name, when it is a constant; otherwise any setting.
        let setting = call
            .get("args")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(string_constant)
            .map(|s| s.to_lowercase())
            .unwrap_or_else(|| "*".into());
        f.setting = Some(match &f.setting {
            Some(prev) if *prev != setting => "*".into(),
            _ => setting,
        });
    }
}

/// Refuses a statement that would put the session in a lexing mode Weir does not analyze in
/// (see [`crate::lexing`]): a SET / SET LOCAL / ALTER ROLE|DATABASE|SYSTEM … SET / a
/// function's SET clause of `standard_conforming_strings`, `backslash_quote` or
/// `client_encoding` to a value outside it, and `set_config` of one of them. (A `set_config`
/// whose name is not a constant is left to the session: it waits for the server's
/// ParameterStatus before forwarding more text.) `RESET`, `DEFAULT` and `FROM CURRENT` return to values
/// Weir made sure of at startup. `Ok(true)` when the statement names such a setting (its
/// value decided).
fn lexing_mode_kept(stmt: &Value) -> Result<bool, String> {
    let mut named = false;
    let mut stack = vec![stmt];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(obj) => {
                // ALTER ROLE | DATABASE | SYSTEM hold their SET as a typed field, untagged.
                let untagged_set = obj.contains_key("is_local")
                    && obj.contains_key("kind")
                    && obj.contains_key("name");
                let node = if untagged_set {
                    Some(("VariableSetStmt", obj))
                } else {
                    tagged(v)
                };
                match node {
                    Some(("VariableSetStmt", body)) => {
                        let name = body.get("name").and_then(Value::as_str).unwrap_or("");
                        // VariableSetKind, in protobuf numbering: 1 is SET name = value.
                        named |= crate::lexing::is_lexing_setting(name);
                        if body.get("kind").and_then(Value::as_i64) == Some(1) {
                            let args = body.get("args").and_then(Value::as_array);
                            let value = match args.map(Vec::as_slice) {
                                Some([one]) => constant_text(one),
                                _ => None,
                            };
                            crate::lexing::check_setting(name, value.as_deref())?;
                        }
                    }
                    Some(("FuncCall", call)) => {
                        let base = function_name(call);
                        let base = base.as_deref().map(|n| n.rsplit('.').next().unwrap_or(n));
                        if base == Some("set_config") {
                            let args = call.get("args").and_then(Value::as_array);
                            let arg = |i: usize| args.and_then(|a| a.get(i));
                            // A name that is not a constant could be any setting: the
                            // session's barrier and ParameterStatus check guard it
                            // (`setting` is "*").
                            if let Some(name) = arg(0).and_then(string_constant) {
                                named |= crate::lexing::is_lexing_setting(&name);
                                crate::lexing::check_setting(
                                    &name,
                                    arg(1).and_then(constant_text).as_deref(),
                                )?;
                            }
                        }
                    }
                    _ => {}
                }
                stack.extend(obj.values());
            }
            _ => {}
        }
    }
    Ok(named)
}

/// A constant's text as the server would take it for a setting: a string, a number or a
/// boolean (also through a cast).
fn constant_text(v: &Value) -> Option<String> {
    let (kind, body) = tagged(v)?;
    match kind {
        "AConst" => {
            let val = body.get("val")?;
            let (k, c) = tagged(val).or_else(|| {
                let o = val.as_object()?;
                let (k, c) = o.iter().next()?;
                Some((k.as_str(), c.as_object()?))
            })?;
            match k {
                "Sval" => c.get("sval").and_then(Value::as_str).map(str::to_owned),
                "Ival" => Some(
                    c.get("ival")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        .to_string(),
                ),
                "Fval" => c.get("fval").and_then(Value::as_str).map(str::to_owned),
                "Boolval" => Some(
                    c.get("boolval")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string(),
                ),
                _ => None,
            }
        }
        "TypeCast" => constant_text(body.get("arg")?),
        _ => None,
    }
}

/// A string literal's value (`'x'`, also through a cast such as `'x'::text`).
fn string_constant(v: &Value) -> Option<String> {
    let (kind, body) = tagged(v)?;
    match kind {
        "AConst" => body
            .get("val")
            .and_then(|v| v.get("Sval"))
            .and_then(|s| s.get("sval"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        "TypeCast" => string_constant(body.get("arg")?),
        _ => None,
    }
}

fn column_parts(column_ref: &Map<String, Value>) -> Option<Vec<String>> {
    column_ref
        .get("fields")?
        .as_array()?
        .iter()
        .map(|field| match tagged(field)? {
            ("String", s) => s.get("sval").and_then(Value::as_str).map(str::to_owned),
            ("AStar", _) => Some("*".to_owned()),
            _ => None,
        })
        .collect()
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
