//! Policy: who may run what, where. The pipeline's *decide* stage.
//!
//! Input: the [`Identity`] of the session, the [`TargetInfo`] it is connected to, and the
//! [`weir_analyze::Analysis`] of a statement. Output: a [`Decision`] that later stages carry
//! (approval, execution, masking, audit) without re-deciding.
//!
//! Boundary: this crate knows nothing about sockets, the wire protocol or storage. Policy
//! errors are decisions too: anything that goes wrong while deciding is a [`Verdict::Deny`].

use std::collections::BTreeMap;
use std::sync::Arc;

use weir_analyze::Analysis;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub name: String,
    pub environment: String,
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

/// The policy engine. The gateway core allows every statement; the Cedar engine replaces
/// the body of [`Policy::decide`] without changing its callers.
#[derive(Debug, Clone, Default)]
pub struct Policy {}

impl Policy {
    pub fn allow_all() -> Policy {
        Policy {}
    }

    pub fn decide(
        &self,
        _who: &Identity,
        _target: &TargetInfo,
        analysis: &Arc<Analysis>,
    ) -> Decision {
        Decision {
            analysis: Arc::clone(analysis),
            verdicts: analysis.statements.iter().map(|_| Verdict::Allow).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_over_approval_and_allow() {
        let analysis = weir_analyze::analyze(b"select 1").unwrap();
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
