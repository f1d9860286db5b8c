//! The *decide* stage for one session: analyze a SQL text and decide it in the session's
//! scope, with the session's decision cache and its access-grant check. Protocol-neutral:
//! every entry point (PostgreSQL's Query, Parse and fastpath calls; MySQL and MCP next)
//! decides through [`Decider::decide`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tracing::info;
use weir_analyze::{Analysis, AnalyzeError, Scope, StatementFacts};
use weir_policy::{Decision, Verdict};

use super::SessionInfo;
use crate::grants::SessionEnd;

/// Most decisions one session keeps; the cache is emptied when it is full.
const MAX_CACHED: usize = 10_000;

/// A decision the session reached, kept for texts with the same facts.
struct CachedDecision {
    /// Holds the facts the key is the address of (see [`Decider::decide`]).
    _facts: Arc<[StatementFacts]>,
    resolved: Arc<[StatementFacts]>,
    touched: Arc<[weir_analyze::Touched]>,
    verdicts: Vec<Verdict>,
    /// The identity's baseline generation the verdicts were reached at.
    baseline: u64,
}

/// One session's deciding state.
pub(crate) struct Decider {
    /// Verdicts already reached in this session, by the facts they were reached for, with
    /// those facts as resolved in the session's scope. Cleared when the scope changes.
    decisions: HashMap<usize, CachedDecision>,
    /// What this session's statements mean: search_path, SQL-level prepared statements.
    scope: Scope,
    /// The scope as the request being assembled would leave it, when one of its statements
    /// changes it. Becomes `scope` if the request is forwarded; dropped if it is denied.
    pending_scope: Option<Scope>,
    /// The grants generation last looked at, and the grants this session relied on.
    grant_generation: u64,
    relied_on: HashSet<String>,
    /// Whether the verdicts in the cache were reached in a tainted session.
    tainted: bool,
}

impl Decider {
    pub fn new(scope: Scope) -> Decider {
        Decider {
            decisions: HashMap::new(),
            scope,
            pending_scope: None,
            grant_generation: u64::MAX,
            relied_on: HashSet::new(),
            tainted: false,
        }
    }

    /// The scope the request being assembled is decided in.
    pub fn request_scope(&self) -> &Scope {
        self.pending_scope.as_ref().unwrap_or(&self.scope)
    }

    /// The scope the request being assembled would leave, if it changes it (taken: the
    /// request is complete).
    pub fn take_pending(&mut self) -> Option<Scope> {
        self.pending_scope.take()
    }

    /// The request that made `scope` was forwarded: the session is in it now.
    pub fn adopt(&mut self, scope: Scope) {
        self.scope = scope;
        self.decisions.clear();
    }

    /// Keeps policy's `granted` current: re-checked only when the gateway's set of active
    /// grants changed. A session that decides while holding a grant relies on it, and ends
    /// with it (`end`).
    fn check_grant(&mut self, s: &SessionInfo, end: &Arc<SessionEnd>) {
        let grants = &s.shared.grants;
        let generation = grants.generation();
        if generation == self.grant_generation {
            return;
        }
        self.grant_generation = generation;
        let grant = grants.active_for(&s.identity.name, &s.target_name);
        if grant.is_some() != s.policy.granted() {
            s.policy.set_granted(grant.is_some());
            // Verdicts reached without (or with) the grant no longer hold.
            self.decisions.clear();
        }
        if let Some(person) = &s.person {
            let theirs = grants.active_for(&person.identity.name, &s.target_name);
            if theirs.is_some() != person.policy.granted() {
                person.policy.set_granted(theirs.is_some());
                self.decisions.clear();
            }
        }
        if let Some(g) = grant {
            if self.relied_on.insert(g.id.clone()) {
                info!(grant = %g.id, "session relies on an access grant");
                grants.depend(&g.id, s.session, end);
            }
        }
    }

    /// Analyze + decide one SQL text. Analysis failure fails closed: the text is denied.
    /// Texts that share facts (the analyzer's cache hands out the same `Arc`) share the
    /// session's decision too: identity and target do not change within a session.
    pub fn decide(&mut self, s: &SessionInfo, end: &Arc<SessionEnd>, sql: &[u8]) -> Arc<Decision> {
        let analyzed = s.shared.analyzer.analyze(sql);
        self.decide_analyzed(s, end, analyzed, sql)
    }

    /// [`Decider::decide`] for a text another analyzer read (MySQL's): `analyzed` is its
    /// result for `sql`; an error is a denial.
    pub fn decide_analyzed(
        &mut self,
        s: &SessionInfo,
        end: &Arc<SessionEnd>,
        analyzed: Result<Arc<Analysis>, AnalyzeError>,
        sql: &[u8],
    ) -> Arc<Decision> {
        self.check_grant(s, end);
        if s.policy.tainted() != self.tainted {
            // Verdicts reached before the session read untrusted data no longer hold.
            self.tainted = s.policy.tainted();
            self.decisions.clear();
        }
        let analysis = match analyzed {
            Ok(a) => a,
            Err(e) => {
                let rule = match e {
                    AnalyzeError::Parse(_) => "weir.parse",
                    AnalyzeError::NotUtf8 | AnalyzeError::Internal(_) => "weir.analyze",
                    AnalyzeError::LexingMode(_) => weir_analyze::lexing::RULE,
                };
                return Arc::new(Decision {
                    analysis: Arc::new(Analysis::synthetic(
                        &weir_analyze::redacted(&String::from_utf8_lossy(sql)),
                        Vec::new(),
                    )),
                    verdicts: vec![Verdict::Deny {
                        rule: rule.into(),
                        reason: e.to_string(),
                    }],
                    touched: Arc::from(Vec::new()),
                    anomalies: Vec::new(),
                });
            }
        };
        // A request that changes the scope (SET search_path, PREPARE, …) is decided in the
        // scope it makes, and so is the rest of the request; the cache is for the scope the
        // session is in.
        if let Some(next) = self.request_scope().after(&analysis) {
            self.pending_scope = Some(next);
        }
        if let Some(scope) = &self.pending_scope {
            return Arc::new(decide_in(s, scope, &analysis));
        }
        // INVARIANT: the cache holds the facts' `Arc`, so the address cannot be reused by
        // other facts while the entry exists.
        let key = Arc::as_ptr(&analysis.statements) as *const StatementFacts as usize;
        // Only verdicts reached with no anomaly are kept, and one is reused only while the
        // identity's baseline has not moved in a way that could flag something (a table seen,
        // a first write, a new hour, …: `Baselines::generation`); otherwise the statement's
        // anomalies are computed again.
        let generation = s.baseline_generation();
        if let Some(hit) = self.decisions.get_mut(&key) {
            let usual = hit.baseline == generation
                || hit
                    .resolved
                    .iter()
                    .zip(hit.touched.iter())
                    .all(|(f, t)| s.anomalies(f, t).is_empty());
            if usual {
                // Still none at this generation: later hits need not look again.
                hit.baseline = generation;
                return Arc::new(Decision {
                    analysis: Arc::new(analysis.with_statements(Arc::clone(&hit.resolved))),
                    verdicts: hit.verdicts.clone(),
                    touched: Arc::clone(&hit.touched),
                    anomalies: Vec::new(),
                });
            }
        }
        let decision = decide_in(s, &self.scope, &analysis);
        if !decision.anomalies.is_empty() {
            return Arc::new(decision);
        }
        if self.decisions.len() >= MAX_CACHED {
            self.decisions.clear();
        }
        self.decisions.insert(
            key,
            CachedDecision {
                _facts: Arc::clone(&analysis.statements),
                resolved: Arc::clone(&decision.analysis.statements),
                touched: Arc::clone(&decision.touched),
                verdicts: decision.verdicts.clone(),
                baseline: generation,
            },
        );
        Arc::new(decision)
    }

    /// Decides facts that did not come from SQL text (an Execute of a portal the session
    /// never saw bound, decided as a cursor fetch), in the request's scope.
    pub fn decide_facts(
        &mut self,
        s: &SessionInfo,
        end: &Arc<SessionEnd>,
        analysis: &Arc<Analysis>,
    ) -> Arc<Decision> {
        self.check_grant(s, end);
        Arc::new(decide_in(s, self.request_scope(), analysis))
    }
}

/// Resolve (analysis, in the session's scope), then decide (policy): the decision carries
/// the facts as resolved.
fn decide_in(s: &SessionInfo, scope: &Scope, analysis: &Analysis) -> Decision {
    let resolution = scope.resolve_analysis(analysis);
    let (verdicts, anomalies) = s.decide(&resolution);
    Decision {
        analysis: Arc::new(analysis.with_statements(resolution.statements.into())),
        verdicts,
        touched: Arc::from(resolution.touched),
        anomalies,
    }
}
