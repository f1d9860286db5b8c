//! Masking: the pipeline's *result* stage, a streaming transform over the server's messages.
//!
//! The session hands every backend message of a request's response to the request's
//! [`ResultStage`], in order, before it reaches the client. The stage answers whether the
//! message goes out as it is ([`Rewrite::Keep`], the zero-copy path) or is replaced.
//!
//! Boundary: no sockets, no async runtime; the stage sees message tags and bodies only. It is
//! built from the [`weir_policy::Decision`] (who may see what) and never re-parses SQL.

use bytes::BytesMut;
use weir_policy::Decision;

/// What to do with one backend message.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the original bytes untouched.
    Keep,
    /// Forward these bytes (one or more complete frames) instead.
    Replace(BytesMut),
}

/// The result stage for one request.
#[derive(Debug, Default)]
pub enum ResultStage {
    /// Nothing in this response needs masking.
    #[default]
    Passthrough,
}

impl ResultStage {
    /// Builds the stage for a decided request.
    pub fn for_decision(_decision: &Decision) -> ResultStage {
        ResultStage::Passthrough
    }

    /// True when [`ResultStage::on_message`] would keep every message: the session may then
    /// forward whole buffers without looking at each message body.
    pub fn is_passthrough(&self) -> bool {
        matches!(self, ResultStage::Passthrough)
    }

    /// Called for each backend message, `body` excluding the five-byte header.
    pub fn on_message(&mut self, _tag: u8, _body: &[u8]) -> Rewrite {
        match self {
            ResultStage::Passthrough => Rewrite::Keep,
        }
    }
}
