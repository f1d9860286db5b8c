//! The audit seam: where events leave the pipeline.
//!
//! A session appends an event and *waits for its acknowledgement* before it forwards the
//! statement the event describes (write-ahead). [`AuditAck`] keeps that wait cheap for sinks
//! that finish at once, and lets a durable sink (group commit: many sessions' events in one
//! fsync) answer later through a channel.

use tokio::sync::oneshot;
use weir_audit::Event;

#[derive(Debug, Clone, thiserror::Error)]
#[error("audit: {0}")]
pub struct AuditError(pub String);

/// Acknowledgement of one appended event.
pub enum AuditAck {
    Done(Result<(), AuditError>),
    Pending(oneshot::Receiver<Result<(), AuditError>>),
}

impl AuditAck {
    pub async fn wait(self) -> Result<(), AuditError> {
        match self {
            AuditAck::Done(r) => r,
            AuditAck::Pending(rx) => rx
                .await
                .unwrap_or_else(|_| Err(AuditError("audit writer stopped".into()))),
        }
    }
}

pub trait AuditSink: Send + Sync + 'static {
    fn append(&self, event: Event) -> AuditAck;
}

/// Writes each event as one JSON line to the structured log (target `weir::audit`).
/// The durable, hash-chained store replaces this sink behind the same trait.
#[derive(Debug, Default)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn append(&self, event: Event) -> AuditAck {
        if tracing::enabled!(target: "weir::audit", tracing::Level::INFO) {
            tracing::info!(target: "weir::audit", "{}", event.to_json());
        }
        AuditAck::Done(Ok(()))
    }
}
