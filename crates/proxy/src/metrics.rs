//! Prometheus metrics (`GET /metrics` on `http_listen`), in the OpenMetrics text format.
//!
//! One set per process: a gateway is one process, and the audit writer's thread, the
//! sessions and the HTTP API all count into it without being handed it ([`get`]).
//! Counting is an atomic add after a label lookup; nothing on the data path waits for a
//! scrape.
//!
//! **Invariant:** no identity name, token or SQL text is ever a label value. Labels are
//! the configured target names and small fixed sets (decision, statement kind, identity
//! kind, reason), so cardinality is bounded by the configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatementLabels {
    /// allow, deny, approval, bound.
    pub decision: &'static str,
    /// The statement's kind (select, insert, …).
    pub kind: &'static str,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SessionLabels {
    pub target: String,
    /// human, service, agent.
    pub identity_kind: &'static str,
    /// wire, mcp.
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    /// approved, denied, timed_out, withdrawn.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    /// hit, miss.
    pub result: &'static str,
}

/// Every metric Weir exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub statements: Family<StatementLabels, Counter>,
    pub sessions_active: Family<SessionLabels, Gauge>,
    pub sessions_opened: Family<TargetLabels, Counter>,
    pub sessions_closed: Family<TargetLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub approvals_pending: Gauge,
    pub approvals_decided: Family<OutcomeLabels, Counter>,
    pub audit_events: Counter,
    pub audit_batch_events: Histogram,
    pub audit_flush_seconds: Histogram,
    pub upstream_connect_errors: Family<TargetLabels, Counter>,
    pub rows_returned: Family<TargetLabels, Counter>,
    pub rows_masked: Family<TargetLabels, Counter>,
    pub statement_seconds: Histogram,
    pub analysis_cache: Family<ResultLabels, Counter>,
    /// Bytes Weir wrote toward clients and toward upstreams, protocol messages whole
    /// (`weir_relayed_bytes_total{direction="to_client"|"to_upstream"}`).
    pub bytes_to_client: Counter,
    pub bytes_to_upstream: Counter,
    /// What the analyzer's own counters said at the last scrape (they are the source; the
    /// family above advances by the difference).
    analysis_seen: [AtomicU64; 2],
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weir");
        let statements = Family::default();
        registry.register(
            "statements",
            "Statements decided, by decision (allow, deny, approval, bound), kind and target",
            statements.clone(),
        );
        let sessions_active = Family::default();
        registry.register(
            "sessions_active",
            "Sessions open now, by target, identity kind and channel",
            sessions_active.clone(),
        );
        let sessions_opened = Family::default();
        registry.register(
            "sessions_opened",
            "Sessions opened, by target",
            sessions_opened.clone(),
        );
        let sessions_closed = Family::default();
        registry.register(
            "sessions_closed",
            "Sessions closed, by target",
            sessions_closed.clone(),
        );
        let auth_failures = Family::default();
        registry.register(
            "auth_failures",
            "Failed logins, by reason",
            auth_failures.clone(),
        );
        let approvals_pending = Gauge::default();
        registry.register(
            "approvals_pending",
            "Approval requests waiting for an approver",
            approvals_pending.clone(),
        );
        let approvals_decided = Family::default();
        registry.register(
            "approvals_decided",
            "Approval requests a waiting client saw concluded, by outcome (approved, denied, timed_out, withdrawn)",
            approvals_decided.clone(),
        );
        let audit_events = Counter::default();
        registry.register(
            "audit_events",
            "Events appended to the audit trail",
            audit_events.clone(),
        );
        let audit_batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "audit_batch_events",
            "Events per durable audit batch (one flush each)",
            audit_batch_events.clone(),
        );
        let audit_flush_seconds = Histogram::new(exponential_buckets(0.000_025, 2.0, 16));
        registry.register(
            "audit_flush_seconds",
            "Time to make one audit batch durable (seal, sign, write, flush)",
            audit_flush_seconds.clone(),
        );
        let upstream_connect_errors = Family::default();
        registry.register(
            "upstream_connect_errors",
            "Upstream sessions that could not be opened, by target",
            upstream_connect_errors.clone(),
        );
        let rows_returned = Family::default();
        registry.register(
            "rows",
            "Rows returned or changed by completed requests, by target",
            rows_returned.clone(),
        );
        let rows_masked = Family::default();
        registry.register(
            "rows_masked",
            "Rows of results in which some value was masked, by target",
            rows_masked.clone(),
        );
        let statement_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        registry.register(
            "request_duration_seconds",
            "Time from forwarding a request to its last answer, through Weir",
            statement_seconds.clone(),
        );
        let analysis_cache = Family::default();
        registry.register(
            "analysis_cache_lookups",
            "Statement analyses answered from the cache (hit) or analyzed (miss)",
            analysis_cache.clone(),
        );
        let relayed = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "relayed_bytes",
            "Bytes written toward clients and toward upstream servers",
            relayed.clone(),
        );
        let bytes_to_client = relayed
            .get_or_create(&DirectionLabels {
                direction: "to_client",
            })
            .clone();
        let bytes_to_upstream = relayed
            .get_or_create(&DirectionLabels {
                direction: "to_upstream",
            })
            .clone();
        Metrics {
            registry,
            bytes_to_client,
            bytes_to_upstream,
            statements,
            sessions_active,
            sessions_opened,
            sessions_closed,
            auth_failures,
            approvals_pending,
            approvals_decided,
            audit_events,
            audit_batch_events,
            audit_flush_seconds,
            upstream_connect_errors,
            rows_returned,
            rows_masked,
            statement_seconds,
            analysis_cache,
            analysis_seen: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// The text a scrape gets. `cache` is the analyzer's (hits, misses) so far and
    /// `pending` the approval requests waiting now (read by the caller from the store).
    pub fn encode(&self, cache: (u64, u64), pending: Option<i64>) -> String {
        for (i, (now, result)) in [(cache.0, "hit"), (cache.1, "miss")]
            .into_iter()
            .enumerate()
        {
            if let Some(seen) = self.analysis_seen.get(i) {
                let before = seen.fetch_max(now, Ordering::AcqRel);
                if now > before {
                    self.analysis_cache
                        .get_or_create(&ResultLabels { result })
                        .inc_by(now - before);
                }
            }
        }
        if let Some(p) = pending {
            self.approvals_pending.set(p);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub(crate) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A session counted as active while this lives.
pub(crate) struct ActiveSession {
    labels: SessionLabels,
}

impl ActiveSession {
    pub fn open(labels: SessionLabels) -> ActiveSession {
        let m = get();
        m.sessions_active.get_or_create(&labels).inc();
        m.sessions_opened
            .get_or_create(&TargetLabels {
                target: labels.target.clone(),
            })
            .inc();
        ActiveSession { labels }
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        let m = get();
        m.sessions_active.get_or_create(&self.labels).dec();
        m.sessions_closed
            .get_or_create(&TargetLabels {
                target: self.labels.target.clone(),
            })
            .inc();
    }
}

/// An upstream session of `target` could not be opened.
pub(crate) fn upstream_connect_failed(target: &str) {
    get()
        .upstream_connect_errors
        .get_or_create(&TargetLabels {
            target: target.to_owned(),
        })
        .inc();
}

/// The decision label of a verdict, as the contract names it.
pub(crate) fn decision_label(v: &weir_policy::Verdict) -> &'static str {
    match v {
        weir_policy::Verdict::Allow => "allow",
        weir_policy::Verdict::Deny { .. } => "deny",
        weir_policy::Verdict::RequireApproval { .. } => "approval",
        weir_policy::Verdict::AllowBounded { .. } => "bound",
    }
}
