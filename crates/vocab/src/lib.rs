//! The words every part of Weir shares, and nothing else: the kinds of identity, what policy
//! is told about a target, the masking strategies' names. Plain data with no dependencies,
//! so that the config and the store need not pull in the policy engine (Cedar) or the masker
//! to name them.

use std::collections::BTreeMap;

/// What kind of principal an identity is.
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

/// What policy needs to know about a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetInfo {
    pub name: String,
    pub environment: String,
    /// Sensitivity tags by table (`schema.table`), from `[target.tables]`.
    pub sensitivity: BTreeMap<String, String>,
    /// Tables whose contents are untrusted input (`untrusted = true`: tickets, user-written
    /// text): an agent that reads one is tainted (`context.tainted`).
    pub untrusted: std::collections::BTreeSet<String>,
}

impl TargetInfo {
    /// The resource of an operation on the gateway as a whole (searching the whole trail,
    /// simulating policy): a target named `*` in environment `*`, which no client can name.
    pub fn gateway() -> TargetInfo {
        TargetInfo {
            name: "*".into(),
            environment: "*".into(),
            sensitivity: BTreeMap::new(),
            untrusted: Default::default(),
        }
    }
}

/// The masking strategies' names, as config, the store and the trail spell them.
pub mod strategy {
    pub const REDACT: &str = "redact";
    pub const PARTIAL: &str = "partial";
    pub const EMAIL: &str = "email";
    pub const HASH: &str = "hash";
    pub const NULL: &str = "null";
    /// Every strategy, in the order the documentation lists them.
    pub const ALL: &[&str] = &[REDACT, PARTIAL, EMAIL, HASH, NULL];
}
