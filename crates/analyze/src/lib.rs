//! Statement analysis: SQL text in, facts out.
//!
//! This is the pipeline's *analyze* stage. It runs once per statement text; everything after
//! it (policy, masking, audit, approvals) consumes the [`Analysis`] and never looks at the SQL
//! again. It is a plain library: no sockets, no async runtime, no knowledge of identities.
//!
//! The gateway core ships the seam with a deliberately conservative analyzer: it records the
//! text and marks every statement [`StatementKind::Unclassified`]. The real parser
//! (libpg_query) replaces the body of [`analyze`] without changing its callers.

use std::sync::Arc;

/// What a statement does, as far as policy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// Not classified by this analyzer. Policy must treat it as the most dangerous kind.
    Unclassified,
    /// An empty query string (PostgreSQL answers EmptyQueryResponse).
    Empty,
}

impl StatementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Unclassified => "unclassified",
            StatementKind::Empty => "empty",
        }
    }
}

/// Facts about one statement of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    pub kind: StatementKind,
}

/// The analysis of one SQL text: a Query message's string or a Parse message's statement.
/// Shared (`Arc`) because a prepared statement's analysis is reused at every Execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The text as the client sent it. Later stages use it for the audit record only.
    pub sql: Arc<str>,
    pub statements: Vec<StatementFacts>,
}

/// Why a text could not be analyzed. The caller must not forward it (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("statement text is not valid UTF-8")]
    NotUtf8,
}

/// Analyzes one SQL text. The bytes come straight from the wire.
pub fn analyze(sql: &[u8]) -> Result<Arc<Analysis>, AnalyzeError> {
    let text = std::str::from_utf8(sql).map_err(|_| AnalyzeError::NotUtf8)?;
    let kind = if text.trim().is_empty() {
        StatementKind::Empty
    } else {
        StatementKind::Unclassified
    };
    Ok(Arc::new(Analysis {
        sql: Arc::from(text),
        statements: vec![StatementFacts { kind }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_fails_closed() {
        assert_eq!(analyze(b"select '\xff'"), Err(AnalyzeError::NotUtf8));
    }

    #[test]
    fn empty_text_is_empty() {
        assert_eq!(
            analyze(b"  ").unwrap().statements[0].kind,
            StatementKind::Empty
        );
    }
}
