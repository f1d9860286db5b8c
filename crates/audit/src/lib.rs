//! Audit events: what the gateway records, as plain data.
//!
//! The session builds an [`Event`] at fixed points of the pipeline (connection open and close,
//! each statement *before* it is forwarded, its completion) and hands it to the audit sink,
//! which lives in the I/O layer. This crate holds the event types and the tamper-evident form
//! of the trail ([`chain`]: hash chain, signed checkpoints, verifier); it knows nothing about
//! sockets, files, clocks or async runtimes.

use std::sync::Arc;

use serde::Serialize;

pub mod chain;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ConnectionOpened {
        session: u64,
        identity: String,
        identity_kind: &'static str,
        client_addr: String,
        target: String,
        tls: bool,
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
        sql: Arc<str>,
        kinds: Vec<&'static str>,
        decision: &'static str,
        rule: Option<String>,
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
    fn events_serialize_with_their_kind() {
        let e = Event::Admin {
            actor: "cli".into(),
            action: "token.create".into(),
            subject: "ci".into(),
        };
        assert!(e.to_json().starts_with("{\"event\":\"admin\""));
    }
}
