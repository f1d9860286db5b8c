//! The MySQL listener's live connections, so a `KILL` reaches only the caller's own.
//!
//! Every session of a target logs in upstream as the target's one user, so the server lets
//! any of them kill any other. Weir resolves the id a client names — the connection id its
//! greeting gave (what the `mysql` CLI's Ctrl-C sends), or the server's (what
//! `CONNECTION_ID()` returns) — to a connection of the same identity on the same target, and
//! runs the KILL on that connection's server id; any other id is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Threads {
    map: Mutex<HashMap<u64, Thread>>,
}

struct Thread {
    identity: Arc<str>,
    target: Arc<str>,
    upstream: u32,
}

impl Threads {
    pub(crate) fn register(
        &self,
        session: u64,
        identity: &Arc<str>,
        target: &Arc<str>,
        upstream: u32,
    ) {
        self.lock().insert(
            session,
            Thread {
                identity: Arc::clone(identity),
                target: Arc::clone(target),
                upstream,
            },
        );
    }

    pub(crate) fn remove(&self, session: u64) {
        self.lock().remove(&session);
    }

    /// The server's id of the connection `id` names, when it is one of `identity`'s on
    /// `target`: Weir's id first, then the server's.
    pub(crate) fn resolve(&self, id: u64, identity: &str, target: &str) -> Option<u32> {
        let map = self.lock();
        let owned = |t: &&Thread| &*t.identity == identity && &*t.target == target;
        if let Some(t) = map.get(&id).filter(owned) {
            return Some(t.upstream);
        }
        map.values()
            .filter(owned)
            .find(|t| u64::from(t.upstream) == id)
            .map(|t| t.upstream)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Thread>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_identity_on_the_same_target_resolves() {
        let t = Threads::default();
        let (alice, bob, shop) = (Arc::from("alice"), Arc::from("bob"), Arc::from("shop"));
        t.register(1, &alice, &shop, 501);
        t.register(2, &bob, &shop, 502);
        assert_eq!(t.resolve(1, "alice", "shop"), Some(501));
        assert_eq!(t.resolve(501, "alice", "shop"), Some(501));
        assert_eq!(t.resolve(2, "alice", "shop"), None);
        assert_eq!(t.resolve(502, "alice", "shop"), None);
        assert_eq!(t.resolve(1, "alice", "other"), None);
        t.remove(1);
        assert_eq!(t.resolve(1, "alice", "shop"), None);
    }
}
