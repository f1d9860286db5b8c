//! MySQL / MariaDB statement analysis: sqlparser's MySQL dialect in, the same
//! [`StatementFacts`] as PostgreSQL's out, so the same policy applies unchanged.
//!
//! sqlparser is not the server's own grammar, so the first job here is to refuse what the two
//! could read differently ([`lexing_refusal`]): executable comments (`/*! … */`, `/*M! … */`:
//! the server runs their content only from a version on, sqlparser always), `||` (OR to the
//! server unless `PIPES_AS_CONCAT`, concatenation to sqlparser), double quotes under
//! `ANSI_QUOTES`, backslashes under `NO_BACKSLASH_ESCAPES`, and character sets whose
//! multibyte characters can hold a backslash or a quote byte. What does not parse is an
//! error (the caller denies it); a statement kind not mapped here is `Unknown` (denied).
//! Checked against sqlparser: `--x` is `- -x` as in MySQL (a comment needs a space after
//! `--`), `#` comments end at the line's end, `/* … */` does not nest (as in MySQL).
//!
//! Table names are qualified with the session's database (`shop.customers`), the way tags
//! name them; a name qualified with another database stays as written, so the adapter can
//! deny it ([`foreign_name`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use sqlparser::ast::{
    self, visit_expressions_mut, AssignmentTarget, Expr, FromTable, FunctionArguments, ObjectName,
    ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor, TableObject, Value, Visit,
    Visitor,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use crate::{Analysis, AnalyzeError, Column, CopyEndpoint, CopyFacts, CopyFormat, CopyKind};
use crate::{Flow, Sink, StatementFacts, StatementKind};

mod flows;
mod lexing;

use flows::flows;
pub use lexing::unsafe_charset;
use lexing::{changes_lexing, lexing_refusal, safe_charset, token_refusal};

/// The rule a MySQL statement naming another database is denied by.
pub const OTHER_DATABASE: &str = "weir.other-database";

/// How deep sqlparser may recurse (nested expressions and subqueries).
const RECURSION_LIMIT: usize = 64;

/// How the session reads text, as the proxy tracks it from the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mode {
    /// The target's database: unqualified table names are qualified with it.
    pub database: String,
    pub ansi_quotes: bool,
    pub no_backslash_escapes: bool,
    pub pipes_as_concat: bool,
}

impl Mode {
    pub fn new(database: &str) -> Mode {
        Mode {
            database: database.to_owned(),
            ansi_quotes: false,
            no_backslash_escapes: false,
            pipes_as_concat: false,
        }
    }

    /// The mode an `@@sql_mode` value describes (`ANSI` implies `ANSI_QUOTES` and
    /// `PIPES_AS_CONCAT`).
    pub fn with_sql_mode(mut self, sql_mode: &str) -> Mode {
        for m in sql_mode.split(',').map(|m| m.trim().to_ascii_uppercase()) {
            match m.as_str() {
                "ANSI_QUOTES" => self.ansi_quotes = true,
                "NO_BACKSLASH_ESCAPES" => self.no_backslash_escapes = true,
                "PIPES_AS_CONCAT" => self.pipes_as_concat = true,
                "ANSI" | "DB2" | "MAXDB" | "MSSQL" | "ORACLE" | "POSTGRESQL" => {
                    self.ansi_quotes = true;
                    self.pipes_as_concat = true;
                }
                _ => {}
            }
        }
        self
    }
}

/// Analyzes one COM_QUERY text (possibly several statements) or one prepared-statement text.
pub fn analyze(sql: &[u8], mode: &Mode) -> Result<Arc<Analysis>, AnalyzeError> {
    let text = std::str::from_utf8(sql).map_err(|_| AnalyzeError::NotUtf8)?;
    let (facts, normalized) = analyze_inner(text, mode)?;
    let fingerprint = fnv1a(normalized.as_bytes());
    Ok(Arc::new(Analysis {
        sql: Arc::from(text),
        normalized: Arc::from(normalized.as_str()),
        fingerprint,
        statements: facts.into(),
    }))
}

/// The facts only.
pub fn analyze_sql(sql: &str, mode: &Mode) -> Result<Vec<StatementFacts>, AnalyzeError> {
    analyze_inner(sql, mode).map(|(f, _)| f)
}

fn analyze_inner(text: &str, mode: &Mode) -> Result<(Vec<StatementFacts>, String), AnalyzeError> {
    if text.contains('\0') {
        return Err(AnalyzeError::Parse(
            "statement text contains a NUL byte".into(),
        ));
    }
    if let Some(why) = lexing_refusal(text, mode) {
        return Err(AnalyzeError::LexingMode(why));
    }
    if text.trim().is_empty() {
        return Ok((
            vec![StatementFacts::new(StatementKind::Empty)],
            String::new(),
        ));
    }
    token_refusal(text)?;
    let parsed = std::panic::catch_unwind(|| parse_statements(text))
        .map_err(|_| AnalyzeError::Internal("the MySQL parser failed".into()))?;
    let mut statements = parsed.map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    // A statement that changes how text is read (sql_mode, the character set) must be the
    // last of its text: the server reads what follows it in the new mode, Weir in the old.
    if let Some((_, before_last)) = statements.split_last() {
        if before_last.iter().any(changes_lexing) {
            return Err(AnalyzeError::LexingMode("weir: a statement that changes sql_mode or the character set must be sent alone (or last): the server reads the statements after it in the new mode".into()));
        }
    }
    if statements.is_empty() {
        return Ok((
            vec![StatementFacts::new(StatementKind::Empty)],
            String::new(),
        ));
    }
    let facts = statements
        .iter()
        .map(|s| statement_facts(s, mode))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((facts, normalize(&mut statements, text)))
}

/// Statements one by one, each followed by `;` or the end of the text: sqlparser's own
/// loop stops at an `END` keyword and drops what follows, which the server would run.
fn parse_statements(text: &str) -> Result<Vec<Statement>, sqlparser::parser::ParserError> {
    use sqlparser::tokenizer::Token;
    let mut p = Parser::new(&MySqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(text)?;
    let mut out = Vec::new();
    loop {
        while p.consume_token(&Token::SemiColon) {}
        if p.peek_token().token == Token::EOF {
            return Ok(out);
        }
        out.push(p.parse_statement()?);
        let next = p.next_token();
        match next.token {
            Token::SemiColon => {}
            Token::EOF => return Ok(out),
            other => {
                return Err(sqlparser::parser::ParserError::ParserError(format!(
                    "expected the end of the statement, found {other}"
                )))
            }
        }
    }
}

/// The text with every constant replaced by `?`: what the audit trail records. Constants
/// that are not expressions (a SHOW … LIKE pattern, a KILL id) would survive printing, so
/// a printed text that still holds any literal is replaced by the generic redaction.
fn normalize(statements: &mut Vec<Statement>, original: &str) -> String {
    let _ = visit_expressions_mut(statements, |e| {
        if let Expr::Value(v) = e {
            v.value = Value::Placeholder("?".into());
        }
        ControlFlow::<()>::Continue(())
    });
    let printed = statements
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let tokens = sqlparser::tokenizer::Tokenizer::new(&MySqlDialect {}, &printed).tokenize();
    let clean = tokens.is_ok_and(|t| {
        !t.iter().any(|t| {
            use sqlparser::tokenizer::Token as T;
            matches!(
                t,
                T::Number(..)
                    | T::SingleQuotedString(_)
                    | T::DoubleQuotedString(_)
                    | T::NationalStringLiteral(_)
                    | T::HexStringLiteral(_)
                    | T::SingleQuotedByteStringLiteral(_)
                    | T::DoubleQuotedByteStringLiteral(_)
                    | T::EscapedStringLiteral(_)
            )
        })
    });
    if clean && !printed.contains("/*") && !printed.contains('#') {
        printed
    } else {
        // MySQL's backslash escapes are not what the generic redaction reads: only the
        // text's size is kept.
        format!(
            "-- a MySQL text of {} bytes (not normalizable)",
            original.len()
        )
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, c| {
        (h ^ u64::from(*c)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// MariaDB's and MySQL's built-in functions (`information_schema.SQL_FUNCTIONS` of MariaDB
/// 10.11, plus the keyword-named ones it does not list and MySQL 8's own).
fn builtins() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        include_str!("mysql_functions.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Built-ins that change server state outside the transaction's data.
const STATE_CHANGING: &[&str] = &[
    "get_lock",
    "release_lock",
    "release_all_locks",
    "nextval",
    "setval",
    "lastval",
    "master_pos_wait",
    "source_pos_wait",
    "master_gtid_wait",
];

/// Built-ins whose arguments end up in session or server state another statement or
/// session reads back.
const STATE_SINKS: &[&str] = &["get_lock", "setval"];

/// Built-ins that read files on the database server.
const SERVER_FILES: &[&str] = &["load_file"];

fn name_of(n: &ObjectName) -> String {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// What one statement names, gathered by a visitor over its whole tree, so no table or
/// function can hide in a node a hand-written walk forgot.
#[derive(Default)]
struct Gathered {
    relations: Vec<String>,
    /// (alias or name as written, relation as written).
    factors: Vec<(String, String)>,
    functions: BTreeSet<String>,
    ctes: HashSet<String>,
    locks: bool,
    into_vars: bool,
    /// Values assigned to user variables inside expressions (`@v := expr`).
    assigned: Vec<Expr>,
    /// Some select list has a `*` or `t.*`.
    wildcard: bool,
}

impl Visitor for Gathered {
    type Break = ();

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        self.relations.push(name_of(r));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, alias, .. } = t {
            let n = name_of(name);
            let a = alias
                .as_ref()
                .map(|a| a.name.value.clone())
                .unwrap_or_else(|| n.rsplit('.').next().unwrap_or(&n).to_owned());
            self.factors.push((a, n));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for c in &with.cte_tables {
                self.ctes.insert(c.alias.name.value.clone());
            }
        }
        if !q.locks.is_empty() {
            self.locks = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &ast::Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.into_vars = true;
        }
        if s.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        }) {
            self.wildcard = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::BinaryOp {
            op: ast::BinaryOperator::Assignment,
            right,
            ..
        } = e
        {
            self.assigned.push(right.as_ref().clone());
        }
        if let Expr::Function(f) = e {
            let quoted = f
                .name
                .0
                .iter()
                .any(|p| matches!(p, ObjectNamePart::Identifier(i) if i.quote_style.is_some()));
            let name = name_of(&f.name).to_lowercase();
            // A name in backticks is never the built-in to the server.
            self.functions
                .insert(if quoted { format!("`{name}`") } else { name });
        }
        ControlFlow::Continue(())
    }
}

fn gather<V: Visit>(v: &V) -> Gathered {
    let mut g = Gathered::default();
    let _ = v.visit(&mut g);
    g
}

/// Resolves names within one statement: aliases and table names to qualified tables.
struct Names<'a> {
    db: &'a str,
    aliases: HashMap<String, Option<String>>,
    /// The statement's tables (qualified), CTE names left out.
    tables: BTreeSet<String>,
    ctes: &'a HashSet<String>,
}

impl<'a> Names<'a> {
    fn new(g: &'a Gathered, db: &'a str) -> Names<'a> {
        let mut n = Names {
            db,
            aliases: HashMap::new(),
            tables: BTreeSet::new(),
            ctes: &g.ctes,
        };
        for r in &g.relations {
            if let Some(q) = n.qualify(r) {
                n.tables.insert(q);
            }
        }
        for (alias, rel) in &g.factors {
            let q = n.qualify(rel);
            // An alias used for two different tables is ambiguous: attributed to none.
            let entry = n.aliases.entry(alias.clone()).or_insert_with(|| q.clone());
            if *entry != q {
                *entry = None;
            }
        }
        n
    }

    /// `t` → `db.t`; `other.t` as written. A CTE's name is kept as a table too: CTE names
    /// are scoped per query, and one may shadow a real table it also reads, so treating
    /// every such name as a possible table errs on the side of what it could read.
    fn qualify(&self, name: &str) -> Option<String> {
        let _ = self.ctes;
        Some(if name.contains('.') {
            name.to_owned()
        } else {
            format!("{}.{name}", self.db)
        })
    }

    fn column(&self, qualifier: &[String], name: &str) -> Column {
        let table = match qualifier {
            [] => {
                if self.tables.len() == 1 {
                    self.tables.iter().next().cloned()
                } else {
                    None
                }
            }
            [t] => self
                .aliases
                .get(t)
                .cloned()
                .unwrap_or_else(|| self.qualify(t)),
            [db, t] => Some(format!("{db}.{t}")),
            more => Some(more.join(".")),
        };
        Column {
            table,
            name: name.to_owned(),
        }
    }
}

fn is_count(f: &ast::Function) -> bool {
    name_of(&f.name).eq_ignore_ascii_case("count")
}

/// The columns an expression (or any visitable part) reads, attributed through `names`:
/// those read for their value, and those read only through `count(…)`, `IS [NOT] NULL`
/// or `EXISTS`.
fn columns_of<V: Visit>(v: &V, names: &Names<'_>) -> (Vec<Column>, Vec<Column>) {
    struct Counted {
        depth: usize,
        inside: Vec<(Vec<String>, String)>,
        outside: Vec<(Vec<String>, String)>,
    }
    fn counts(e: &Expr) -> bool {
        match e {
            Expr::Function(f) => is_count(f),
            Expr::IsNull(_) | Expr::IsNotNull(_) | Expr::Exists { .. } => true,
            _ => false,
        }
    }
    impl Visitor for Counted {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let bucket = if self.depth > 0 {
                &mut self.inside
            } else {
                &mut self.outside
            };
            match e {
                Expr::Identifier(i) if !i.value.starts_with('@') => {
                    bucket.push((Vec::new(), i.value.clone()))
                }
                Expr::CompoundIdentifier(parts) => {
                    let mut names: Vec<String> = parts.iter().map(|p| p.value.clone()).collect();
                    if let Some(last) = names.pop() {
                        bucket.push((names, last));
                    }
                }
                _ => {}
            }
            if counts(e) {
                self.depth += 1;
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if counts(e) {
                self.depth = self.depth.saturating_sub(1);
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Counted {
        depth: 0,
        inside: Vec::new(),
        outside: Vec::new(),
    };
    let _ = v.visit(&mut c);
    let resolve = |v: Vec<(Vec<String>, String)>| -> Vec<Column> {
        let mut out: Vec<Column> = v.iter().map(|(q, n)| names.column(q, n)).collect();
        out.sort();
        out.dedup();
        out
    };
    (resolve(c.outside), resolve(c.inside))
}

/// Whether a WHERE restricts rows: not `1`, `TRUE`, `1 = 1`, `x = x`, nor an OR with such
/// a branch, nor anything that names no column (`WHERE ?`, whose parameter may be 1, or
/// `WHERE EXISTS (SELECT 1)`), as the PostgreSQL analyzer reads a WHERE.
fn restricts(e: &Expr) -> bool {
    mentions_column(e) && restricts_rows(e)
}

fn mentions_column(e: &Expr) -> bool {
    sqlparser::ast::visit_expressions(e, |x| {
        if matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

fn restricts_rows(e: &Expr) -> bool {
    let truthy = |s: &str| s.trim().parse::<f64>().is_ok_and(|x| x != 0.0);
    match e {
        Expr::Nested(inner) => restricts(inner),
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => !b,
            Value::Number(n, _) => !truthy(n),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => !truthy(s),
            _ => true,
        },
        Expr::BinaryOp { left, op, right } => match op {
            ast::BinaryOperator::Or | ast::BinaryOperator::Xor => {
                restricts(left) && restricts(right)
            }
            ast::BinaryOperator::And => restricts(left) || restricts(right),
            ast::BinaryOperator::Eq
            | ast::BinaryOperator::GtEq
            | ast::BinaryOperator::LtEq
            | ast::BinaryOperator::Spaceship => {
                left != right && !(constant(left) && constant(right))
            }
            _ => !(constant(left) && constant(right)),
        },
        Expr::IsTrue(inner) => restricts(inner),
        Expr::IsNotNull(inner) => !constant(inner),
        _ => true,
    }
}

fn constant(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => !matches!(v.value, Value::Placeholder(_)),
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => constant(inner),
        Expr::BinaryOp { left, right, .. } => constant(left) && constant(right),
        _ => false,
    }
}

/// Columns compared for equality with a constant or `?` in a chain of ANDs.
fn key_equalities(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::Nested(inner) => key_equalities(inner, out),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            key_equalities(left, out);
            key_equalities(right, out);
        }
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } => {
            let col = |x: &Expr| match x {
                Expr::Identifier(i) => Some(i.value.clone()),
                Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()),
                _ => None,
            };
            let value = |x: &Expr| matches!(x, Expr::Value(_));
            if let (Some(c), true) = (col(left), value(right)) {
                out.insert(c);
            } else if let (true, Some(c)) = (value(left), col(right)) {
                out.insert(c);
            }
        }
        _ => {}
    }
}

fn file_copy(from: bool, what: &str) -> CopyFacts {
    CopyFacts {
        from,
        endpoint: CopyEndpoint::ServerFile(what.to_owned()),
        format: CopyFormat {
            kind: CopyKind::Text,
            delimiter: None,
            quote: None,
            escape: None,
            null: None,
            header: false,
        },
        columns: None,
        query: false,
    }
}

fn name_parts(n: &ObjectName) -> Vec<String> {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// The facts of one parsed statement.
fn statement_facts(s: &Statement, mode: &Mode) -> Result<StatementFacts, AnalyzeError> {
    let g = gather(s);
    let names = Names::new(&g, &mode.database);
    let (mut f, written) = kind_of(s, &names)?;
    f.tables_written = written.iter().filter_map(|t| names.qualify(t)).collect();
    f.tables_read = names
        .tables
        .iter()
        .filter(|t| !f.tables_written.contains(*t))
        .cloned()
        .collect();
    if matches!(
        s,
        Statement::ShowTables { .. } | Statement::ShowViews { .. }
    ) {
        // `SHOW TABLES FROM other`: the name is a database, not a table.
        f.tables_read = g
            .relations
            .iter()
            .map(|r| format!("{}.*", r.split('.').next().unwrap_or(r)))
            .collect();
    }
    let (read, counted) = columns_of(s, &names);
    f.columns = read.iter().chain(&counted).cloned().collect();
    match s {
        Statement::Insert(i) => {
            let table = match &i.table {
                TableObject::TableName(n) => names.qualify(&name_of(n)),
                _ => None,
            };
            for c in &i.columns {
                f.columns.insert(Column {
                    table: table.clone(),
                    name: name_of(c),
                });
            }
        }
        Statement::Update(u) => {
            for a in &u.assignments {
                if let AssignmentTarget::ColumnName(n) = &a.target {
                    let parts = name_parts(n);
                    if let Some((last, q)) = parts.split_last() {
                        f.columns.insert(names.column(q, last));
                    }
                }
            }
        }
        _ => {}
    }
    f.functions = g.functions.clone();
    f.user_functions = g
        .functions
        .iter()
        .filter(|n| !builtins().contains(n.as_str()))
        .cloned()
        .collect();
    if g.functions
        .iter()
        .any(|n| STATE_CHANGING.contains(&n.as_str()))
        || (g.functions.contains("last_insert_id") && has_argument(s, "last_insert_id"))
    {
        f.changes_state = true;
        f.writes = true;
    }
    if g.functions.contains("setval") {
        f.hazards.insert("sequence_reset");
    }
    if let Some(file) = g
        .functions
        .iter()
        .find(|n| SERVER_FILES.contains(&n.as_str()))
    {
        f.copy = Some(file_copy(false, file));
    }
    for name in STATE_SINKS {
        if g.functions.contains(*name) {
            f.state_sinks
                .extend(function_argument_columns(s, name, &names));
        }
    }
    if g.into_vars {
        // SELECT … INTO @var: the selected values stay in the session.
        f.state_sinks.extend(read.iter().cloned());
    }
    for e in &g.assigned {
        // `@v := expr` inside any statement: the value stays in the session too.
        let (value, counted) = columns_of(e, &names);
        f.state_sinks.extend(value.into_iter().chain(counted));
    }
    f.flows = flows(s, &names);
    f.locks_rows = g.locks;
    if let Statement::Query(q) = s {
        f.outputs = outputs(q, &names, false);
        f.outputs_counted = outputs(q, &names, true);
        f.has_limit = q.limit_clause.is_some();
    }
    Ok(f)
}

fn has_argument(s: &Statement, function: &str) -> bool {
    struct Find<'a>(&'a str, bool);
    impl Visitor for Find<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if name_of(&f.name).eq_ignore_ascii_case(self.0) {
                    if let FunctionArguments::List(l) = &f.args {
                        self.1 |= !l.args.is_empty();
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut find = Find(function, false);
    let _ = s.visit(&mut find);
    find.1
}

fn function_argument_columns(s: &Statement, function: &str, names: &Names<'_>) -> Vec<Column> {
    struct Args<'a> {
        function: &'a str,
        found: Vec<ast::Function>,
    }
    impl Visitor for Args<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if name_of(&f.name).eq_ignore_ascii_case(self.function) {
                    self.found.push(f.clone());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut a = Args {
        function,
        found: Vec::new(),
    };
    let _ = s.visit(&mut a);
    a.found
        .iter()
        .flat_map(|f| {
            let (read, counted) = columns_of(&f.args, names);
            read.into_iter().chain(counted)
        })
        .collect()
}

/// Per select-list item of a plain SELECT, the columns it reads for their value (or, with
/// `counted`, only through a count or a NULL test); `None` for a set operation or a
/// wildcard.
fn outputs(q: &ast::Query, names: &Names<'_>, counted: bool) -> Option<Vec<Vec<Column>>> {
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                let (read, only_counted) = columns_of(e, names);
                Some(if counted { only_counted } else { read })
            }
            _ => None,
        })
        .collect()
}

/// The statement's kind and its specific facts, and the tables it writes (as written).
fn kind_of(
    s: &Statement,
    names: &Names<'_>,
) -> Result<(StatementFacts, Vec<String>), AnalyzeError> {
    use StatementKind as K;
    let mut written: Vec<String> = Vec::new();
    let all_relations = || names.tables.iter().cloned().collect::<Vec<_>>();
    let writes = |kind: K| {
        let mut f = StatementFacts::new(kind);
        f.writes = true;
        f
    };
    let mut f = match s {
        Statement::Query(_) => StatementFacts::new(K::Select),
        Statement::Insert(i) => {
            if let TableObject::TableName(n) = &i.table {
                written.push(name_of(n));
            }
            writes(K::Insert)
        }
        Statement::Update(u) => {
            let mut f = writes(K::Update);
            // Every table of a multi-table UPDATE may be assigned into.
            let g = gather(&u.table);
            written.extend(g.factors.iter().map(|(_, rel)| rel.clone()));
            if let Some(w) = &u.selection {
                f.has_where = true;
                f.where_effective = restricts(w);
                if u.from.is_none() && u.table.joins.is_empty() {
                    key_equalities(w, &mut f.key_equalities);
                }
            }
            f.unrestricted_write = !f.where_effective;
            f.has_limit = u.limit.is_some();
            f
        }
        Statement::Delete(d) => {
            let mut f = writes(K::Delete);
            let from = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            if d.tables.is_empty() {
                for t in from {
                    if let TableFactor::Table { name, .. } = &t.relation {
                        written.push(name_of(name));
                    }
                }
            } else {
                // DELETE t1, t2 FROM …: the names may be aliases.
                for t in &d.tables {
                    let n = name_of(t);
                    let real = names
                        .aliases
                        .get(&n)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| n.clone());
                    written.push(real);
                }
            }
            if let Some(w) = &d.selection {
                f.has_where = true;
                f.where_effective = restricts(w);
                if d.tables.is_empty()
                    && d.using.is_none()
                    && from.len() == 1
                    && from.iter().all(|t| t.joins.is_empty())
                {
                    key_equalities(w, &mut f.key_equalities);
                }
            }
            f.unrestricted_write = !f.where_effective;
            f.has_limit = d.limit.is_some();
            f
        }
        Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::AlterSchema(_)
        | Statement::CreateFunction(_)
        | Statement::CreateProcedure { .. }
        | Statement::CreateTrigger(_)
        | Statement::CreateSequence { .. }
        | Statement::Comment { .. } => {
            written = all_relations();
            writes(K::Ddl)
        }
        Statement::AlterTable(_) => {
            written = all_relations();
            let mut f = writes(K::Ddl);
            f.hazards.insert("exclusive_lock");
            f.hazards.insert("rewrite");
            f
        }
        Statement::Drop {
            object_type,
            names: dropped,
            ..
        } => {
            written = all_relations();
            for n in dropped {
                let n = name_of(n);
                if matches!(
                    object_type,
                    ast::ObjectType::Database | ast::ObjectType::Schema
                ) {
                    // A database: named as `db.*`, so another one is seen as foreign.
                    written.push(format!("{n}.*"));
                } else {
                    written.push(n);
                }
            }
            writes(K::Drop)
        }
        Statement::RenameTable(renames) => {
            written = all_relations();
            for r in renames {
                written.push(name_of(&r.old_name));
                written.push(name_of(&r.new_name));
            }
            writes(K::Ddl)
        }
        Statement::DropFunction(_)
        | Statement::DropProcedure { .. }
        | Statement::DropTrigger(_) => {
            written = all_relations();
            writes(K::Drop)
        }
        Statement::Truncate(_) => {
            written = all_relations();
            writes(K::Truncate)
        }
        Statement::Grant(ast::Grant {
            objects: Some(objects),
            ..
        })
        | Statement::Revoke(ast::Revoke {
            objects: Some(objects),
            ..
        }) => {
            // `db.*`, `*.*`, `db.t`: the databases a grant reaches, as `db.*` (`*` for every
            // database, which is never the target's own).
            for word in objects
                .to_string()
                .split(|c: char| c == ',' || c.is_whitespace())
            {
                if let Some((schema, _)) = word.split_once('.') {
                    written.push(format!("{}.*", schema.trim_matches('`')));
                }
            }
            writes(K::Privilege)
        }
        Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::CreateRole(_)
        | Statement::CreateUser(_)
        | Statement::AlterUser(_)
        | Statement::AlterRole { .. } => writes(K::Privilege),
        Statement::StartTransaction { .. } => transaction("begin"),
        Statement::Commit { .. } => transaction("commit"),
        Statement::Rollback { savepoint, .. } => transaction(if savepoint.is_some() {
            "rollback_to"
        } else {
            "rollback"
        }),
        Statement::Savepoint { .. } => transaction("savepoint"),
        Statement::ReleaseSavepoint { .. } => transaction("release"),
        Statement::Set(set) => set_facts(set, names)?,
        Statement::ShowVariable { variable }
            if variable.first().is_some_and(|v| {
                v.value.eq_ignore_ascii_case("warnings") || v.value.eq_ignore_ascii_case("errors")
            }) =>
        {
            // SHOW WARNINGS / SHOW ERRORS: their messages quote values of the statement
            // that raised them, which the result stage withholds as in its errors.
            let mut f = StatementFacts::new(K::Show);
            f.name = Some("warnings".into());
            f
        }
        Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. }
        | Statement::ExplainTable { .. } => StatementFacts::new(K::Show),
        Statement::Explain {
            analyze, statement, ..
        } => {
            if *analyze {
                // EXPLAIN ANALYZE runs the statement: decided as what it runs.
                let (mut inner, w) = kind_of(statement, names)?;
                inner.explain_analyze = true;
                written = w;
                inner
            } else {
                StatementFacts::new(K::Explain)
            }
        }
        Statement::Prepare { name, .. } => {
            let mut f = StatementFacts::new(K::Prepare);
            f.unknown_effect = true;
            f.name = Some(name.value.clone());
            f
        }
        Statement::Execute { .. } => {
            let mut f = StatementFacts::new(K::Execute);
            f.unknown_effect = true;
            f
        }
        Statement::Deallocate { name, .. } => {
            let mut f = StatementFacts::new(K::Deallocate);
            f.name = Some(name.value.clone());
            f
        }
        Statement::Call(_) => {
            let mut f = StatementFacts::new(K::Call);
            f.unknown_effect = true;
            f
        }
        Statement::Use(u) => {
            let mut f = StatementFacts::new(K::Set);
            f.setting = Some("database".into());
            f.value_dependent = true;
            f.name = Some(match u {
                ast::Use::Object(n) | ast::Use::Database(n) | ast::Use::Schema(n) => name_of(n),
                other => other.to_string(),
            });
            f
        }
        Statement::Kill { modifier, id } => {
            let mut f = StatementFacts::new(K::Maintenance);
            f.hazards.insert("kills_sessions");
            f.changes_state = true;
            // What the gateway maps to an upstream connection: `query 5` or `connection 5`.
            let what = match modifier {
                Some(ast::KillType::Query) => "query",
                Some(ast::KillType::Connection) | None => "connection",
                Some(ast::KillType::Mutation) => "mutation",
            };
            f.name = Some(format!("{what} {id}"));
            f
        }
        Statement::Flush { .. } | Statement::Analyze(_) => StatementFacts::new(K::Maintenance),
        Statement::OptimizeTable { .. } => {
            written = all_relations();
            let mut f = StatementFacts::new(K::Maintenance);
            f.hazards.insert("rewrite");
            f
        }
        Statement::LockTables { tables } => {
            let mut f = StatementFacts::new(K::Lock);
            for t in tables {
                if matches!(t.lock_type, ast::LockTableType::Write { .. }) {
                    f.hazards.insert("exclusive_lock");
                }
                written.push(t.table.value.clone());
            }
            f
        }
        Statement::UnlockTables => StatementFacts::new(K::Lock),
        Statement::Install { .. } | Statement::Load { .. } => StatementFacts::new(K::Load),
        Statement::LoadData { table_name, .. } => {
            written.push(name_of(table_name));
            let mut f = writes(K::Copy);
            f.copy = Some(file_copy(true, "load data"));
            f
        }
        _ => StatementFacts::new(K::Unknown),
    };
    f.node = node_name(s).to_owned();
    Ok((f, written))
}

fn transaction(verb: &'static str) -> StatementFacts {
    let mut f = StatementFacts::new(StatementKind::Transaction);
    f.transaction = Some(verb);
    f
}

/// One `SET name = value`: the setting's name (lower case); `GLOBAL` / `PERSIST` settings
/// change the server for everyone (`AlterSystem`); a user variable keeps its value in the
/// session (a state sink); a character set that can hide a quote is refused.
fn set_one(
    scope: Option<&ast::ContextModifier>,
    variable: &ObjectName,
    values: &[Expr],
    names: &Names<'_>,
) -> Result<StatementFacts, AnalyzeError> {
    use StatementKind as K;
    let raw = name_of(variable).to_lowercase();
    let (global, name) = if let Some(rest) = raw.strip_prefix("@@global.") {
        (true, rest.to_owned())
    } else if let Some(rest) = raw
        .strip_prefix("@@session.")
        .or_else(|| raw.strip_prefix("@@local."))
        .or_else(|| raw.strip_prefix("@@"))
    {
        (false, rest.to_owned())
    } else {
        (false, raw.clone())
    };
    let global =
        global || matches!(scope, Some(ast::ContextModifier::Global)) || raw.starts_with("persist");
    let mut f = StatementFacts::new(if global { K::AlterSystem } else { K::Set });
    if matches!(
        name.as_str(),
        "character_set_client"
            | "character_set_connection"
            | "collation_connection"
            | "names"
            | "charset"
    ) {
        let value = values.first().map(|v| match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            Expr::Identifier(i) if !i.value.starts_with('@') => i.value.clone(),
            _ => String::new(),
        });
        match value {
            Some(v) if safe_charset(&v) => {}
            _ => {
                return Err(AnalyzeError::LexingMode(format!(
                    "weir: the character set must be a constant in which no multibyte character holds a quote or backslash byte ({name})"
                )))
            }
        }
        f.value_dependent = true;
    }
    if name.starts_with('@') {
        // A user variable: the value stays in the session for later statements.
        for v in values {
            let (read, counted) = columns_of(v, names);
            f.state_sinks.extend(read.into_iter().chain(counted));
        }
    }
    if name == "sql_mode" {
        f.value_dependent = true;
    }
    f.setting = Some(name);
    Ok(f)
}

fn set_facts(set: &ast::Set, names: &Names<'_>) -> Result<StatementFacts, AnalyzeError> {
    use StatementKind as K;
    let named = |setting: &str| {
        let mut f = StatementFacts::new(K::Set);
        f.setting = Some(setting.into());
        f
    };
    match set {
        ast::Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => set_one(scope.as_ref(), variable, values, names),
        ast::Set::MultipleAssignments { assignments } => {
            let mut merged: Option<StatementFacts> = None;
            for a in assignments {
                let f = set_one(
                    a.scope.as_ref(),
                    &a.name,
                    std::slice::from_ref(&a.value),
                    names,
                )?;
                merged = Some(match merged {
                    None => f,
                    Some(mut m) => {
                        if f.kind == K::AlterSystem {
                            m.kind = K::AlterSystem;
                        }
                        m.state_sinks.extend(f.state_sinks);
                        m.value_dependent |= f.value_dependent;
                        if m.setting != f.setting {
                            m.setting = Some("*".into());
                        }
                        m
                    }
                });
            }
            Ok(merged.unwrap_or_else(|| StatementFacts::new(K::Set)))
        }
        ast::Set::SetNames { charset_name, .. } => {
            if !safe_charset(&charset_name.value) {
                return Err(AnalyzeError::LexingMode(format!(
                    "weir: SET NAMES {}: in this character set a multibyte character can hold a quote or backslash byte",
                    charset_name.value
                )));
            }
            let mut f = named("names");
            f.value_dependent = true;
            Ok(f)
        }
        ast::Set::SetNamesDefault {} => Err(AnalyzeError::LexingMode(
            "weir: SET NAMES DEFAULT picks the server's character set, which Weir cannot see; name one".into(),
        )),
        ast::Set::SetRole { .. } => Ok(named("role")),
        ast::Set::SetTransaction { .. } => Ok(named("transaction")),
        ast::Set::SetTimeZone { .. } => Ok(named("time_zone")),
        // Anything else SET can say, Weir does not model.
        _ => Ok(named("*")),
    }
}

fn node_name(s: &Statement) -> &'static str {
    match s {
        Statement::Query(_) => "Query",
        Statement::Insert(_) => "Insert",
        Statement::Update(_) => "Update",
        Statement::Delete(_) => "Delete",
        Statement::Set(_) => "Set",
        Statement::CreateTable(_) => "CreateTable",
        Statement::AlterTable(_) => "AlterTable",
        Statement::Drop { .. } => "Drop",
        Statement::Use(_) => "Use",
        Statement::Call(_) => "Call",
        Statement::Explain { .. } => "Explain",
        Statement::ShowTables { .. } => "ShowTables",
        Statement::ShowViews { .. } => "ShowViews",
        Statement::ShowProcessList { .. } => "ShowProcessList",
        Statement::Kill { .. } => "Kill",
        Statement::StartTransaction { .. } => "StartTransaction",
        Statement::Commit { .. } => "Commit",
        Statement::Rollback { .. } => "Rollback",
        _ => "Statement",
    }
}

/// A name the statement uses that lies outside the session's database `db` (a table, a
/// column qualified with another database, a stored function, `USE`), if any: a MySQL
/// target reaches only its own database. `information_schema` may be read.
pub fn foreign_name(f: &StatementFacts, db: &str) -> Option<String> {
    let other = |name: &str, written: bool| {
        name.split_once('.').is_some_and(|(schema, _)| {
            let catalog = schema.eq_ignore_ascii_case("information_schema");
            schema != db && (written || !catalog)
        })
    };
    if let Some(t) = f.tables_read.iter().find(|t| other(t, false)) {
        return Some(t.clone());
    }
    if let Some(t) = f.tables_written.iter().find(|t| other(t, true)) {
        return Some(t.clone());
    }
    if let Some(c) = f
        .columns
        .iter()
        .filter_map(|c| c.table.as_deref())
        .find(|t| other(t, false))
    {
        return Some(c.to_owned());
    }
    if let Some(u) = f.user_functions.iter().find(|u| other(u, true)) {
        return Some(u.clone());
    }
    if f.setting.as_deref() == Some("database") && f.name.as_deref() != Some(db) {
        return Some(f.name.clone().unwrap_or_default());
    }
    None
}

#[cfg(test)]
mod tests;
