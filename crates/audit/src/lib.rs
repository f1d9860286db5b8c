//! Audit events: what the gateway records, as plain data.
//!
//! The session builds an [`Event`] at fixed points of the pipeline (connection open and close,
//! each statement *before* it is forwarded, its completion) and hands it to the audit sink,
//! which lives in the I/O layer. This crate holds the event types and the tamper-evident form
//! of the trail ([`chain`]: hash chain, signed checkpoints, verifier); it knows nothing about
//! sockets, files, clocks or async runtimes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use weir_analyze::StatementFacts;

pub mod chain;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ConnectionOpened {
        session: u64,
        identity: String,
        identity_kind: &'static str,
        /// How the identity was proven: `static`, `token` or `oidc`.
        auth: &'static str,
        /// The identity's groups and attributes as policy saw them for this session.
        groups: Vec<String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        attributes: BTreeMap<String, String>,
        client_addr: String,
        target: String,
        tls: bool,
        /// The entry point when it is not a wire listener (`mcp`).
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'static str>,
        /// The person an agent acts for.
        #[serde(skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<String>,
    },
    /// Recorded before the statement is forwarded (write-ahead).
    Statement {
        session: u64,
        /// Sequence number of the request within its session.
        request: u64,
        identity: Arc<str>,
        target: Arc<str>,
        /// `query` (simple protocol), `parse` or `execute` (extended protocol).
        via: &'static str,
        /// The statement text: normalized (constants as `$n`) unless the target keeps full
        /// text.
        sql: Arc<str>,
        /// libpg_query's fingerprint (0 when there is none), in hex.
        #[serde(serialize_with = "hex_u64")]
        fingerprint: u64,
        /// What each statement of the text does: kind, tables, columns, functions.
        #[serde(serialize_with = "facts")]
        statements: Arc<[StatementFacts]>,
        decision: &'static str,
        rule: Option<String>,
        /// How it departs from the identity's baseline (`new_table`, …).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        anomalies: Vec<String>,
        /// An UPDATE or DELETE whose rows Weir captures before it runs: the change id its
        /// `before_image` event names (for `weir undo`).
        #[serde(skip_serializing_if = "Option::is_none")]
        change: Option<Arc<str>>,
        /// An UPDATE or DELETE where before-images are kept, but not of this one: why.
        #[serde(skip_serializing_if = "Option::is_none")]
        not_undoable: Option<String>,
    },
    /// The rows an UPDATE or DELETE changed, as they were, captured in its transaction
    /// before it ran: sealed in the store under `change`, their ciphertext's SHA-256 here, so
    /// the chain proves which change they belong to. `undoable: false` with `reason` when
    /// they were not kept (over the cap, the capture failed or did not match).
    BeforeImage {
        change: String,
        session: u64,
        request: u64,
        identity: String,
        target: String,
        table: String,
        /// The columns that find each row again (a primary or non-null unique key).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        key: Vec<String>,
        rows: u64,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        undoable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Before-images past `[audit] before_image_retention` were purged: their ciphertext is
    /// gone, their events stay.
    BeforeImagesPurged {
        changes: Vec<String>,
        older_than_ms: u64,
    },
    /// `weir undo`: the change it reverses (its statement event's seq and change id), who ran
    /// it, and what it came to.
    Undo {
        statement_seq: u64,
        change: String,
        identity: String,
        target: String,
        /// `applied` (every row restored), `partial`, `refused`, `failed`.
        outcome: String,
        restored: u64,
        refused: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The upstream's answer to one request.
    Completed {
        session: u64,
        request: u64,
        /// Command tags of what ran, e.g. `SELECT 10`.
        tags: Vec<String>,
        rows: u64,
        duration_us: u64,
        sqlstate: Option<String>,
        /// The result columns masked (`schema.table.column`, a computed column with what it
        /// derives from, `content:<class>` for values found by content), when any were.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        masked: Vec<String>,
        /// `rows_above_norm` when the rows departed from the identity's baseline.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        anomalies: Vec<String>,
    },
    ConnectionClosed {
        session: u64,
        identity: String,
        target: String,
        requests: u64,
        reason: String,
    },
    /// An authentication attempt that failed: who it claimed to be, from where.
    AuthFailed {
        claimed: String,
        client_addr: String,
        target: String,
        reason: String,
    },
    /// Failed logins from one source counted, not recorded one by one: past the first 20 of a
    /// `window_secs` window, or past 1,000 from all sources (so nobody can flood the trail by
    /// failing to log in).
    AuthThrottled {
        /// An IPv4 address, an IPv6 /64, or `*` (the shared entry of a full table).
        client_addr: String,
        failures: u64,
        window_secs: u64,
        /// Up to 10 distinct user names those failures tried.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        claimed: Vec<String>,
    },
    /// An approval request's life: `requested` (the statement waits), `approved` / `denied`
    /// (by a person, before the decision takes effect), `auto_approved` (by policy),
    /// `repeated` (ran on an earlier approval of the same statement, `rode_on`), `released`
    /// (the gateway forwards the statement), `expired`, `cancelled`.
    Approval {
        id: String,
        /// What happened (above); `decision` in search.
        decision: String,
        /// The identity whose statement waits.
        identity: String,
        target: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
        /// Who decided.
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// The statement (as the trail keeps statements) and its fingerprint, on `requested`.
        #[serde(skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// For `repeated`: the approval this run rode on.
        #[serde(skip_serializing_if = "Option::is_none")]
        rode_on: Option<String>,
    },
    /// A just-in-time access grant's life: `created` (its access request was approved),
    /// `revoked`, `expired`, and `ended_session` (a session that relied on it was closed).
    Grant {
        id: String,
        decision: String,
        identity: String,
        target: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
    /// A write copies values of sensitive columns: the columns it writes them into are
    /// marked sensitive from now on. Recorded with the statement, before it is forwarded.
    /// Each tag reads `column <- source (label, strategy)`.
    SensitivityDerived {
        session: u64,
        request: u64,
        identity: Arc<str>,
        target: Arc<str>,
        tags: Vec<String>,
    },
    /// An MCP tool call, recorded before it runs; the statements it runs follow as the
    /// events of their own session (`channel: mcp`).
    ToolCall {
        identity: String,
        identity_kind: &'static str,
        tool: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        client_addr: String,
        /// The person the agent acts for.
        #[serde(skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<String>,
    },
    /// Token and policy administration.
    Admin {
        actor: String,
        action: String,
        subject: String,
    },
}

impl Event {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

fn hex_u64<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// Each statement's facts as the trail records them, as a JSON value (for approval requests,
/// which show approvers what a statement does).
pub fn facts_json(statements: &[StatementFacts]) -> serde_json::Value {
    serde_json::Value::Array(
        statements
            .iter()
            .filter_map(|f| serde_json::to_value(Summary(f)).ok())
            .collect(),
    )
}

/// Each statement's facts as the trail records them.
fn facts<S: Serializer>(facts: &Arc<[StatementFacts]>, s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(facts.len()))?;
    for f in facts.iter() {
        seq.serialize_element(&Summary(f))?;
    }
    seq.end()
}

/// One statement in the trail: its kind, and the tables, columns and functions it names
/// (empty sets left out).
struct Summary<'a>(&'a StatementFacts);

impl Serialize for Summary<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", f.kind.as_str())?;
        if !f.tables_read.is_empty() {
            m.serialize_entry("tables_read", &f.tables_read)?;
        }
        if !f.tables_written.is_empty() {
            m.serialize_entry("tables_written", &f.tables_written)?;
        }
        if !f.columns.is_empty() {
            m.serialize_entry("columns", &Columns(&f.columns))?;
        }
        if !f.functions.is_empty() {
            m.serialize_entry("functions", &f.functions)?;
        }
        m.end()
    }
}

/// Columns as `table.column` strings, written straight from their `Display` (this runs for
/// every statement event: no string per column).
struct Columns<'a>(&'a std::collections::BTreeSet<weir_analyze::Column>);

impl Serialize for Columns<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(AsStr))
    }
}

struct AsStr<'a>(&'a weir_analyze::Column);

impl Serialize for AsStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// Rows counted from a command tag (`SELECT 10`, `INSERT 0 5`, `UPDATE 3`, `COPY 7`).
pub fn rows_from_tag(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_from_command_tags() {
        assert_eq!(rows_from_tag("SELECT 10"), 10);
        assert_eq!(rows_from_tag("INSERT 0 5"), 5);
        assert_eq!(rows_from_tag("BEGIN"), 0);
    }

    #[test]
    fn statement_events_carry_facts_not_values() {
        let a = weir_analyze::Analyzer::new()
            .analyze(b"SELECT c.email FROM customers c WHERE c.id = 42")
            .unwrap();
        let e = Event::Statement {
            session: 1,
            request: 1,
            identity: "alice".into(),
            target: "shop".into(),
            via: "query",
            sql: a.normalized.clone(),
            fingerprint: a.fingerprint,
            statements: a.statements.clone(),
            decision: "allow",
            rule: None,
            anomalies: Vec::new(),
            change: None,
            not_undoable: None,
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["sql"], "SELECT c.email FROM customers c WHERE c.id = $1");
        assert_eq!(v["statements"][0]["tables_read"][0], "customers");
        assert_eq!(
            v["statements"][0]["columns"],
            serde_json::json!(["customers.email", "customers.id"])
        );
    }

    #[test]
    fn events_serialize_with_their_kind() {
        let e = Event::Admin {
            actor: "cli".into(),
            action: "token.create".into(),
            subject: "ci".into(),
        };
        assert!(e.to_json().starts_with("{\"event\":\"admin\""));
    }
}
