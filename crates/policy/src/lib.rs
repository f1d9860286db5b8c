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

use weir_analyze::{Analysis, StatementFacts};

pub mod cedar;

pub use cedar::PolicyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    Human,
    Service,
    Agent,
}

impl IdentityKind {
    /// Parses the spelling used in config, on the command line and in the store.
    pub fn parse(s: &str) -> Option<IdentityKind> {
        match s {
            "human" => Some(IdentityKind::Human),
            "service" => Some(IdentityKind::Service),
            "agent" => Some(IdentityKind::Agent),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Human => "human",
            IdentityKind::Service => "service",
            IdentityKind::Agent => "agent",
        }
    }
}

/// A verified principal. Built by the authenticator once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub kind: IdentityKind,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    /// How the identity was proven: "static", "token", "oidc".
    pub source: &'static str,
}

/// What policy needs to know about a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetInfo {
    pub name: String,
    pub environment: String,
    /// Sensitivity tags by table (`schema.table`), from `[target.tables]`.
    pub sensitivity: BTreeMap<String, String>,
}

impl TargetInfo {
    /// Tags of the tables a statement touches. An unqualified name also matches `public.`.
    fn tags(&self, f: &StatementFacts) -> Vec<String> {
        let mut tags: Vec<String> = f
            .tables_read
            .iter()
            .chain(f.tables_written.iter())
            .filter_map(|t| {
                self.sensitivity.get(t).or_else(|| {
                    (!t.contains('.'))
                        .then(|| self.sensitivity.get(&format!("public.{t}")))
                        .flatten()
                })
            })
            .cloned()
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }
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

/// The policy engine: Cedar policies (the built-in defaults and the operator's files),
/// validated against Weir's schema at load.
pub struct Policy {
    engine: Option<cedar::Engine>,
}

/// What a session keeps to decide its statements: its principal and target as Cedar
/// entities, built once at connect.
pub struct PolicySession {
    entities: Option<cedar::SessionEntities>,
    target: TargetInfo,
}

impl Policy {
    /// No rules at all: everything is allowed. For tests of other stages only.
    pub fn allow_all() -> Policy {
        Policy { engine: None }
    }

    /// Loads and validates the policy set. Errors name the file and line.
    pub fn load(
        defaults: bool,
        admin_group: &str,
        files: &[PathBuf],
    ) -> Result<Policy, PolicyError> {
        Ok(Policy {
            engine: Some(cedar::Engine::load(defaults, admin_group, files)?),
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
        })
    }

    /// Decides every statement of an analyzed text.
    pub fn decide(&self, session: &PolicySession, analysis: &Arc<Analysis>) -> Decision {
        let verdicts = analysis
            .statements
            .iter()
            .map(|f| {
                // PREPARE and DECLARE are decided as the statement they hold: that is what
                // EXECUTE and FETCH will run.
                let f = f.inner.as_deref().unwrap_or(f);
                match (&self.engine, &session.entities) {
                    (Some(engine), Some(entities)) => {
                        engine.decide(entities, f, &session.target.tags(f))
                    }
                    _ => Verdict::Allow,
                }
            })
            .collect();
        Decision {
            analysis: Arc::clone(analysis),
            verdicts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_over_approval_and_allow() {
        let analysis = weir_analyze::Analyzer::new().analyze(b"select 1").unwrap();
        let d = Decision {
            analysis,
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
