//! What one session has told the server that changes what its statements mean: the
//! search_path (which schema an unqualified table name is in) and the statements it prepared
//! in SQL (what `EXECUTE name` runs).
//!
//! The analyzer's facts are shared by every session (the cache), so they keep names as the
//! statement wrote them; [`Scope::resolve`] turns them into this session's facts. The gateway
//! keeps one `Scope` per session and feeds it the statements it forwards ([`Scope::observe`]).
//!
//! What Weir cannot see is treated cautiously. The search_path a role or database was given
//! with `ALTER … SET search_path` is invisible to Weir, so a session starts from the client's
//! `search_path` startup parameter or PostgreSQL's default (`"$user", public`). A change made
//! by `set_config('search_path', …)` or inside a function is not visible either: once one may
//! have happened, the scope is *uncertain*, and [`Scope::candidates`] says an unqualified name
//! could be in any schema. A SET that a later ROLLBACK undoes is not tracked; the schemas of
//! every path the session has set stay among the candidates, so sensitivity lookups still see
//! them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::{Analysis, Column, StatementFacts, StatementKind};

/// How a statement changes the search_path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// `SET search_path = …`.
    Set(Vec<String>),
    /// `SET LOCAL search_path = …`: until the transaction ends.
    Local(Vec<String>),
    /// `RESET search_path`, `SET search_path TO DEFAULT`, `RESET ALL`, `DISCARD ALL`.
    Reset,
    /// A change whose value Weir cannot see.
    Unknown,
}

/// SQL-level prepared statements kept per session; PostgreSQL has no limit, Weir needs one.
const MAX_SQL_PREPARED: usize = 10_000;
/// Distinct schemas remembered as possible homes of unqualified names.
const MAX_SCHEMAS: usize = 64;

/// A statement prepared in SQL: its facts as analyzed, and as resolved when it was prepared
/// (PostgreSQL binds names at PREPARE too).
#[derive(Debug, Clone)]
struct Prepared {
    raw: Arc<StatementFacts>,
    resolved: Arc<StatementFacts>,
}

/// The tables a statement could touch in one session ([`Scope::touched`]): what policy
/// looks up sensitivity for. When Weir cannot tell which table a name is, it counts every
/// table it could be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// `schema.table` names the statement's tables could denote.
    pub tables: Vec<String>,
    /// Names (as written) whose schema Weir cannot tell: a table of that name in any schema.
    pub anywhere: Vec<String>,
}

/// An analyzed text as it means in one session ([`Scope::resolve_analysis`]): each
/// statement's facts resolved, with the tables it could touch.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub statements: Vec<StatementFacts>,
    pub touched: Vec<Touched>,
}

/// One session's view of names. Cheap to clone (a request that changes it is decided against
/// a copy, kept only if the request is forwarded).
#[derive(Debug, Clone)]
pub struct Scope {
    /// The upstream user, which `"$user"` stands for.
    user: String,
    /// The path the session started with.
    initial: Vec<String>,
    /// The path in effect, as far as Weir knows.
    path: Vec<String>,
    /// Every schema that has been on the path in this session.
    seen: BTreeSet<String>,
    /// The path may have changed in a way Weir could not see.
    uncertain: bool,
    /// `PREPARE name AS …` in SQL: the facts of what `EXECUTE name` runs.
    prepared: HashMap<String, Prepared>,
    /// Changes whenever resolution could give a different answer.
    generation: u64,
}

impl Default for Scope {
    fn default() -> Scope {
        Scope::new("", None)
    }
}

impl Scope {
    /// `user` is the upstream user; `search_path` the client's startup parameter, if any.
    pub fn new(user: &str, search_path: Option<&str>) -> Scope {
        let path = match search_path {
            Some(p) => parse_path(p),
            None => vec!["$user".to_owned(), "public".to_owned()],
        };
        let mut scope = Scope {
            user: user.to_owned(),
            initial: path.clone(),
            path: Vec::new(),
            seen: BTreeSet::new(),
            uncertain: false,
            prepared: HashMap::new(),
            generation: 0,
        };
        scope.set_path(path);
        scope
    }

    /// Changes each time what [`Scope::resolve`] returns for the same facts could change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The search_path as Weir knows it.
    pub fn search_path(&self) -> &[String] {
        &self.path
    }

    fn set_path(&mut self, path: Vec<String>) {
        self.remember(&path);
        self.path = path;
        self.generation += 1;
    }

    fn remember(&mut self, path: &[String]) {
        for schema in path {
            let schema = if schema == "$user" {
                self.user.clone()
            } else {
                schema.clone()
            };
            if !schema.is_empty() && self.seen.len() < MAX_SCHEMAS {
                self.seen.insert(schema);
            } else if !schema.is_empty() && !self.seen.contains(&schema) {
                self.uncertain = true;
            }
        }
    }

    /// Whether any statement of `facts` could change this scope (so a request carrying it is
    /// decided against a copy, see the module docs).
    pub fn affected_by(facts: &[StatementFacts]) -> bool {
        facts.iter().any(|f| {
            matches!(
                f.kind,
                StatementKind::Prepare | StatementKind::Deallocate | StatementKind::Discard
            ) || matches!(f.setting.as_deref(), Some("search_path" | "all" | "*"))
        })
    }

    /// The scope as `analysis` would leave it, if it changes anything: a request is decided
    /// in the scope its own statements make (`PREPARE p AS …; EXECUTE p` in one string), and
    /// the session keeps that scope only if the request is forwarded.
    pub fn after(&self, analysis: &Analysis) -> Option<Scope> {
        Scope::affected_by(&analysis.statements).then(|| {
            let mut next = self.clone();
            next.observe(analysis);
            next
        })
    }

    /// Takes note of the statements of a request that is being forwarded.
    pub fn observe(&mut self, analysis: &Analysis) {
        for (i, f) in analysis.statements.iter().enumerate() {
            match f.kind {
                StatementKind::Prepare => {
                    if let (Some(name), Some(inner)) = (&f.name, &f.inner) {
                        if self.prepared.len() < MAX_SQL_PREPARED
                            || self.prepared.contains_key(name)
                        {
                            let prepared = Prepared {
                                resolved: Arc::new(self.resolve_facts(inner)),
                                raw: Arc::new(StatementFacts::clone(inner)),
                            };
                            self.prepared.insert(name.clone(), prepared);
                        }
                        self.generation += 1;
                    }
                }
                StatementKind::Deallocate => {
                    match &f.name {
                        Some(name) => self.prepared.remove(name),
                        None => {
                            self.prepared.clear();
                            None
                        }
                    };
                    self.generation += 1;
                }
                StatementKind::Discard if f.name.as_deref() == Some("all") => {
                    self.prepared.clear();
                    self.set_path(self.initial.clone());
                }
                StatementKind::Set => {
                    if !matches!(f.setting.as_deref(), Some("search_path" | "all")) {
                        continue;
                    }
                    match crate::postgres::search_path_change(&analysis.sql, i) {
                        Some(PathChange::Set(path)) => self.set_path(path),
                        Some(PathChange::Local(path)) => {
                            self.remember(&path);
                            self.generation += 1;
                        }
                        Some(PathChange::Reset) => self.set_path(self.initial.clone()),
                        None | Some(PathChange::Unknown) => {
                            self.uncertain = true;
                            self.generation += 1;
                        }
                    }
                }
                _ => {
                    // set_config('search_path', …) or with a name Weir cannot read.
                    if matches!(f.setting.as_deref(), Some("search_path" | "*")) {
                        self.uncertain = true;
                        self.generation += 1;
                    }
                }
            }
        }
    }

    /// This session's facts: table names qualified with the schema they are in, and
    /// `EXECUTE name` replaced by the statement the session prepared under that name.
    pub fn resolve(&self, facts: &[StatementFacts]) -> Vec<StatementFacts> {
        facts.iter().map(|f| self.resolve_facts(f)).collect()
    }

    /// The facts as analyzed of what `f` runs: for `EXECUTE name`, the prepared statement's
    /// (so that [`Scope::candidates`] can be asked about its tables); else `f` itself.
    pub fn source<'a>(&'a self, f: &'a StatementFacts) -> &'a StatementFacts {
        match self.prepared_for(f) {
            Some(p) => &p.raw,
            None => f,
        }
    }

    /// Every table `f` (as analyzed, or as resolved) could touch in this session. For
    /// `EXECUTE`, those of the statement it runs; for `PREPARE` and `DECLARE`, those of the
    /// statement they hold.
    pub fn touched(&self, f: &StatementFacts) -> Touched {
        let source = self.source(f);
        let source = source.inner.as_deref().unwrap_or(source);
        let mut touched = Touched::default();
        for t in source.tables_read.iter().chain(&source.tables_written) {
            match self.candidates(t) {
                Some(names) => touched.tables.extend(names),
                None => touched.anywhere.push(t.clone()),
            }
        }
        touched.tables.sort();
        touched.tables.dedup();
        touched.anywhere.sort();
        touched.anywhere.dedup();
        touched
    }

    /// What an analyzed text means in this session: [`Scope::resolve`] and
    /// [`Scope::touched`] for each statement.
    pub fn resolve_analysis(&self, analysis: &Analysis) -> Resolution {
        Resolution {
            statements: self.resolve(&analysis.statements),
            touched: analysis
                .statements
                .iter()
                .map(|f| self.touched(f))
                .collect(),
        }
    }

    fn prepared_for(&self, f: &StatementFacts) -> Option<&Prepared> {
        if f.kind != StatementKind::Execute {
            return None;
        }
        self.prepared.get(f.name.as_ref()?)
    }

    /// [`Scope::resolve`] for one statement.
    pub fn resolve_facts(&self, f: &StatementFacts) -> StatementFacts {
        if let Some(p) = self.prepared_for(f) {
            let mut run = StatementFacts::clone(&p.resolved);
            run.name.clone_from(&f.name);
            return run;
        }
        let mut r = f.clone();
        r.tables_read = f.tables_read.iter().map(|t| self.qualify(t)).collect();
        r.tables_written = f.tables_written.iter().map(|t| self.qualify(t)).collect();
        r.columns = f
            .columns
            .iter()
            .map(|c| Column {
                table: c.table.as_deref().map(|t| self.qualify(t)),
                name: c.name.clone(),
            })
            .collect();
        let qualify_outputs = |outputs: &Option<Vec<Vec<Column>>>| {
            outputs.as_ref().map(|outputs| {
                outputs
                    .iter()
                    .map(|refs| {
                        refs.iter()
                            .map(|c| Column {
                                table: c.table.as_deref().map(|t| self.qualify(t)),
                                name: c.name.clone(),
                            })
                            .collect()
                    })
                    .collect()
            })
        };
        r.state_sinks = f
            .state_sinks
            .iter()
            .map(|c| Column {
                table: c.table.as_deref().map(|t| self.qualify(t)),
                name: c.name.clone(),
            })
            .collect();
        r.outputs = qualify_outputs(&f.outputs);
        r.outputs_counted = qualify_outputs(&f.outputs_counted);
        r.flows = f
            .flows
            .iter()
            .map(|flow| crate::Flow {
                table: if flow.temporary {
                    flow.table.clone()
                } else {
                    self.qualify(&flow.table)
                },
                creates: flow.creates,
                temporary: flow.temporary,
                sink: flow.sink.clone(),
                from: flow
                    .from
                    .iter()
                    .map(|c| Column {
                        table: c.table.as_deref().map(|t| self.qualify(t)),
                        name: c.name.clone(),
                    })
                    .collect(),
            })
            .collect();
        r.inner = f.inner.as_deref().map(|i| Box::new(self.resolve_facts(i)));
        r
    }

    /// `schema.table` for a table name as written. An unqualified name is given the first
    /// schema of the path other than `"$user"` (Weir cannot see whether a schema named after
    /// the user exists); names starting `pg_` are in `pg_catalog`, which PostgreSQL searches
    /// first unless the path places it.
    pub fn qualify(&self, table: &str) -> String {
        if table.contains('.') {
            return table.to_owned();
        }
        if table.starts_with("pg_") && !self.path.iter().any(|s| s == "pg_catalog") {
            return format!("pg_catalog.{table}");
        }
        match self
            .path
            .iter()
            .find(|s| *s != "$user" && *s != "pg_temp" && !s.is_empty())
        {
            Some(schema) => format!("{schema}.{table}"),
            None => table.to_owned(),
        }
    }

    /// Every `schema.table` an unqualified name (as written) could denote in this session;
    /// `None` when it could be in any schema (the path changed out of Weir's sight).
    pub fn candidates(&self, table: &str) -> Option<Vec<String>> {
        if table.contains('.') {
            return Some(vec![table.to_owned()]);
        }
        if self.uncertain {
            return None;
        }
        Some(
            self.seen
                .iter()
                .map(String::as_str)
                .chain(["pg_catalog"])
                .map(|s| format!("{s}.{table}"))
                .collect(),
        )
    }
}

/// Splits a search_path setting (`"$user", public`, `a,"My Schema"`) into schema names.
fn parse_path(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if let Some(quoted) = item.strip_prefix('"').and_then(|i| i.strip_suffix('"')) {
            out.push(quoted.replace("\"\"", "\""));
        } else if !item.is_empty() {
            out.push(item.to_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_postgres() {
        assert_eq!(parse_path("\"$user\", public"), ["$user", "public"]);
        assert_eq!(parse_path("A, \"My Schema\""), ["a", "My Schema"]);
    }
}
