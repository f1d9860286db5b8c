//! Policy: who may run what, where. The pipeline's *decide* stage.
//!
//! Input: the [`Identity`] of the session, the [`TargetInfo`] it is connected to, and the
//! [`weir_analyze::Analysis`] of a statement. Output: a [`Decision`] that later stages carry
//! (approval, execution, masking, audit) without re-deciding.
//!
//! Boundary: this crate knows nothing about sockets, the wire protocol or storage. Policy
//! errors are decisions too: anything that goes wrong while deciding is a [`Verdict::Deny`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use weir_analyze::{Analysis, Resolution, StatementFacts, Touched};

pub mod cedar;

pub use cedar::{ApprovalFacts, PolicyError};

pub use weir_vocab::{IdentityKind, TargetInfo};

/// A verified principal. Built by the authenticator once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub kind: IdentityKind,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    /// How the identity was proven: "static", "token", "oidc".
    pub source: &'static str,
    /// The person an agent acts for (`weir token create --on-behalf-of`): policy sees it as
    /// `principal.on_behalf_of`, and decides every statement for that person too.
    pub on_behalf_of: Option<String>,
}

/// Tags of the tables a statement could touch in its session (name resolution is the
/// analyzer's: [`weir_analyze::Scope::touched`]). A name whose schema Weir cannot tell
/// carries the tags of every table of that name: when Weir cannot tell which table it is, it
/// assumes the sensitive one.
fn target_tags(target: &TargetInfo, touched: &Touched) -> Vec<String> {
    let mut tags: Vec<String> = touched
        .tables
        .iter()
        .filter_map(|n| target.sensitivity.get(n))
        .cloned()
        .collect();
    for t in &touched.anywhere {
        tags.extend(
            target
                .sensitivity
                .iter()
                .filter(|(n, _)| n.rsplit('.').next() == Some(t.as_str()))
                .map(|(_, tag)| tag.clone()),
        );
    }
    tags.sort();
    tags.dedup();
    tags
}

/// The outcome for one statement. Where rules disagree, deny beats approval beats bound
/// beats allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny { rule: String, reason: String },
    RequireApproval { rule: String, reason: String },
    AllowBounded { rows: u64, rule: String },
}

impl Verdict {
    pub fn rule(&self) -> Option<&str> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny { rule, .. }
            | Verdict::RequireApproval { rule, .. }
            | Verdict::AllowBounded { rule, .. } => Some(rule),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::RequireApproval { .. } => "approve",
            Verdict::AllowBounded { .. } => "bound",
        }
    }

    /// Rank for combining verdicts: the most severe one governs.
    /// The more severe of two verdicts for one statement (of two bounds, the smaller).
    pub fn stricter(self, other: Verdict) -> Verdict {
        match (self, other) {
            (
                Verdict::AllowBounded { rows: a, rule: ra },
                Verdict::AllowBounded { rows: b, rule: rb },
            ) => {
                if b < a {
                    Verdict::AllowBounded { rows: b, rule: rb }
                } else {
                    Verdict::AllowBounded { rows: a, rule: ra }
                }
            }
            (a, b) => {
                if b.severity() > a.severity() {
                    b
                } else {
                    a
                }
            }
        }
    }

    pub fn severity(&self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::AllowBounded { .. } => 1,
            Verdict::RequireApproval { .. } => 2,
            Verdict::Deny { .. } => 3,
        }
    }
}

/// The decision for one analyzed text: one verdict per statement, and the overall one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub analysis: Arc<Analysis>,
    pub verdicts: Vec<Verdict>,
    /// The tables each statement could touch in its session (empty when not resolved).
    pub touched: Arc<[Touched]>,
    /// Behaviour anomalies the text raised for its identity (`context.anomalies`).
    pub anomalies: Vec<String>,
}

impl Decision {
    /// The verdict that governs the whole text: the most severe of its statements'.
    pub fn overall(&self) -> &Verdict {
        self.verdicts
            .iter()
            .max_by_key(|v| v.severity())
            .unwrap_or(&Verdict::Allow)
    }
}

/// What policy sees of the session besides the statement.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// `context.granted`.
    pub granted: bool,
    /// `context.tainted`: the session read untrusted data, or this statement does.
    pub tainted: bool,
    /// `context.reads_untrusted`.
    pub reads_untrusted: bool,
    /// `context.anomalies`.
    pub anomalies: Vec<String>,
    /// `context.undoable`.
    pub undoable: bool,
}

/// The policy engine: Cedar policies (the built-in defaults and the operator's files),
/// validated against Weir's schema at load.
pub struct Policy {
    engine: Option<cedar::Engine>,
    /// Non-built-in functions the operator vouches for (`[policy] trusted_functions`): calling
    /// them is not an unknown effect. Lower case, as written in statements (`f` or `schema.f`).
    trusted_functions: std::collections::HashSet<String>,
}

/// What a session keeps to decide its statements: its principal and target as Cedar
/// entities, built once at connect.
pub struct PolicySession {
    entities: Option<cedar::SessionEntities>,
    target: TargetInfo,
    /// The identity holds an access grant on the target now (`context.granted`).
    granted: std::sync::atomic::AtomicBool,
    /// The session has read untrusted data (`context.tainted`).
    tainted: std::sync::atomic::AtomicBool,
    /// The target keeps before-images of UPDATE and DELETE: `context.undoable` is true for
    /// them until the gateway finds otherwise ([`Policy::decide_undoable`]).
    before_images: std::sync::atomic::AtomicBool,
}

impl PolicySession {
    /// Records whether the target keeps before-images (`[audit] before_images`).
    pub fn set_before_images(&self, kept: bool) {
        self.before_images
            .store(kept, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records whether the identity holds a grant on the target; later decisions see it.
    pub fn set_granted(&self, granted: bool) {
        self.granted
            .store(granted, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_tainted(&self) {
        self.tainted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn tainted(&self) -> bool {
        self.tainted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a statement that touches these tables reads untrusted data (a name whose
    /// schema Weir cannot tell counts if any untrusted table has that name).
    pub fn reads_untrusted(&self, touched: &Touched) -> bool {
        let untrusted = &self.target.untrusted;
        touched.tables.iter().any(|t| untrusted.contains(t))
            || touched.anywhere.iter().any(|n| {
                untrusted
                    .iter()
                    .any(|u| u.rsplit('.').next() == Some(n.as_str()))
            })
    }

    pub fn granted(&self) -> bool {
        self.granted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What a write copies, as the session found by lineage against the target's catalog
/// (`context.copies_sensitive`, `context.may_unmask_copies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// The labels (classes such as `ssn`, or the operator's tags) of the sensitive columns
    /// the write copies into other columns.
    pub labels: std::collections::BTreeSet<String>,
    /// The identity may see every one of those columns in clear.
    pub may_unmask: bool,
}

/// What an operator does through the console or the HTTP API, as Cedar actions (principal:
/// the operator; resource: the target concerned, or [`TargetInfo::gateway`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// See the requests waiting for approval (deciding one is action `approve`).
    ViewApprovals,
    /// See who is connected, where from, and their last statement (normalized).
    ViewSessions,
    /// End another identity's session on the target.
    EndSession,
    /// Search, replay, verify and export the audit trail.
    ReadAudit,
    /// Ask how policy would decide an identity's SQL (`weir policy check`).
    SimulatePolicy,
    /// See the access grants in force.
    ViewGrants,
    /// Revoke an access grant on the target.
    RevokeGrant,
}

impl Operation {
    pub const ALL: [Operation; 7] = [
        Operation::ViewApprovals,
        Operation::ViewSessions,
        Operation::EndSession,
        Operation::ReadAudit,
        Operation::SimulatePolicy,
        Operation::ViewGrants,
        Operation::RevokeGrant,
    ];

    /// The Cedar action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::ViewApprovals => "view_approvals",
            Operation::ViewSessions => "view_sessions",
            Operation::EndSession => "end_session",
            Operation::ReadAudit => "read_audit",
            Operation::SimulatePolicy => "simulate_policy",
            Operation::ViewGrants => "view_grants",
            Operation::RevokeGrant => "revoke_grant",
        }
    }
}

/// Parameters of the built-in rules: row limits, and the group of auditors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `weir.bulk-write-needs-approval-in-production`: an UPDATE, DELETE or MERGE in
    /// production that would change more rows waits for approval; 0 turns the rule off.
    pub bulk_write_rows: u64,
    /// Agents may write at most this many rows in production without approval; 0 keeps
    /// agents read-only there.
    pub agent_write_rows: u64,
    /// `weir.console-auditors`: members read and verify the trail, and see sessions,
    /// approvals and grants (`[policy] auditor_group`, default `weir-auditors`).
    pub auditor_group: String,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            bulk_write_rows: 1000,
            agent_write_rows: 0,
            auditor_group: "weir-auditors".into(),
        }
    }
}

impl Policy {
    /// No rules at all: everything is allowed. For tests of other stages only.
    pub fn allow_all() -> Policy {
        Policy {
            engine: None,
            trusted_functions: Default::default(),
        }
    }

    /// Functions whose calls are not an unknown effect although they are not built-ins.
    pub fn with_trusted_functions(mut self, names: &[String]) -> Policy {
        self.trusted_functions = names.iter().map(|n| n.to_lowercase()).collect();
        self
    }

    /// Loads and validates the policy set. Errors name the file and line.
    /// `approvers`: the groups the built-in `weir.approvers` rule lets approve (the admin
    /// group when empty). The built-in row limits are [`Limits::default`].
    pub fn load(
        defaults: bool,
        admin_group: &str,
        approvers: &[String],
        files: &[PathBuf],
    ) -> Result<Policy, PolicyError> {
        Policy::load_with_limits(defaults, admin_group, approvers, Limits::default(), files)
    }

    /// [`Policy::load`] with the built-in rules' row limits (`[policy] bulk_write_rows`,
    /// `agent_write_rows`).
    pub fn load_with_limits(
        defaults: bool,
        admin_group: &str,
        approvers: &[String],
        limits: Limits,
        files: &[PathBuf],
    ) -> Result<Policy, PolicyError> {
        Ok(Policy {
            engine: Some(cedar::Engine::load(
                defaults,
                admin_group,
                approvers,
                limits,
                files,
            )?),
            trusted_functions: Default::default(),
        })
    }

    pub fn session(
        &self,
        who: &Identity,
        target: &TargetInfo,
    ) -> Result<PolicySession, PolicyError> {
        Ok(PolicySession {
            entities: self
                .engine
                .as_ref()
                .map(|e| e.session(who, target))
                .transpose()?,
            target: target.clone(),
            granted: Default::default(),
            tainted: Default::default(),
            before_images: Default::default(),
        })
    }

    /// Whether the session's identity may see a sensitive column in clear (Cedar action
    /// `unmask`). Without a policy engine ([`Policy::allow_all`]) nobody may: masking fails
    /// closed.
    pub fn may_unmask(&self, session: &PolicySession, column: &str, label: &str) -> bool {
        let (Some(engine), Some(entities)) = (&self.engine, &session.entities) else {
            return false;
        };
        // The column's own class or tag, and the tag of its table.
        let mut tags = vec![label];
        if let Some((table, _)) = column.rsplit_once('.') {
            if let Some(tag) = session.target.sensitivity.get(table) {
                tags.push(tag);
            }
        }
        engine.may_unmask(entities, column, &tags)
    }

    /// Whether `approver` (a session built for the approver's identity on the request's
    /// target) may approve the request, or — with `auto` and the requester's session — whether
    /// policy approves it without asking. Without a policy engine, nobody approves.
    pub fn may_approve(
        &self,
        approver: &PolicySession,
        request: &ApprovalFacts<'_>,
        auto: bool,
    ) -> bool {
        match (&self.engine, &approver.entities) {
            (Some(engine), Some(entities)) => engine.may_approve(entities, request, auto),
            _ => false,
        }
    }

    /// Whether the session's identity may do `op` on the session's target (or, for
    /// [`Operation::on_gateway`] operations, on the gateway as a whole: build the session with
    /// [`TargetInfo::gateway`]). Only policies naming the operation's action decide it;
    /// without a policy engine, nobody may.
    pub fn may_operate(&self, session: &PolicySession, op: Operation) -> bool {
        match (&self.engine, &session.entities) {
            (Some(engine), Some(entities)) => engine.may_operate(entities, op),
            _ => false,
        }
    }

    /// Decides one statement of `weir undo` as the action `undo` (its own facts as context):
    /// what the built-in policy asks approval for in production. Without a policy engine:
    /// allowed, as every statement is.
    pub fn decide_undo(&self, session: &PolicySession, f: &StatementFacts) -> Verdict {
        match (&self.engine, &session.entities) {
            (Some(engine), Some(entities)) => engine.decide_as(
                entities,
                "undo",
                f,
                false,
                &[],
                SessionState {
                    granted: session.granted(),
                    ..SessionState::default()
                },
                None,
            ),
            _ => Verdict::Allow,
        }
    }

    /// Decides one statement again, now that the session knows what its writes copy
    /// (`context.copies_sensitive`): `f` as resolved in the session's scope.
    pub fn decide_copying(
        &self,
        session: &PolicySession,
        f: &StatementFacts,
        touched: &Touched,
        copied: &Copied,
        anomalies: &[String],
    ) -> Verdict {
        self.decide_one(session, f, touched, Some(copied), anomalies)
    }

    /// Decides one statement again, now that the session knows whether Weir keeps its
    /// before-image (`context.undoable`, until then assumed for every UPDATE and DELETE on a
    /// target that keeps them): `f` as resolved in the session's scope.
    pub fn decide_undoable(
        &self,
        session: &PolicySession,
        f: &StatementFacts,
        touched: &Touched,
        anomalies: &[String],
        undoable: bool,
    ) -> Verdict {
        self.decide_full(session, f, touched, None, anomalies, Some(undoable))
    }

    fn decide_one(
        &self,
        session: &PolicySession,
        f: &StatementFacts,
        touched: &Touched,
        copied: Option<&Copied>,
        anomalies: &[String],
    ) -> Verdict {
        self.decide_full(session, f, touched, copied, anomalies, None)
    }

    fn decide_full(
        &self,
        session: &PolicySession,
        f: &StatementFacts,
        touched: &Touched,
        copied: Option<&Copied>,
        anomalies: &[String],
        undoable: Option<bool>,
    ) -> Verdict {
        let undoable = undoable.unwrap_or_else(|| {
            session
                .before_images
                .load(std::sync::atomic::Ordering::Relaxed)
                && matches!(
                    f.kind,
                    weir_analyze::StatementKind::Update | weir_analyze::StatementKind::Delete
                )
        });
        // PREPARE and DECLARE are decided as the statement they hold: that is what
        // EXECUTE and FETCH will run.
        let holds = f.inner.is_some();
        let f = f.inner.as_deref().unwrap_or(f);
        let verdict = match (&self.engine, &session.entities) {
            (Some(engine), Some(entities)) => {
                let untrusted = f
                    .user_functions
                    .iter()
                    .any(|n| !self.trusted_functions.contains(n));
                let reads_untrusted = session.reads_untrusted(touched);
                engine.decide(
                    entities,
                    f,
                    untrusted,
                    &target_tags(&session.target, touched),
                    SessionState {
                        granted: session.granted(),
                        tainted: session.tainted() || reads_untrusted,
                        reads_untrusted,
                        anomalies: anomalies.to_vec(),
                        undoable,
                    },
                    copied,
                )
            }
            _ => Verdict::Allow,
        };
        match verdict {
            // PREPARE changes no rows: the bound is counted when EXECUTE runs it.
            Verdict::AllowBounded { .. } if holds => Verdict::Allow,
            v => v,
        }
    }

    /// One verdict per statement of a text as it means in the session
    /// ([`weir_analyze::Scope::resolve_analysis`]). Policy decides; it does not resolve
    /// names or rewrite facts.
    pub fn decide(&self, session: &PolicySession, resolution: &Resolution) -> Vec<Verdict> {
        self.decide_flagged(session, resolution, &[])
    }

    /// [`Policy::decide`] with each statement's behaviour anomalies (`context.anomalies`;
    /// a statement without an entry has none).
    pub fn decide_flagged(
        &self,
        session: &PolicySession,
        resolution: &Resolution,
        anomalies: &[Vec<String>],
    ) -> Vec<Verdict> {
        resolution
            .statements
            .iter()
            .zip(&resolution.touched)
            .enumerate()
            .map(|(i, (f, touched))| {
                let flags = anomalies.get(i).map(Vec::as_slice).unwrap_or(&[]);
                self.decide_one(session, f, touched, None, flags)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_analyze::Scope;

    #[test]
    fn sensitivity_follows_the_search_path() {
        let target = TargetInfo {
            name: "shop".into(),
            environment: "production".into(),
            sensitivity: [("sales.customers".to_string(), "pii".to_string())].into(),
            untrusted: Default::default(),
        };
        let a = weir_analyze::Analyzer::new();
        let read = a.analyze(b"select * from customers").unwrap();
        let tags = |scope: &Scope| target_tags(&target, &scope.touched(&read.statements[0]));
        let mut scope = Scope::new("app", None);
        assert!(tags(&scope).is_empty());
        scope.observe(&a.analyze(b"set search_path = sales").unwrap());
        assert_eq!(tags(&scope), ["pii"]);
        // Back to public, but the session may still reach sales (a ROLLBACK can undo a SET).
        scope.observe(&a.analyze(b"reset search_path").unwrap());
        assert_eq!(tags(&scope), ["pii"]);
        // A path change out of sight: any table of that name counts.
        let mut scope = Scope::new("app", None);
        scope.observe(
            &a.analyze(b"select set_config('search_path', 'sales', false)")
                .unwrap(),
        );
        assert_eq!(tags(&scope), ["pii"]);
        // Qualified names are exact.
        let other = a.analyze(b"select * from public.customers").unwrap();
        assert!(target_tags(&target, &scope.touched(&other.statements[0])).is_empty());
    }

    #[test]
    fn deny_wins_over_approval_and_allow() {
        let analysis = weir_analyze::Analyzer::new().analyze(b"select 1").unwrap();
        let d = Decision {
            analysis,
            touched: Arc::from(Vec::new()),
            anomalies: Vec::new(),
            verdicts: vec![
                Verdict::Allow,
                Verdict::Deny {
                    rule: "r".into(),
                    reason: "x".into(),
                },
                Verdict::RequireApproval {
                    rule: "a".into(),
                    reason: "y".into(),
                },
            ],
        };
        assert_eq!(d.overall().label(), "deny");
    }
}
