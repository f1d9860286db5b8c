//! The result stage for MySQL's text protocol: a command's answers, upstream → client, with
//! sensitive values masked.
//!
//! A column definition names its source (`schema`, `org_table`, `org_name`) when the column
//! is a plain column of a table or view, as PostgreSQL's RowDescription does with OIDs; the
//! catalog says whether that column is sensitive. A computed column (`org_table` empty) is
//! traced through the analysis' `outputs` lineage; when that is unknown and the statement
//! reads a sensitive column, it is masked (fail closed). Unmasked text values still go
//! through content detection.

use std::collections::BTreeSet;
use std::sync::Arc;

use weir_analyze::{Column, StatementFacts};
use weir_mask::classify;
use weir_mask::strategy::{self, Shape};
use weir_mask::{Catalog, HashKey, Sensitive, Strategy};
use weir_wire::mysql::{
    self, column_type, status, ColumnDef, EofPacket, ErrPacket, First, OkPacket,
};

use super::conn::{Conn, ConnError};

/// What happens to one result column's values.
#[derive(Debug, Clone)]
enum Act {
    Keep,
    /// Masked with this strategy; the label names the source for the completion event.
    Mask(Strategy, Arc<str>),
    /// Content detection decides per value.
    Scan,
    /// The message of SHOW WARNINGS / SHOW ERRORS: it quotes values of the statement that
    /// raised it, withheld as in an error of that statement (`true`: it touched something
    /// sensitive, so every quoted value is withheld).
    Quoted(bool),
}

/// How one result column's values are treated; kept with a cursor for its fetches.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    act: Act,
    shape: Shape,
    column_type: u8,
}

/// Who may see a column in clear.
pub(crate) trait MayUnmask {
    fn may_unmask(&self, column: &str, label: &str) -> bool;
}

/// What a command's answers came to.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub rows: u64,
    pub affected: u64,
    /// The server status of the last OK / EOF.
    pub status: u16,
    pub error: Option<(u16, String)>,
    pub masked: BTreeSet<Arc<str>>,
    /// A result named a table the catalog does not know (made since it loaded).
    pub unknown_table: bool,
    pub tags: Vec<String>,
    /// A prepared statement's execution opened a cursor: its columns' treatment, for the
    /// fetches that follow.
    pub cursor: Option<Arc<[Field]>>,
    /// [`Request::diagnostics_sensitive`] after this command's statements.
    pub diagnostics_sensitive: bool,
}

/// What the relay knows of the request.
pub(crate) struct Request<'a> {
    /// One per statement, in order; each statement answers with one result (a CALL with
    /// several, after which lineage is unknown).
    pub statements: &'a [StatementFacts],
    pub catalog: Option<&'a Catalog>,
    pub database: &'a str,
    pub key: &'a HashKey,
    pub unmask: &'a (dyn MayUnmask + Sync),
    /// Most columns a result may declare.
    pub max_columns: usize,
    /// The answer to COM_FIELD_LIST: column definitions up to an EOF (or an ERR), no rows.
    pub field_list: bool,
    /// Rows are in the binary protocol (the answer to COM_STMT_EXECUTE / FETCH).
    pub binary: bool,
    /// The session's diagnostics (what SHOW WARNINGS shows) may quote sensitive values:
    /// a statement that touched something sensitive raised them, as far as Weir can tell.
    pub diagnostics_sensitive: bool,
}

/// Relays every answer of one command from `up` to `client`: results (one per statement,
/// more with CALL), then the final OK or ERR. Packets are renumbered for the client.
pub(crate) async fn relay(
    up: &mut Conn,
    client: &mut Conn,
    req: &Request<'_>,
) -> Result<Outcome, ConnError> {
    let mut outcome = Outcome::default();
    if req.field_list {
        for _ in 0..=req.max_columns {
            let p = up.read().await?;
            client.queue(&p);
            if EofPacket::is_eof(&p) || p.first() == Some(&0xff) {
                client.flush().await?;
                return Ok(outcome);
            }
            ColumnDef::decode(&p)?;
        }
        return Err(mysql::MyError::Invalid("too many columns in a field list").into());
    }
    let mut index = 0usize;
    let mut lineage_lost = false;
    outcome.diagnostics_sensitive = req.diagnostics_sensitive;
    loop {
        let first = up.read().await?;
        let facts = if lineage_lost {
            None
        } else {
            req.statements.get(index)
        };
        let diagnostics = outcome.diagnostics_sensitive;
        outcome.diagnostics_sensitive = diagnostics_after(diagnostics, facts, req.catalog);
        if facts.is_some_and(|f| f.kind == weir_analyze::StatementKind::Call) {
            lineage_lost = true;
        }
        let more = match First::classify(&first)? {
            First::Ok => {
                let ok = OkPacket::decode(&first)?;
                client.queue(&first);
                outcome.affected += ok.affected_rows;
                outcome.status = ok.status;
                outcome.tags.push(format!("OK {}", ok.affected_rows));
                ok.status & status::MORE_RESULTS_EXISTS != 0
            }
            First::Err => {
                let e = ErrPacket::decode(&first)?;
                let masked = mask_error(&e, facts, req.catalog);
                outcome.error = Some((e.code, e.sqlstate()));
                client.queue(&masked.encode());
                false
            }
            First::LocalInfile => {
                // Weir never grants CLIENT_LOCAL_FILES: a server that asks anyway is not
                // followed, and the session ends.
                return Err(mysql::MyError::Invalid("the server asked for a local file").into());
            }
            First::Columns(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > req.max_columns {
                    return Err(mysql::MyError::Invalid("too many columns in a result").into());
                }
                client.queue(&first);
                let more = result_set(up, client, req, n, facts, diagnostics, &mut outcome).await?;
                more
            }
        };
        index += 1;
        if client.queued() > 64 * 1024 || !more {
            client.flush().await?;
        }
        if !more {
            return Ok(outcome);
        }
    }
}

/// Column definitions, EOF, rows, EOF (or ERR). Returns whether more results follow.
/// `diagnostics`: whether the session's diagnostics may quote sensitive values when this
/// statement starts.
async fn result_set(
    up: &mut Conn,
    client: &mut Conn,
    req: &Request<'_>,
    n: usize,
    facts: Option<&StatementFacts>,
    diagnostics: bool,
    outcome: &mut Outcome,
) -> Result<bool, ConnError> {
    let mut fields = Vec::with_capacity(n);
    let shows_diagnostics = facts.is_some_and(shows_diagnostics);
    for i in 0..n {
        let p = up.read().await?;
        let def = ColumnDef::decode(&p)?;
        let mut field = plan(&def, i, facts, req, outcome);
        if shows_diagnostics && def.org_table.is_empty() && def.name == b"Message" {
            field.act = Act::Quoted(diagnostics);
        }
        fields.push(field);
        client.queue(&p);
    }
    let eof = up.read().await?;
    if !EofPacket::is_eof(&eof) {
        return Err(mysql::MyError::Invalid("expected EOF after the column definitions").into());
    }
    client.queue(&eof);
    if req.binary && EofPacket::decode(&eof)?.status & status::CURSOR_EXISTS != 0 {
        // A cursor: the rows come by COM_STMT_FETCH, masked as planned here.
        outcome.status = EofPacket::decode(&eof)?.status;
        outcome.cursor = Some(Arc::from(fields));
        return Ok(false);
    }
    rows(up, client, req, &fields, facts, outcome).await
}

/// Rows up to their EOF (or an ERR), masked as `fields` say. Returns whether more results
/// follow.
pub(crate) async fn rows(
    up: &mut Conn,
    client: &mut Conn,
    req: &Request<'_>,
    fields: &[Field],
    facts: Option<&StatementFacts>,
    outcome: &mut Outcome,
) -> Result<bool, ConnError> {
    let n = fields.len();
    let types: Vec<u8> = fields.iter().map(|f| f.column_type).collect();
    let keep_all = fields.iter().all(|f| matches!(f.act, Act::Keep));
    let mut row_out = Vec::new();
    let mut scratch = Vec::new();
    let mut rows = 0u64;
    loop {
        let p = up.read().await?;
        if EofPacket::is_eof(&p) {
            let eof = EofPacket::decode(&p)?;
            client.queue(&p);
            outcome.rows += rows;
            outcome.status = eof.status;
            outcome.tags.push(format!("SELECT {rows}"));
            return Ok(eof.status & status::MORE_RESULTS_EXISTS != 0);
        }
        if p.first() == Some(&0xff) {
            let e = ErrPacket::decode(&p)?;
            let masked = mask_error(&e, facts, req.catalog);
            outcome.error = Some((e.code, e.sqlstate()));
            outcome.rows += rows;
            client.queue(&masked.encode());
            return Ok(false);
        }
        rows += 1;
        if keep_all {
            // Still read, so that a malformed row ends the session rather than reaching the
            // client.
            if req.binary {
                mysql::binary_row(&p, &types)?;
            }
            client.queue(&p);
        } else if req.binary {
            let values = mysql::binary_row(&p, &types)?;
            let mut masked_values = Vec::with_capacity(n);
            // Masked strings are written to one buffer, then sliced: offsets first.
            scratch.clear();
            let mut spans = Vec::with_capacity(n);
            for (v, f) in values.iter().zip(fields) {
                let Some(value) = v else {
                    spans.push(Span::Null);
                    continue;
                };
                if let Act::Quoted(sensitive) = f.act {
                    let start = scratch.len();
                    match withhold_quoted_values(&text(value.bytes), sensitive) {
                        Some(m) => {
                            outcome.masked.insert(Arc::from("diagnostics"));
                            scratch.extend_from_slice(m.as_bytes());
                            spans.push(Span::Masked(start, scratch.len()));
                        }
                        None => spans.push(Span::Same),
                    }
                    continue;
                }
                let content = value.string.then_some(value.bytes);
                match strategy_for(f, content, outcome) {
                    None => spans.push(Span::Same),
                    Some(s) => {
                        let start = scratch.len();
                        if value.string
                            && f.shape.is_textual()
                            && strategy::mask_into(
                                s,
                                f.shape,
                                0,
                                value.bytes,
                                req.key,
                                &mut scratch,
                            )
                        {
                            spans.push(Span::Masked(start, scratch.len()));
                        } else {
                            scratch.truncate(start);
                            spans.push(Span::Null);
                        }
                    }
                }
            }
            for (v, span) in values.iter().zip(&spans) {
                masked_values.push(match span {
                    Span::Null => None,
                    Span::Same => *v,
                    Span::Masked(a, b) => Some(mysql::BinaryValue {
                        bytes: scratch.get(*a..*b).unwrap_or_default(),
                        string: true,
                    }),
                });
            }
            row_out.clear();
            mysql::put_binary_row(&mut row_out, &masked_values);
            client.queue(&row_out);
        } else {
            let values = mysql::text_row(&p, n)?;
            row_out.clear();
            for (v, f) in values.into_iter().zip(fields) {
                let Some(value) = v else {
                    mysql::put_text_field(&mut row_out, None);
                    continue;
                };
                if let Act::Quoted(sensitive) = f.act {
                    match withhold_quoted_values(&text(value), sensitive) {
                        Some(m) => {
                            outcome.masked.insert(Arc::from("diagnostics"));
                            mysql::put_text_field(&mut row_out, Some(m.as_bytes()));
                        }
                        None => mysql::put_text_field(&mut row_out, Some(value)),
                    }
                    continue;
                }
                match strategy_for(f, Some(value), outcome) {
                    None => mysql::put_text_field(&mut row_out, Some(value)),
                    Some(s) => {
                        scratch.clear();
                        if f.shape.is_textual()
                            && strategy::mask_into(s, f.shape, 0, value, req.key, &mut scratch)
                        {
                            mysql::put_text_field(&mut row_out, Some(&scratch));
                        } else {
                            mysql::put_text_field(&mut row_out, None);
                        }
                    }
                }
            }
            client.queue(&row_out);
        }
        if client.queued() > 64 * 1024 {
            client.flush().await?;
        }
    }
}

/// Where a binary row's value comes from after masking.
enum Span {
    Null,
    Same,
    Masked(usize, usize),
}

/// The strategy one value is masked with, if any (`content` is the value when it is text
/// content detection can read).
fn strategy_for(f: &Field, content: Option<&[u8]>, outcome: &mut Outcome) -> Option<Strategy> {
    match &f.act {
        Act::Keep => None,
        Act::Mask(s, label) => {
            outcome.masked.insert(Arc::clone(label));
            Some(*s)
        }
        // Rewritten by the row loops themselves; never reached.
        Act::Quoted(_) => Some(Strategy::Redact),
        Act::Scan => content.and_then(classify::by_content).map(|c| {
            outcome
                .masked
                .insert(Arc::from(format!("content:{}", c.as_str())));
            Strategy::Redact
        }),
    }
}

fn shape_of(def: &ColumnDef) -> Shape {
    match def.column_type {
        column_type::JSON => Shape::Json,
        t if column_type::is_string(t) => Shape::Text,
        _ => Shape::Other,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// How one result column is treated.
fn plan(
    def: &ColumnDef,
    index: usize,
    facts: Option<&StatementFacts>,
    req: &Request<'_>,
    outcome: &mut Outcome,
) -> Field {
    let shape = shape_of(def);
    let scan = if shape.is_textual() {
        Act::Scan
    } else {
        Act::Keep
    };
    let Some(catalog) = req.catalog else {
        return Field {
            act: scan,
            shape,
            column_type: def.column_type,
        };
    };
    let decide = |qualified: &str, s: &Sensitive| -> Act {
        if req.unmask.may_unmask(qualified, &s.label) {
            Act::Keep
        } else {
            Act::Mask(s.strategy, Arc::from(qualified))
        }
    };
    if !def.org_table.is_empty() {
        let schema = if def.schema.is_empty() {
            req.database.to_owned()
        } else {
            text(&def.schema)
        };
        let table = format!("{schema}.{}", text(&def.org_table));
        let name = if def.org_name.is_empty() {
            text(&def.name)
        } else {
            text(&def.org_name)
        };
        if let Some(c) = catalog.column_by_name(&table, &name) {
            let act = match &c.sensitive {
                Some(s) => decide(&c.qualified, s),
                None => scan,
            };
            return Field {
                act,
                shape,
                column_type: def.column_type,
            };
        }
        // A table made since the catalog loaded (or a derived table's alias): traced like
        // a computed column, and the catalog reloads.
        if !catalog.has_column(&table, &name) && !is_system_schema(&schema) {
            outcome.unknown_table = true;
        }
    }
    let act = match computed(facts, index, catalog, shape.is_textual()) {
        Some((qualified, s)) => decide(&qualified, &s),
        None => scan,
    };
    Field {
        act,
        shape,
        column_type: def.column_type,
    }
}

fn is_system_schema(schema: &str) -> bool {
    schema.eq_ignore_ascii_case("information_schema")
}

/// The sensitive source a computed result column may carry, if any: through the statement's
/// lineage when known, else any sensitive column the statement reads.
fn computed(
    facts: Option<&StatementFacts>,
    index: usize,
    catalog: &Catalog,
    textual: bool,
) -> Option<(String, Sensitive)> {
    let unknown = || {
        (
            "(unknown source)".to_owned(),
            Sensitive {
                label: Arc::from("unknown"),
                strategy: Strategy::Redact,
            },
        )
    };
    let Some(f) = facts else {
        // Lineage lost (after a CALL): whatever it returns may carry anything.
        return Some(unknown());
    };
    if f.unknown_effect || !f.user_functions.is_empty() {
        return Some(unknown());
    }
    let table_sensitive = |t: &str| -> Option<(String, Sensitive)> {
        if t.split_once('.')
            .is_some_and(|(schema, _)| is_system_schema(schema))
        {
            return None;
        }
        if catalog.columns_in_order(t).is_none() {
            // A table the catalog does not know: it may hold anything.
            return Some(unknown());
        }
        catalog
            .sensitive_columns(t)
            .first()
            .map(|(c, s)| (format!("{t}.{c}"), s.clone()))
    };
    let column_sensitive = |c: &Column| -> Option<(String, Sensitive)> {
        match &c.table {
            Some(t) if c.name == "*" => table_sensitive(t),
            Some(t) => {
                if catalog.columns_in_order(t).is_none() {
                    // An alias of a derived table, a CTE or a table made since: unknown.
                    return f.tables_read.iter().find_map(|t| table_sensitive(t));
                }
                catalog
                    .column_by_name(t, &c.name)
                    .and_then(|sc| sc.sensitive.clone().map(|s| (sc.qualified.to_string(), s)))
            }
            None => f.tables_read.iter().find_map(|t| {
                if c.name == "*" {
                    return table_sensitive(t);
                }
                let sc = catalog.column_by_name(t, &c.name)?;
                sc.sensitive.clone().map(|s| (sc.qualified.to_string(), s))
            }),
        }
    };
    match f.outputs.as_ref().and_then(|o| o.get(index)) {
        Some(sources) => {
            let counted_text = f
                .outputs_counted
                .as_ref()
                .and_then(|o| o.get(index))
                .filter(|_| textual)
                .into_iter()
                .flatten();
            sources
                .iter()
                .chain(counted_text)
                .find_map(column_sensitive)
        }
        None => f.tables_read.iter().find_map(|t| table_sensitive(t)),
    }
}

/// Whether a statement touches anything sensitive, for what its errors and warnings may
/// quote: a table with a sensitive column, or one the catalog does not know (no facts or no
/// catalog: assumed so).
fn touches_sensitive(facts: Option<&StatementFacts>, catalog: Option<&Catalog>) -> bool {
    match (facts, catalog) {
        (Some(f), Some(c)) => f
            .tables_read
            .iter()
            .chain(&f.tables_written)
            .any(|t| !c.sensitive_columns(t).is_empty() || c.columns_in_order(t).is_none()),
        _ => true,
    }
}

/// SHOW WARNINGS, SHOW ERRORS (the analyzer names them `warnings`).
fn shows_diagnostics(f: &StatementFacts) -> bool {
    f.kind == weir_analyze::StatementKind::Show && f.name.as_deref() == Some("warnings")
}

/// Whether the diagnostics may quote sensitive values after a statement: a statement that
/// touches something sensitive makes them so; one that reads or writes tables and touches
/// nothing sensitive replaces them; the others (SHOW WARNINGS itself, `SELECT 1`, SET) may
/// leave the earlier ones in place, so the flag stays.
fn diagnostics_after(
    before: bool,
    facts: Option<&StatementFacts>,
    catalog: Option<&Catalog>,
) -> bool {
    match facts {
        Some(f) if shows_diagnostics(f) => before,
        Some(f) if f.tables_read.is_empty() && f.tables_written.is_empty() => before,
        _ => touches_sensitive(facts, catalog),
    }
}

/// A server error whose message may quote values (`Duplicate entry '…' for key …`,
/// `Truncated incorrect … value: '…'`): when the statement reads or writes anything
/// sensitive, or what is quoted looks sensitive, every quoted value is withheld.
fn mask_error(
    e: &ErrPacket,
    facts: Option<&StatementFacts>,
    catalog: Option<&Catalog>,
) -> ErrPacket {
    let msg = text(&e.message);
    match withhold_quoted_values(&msg, touches_sensitive(facts, catalog)) {
        None => e.clone(),
        Some(out) => ErrPacket {
            code: e.code,
            sqlstate: e.sqlstate,
            message: out.into_bytes(),
        },
    }
}

/// A server message with its quoted values withheld (`sensitive`: all of them; otherwise
/// those content detection recognizes), names the server quotes (keys, columns, tables)
/// kept; `None` when nothing changes. A message that still looks sensitive is withheld
/// whole.
fn withhold_quoted_values(msg: &str, sensitive: bool) -> Option<String> {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    let mut changed = false;
    while let Some(open) = rest.find('\'') {
        let (head, tail) = rest.split_at(open + 1);
        out.push_str(head);
        let Some(close) = tail.find('\'') else {
            rest = tail;
            break;
        };
        let inner = tail.get(..close).unwrap_or("");
        // Names the server quotes (keys, columns, tables) follow these words.
        let is_name = [
            "key ",
            "column ",
            "table ",
            "database ",
            "for ",
            "function ",
            "user ",
        ]
        .iter()
        .any(|w| head.trim_end_matches('\'').ends_with(w));
        if !is_name && (sensitive || classify::by_content(inner.as_bytes()).is_some()) {
            out.push_str("****");
            changed = true;
        } else {
            out.push_str(inner);
        }
        out.push('\'');
        rest = tail.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    if classify::by_content(out.as_bytes()).is_some() {
        return Some("(withheld by weir: this message quoted a sensitive value)".into());
    }
    changed.then_some(out)
}
