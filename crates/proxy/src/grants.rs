//! Just-in-time access grants, as the gateway sees them: which identities hold a grant on
//! which target right now (policy's `context.granted`), and ending the sessions that relied
//! on a grant when it is revoked or expires.
//!
//! Grants are made and revoked through the store (by whoever decides an access request, by
//! `weir revoke`, possibly on another gateway), so one watcher per gateway reads the active
//! grants every [`POLL`] on the gateway's [`Clock`]: a grant that ends is noticed, and its
//! sessions closed, within that interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use weir_store::{Clock, Grant, Store};

use crate::audit::AuditSink;

/// How often the store's grants are read: the most a revocation or an expiry takes to end
/// the sessions that relied on the grant.
pub const POLL: Duration = Duration::from_millis(250);

/// A session's "you must end" signal, with the reason its client is told.
#[derive(Default)]
pub struct SessionEnd {
    notify: Notify,
    reason: Mutex<Option<String>>,
}

impl SessionEnd {
    pub fn end(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        // A permit is kept if the session is not waiting right now.
        self.notify.notify_one();
    }

    /// Completes when the session must end; returns why.
    pub async fn ended(&self) -> String {
        self.notify.notified().await;
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "weir: the session was ended".into())
    }
}

struct Dependent {
    session: u64,
    end: Weak<SessionEnd>,
}

pub struct Grants {
    store: Arc<dyn Store>,
    clock: Clock,
    /// Active grants by identity.
    active: RwLock<HashMap<String, Vec<Grant>>>,
    /// Bumped whenever the active set changes, so sessions re-check only then.
    generation: AtomicU64,
    /// Sessions that relied on each grant.
    dependents: Mutex<HashMap<String, Vec<Dependent>>>,
    /// Sessions opened with each Weir token (by token id): they end when it is revoked or
    /// expires.
    token_sessions: Mutex<HashMap<i64, Vec<Dependent>>>,
    /// Tokens used since the last write of their last-used time (id → seconds).
    used: Mutex<HashMap<i64, u64>>,
}

impl Grants {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Grants {
        Grants {
            store,
            clock,
            active: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            dependents: Mutex::new(HashMap::new()),
            token_sessions: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `session` authenticated with Weir token `id`: its last-used time is
    /// written, and the session ends if the token is revoked or expires.
    pub fn token_session(&self, id: i64, session: u64, end: &Arc<SessionEnd>) {
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, self.clock.now_ms() / 1000);
        self.depend_on_token(id, session, end);
    }

    /// Records that `session` ends if Weir token `id` is revoked or expires, without
    /// counting it as a use of the token (an agent's session on the token of the person it
    /// acts for).
    pub fn depend_on_token(&self, id: i64, session: u64, end: &Arc<SessionEnd>) {
        self.token_sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .push(Dependent {
                session,
                end: Arc::downgrade(end),
            });
    }

    /// Writes last-used times, and ends the sessions of tokens that are no longer active.
    async fn check_tokens(&self) {
        let used: Vec<(i64, u64)> =
            std::mem::take(&mut *self.used.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        let watched: Vec<i64> = {
            let mut sessions = self
                .token_sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Sessions that ended on their own are forgotten.
            sessions.retain(|_, deps| {
                deps.retain(|d| d.end.strong_count() > 0);
                !deps.is_empty()
            });
            sessions.keys().copied().collect()
        };
        if used.is_empty() && watched.is_empty() {
            return;
        }
        let store = Arc::clone(&self.store);
        let now = self.clock.now_ms() / 1000;
        let read = tokio::task::spawn_blocking(move || {
            if !used.is_empty() {
                store.touch_tokens(&used)?;
            }
            if watched.is_empty() {
                return Ok(Vec::new());
            }
            Ok::<_, weir_store::StoreError>(
                store
                    .list_tokens()?
                    .into_iter()
                    .filter(|t| watched.contains(&t.id) && !t.is_active(now))
                    .collect::<Vec<_>>(),
            )
        })
        .await;
        let ended = match read
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(ended) => ended,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read tokens");
                return;
            }
        };
        for t in ended {
            let deps = self
                .token_sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&t.id)
                .unwrap_or_default();
            let why = if t.revoked_at.is_some() {
                "was revoked"
            } else {
                "expired"
            };
            for d in deps {
                if let Some(end) = d.end.upgrade() {
                    tracing::info!(
                        session = d.session,
                        token = t.id,
                        "closing a session whose token {why}"
                    );
                    end.end(format!(
                        "weir: the token this session of {} logged in with {why}; the session is closed",
                        t.name
                    ));
                }
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The grant `identity` holds on `target` now (the one that lasts longest), if any.
    pub fn active_for(&self, identity: &str, target: &str) -> Option<Grant> {
        let now = self.clock.now_ms();
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(identity)?
            .iter()
            .filter(|g| g.target == target && g.is_active(now))
            .max_by_key(|g| g.expires_ms)
            .cloned()
    }

    /// Records that `session` relies on grant `id`: it ends when the grant does.
    pub fn depend(&self, id: &str, session: u64, end: &Arc<SessionEnd>) {
        self.dependents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .push(Dependent {
                session,
                end: Arc::downgrade(end),
            });
    }

    /// Reads the active grants once (blocking); at start, before sessions are accepted.
    pub fn load(&self) -> Result<(), weir_store::StoreError> {
        let grants = self.store.active_grants(self.clock.now_ms())?;
        self.install(grants);
        Ok(())
    }

    fn install(&self, grants: Vec<Grant>) -> Vec<Grant> {
        let mut by_identity: HashMap<String, Vec<Grant>> = HashMap::new();
        for g in grants {
            by_identity.entry(g.identity.clone()).or_default().push(g);
        }
        let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let ended: Vec<Grant> = active
            .values()
            .flatten()
            .filter(|old| {
                !by_identity
                    .get(&old.identity)
                    .is_some_and(|now| now.iter().any(|g| g.id == old.id))
            })
            .cloned()
            .collect();
        let same = active.len() == by_identity.len()
            && ended.is_empty()
            && by_identity.iter().all(|(k, v)| {
                active.get(k).is_some_and(|old| {
                    old.len() == v.len() && old.iter().zip(v).all(|(a, b)| a.id == b.id)
                })
            });
        *active = by_identity;
        if !same {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        ended
    }

    /// The watcher: runs for the gateway's life.
    pub async fn run(self: Arc<Self>, audit: Arc<dyn AuditSink>) {
        loop {
            tokio::time::sleep(POLL).await;
            self.check_tokens().await;
            let store = Arc::clone(&self.store);
            let now = self.clock.now_ms();
            let read = tokio::task::spawn_blocking(move || store.active_grants(now)).await;
            let grants = match read {
                Ok(Ok(g)) => g,
                Ok(Err(e)) => {
                    tracing::warn!(cause = %e, "cannot read access grants");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot read access grants");
                    continue;
                }
            };
            for ended in self.install(grants) {
                self.ended(&ended, &audit).await;
            }
        }
    }

    /// A grant is no longer active: say why in the trail, and end its sessions.
    async fn ended(&self, g: &Grant, audit: &Arc<dyn AuditSink>) {
        let store = Arc::clone(&self.store);
        let id = g.id.clone();
        let current = tokio::task::spawn_blocking(move || store.grant(&id))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let why = match current.as_ref().and_then(|c| c.revoked_by.clone()) {
            Some(by) => format!("was revoked by {by}"),
            None => {
                // Revocations are recorded by whoever revokes; expiry is noticed here.
                let _ = audit
                    .append(weir_audit::Event::Grant {
                        id: g.id.clone(),
                        decision: "expired".into(),
                        identity: g.identity.clone(),
                        target: g.target.clone(),
                        by: None,
                        expires_ms: Some(g.expires_ms),
                        session: None,
                    })
                    .wait()
                    .await;
                "expired".to_owned()
            }
        };
        let dependents = self
            .dependents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&g.id)
            .unwrap_or_default();
        for d in dependents {
            let Some(end) = d.end.upgrade() else { continue };
            let _ = audit
                .append(weir_audit::Event::Grant {
                    id: g.id.clone(),
                    decision: "ended_session".into(),
                    identity: g.identity.clone(),
                    target: g.target.clone(),
                    by: None,
                    expires_ms: None,
                    session: Some(d.session),
                })
                .wait()
                .await;
            end.end(format!(
                "weir: access grant {} for {} on {} {why}; this session relied on it and is closed",
                g.id, g.identity, g.target
            ));
        }
    }
}
