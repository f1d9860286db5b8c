//! Statement analysis: SQL text in, facts out.
//!
//! This is the pipeline's *analyze* stage. It runs once per statement text; everything after
//! it (policy, masking, audit, approvals) consumes the [`Analysis`] and never looks at the SQL
//! again. It is a plain library: no sockets, no async runtime, no knowledge of identities.
//!
//! [`Analyzer`] is what the gateway calls for every SQL text: libpg_query's parse tree
//! ([`postgres::analyze_sql`]) behind a statement cache. Anything that cannot be analyzed is an
//! error, and the caller denies it.

use std::collections::BTreeSet;
use std::sync::Arc;

pub mod approval;
pub mod lexing;
pub mod mysql;
pub mod postgres;
mod scope;
mod shape;
pub mod undo;

pub use scope::{PathChange, Resolution, Scope, Touched};

/// What a statement does, as far as policy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// Not classified (an engine without an analyzer). Denied by the default policy.
    Unclassified,
    /// A statement type the analyzer does not know. Denied.
    Unknown,
    /// An empty query string (PostgreSQL answers EmptyQueryResponse).
    Empty,
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// CREATE / ALTER / COMMENT …, CREATE TABLE AS, SELECT INTO.
    Ddl,
    Drop,
    Truncate,
    /// GRANT, REVOKE, roles, default privileges, REASSIGN OWNED.
    Privilege,
    Copy,
    Transaction,
    Set,
    Show,
    Explain,
    Prepare,
    Execute,
    Deallocate,
    Cursor,
    Notify,
    /// DO: an anonymous code block whose effect cannot be known.
    Do,
    /// CALL: a procedure whose effect cannot be known.
    Call,
    Lock,
    Maintenance,
    Discard,
    /// LOAD: loads a shared library into the server.
    Load,
    AlterSystem,
}

impl StatementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Unclassified => "unclassified",
            StatementKind::Unknown => "unknown",
            StatementKind::Empty => "empty",
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::Ddl => "ddl",
            StatementKind::Drop => "drop",
            StatementKind::Truncate => "truncate",
            StatementKind::Privilege => "privilege",
            StatementKind::Copy => "copy",
            StatementKind::Transaction => "transaction",
            StatementKind::Set => "set",
            StatementKind::Show => "show",
            StatementKind::Explain => "explain",
            StatementKind::Prepare => "prepare",
            StatementKind::Execute => "execute",
            StatementKind::Deallocate => "deallocate",
            StatementKind::Cursor => "cursor",
            StatementKind::Notify => "notify",
            StatementKind::Do => "do",
            StatementKind::Call => "call",
            StatementKind::Lock => "lock",
            StatementKind::Maintenance => "maintenance",
            StatementKind::Discard => "discard",
            StatementKind::Load => "load",
            StatementKind::AlterSystem => "alter_system",
        }
    }
}

/// Where COPY reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEndpoint {
    /// STDIN / STDOUT: the client's side of the connection.
    Client,
    /// A file on the database server.
    ServerFile(String),
    /// A program run on the database server.
    Program(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFacts {
    /// COPY … FROM (loads into a table) rather than TO.
    pub from: bool,
    pub endpoint: CopyEndpoint,
    /// How the data is written, for whoever reads it (masking COPY … TO STDOUT).
    pub format: CopyFormat,
    /// `COPY table (a, b)`: the columns, in order; `None` for every column of the table,
    /// or for `COPY (query)` (whose columns are the statement's `outputs`).
    pub columns: Option<Vec<String>>,
    /// `COPY (query) TO`.
    pub query: bool,
}

/// COPY's data format and its options as written (PostgreSQL's defaults when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub kind: CopyKind,
    pub delimiter: Option<String>,
    pub quote: Option<String>,
    pub escape: Option<String>,
    pub null: Option<String>,
    pub header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Text,
    Csv,
    Binary,
}

/// A column a statement names: in its select list, WHERE, joins, SET or INSERT column list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Column {
    /// The table it belongs to, when the statement says which (through a qualifier, an alias
    /// or by having only one table); as written, until a [`Scope`] qualifies it.
    pub table: Option<String>,
    /// The column's name; `*` for a star.
    pub name: String,
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.table {
            Some(t) => write!(f, "{t}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where a value a write copies lands in the written table (`Flow::sink`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sink {
    /// A column named by the statement (INSERT's column list, UPDATE's SET, CREATE TABLE
    /// AS's column names or a select-list alias).
    Column(String),
    /// The n-th column (from 0) of the table in column order: INSERT without a column list,
    /// or a column of the table a CREATE TABLE AS / SELECT INTO makes, named by the server.
    Position(usize),
    /// The source's columns in order, into these columns (empty: the table's columns in
    /// order): a select list that is one `*`, whose `Flow::from` is that star.
    Spread(Vec<String>),
    /// Some column of the table; which one the text does not tell (a set operation, a `*`
    /// among other entries).
    Every,
}

/// A value that a write copies into a table (`StatementFacts::flows`), and the columns it
/// derives from: INSERT … SELECT / VALUES, UPDATE … SET, MERGE, INSERT … ON CONFLICT DO
/// UPDATE, CREATE TABLE AS, SELECT INTO, also nested in a CTE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The written table, as written until a [`Scope`] qualifies it; `pg_temp.name` for a
    /// temporary table.
    pub table: String,
    /// The statement creates the table (CREATE TABLE AS, SELECT INTO).
    pub creates: bool,
    pub temporary: bool,
    pub sink: Sink,
    /// The columns whose values can reach the written value (attributed as in `columns`;
    /// `*` for a star), not those only counted or tested for NULL. Never empty.
    pub from: Vec<Column>,
}

/// Facts about one statement of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    pub kind: StatementKind,
    /// The parser's node name (`SelectStmt`, …), for audit and diagnostics.
    pub node: String,
    /// Tables read, as written in the statement (`schema.table` when qualified).
    pub tables_read: BTreeSet<String>,
    /// Tables written, created, altered or dropped.
    pub tables_written: BTreeSet<String>,
    /// Columns named anywhere in the statement.
    pub columns: BTreeSet<Column>,
    /// For a plain SELECT: per result column, in order, the columns its expression reads
    /// (attributed as in `columns`). `None` when the result's columns cannot be told from the
    /// text alone: a set operation (UNION, …), a `*` in the select list, not a SELECT. The
    /// masking stage uses it for result columns that are not plain table columns.
    pub outputs: Option<Vec<Vec<Column>>>,
    /// Per result column (when `outputs` is known), the columns its expression reads only
    /// through something whose result carries none of their values: `count(x)`,
    /// `count(DISTINCT x)`, `x IS [NOT] NULL`, `EXISTS (…)`. Not in `outputs`, so a count of
    /// a sensitive column comes back exact; the masking stage still treats them as read when
    /// the result column is text (a function shadowing `count` could return the value).
    pub outputs_counted: Option<Vec<Vec<Column>>>,
    /// Functions called anywhere in the statement, lower-cased, qualified as written.
    pub functions: BTreeSet<String>,
    /// The subset of `functions` that are not PostgreSQL built-ins (user-defined or from an
    /// extension): what they do cannot be seen from the statement.
    pub user_functions: BTreeSet<String>,
    /// UPDATE / DELETE / MERGE: a WHERE clause is present…
    pub has_where: bool,
    /// …and restricts rows (not `true`, `1 = 1`, `id = id`, …).
    pub where_effective: bool,
    pub has_limit: bool,
    /// The statement (or any statement nested in it) changes data, or calls a built-in that
    /// changes server state (`nextval`, `pg_terminate_backend`, `set_config`, …).
    pub writes: bool,
    /// A data-modifying statement is nested inside (e.g. in a CTE).
    pub nested_write: bool,
    /// An UPDATE or DELETE (top-level or nested) or MERGE whose rows are not restricted.
    pub unrestricted_write: bool,
    /// A nested statement type the analyzer does not know.
    pub unknown_nested: bool,
    /// What it does cannot be known from the text: DO, CALL, EXECUTE of a statement the
    /// session did not prepare in SQL, built-ins that run SQL given as a string
    /// (`query_to_xml`, …). Calls of non-built-in functions are in `user_functions`.
    pub unknown_effect: bool,
    /// Runs as EXPLAIN ANALYZE (the statement executes).
    pub explain_analyze: bool,
    pub copy: Option<CopyFacts>,
    /// SET / RESET / `set_config(…)`: the setting's name; `*` for RESET ALL and for a
    /// `set_config` whose name is not a constant.
    pub setting: Option<String>,
    pub transaction: Option<&'static str>,
    /// DO / CREATE FUNCTION: the language, and whether it is untrusted.
    pub language: Option<String>,
    pub untrusted_language: bool,
    /// PREPARE / DECLARE / EXECUTE / DEALLOCATE: the statement or cursor name (none for
    /// DEALLOCATE ALL); DISCARD: what it discards (`all`, `plans`, `sequences`, `temp`).
    pub name: Option<String>,
    /// PREPARE / DECLARE: the statement they hold.
    pub inner: Option<Box<StatementFacts>>,
    /// UPDATE / DELETE on one table, with no FROM / USING and no nested write: the columns of
    /// that table its WHERE compares for equality with a constant or parameter, in a chain of
    /// ANDs. With a unique key among them the statement changes at most one row.
    pub key_equalities: BTreeSet<String>,
    /// Columns whose values a built-in keeps in session or server state, where a later
    /// statement, another session or another identity reads them back unmasked:
    /// `set_config`'s, `pg_notify`'s, `setval`'s and advisory-lock functions' arguments
    /// (attributed as in `columns`).
    pub state_sinks: BTreeSet<Column>,
    /// Values the statement writes into tables that derive from columns it reads (lineage of
    /// writes): where a sensitive value is copied, the written column becomes sensitive.
    pub flows: Vec<Flow>,
    /// Operational hazards: what can cause an outage without touching data (see
    /// [`postgres::HAZARDS`]): `exclusive_lock`, `rewrite`, `kills_sessions`,
    /// `server_control`, `two_phase`, `sequence_reset`, `large_objects`.
    pub hazards: BTreeSet<&'static str>,
    /// Some fact depends on the value of a constant or parameter (`set_config`'s setting),
    /// so texts that differ only in constants must not share these facts.
    pub value_dependent: bool,
    /// Calls a built-in that changes server state outside the transaction's data
    /// (`nextval`, `pg_terminate_backend`, large objects, …): an effect that may outlive a
    /// rollback, so the write-ahead stage forwards it only once its event is durable.
    pub changes_state: bool,
    /// A locking clause (`FOR UPDATE`, `FOR SHARE`, …) anywhere in it.
    pub locks_rows: bool,
}

impl StatementFacts {
    pub fn new(kind: StatementKind) -> StatementFacts {
        StatementFacts {
            kind,
            node: String::new(),
            tables_read: BTreeSet::new(),
            tables_written: BTreeSet::new(),
            columns: BTreeSet::new(),
            outputs: None,
            outputs_counted: None,
            functions: BTreeSet::new(),
            user_functions: BTreeSet::new(),
            has_where: false,
            where_effective: false,
            has_limit: false,
            writes: false,
            nested_write: false,
            unrestricted_write: false,
            unknown_nested: false,
            unknown_effect: false,
            explain_analyze: false,
            copy: None,
            setting: None,
            transaction: None,
            language: None,
            untrusted_language: false,
            name: None,
            inner: None,
            key_equalities: BTreeSet::new(),
            state_sinks: BTreeSet::new(),
            flows: Vec::new(),
            hazards: BTreeSet::new(),
            value_dependent: false,
            changes_state: false,
            locks_rows: false,
        }
    }
}

/// The analysis of one SQL text: a Query message's string or a Parse message's statement.
/// Shared (`Arc`) because a prepared statement's analysis is reused at every Execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The text as the client sent it. Later stages use it for the audit record only.
    pub sql: Arc<str>,
    /// The text with its constants replaced by `$n` (libpg_query's normalization): what the
    /// audit trail records, so it does not become a second copy of the data.
    pub normalized: Arc<str>,
    /// libpg_query's fingerprint: equal for statements that differ only in constants.
    pub fingerprint: u64,
    /// Shared with the statement cache: texts that differ only in constants share facts.
    pub statements: Arc<[StatementFacts]>,
}

impl Analysis {
    /// The same text with other facts (as resolved in a session's scope).
    pub fn with_statements(&self, statements: Arc<[StatementFacts]>) -> Analysis {
        Analysis {
            sql: Arc::clone(&self.sql),
            normalized: Arc::clone(&self.normalized),
            fingerprint: self.fingerprint,
            statements,
        }
    }

    /// An analysis Weir makes up for something that is not SQL text (a portal name, a
    /// refused text): recorded as given, no fingerprint.
    pub fn synthetic(text: &str, statements: Vec<StatementFacts>) -> Analysis {
        let sql: Arc<str> = Arc::from(text);
        Analysis {
            normalized: Arc::clone(&sql),
            sql,
            fingerprint: 0,
            statements: statements.into(),
        }
    }
}

/// A text that could not be analyzed, fit for the audit trail: its constants stripped by the
/// cache's scanner when it can, else only its length (a refused text may still hold data).
pub fn redacted(text: &str) -> String {
    shape::fast_key(text).unwrap_or_else(|| format!("-- unanalyzable text, {} bytes", text.len()))
}

/// Entries kept per cache map; when full it starts over (no bookkeeping on the hot path).
const CACHE_CAPACITY: usize = 10_000;
/// Longer texts are analyzed every time rather than kept.
const MAX_CACHED_TEXT: usize = 16 * 1024;

/// What the cache keeps per shape: everything about a text that does not depend on its
/// constants.
#[derive(Debug)]
struct Shape {
    normalized: Arc<str>,
    fingerprint: u64,
    statements: Arc<[StatementFacts]>,
}

type FactsMap = std::collections::HashMap<Box<str>, Arc<Shape>>;
type MysqlMap = std::collections::HashMap<(mysql::Mode, Box<[u8]>), Arc<Analysis>>;

/// The PostgreSQL analyzer with its statement cache, shared by every session.
///
/// Lookup order: the exact text (texts without constants, such as extended-protocol Parse
/// strings with `$n`), then the text normalized by libpg_query (constants → `$n`, 2 µs), then
/// a full analysis (18 µs for a simple statement). A normalized entry is only stored after
/// checking that the real text and its normalized form analyze to the same facts.
///
/// MySQL texts are cached by their exact text and the session mode they were read in
/// ([`Analyzer::analyze_mysql`]).
#[derive(Default)]
pub struct Analyzer {
    /// Lookups answered from a cache, and texts analyzed (for the gateway's metrics).
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    mysql: std::sync::Mutex<MysqlMap>,
    exact: std::sync::Mutex<FactsMap>,
    normalized: std::sync::Mutex<FactsMap>,
    /// By [`shape::fast_key`]; an entry is only added by a text whose fast key equals its
    /// libpg_query normalization, so the fast scanner is trusted for shapes it got right.
    shaped: std::sync::Mutex<FactsMap>,
}

fn get(map: &std::sync::Mutex<FactsMap>, key: &str) -> Option<Arc<Shape>> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned()
}

fn put(map: &std::sync::Mutex<FactsMap>, key: &str, shape: &Arc<Shape>) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= CACHE_CAPACITY {
        m.clear();
    }
    m.insert(key.into(), Arc::clone(shape));
}

impl Analyzer {
    pub fn new() -> Analyzer {
        Analyzer::default()
    }

    /// How many analyses came from a cache, and how many were made, so far.
    pub fn cache_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    fn counted<T>(&self, hit: bool, value: T) -> T {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        value
    }

    /// Analyzes one MySQL text (a COM_QUERY, a prepared statement) as read in `mode`. The
    /// analysis depends on nothing else, so a text seen before in the same mode is a lookup.
    /// Errors are not kept (they are analyzed again, and refused again).
    pub fn analyze_mysql(
        &self,
        sql: &[u8],
        mode: &mysql::Mode,
    ) -> Result<Arc<Analysis>, AnalyzeError> {
        if sql.len() > MAX_CACHED_TEXT {
            return self.counted(false, mysql::analyze(sql, mode));
        }
        let key = (mode.clone(), Box::<[u8]>::from(sql));
        if let Some(hit) = self
            .mysql
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return self.counted(true, Ok(Arc::clone(hit)));
        }
        let analysis = self.counted(false, mysql::analyze(sql, mode))?;
        let mut m = self.mysql.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHE_CAPACITY {
            m.clear();
        }
        m.insert(key, Arc::clone(&analysis));
        Ok(analysis)
    }

    /// Analyzes one SQL text from the wire. An error means the text must not run.
    pub fn analyze(&self, sql: &[u8]) -> Result<Arc<Analysis>, AnalyzeError> {
        let text = std::str::from_utf8(sql).map_err(|_| AnalyzeError::NotUtf8)?;
        // The server reads a statement as a C string; libpg_query refuses a NUL too. Refused
        // here, before any cache lookup, so a NUL inside a literal (which the cache keys
        // strip) cannot borrow a look-alike's facts. (Found by the `analyze` fuzz target.)
        if text.contains('\0') {
            return Err(AnalyzeError::Parse(
                "statement text contains a NUL byte".into(),
            ));
        }
        let done = |shape: &Shape| {
            Ok(Arc::new(Analysis {
                sql: Arc::from(text),
                normalized: Arc::clone(&shape.normalized),
                fingerprint: shape.fingerprint,
                statements: Arc::clone(&shape.statements),
            }))
        };
        if let Some(shape) = get(&self.exact, text) {
            return self.counted(true, done(&shape));
        }
        let fast = shape::fast_key(text);
        if let Some(shape) = fast.as_deref().and_then(|k| get(&self.shaped, k)) {
            return self.counted(true, done(&shape));
        }
        let normalized = pg_query::normalize(text).ok();
        if let Some(n) = normalized.as_deref().filter(|n| *n != text) {
            if let Some(shape) = get(&self.normalized, n) {
                return self.counted(true, done(&shape));
            }
        }
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let facts: Arc<[StatementFacts]> = postgres::analyze_sql(text)?.into();
        let value_dependent = facts
            .iter()
            .any(|f| f.value_dependent || f.inner.as_ref().is_some_and(|i| i.value_dependent));
        let shape = Arc::new(Shape {
            // Without a normalized form (libpg_query refused to normalize what it parsed),
            // the text stands for itself; the audit then records it as sent.
            normalized: Arc::from(normalized.as_deref().unwrap_or(text)),
            fingerprint: pg_query::fingerprint(text, 0, 0)
                .map(|f| f.value)
                .unwrap_or(0),
            statements: facts,
        });
        if text.len() <= MAX_CACHED_TEXT {
            match normalized.as_deref() {
                // Only this very text may use facts that depend on its constants.
                _ if value_dependent => put(&self.exact, text, &shape),
                Some(n) if n == text => put(&self.exact, text, &shape),
                Some(n)
                    if postgres::analyze_sql(n)
                        .is_ok_and(|nf| nf.as_slice() == &shape.statements[..]) =>
                {
                    put(&self.normalized, n, &shape);
                    if fast.as_deref() == Some(n) {
                        put(&self.shaped, n, &shape);
                    }
                }
                _ => {}
            }
        }
        done(&shape)
    }
}

/// Why a text could not be analyzed. The caller must not forward it (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("statement text is not valid UTF-8")]
    NotUtf8,
    #[error("statement does not parse: {0}")]
    Parse(String),
    #[error("analyzer failure: {0}")]
    Internal(String),
    /// The statement would put the session in a lexing mode Weir does not analyze in
    /// (`lexing::RULE`).
    #[error("{0}")]
    LexingMode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_fails_closed() {
        assert_eq!(
            Analyzer::new().analyze(b"select '\xff'"),
            Err(AnalyzeError::NotUtf8)
        );
    }

    #[test]
    fn a_nul_byte_fails_closed_even_after_a_look_alike_was_cached() {
        let a = Analyzer::new();
        assert!(a.analyze(b"SELECT f('select 1')").is_ok());
        assert!(matches!(
            a.analyze(b"SELECT f('select 1\x03\0')"),
            Err(AnalyzeError::Parse(_))
        ));
    }

    #[test]
    fn empty_text_is_empty() {
        assert_eq!(
            Analyzer::new().analyze(b"  ").unwrap().statements[0].kind,
            StatementKind::Empty
        );
    }
}
