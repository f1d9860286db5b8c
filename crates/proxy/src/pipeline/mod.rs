//! The request pipeline's protocol-neutral stages, for one session: decide ([`Decider`]:
//! analysis, name resolution in the session's scope, policy, the decision cache and the
//! grant check), the catalog-backed guards that decide a request again ([`guards`]),
//! admission — the write-ahead record of every statement and of what its writes make
//! sensitive ([`admit`]) —, the approval wait ([`approval`]), and the completion event
//! ([`completed`]).
//!
//! It knows no wire format: a stage answers with verdicts or a [`Refusal`], and each
//! protocol adapter (`crate::pg` today; MySQL and MCP next) turns those into its own error.
//!
//! **Invariant (write-ahead):** nothing of a request is forwarded before [`admit`] returns
//! `Ok`, and no byte of its answers reaches the client, nor can anything it changes commit
//! or outlive a crash of Weir, before its events are durable. [`write_ahead`] decides which
//! requests may run while their events flush (their answers then wait on a
//! [`write_ahead::Durability`]); all others, and every request with derived sensitivity
//! tags, are forwarded only once durable.

use std::sync::Arc;

use tracing::warn;
use weir_audit::Event;
use weir_config::Target;
use weir_policy::{Decision, Identity, PolicySession, Verdict};

use crate::catalog::CatalogCache;
use crate::Shared;

pub(crate) mod approval;
pub(crate) mod decide;
pub(crate) mod guards;
#[cfg(test)]
mod tests;
pub(crate) mod write_ahead;

pub(crate) use decide::Decider;

/// The entry point a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A client of a wire listener.
    Wire,
    /// An MCP tool call (`crate::mcp`). It cannot hold a statement open while an approver
    /// decides, so a statement that needs approval is recorded as a request and refused at
    /// once, naming the request; once approved, the same statement runs (the auto-repeat
    /// window).
    Mcp,
    /// `weir undo --apply` (the CLI or the HTTP API): the restoring statements of one undo,
    /// decided as the action `undo` as well as what they are, and waiting for approval.
    Undo,
}

impl Channel {
    /// Whether a statement that needs approval waits for it.
    pub fn waits_for_approval(self) -> bool {
        matches!(self, Channel::Wire | Channel::Undo)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Wire => "wire",
            Channel::Mcp => "mcp",
            Channel::Undo => "undo",
        }
    }
}

/// What every stage knows of one session, whatever its protocol.
pub(crate) struct SessionInfo {
    pub session: u64,
    pub channel: Channel,
    /// The target's masking catalog; `None` when results are not masked (`[masking]
    /// enabled = false`).
    pub mask: Option<Arc<CatalogCache>>,
    pub target: Target,
    /// Shared copies of the names every statement event carries.
    pub identity_name: Arc<str>,
    pub target_name: Arc<str>,
    pub identity: Identity,
    pub policy: PolicySession,
    /// The person an agent acts for: every statement is decided for them too.
    pub person: Option<Person>,
    /// An agent's statement read untrusted data: [`admit`] records the taint in the store
    /// (so the agent's next sessions and tool calls are tainted too) before it runs.
    pub taint_pending: std::sync::atomic::AtomicBool,
    /// Overlapped requests not yet seen durable ([`write_ahead::WriteAhead`]).
    pub write_ahead: write_ahead::WriteAhead,
    /// The audit trail keeps this target's statements as sent (`[audit] full_text_targets`),
    /// not normalized.
    pub full_text: bool,
    pub shared: Arc<Shared>,
    /// Counts the session as active (`weir_sessions_active`) until it is dropped.
    pub _active: crate::metrics::ActiveSession,
    /// Lists the session among the live ones (`GET /v1/sessions`) until it is dropped.
    pub live: crate::live::Registration,
}

/// The person an agent acts for, with their own policy session.
pub(crate) struct Person {
    pub identity: Identity,
    pub policy: PolicySession,
}

/// Why a session could not be opened: policy could not be evaluated for its identity, or
/// for the person an agent acts for. The message is for the client.
#[derive(Debug)]
pub(crate) enum OpenError {
    Policy(String),
    Person(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Policy(e) => write!(
                f,
                "weir: cannot evaluate policy for this session, so it is refused: {e}"
            ),
            OpenError::Person(e) => write!(
                f,
                "weir: cannot evaluate policy for the person this agent acts for, so the session is refused: {e}"
            ),
        }
    }
}

impl SessionInfo {
    /// What every listener does once an identity is authenticated and its upstream session
    /// is open: policy sessions for the identity (and the person an agent acts for), the
    /// target's masking catalog (loaded in the background while the client composes its
    /// first request), the identity's taint and behaviour baseline.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        shared: &Arc<Shared>,
        session: u64,
        channel: Channel,
        target: &Target,
        identity: Identity,
        person: Option<Identity>,
        peer: Option<std::net::SocketAddr>,
        end: &Arc<crate::grants::SessionEnd>,
    ) -> Result<SessionInfo, OpenError> {
        let target_info = target.policy_info();
        let policy = shared
            .policy
            .session(&identity, &target_info)
            .map_err(|e| OpenError::Policy(e.to_string()))?;
        let person = match person {
            Some(identity) => Some(Person {
                policy: shared
                    .policy
                    .session(&identity, &target_info)
                    .map_err(|e| OpenError::Person(e.to_string()))?,
                identity,
            }),
            None => None,
        };
        let keeps = shared.config.audit.keeps_before_images(target);
        policy.set_before_images(keeps);
        if let Some(p) = &person {
            p.policy.set_before_images(keeps);
        }
        let identity_kind = identity.kind.as_str();
        let mask = if shared.config.masking.enabled {
            shared.upstreams.catalog(&target.name).cloned()
        } else {
            None
        };
        if let Some(cache) = &mask {
            let (cache, shared, target) = (Arc::clone(cache), Arc::clone(shared), target.clone());
            tokio::spawn(async move {
                if let Err(e) = cache.ensure(&shared, &target).await {
                    warn!(cause = %e, "cannot load the masking catalog");
                }
            });
        }
        let live = shared.sessions.register(crate::live::Opened {
            session,
            identity: &identity,
            target: &target.name,
            channel: channel.as_str(),
            peer,
            since_ms: shared.approvals.clock().now_ms(),
            end,
        });
        let info = SessionInfo {
            session,
            channel,
            mask,
            identity_name: Arc::from(identity.name.as_str()),
            target_name: Arc::from(target.name.as_str()),
            policy,
            identity,
            person,
            taint_pending: Default::default(),
            write_ahead: Default::default(),
            full_text: shared.config.audit.full_text_targets.contains(&target.name),
            _active: crate::metrics::ActiveSession::open(crate::metrics::SessionLabels {
                target: target.name.clone(),
                identity_kind,
                channel: channel.as_str(),
            }),
            live,
            target: target.clone(),
            shared: Arc::clone(shared),
        };
        info.load_taint().await;
        shared.baselines.ensure(&info.identity.name).await;
        Ok(info)
    }

    /// A decision's verdicts again, for a write whose before-image turned out not to be
    /// kept (`context.undoable` false: no usable key, over the cap), combined with the
    /// verdicts it has (the stricter holds).
    pub fn decide_not_undoable(&self, decision: &Decision) -> Vec<Verdict> {
        let policy = &self.shared.policy;
        decision
            .analysis
            .statements
            .iter()
            .zip(decision.touched.iter())
            .zip(&decision.verdicts)
            .map(|((f, t), v)| {
                let mut v = v.clone().stricter(policy.decide_undoable(
                    &self.policy,
                    f,
                    t,
                    &decision.anomalies,
                    false,
                ));
                if let Some(p) = &self.person {
                    v = v.stricter(policy.decide_undoable(
                        &p.policy,
                        f,
                        t,
                        &decision.anomalies,
                        false,
                    ));
                }
                v
            })
            .collect()
    }

    /// Policy's verdicts for resolved statements: the identity's, and for an agent acting for
    /// a person the person's too, the more severe of the two per statement. So the agent
    /// never exceeds the person, and the agent's own rules still apply.
    /// Each statement's behaviour anomalies go to policy (`context.anomalies`); their union
    /// is returned with the verdicts.
    pub fn decide(&self, resolution: &weir_analyze::Resolution) -> (Vec<Verdict>, Vec<String>) {
        let policy = &self.shared.policy;
        let flags: Vec<Vec<String>> = resolution
            .statements
            .iter()
            .zip(&resolution.touched)
            .map(|(f, t)| self.anomalies(f, t))
            .collect();
        let mut verdicts = policy.decide_flagged(&self.policy, resolution, &flags);
        if let Some(person) = &self.person {
            let theirs = policy.decide_flagged(&person.policy, resolution, &flags);
            verdicts = stricter(verdicts, theirs);
        }
        let mut anomalies: Vec<String> = flags.into_iter().flatten().collect();
        anomalies.sort();
        anomalies.dedup();
        // An agent that reads untrusted data is tainted from here on (the rest of this
        // request included), unless the read is denied.
        if self.identity.kind == weir_policy::IdentityKind::Agent {
            let reads =
                resolution.touched.iter().zip(&verdicts).any(|(t, v)| {
                    !matches!(v, Verdict::Deny { .. }) && self.policy.reads_untrusted(t)
                });
            if reads {
                self.taint();
                self.taint_pending
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        (verdicts, anomalies)
    }

    /// Changes whenever the identity's baseline moved so that a statement's anomalies could
    /// differ ([`crate::baseline::Baselines::generation`]).
    pub fn baseline_generation(&self) -> u64 {
        self.shared.baselines.generation(&self.identity.name)
    }

    /// How one statement departs from the identity's baseline ([`crate::baseline`]).
    pub fn anomalies(
        &self,
        facts: &weir_analyze::StatementFacts,
        touched: &weir_analyze::Touched,
    ) -> Vec<String> {
        self.shared
            .baselines
            .flags(&self.identity.name, &self.target_name, facts, touched)
    }

    /// Policy sees this session as tainted (`context.tainted`), for the agent and its person.
    pub fn taint(&self) {
        self.policy.set_tainted();
        if let Some(p) = &self.person {
            p.policy.set_tainted();
        }
    }

    /// Whether an agent is tainted on this target now (it read untrusted data within
    /// `[policy] taint_window`, in any session or gateway): read once at session start. A
    /// store that cannot be read counts as tainted.
    pub async fn load_taint(&self) {
        if self.identity.kind != weir_policy::IdentityKind::Agent {
            return;
        }
        let (who, target) = (self.identity.name.clone(), self.target_name.to_string());
        let approvals = &self.shared.approvals;
        let now = approvals.clock().now_ms();
        match approvals
            .with_store(move |st| st.tainted_until(&who, &target, now))
            .await
        {
            Ok(None) => {}
            Ok(Some(_)) => self.taint(),
            Err(e) => {
                warn!(cause = %e, "cannot read whether the agent is tainted; it is treated as tainted");
                self.taint();
            }
        }
    }

    /// [`SessionInfo::decide`] for a write that copies sensitive values.
    pub fn decide_copying(
        &self,
        facts: &weir_analyze::StatementFacts,
        touched: &weir_analyze::Touched,
        copied: &weir_policy::Copied,
        anomalies: &[String],
    ) -> Verdict {
        let policy = &self.shared.policy;
        let ours = policy.decide_copying(&self.policy, facts, touched, copied, anomalies);
        match &self.person {
            Some(p) => {
                ours.stricter(policy.decide_copying(&p.policy, facts, touched, copied, anomalies))
            }
            None => ours,
        }
    }

    /// Whether the session may see a sensitive column in clear: the identity, and the person
    /// an agent acts for, both.
    pub fn may_unmask(&self, column: &str, label: &str) -> bool {
        let policy = &self.shared.policy;
        policy.may_unmask(&self.policy, column, label)
            && self
                .person
                .as_ref()
                .is_none_or(|p| policy.may_unmask(&p.policy, column, label))
    }
}

/// Per statement, the more severe verdict; a statement only one side decided is denied.
fn stricter(ours: Vec<Verdict>, theirs: Vec<Verdict>) -> Vec<Verdict> {
    let n = ours.len().max(theirs.len());
    let mut ours = ours.into_iter();
    let mut theirs = theirs.into_iter();
    (0..n)
        .map(|_| match (ours.next(), theirs.next()) {
            (Some(a), Some(b)) => a.stricter(b),
            _ => Verdict::Deny {
                rule: "weir.policy-error".into(),
                reason: "the agent's and its person's decisions do not match up".into(),
            },
        })
        .collect()
}

/// A session about to start, as its opening event records it.
pub(crate) struct Opening<'a> {
    pub session: u64,
    pub identity: &'a Identity,
    pub target: &'a Target,
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    pub channel: Channel,
}

/// Records a session's opening before the client may send anything; a session whose
/// opening cannot be recorded is refused.
pub(crate) async fn session_opened(shared: &Shared, o: Opening<'_>) -> Result<(), Refusal> {
    let opened = shared.audit.append(Event::ConnectionOpened {
        session: o.session,
        identity: o.identity.name.clone(),
        identity_kind: o.identity.kind.as_str(),
        auth: o.identity.source,
        groups: o.identity.groups.clone(),
        attributes: o.identity.attributes.clone(),
        client_addr: o.peer.to_string(),
        target: o.target.name.clone(),
        tls: o.tls,
        channel: (o.channel != Channel::Wire).then_some(o.channel.as_str()),
        on_behalf_of: o.identity.on_behalf_of.clone(),
    });
    opened.wait().await.map_err(|e| {
        Refusal::unavailable(format!(
            "weir: cannot record the connection, so it is refused: {e}"
        ))
    })
}

/// A failed login on a wire listener: counted per client address, recorded one by one up to
/// the address's limit ([`crate::failures::FailedLogins`]), summed up beyond it.
pub(crate) async fn login_failed(
    shared: &Shared,
    peer: std::net::SocketAddr,
    user: &str,
    target: &str,
    error: &crate::auth::AuthError,
) {
    crate::metrics::get()
        .auth_failures
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: error.reason(),
        })
        .inc();
    let reason = error.to_string();
    let reason = reason.as_str();
    let verdict = shared.front.failed_logins.failed(peer.ip(), user);
    for summary in verdict.summaries {
        let _ = shared.audit.append(summary);
    }
    if verdict.record {
        tracing::info!(user = %user, target = %target, reason = %reason, "authentication failed");
        let _ = shared
            .audit
            .append(Event::AuthFailed {
                claimed: user.to_owned(),
                client_addr: peer.to_string(),
                target: target.to_owned(),
                reason: reason.to_owned(),
            })
            .wait()
            .await;
    } else {
        // Past the address's limit: counted for its window's summary, and not logged one by
        // one either.
        tracing::debug!(user = %user, target = %target, reason = %reason, "authentication failed (counted)");
    }
}

/// A statement Weir itself sends to a target (its catalog, a session's settings), as the
/// trail records it before it is sent: every statement that reaches the database has its
/// event.
pub(crate) fn own_statement(
    session: u64,
    target: &str,
    via: &'static str,
    sql: &str,
    rule: &str,
) -> Event {
    Event::Statement {
        session,
        request: 0,
        identity: Arc::from("weir"),
        target: Arc::from(target),
        via,
        sql: Arc::from(sql),
        fingerprint: 0,
        statements: Arc::from(Vec::new()),
        decision: "allow",
        rule: Some(rule.into()),
        anomalies: Vec::new(),
        change: None,
        not_undoable: None,
    }
}

/// Records a session's end: how many requests it made, and why it ended.
pub(crate) async fn session_closed(s: &SessionInfo, requests: u64, reason: String) {
    let _ = s
        .shared
        .audit
        .append(Event::ConnectionClosed {
            session: s.session,
            identity: s.identity.name.clone(),
            target: s.target_name.to_string(),
            requests,
            reason,
        })
        .wait()
        .await;
}

/// A statement that a request carries, with its decision.
#[derive(Clone)]
pub(crate) struct Item {
    /// How it arrived, for the trail (`query`, `parse`, `execute`, `function_call`).
    pub via: &'static str,
    pub decision: Arc<Decision>,
    /// Columns its writes make sensitive (copies of sensitive values), recorded before it
    /// is forwarded.
    pub derived: Vec<weir_mask::DerivedTag>,
    /// An UPDATE or DELETE where before-images are kept: its change id, or why it is not
    /// undoable (`crate::undo`).
    pub undo: Option<crate::undo::Mark>,
    /// An Execute's bound parameters, for a before-image's capture.
    pub params: Option<crate::undo::Params>,
}

impl Item {
    pub fn new(via: &'static str, decision: Arc<Decision>) -> Item {
        Item {
            via,
            decision,
            derived: Vec::new(),
            undo: None,
            params: None,
        }
    }
}

/// What kind of refusal it is; each protocol has its own code for each (PostgreSQL:
/// SQLSTATE 42501, 57014, 58000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// Policy, an approver or the approval deadline said no.
    Denied,
    /// The client withdrew it (a cancel while it waited for approval).
    Cancelled,
    /// Weir could not do what running it safely needs (record it, mark what it copies,
    /// follow its approval): it does not run.
    Unavailable,
}

/// Why a request does not run, in no protocol's terms: each adapter turns it into its own
/// error (SQLSTATE and fields, MySQL errno, MCP tool error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub kind: RefusalKind,
    /// The full message, `weir: …` (or the server's own words for a cancel).
    pub message: String,
    /// The rule that refused it, when policy did.
    pub rule: Option<String>,
    /// The approval request it concerns.
    pub request: Option<String>,
    /// More about it (the cancelled request).
    pub detail: Option<String>,
}

impl Refusal {
    fn new(kind: RefusalKind, message: String) -> Refusal {
        Refusal {
            kind,
            message,
            rule: None,
            request: None,
            detail: None,
        }
    }

    /// It needs an approval that the client cannot wait for: the request is open.
    pub fn approval_required(rule: &str, message: String) -> Refusal {
        let mut r = Refusal::new(RefusalKind::Denied, message);
        r.rule = Some(rule.to_owned());
        r
    }

    /// Policy denied it.
    pub fn denied(rule: &str, reason: &str) -> Refusal {
        let mut r = Refusal::new(
            RefusalKind::Denied,
            format!("weir: denied by {rule}: {reason}"),
        );
        r.rule = Some(rule.to_owned());
        r
    }

    /// An approver denied it, or nobody approved it in time.
    pub fn denied_by_approver(message: String) -> Refusal {
        Refusal::new(RefusalKind::Denied, message)
    }

    /// The client withdrew approval request `id`.
    pub fn cancelled(id: &str) -> Refusal {
        let mut r = Refusal::new(
            RefusalKind::Cancelled,
            "canceling statement due to user request".into(),
        );
        r.detail = Some(format!("weir: approval request {id} was withdrawn"));
        r.request = Some(id.to_owned());
        r
    }

    pub fn unavailable(message: String) -> Refusal {
        Refusal::new(RefusalKind::Unavailable, message)
    }

    /// Its events could not be recorded in the audit trail.
    pub fn unrecorded(e: &dyn std::fmt::Display) -> Refusal {
        Refusal::unavailable(format!(
            "weir: the statement was not run because it could not be recorded in the audit trail ({e})"
        ))
    }

    /// The columns it copies sensitive values into could not be marked sensitive.
    pub fn untagged(e: &dyn std::fmt::Display) -> Refusal {
        Refusal::unavailable(format!(
            "weir: the statement was not run because the columns it copies sensitive values into could not be marked sensitive ({e})"
        ))
    }

    pub fn with_request(mut self, id: &str) -> Refusal {
        self.request = Some(id.to_owned());
        self
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the upstream answered to one request, in no protocol's terms.
pub(crate) struct Completion {
    pub request: u64,
    /// Command tags of what ran (`SELECT 10`).
    pub tags: Vec<String>,
    pub rows: u64,
    /// When the request was forwarded.
    pub started: std::time::Instant,
    pub sqlstate: Option<String>,
    /// The result columns masked.
    pub masked: Vec<String>,
}

/// The completion event of a forwarded request. Not write-ahead: its statements' events
/// were durable before it was forwarded; a completion the trail cannot take is logged by
/// the sink.
pub(crate) fn completed(session: &SessionInfo, c: Completion) {
    let m = crate::metrics::get();
    m.statement_seconds
        .observe(c.started.elapsed().as_secs_f64());
    let target = crate::metrics::TargetLabels {
        target: session.target.name.clone(),
    };
    m.rows_returned.get_or_create(&target).inc_by(c.rows);
    if !c.masked.is_empty() {
        m.rows_masked.get_or_create(&target).inc_by(c.rows);
    }
    let anomalies = session
        .shared
        .baselines
        .observe_rows(&session.identity.name, c.rows)
        .into_iter()
        .collect();
    session.shared.audit.append_lazy(Event::Completed {
        anomalies,
        session: session.session,
        request: c.request,
        tags: c.tags,
        rows: c.rows,
        duration_us: u64::try_from(c.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        sqlstate: c.sqlstate,
        masked: c.masked,
    });
}

/// Records a statement that is refused before it has a decision (a fastpath call of a
/// function Weir cannot resolve, or cannot mask), under `rule`, and waits until it is
/// durable.
pub(crate) async fn record_refused(
    session: &SessionInfo,
    request: u64,
    via: &'static str,
    sql: &str,
    rule: &str,
) -> Result<(), Refusal> {
    session
        .shared
        .audit
        .append(Event::Statement {
            session: session.session,
            request,
            identity: Arc::clone(&session.identity_name),
            target: Arc::clone(&session.target_name),
            via,
            sql: Arc::from(sql),
            fingerprint: 0,
            statements: Arc::from(Vec::new()),
            decision: "deny",
            rule: Some(rule.into()),
            anomalies: Vec::new(),
            change: None,
            not_undoable: None,
        })
        .wait()
        .await
        .map_err(|e| Refusal::unrecorded(&e))
}

/// The verdict of a request: the most severe of its statements' (deny beats approval, which
/// beats a bound, which beats allow).
pub(crate) fn overall(items: &[Item]) -> Verdict {
    items
        .iter()
        .map(|i| i.decision.overall())
        .max_by_key(|v| v.severity())
        .cloned()
        .unwrap_or(Verdict::Allow)
}

/// Admission, write-ahead: records every statement's event (and, unless the request is
/// denied, what its writes make sensitive) and waits until they are durable; then stores
/// the derived tags. On `Err` nothing of the request may run.
///
/// `runs_now` is `Some` when the request will be forwarded as it is (allowed, or bounded
/// but provably one row), with where the session's transaction stands. If
/// [`write_ahead::may_overlap`] agrees, admission does not wait: it returns the
/// [`write_ahead::Durability`] that every answer of the request must wait on.
pub(crate) async fn admit(
    session: &SessionInfo,
    request: u64,
    items: &[Item],
    verdict: &Verdict,
    runs_now: Option<write_ahead::TxPosition>,
) -> Result<Option<write_ahead::Durability>, Refusal> {
    let audit = &session.shared.audit;
    let overlapped = runs_now.is_some_and(|tx| {
        !session
            .taint_pending
            .load(std::sync::atomic::Ordering::Relaxed)
            && write_ahead::may_overlap(
                items,
                tx,
                session.mask.as_ref().map(|c| c.snapshot()).as_deref(),
            )
    });
    if overlapped {
        session.write_ahead.overlapping(request, audit.failures());
    }
    let mut acks = Vec::with_capacity(items.len() + 1);
    let metrics = crate::metrics::get();
    for item in items {
        for (f, v) in item
            .decision
            .analysis
            .statements
            .iter()
            .zip(item.decision.verdicts.iter())
        {
            metrics
                .statements
                .get_or_create(&crate::metrics::StatementLabels {
                    decision: crate::metrics::decision_label(v),
                    kind: f.kind.as_str(),
                    target: session.target.name.clone(),
                })
                .inc();
        }
        let v = item.decision.overall();
        session.live.statement(&item.decision.analysis.normalized);
        acks.push(audit.append(Event::Statement {
            session: session.session,
            request,
            identity: Arc::clone(&session.identity_name),
            target: Arc::clone(&session.target_name),
            via: item.via,
            sql: Arc::clone(if session.full_text {
                &item.decision.analysis.sql
            } else {
                &item.decision.analysis.normalized
            }),
            fingerprint: item.decision.analysis.fingerprint,
            statements: Arc::clone(&item.decision.analysis.statements),
            decision: v.label(),
            rule: v.rule().map(str::to_owned),
            anomalies: item.decision.anomalies.clone(),
            change: item.undo.as_ref().and_then(|u| u.change.clone()),
            not_undoable: item.undo.as_ref().and_then(|u| u.not_undoable.clone()),
        }));
    }
    // What copies of sensitive values the request's writes make: on record with the
    // statements, and in the store (which every catalog reads) before anything runs.
    let derived: Vec<&weir_mask::DerivedTag> = if matches!(verdict, Verdict::Deny { .. }) {
        Vec::new()
    } else {
        items.iter().flat_map(|i| &i.derived).collect()
    };
    if !derived.is_empty() {
        acks.push(audit.append(Event::SensitivityDerived {
            session: session.session,
            request,
            identity: Arc::clone(&session.identity_name),
            target: Arc::clone(&session.target_name),
            tags: derived.iter().map(|t| t.to_string()).collect(),
        }));
    }
    if overlapped {
        observe(session, items, verdict);
        // A sink that answered at once needs no wait; one that failed at once refuses.
        let mut pending = Vec::with_capacity(acks.len());
        for ack in acks {
            match ack {
                crate::audit::AuditAck::Done(Ok(())) => {}
                crate::audit::AuditAck::Done(Err(e)) => {
                    warn!(cause = %e, "audit write failed; request refused");
                    return Err(Refusal::unrecorded(&e));
                }
                waiting => pending.push(waiting),
            }
        }
        if pending.is_empty() {
            // Durable already: nothing for the result stage to wait for, or to confirm.
            session.write_ahead.confirmed(request);
            return Ok(None);
        }
        return Ok(Some(write_ahead::Durability::new(pending)));
    }
    let mut failure = None;
    for ack in acks {
        if let Err(e) = ack.wait().await {
            failure = Some(e);
        }
    }
    if let Some(e) = failure {
        warn!(cause = %e, "audit write failed; request refused");
        return Err(Refusal::unrecorded(&e));
    }
    if !session.write_ahead.earlier_ones_held(audit.failures()) {
        warn!("an earlier overlapped statement's event may not be durable; request refused");
        return Err(Refusal::unrecorded(
            &"an earlier statement of this session may not have been recorded",
        ));
    }
    if !derived.is_empty() {
        if let Err(e) = guards::record_derived(session, items).await {
            warn!(cause = %e, "recording derived sensitivity failed; request refused");
            return Err(Refusal::untagged(&e));
        }
    }
    observe(session, items, verdict);
    if !matches!(verdict, Verdict::Deny { .. })
        && session
            .taint_pending
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        record_taint(session).await?;
    }
    Ok(None)
}

/// What the identity does goes into its baseline when it runs as decided; a request that
/// waits for approval does not count (it may never run).
fn observe(session: &SessionInfo, items: &[Item], verdict: &Verdict) {
    if matches!(verdict, Verdict::Allow | Verdict::AllowBounded { .. }) {
        let forwarded: Vec<(&weir_analyze::StatementFacts, &weir_analyze::Touched)> = items
            .iter()
            .flat_map(|i| {
                i.decision
                    .analysis
                    .statements
                    .iter()
                    .zip(i.decision.touched.iter())
            })
            .collect();
        session
            .shared
            .baselines
            .observe(&session.identity.name, &session.target_name, &forwarded);
    }
}

/// Keeps an agent's taint in the store for `[policy] taint_window`, before the read runs.
async fn record_taint(session: &SessionInfo) -> Result<(), Refusal> {
    let shared = &session.shared;
    let window = u64::try_from(shared.config.policy.taint_window.as_millis()).unwrap_or(u64::MAX);
    let until = shared.approvals.clock().now_ms().saturating_add(window);
    let (who, target) = (
        session.identity.name.clone(),
        session.target_name.to_string(),
    );
    let source = format!("session {}", session.session);
    shared
        .approvals
        .with_store(move |st| st.taint(&who, &target, &source, until))
        .await
        .map_err(|e| {
            warn!(cause = %e, "recording an agent's taint failed; request refused");
            Refusal::unavailable(format!(
                "weir: this statement reads untrusted data, and that cannot be recorded, so it does not run: {e}"
            ))
        })
}
