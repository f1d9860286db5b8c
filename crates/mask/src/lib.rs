//! Masking: the pipeline's *result* stage, a streaming transform over the server's messages.
//!
//! Sensitive values are masked before they leave Weir: in result rows (simple and extended
//! protocol, text and binary formats), and in values that errors and notices quote.
//!
//! - [`classify`]: what is sensitive, by a column's name and by a value's content.
//! - [`catalog`]: the upstream's columns, classified once per target by the operator's tags
//!   and the names; RowDescription's (table OID, column number) finds a result column's
//!   source whatever it is called in the query.
//! - [`strategy`]: redact, partial, email-shaped, keyed hash, null — always a value valid for
//!   the column's type and format.
//! - [`Masker`]: one session's state machine; the session hands it each result-bearing
//!   message with what it answers.
//!
//! Boundary: no sockets, no async runtime, no SQL parsing. It reads the analysis' facts (which
//! columns a computed result column reads) and asks [`Unmask`] (policy) who sees clear text.

pub mod catalog;
pub mod classify;
mod copy;
pub mod derived;
mod masker;
pub mod strategy;

pub use catalog::{
    Catalog, CatalogRow, ColumnRule, FunctionRow, Lookup, Rules, Sensitive, SourceColumn,
};
pub use derived::{derived_tags, DerivedTag};
pub use masker::{
    sensitive_state_sink, Answering, Env, Masker, NeverUnmask, Rewrite, RowPlan, Unmask,
};
pub use strategy::{HashKey, Strategy};
