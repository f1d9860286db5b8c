//! The gateway's live sessions, for operators: who is connected to which target, from where,
//! since when, how many statements they sent and the last one (normalized, as the trail
//! keeps it), and a way to end one.
//!
//! A session registers when it is opened ([`crate::pipeline::SessionInfo::open`]) and is
//! removed when its [`Registration`] drops, whatever way the session ends. Nothing here holds
//! statement text in clear: the last statement is the normalized text (constants replaced by
//! placeholders), as the audit trail stores it unless `[audit] full_text_targets` says
//! otherwise, and then it is normalized here anyway.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::Serialize;

use crate::grants::SessionEnd;

/// What an operator sees of one session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub session: u64,
    pub identity: String,
    pub identity_kind: &'static str,
    pub target: String,
    pub channel: &'static str,
    pub client_addr: String,
    pub since_ms: u64,
    pub statements: u64,
    /// The last statement, normalized; empty before the first.
    pub last_statement: String,
}

struct Live {
    view: SessionView,
    statements: AtomicU64,
    last: Mutex<Arc<str>>,
    end: Weak<SessionEnd>,
}

/// Every live session of this gateway.
#[derive(Default)]
pub struct LiveSessions {
    sessions: Mutex<BTreeMap<u64, Arc<Live>>>,
}

/// What one session registered; removes it from the registry when dropped.
pub struct Registration {
    live: Arc<Live>,
    registry: Weak<LiveSessions>,
}

/// What opening a session tells the registry.
pub struct Opened<'a> {
    pub session: u64,
    pub identity: &'a weir_policy::Identity,
    pub target: &'a str,
    pub channel: &'static str,
    pub peer: Option<SocketAddr>,
    pub since_ms: u64,
    pub end: &'a Arc<SessionEnd>,
}

impl LiveSessions {
    pub fn register(self: &Arc<Self>, o: Opened<'_>) -> Registration {
        let live = Arc::new(Live {
            view: SessionView {
                session: o.session,
                identity: o.identity.name.clone(),
                identity_kind: o.identity.kind.as_str(),
                target: o.target.to_owned(),
                channel: o.channel,
                client_addr: o.peer.map(|p| p.to_string()).unwrap_or_default(),
                since_ms: o.since_ms,
                statements: 0,
                last_statement: String::new(),
            },
            statements: AtomicU64::new(0),
            last: Mutex::new(Arc::from("")),
            end: Arc::downgrade(o.end),
        });
        self.lock().insert(o.session, Arc::clone(&live));
        Registration {
            live,
            registry: Arc::downgrade(self),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Live>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live sessions, oldest first.
    pub fn list(&self) -> Vec<SessionView> {
        let live: Vec<Arc<Live>> = self.lock().values().cloned().collect();
        live.iter().map(|l| l.snapshot()).collect()
    }

    pub fn get(&self, session: u64) -> Option<SessionView> {
        let live = self.lock().get(&session).cloned();
        live.map(|l| l.snapshot())
    }

    /// Tells a session to end, with the reason its client gets; false when it is not live.
    pub fn end(&self, session: u64, reason: String) -> bool {
        let live = self.lock().get(&session).cloned();
        match live.and_then(|l| l.end.upgrade()) {
            Some(end) => {
                end.end(reason);
                true
            }
            None => false,
        }
    }
}

impl Live {
    fn snapshot(&self) -> SessionView {
        let mut v = self.view.clone();
        v.statements = self.statements.load(Ordering::Relaxed);
        v.last_statement = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_string();
        v
    }
}

impl Registration {
    /// A statement of the session was recorded; `normalized` is its text with constants
    /// replaced.
    pub fn statement(&self, normalized: &Arc<str>) {
        self.live.statements.fetch_add(1, Ordering::Relaxed);
        *self
            .live
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::clone(normalized);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().remove(&self.live.view.session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_listed_until_its_registration_drops_and_can_be_ended() {
        let registry = Arc::new(LiveSessions::default());
        let end = Arc::new(SessionEnd::default());
        let who = weir_policy::Identity {
            name: "ana".into(),
            kind: weir_policy::IdentityKind::Human,
            groups: Vec::new(),
            attributes: Default::default(),
            source: "static",
            on_behalf_of: None,
        };
        let reg = registry.register(Opened {
            session: 7,
            identity: &who,
            target: "shop",
            channel: "wire",
            peer: "127.0.0.1:5000".parse().ok(),
            since_ms: 1,
            end: &end,
        });
        reg.statement(&Arc::from("SELECT $1"));
        let listed = registry.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].statements, 1);
        assert_eq!(listed[0].last_statement, "SELECT $1");
        assert!(registry.end(7, "ended by an operator".into()));
        assert!(!registry.end(8, "no such".into()));
        drop(reg);
        assert!(registry.list().is_empty());
    }
}
