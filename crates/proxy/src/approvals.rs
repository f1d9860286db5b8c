//! Waiting for approval: the gateway side of approval requests.
//!
//! A session whose request needs approval records it in the store and *watches* it here;
//! its client waits, nothing else does (other sessions, and this session's earlier results,
//! carry on). Decisions reach the store from anywhere — the CLI, the HTTP API, a webhook
//! callback, another gateway sharing the store — so one watcher task per gateway polls the
//! store for the requests that have waiters, and only while there are any (an idle gateway
//! does not poll). The same task ends requests whose deadline passed on the gateway's
//! [`Clock`], which tests move instead of sleeping.
//!
//! Every state change is the store's conditional update (see [`weir_store::approvals`]):
//! an approval racing the timeout or the client's cancel has exactly one winner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use weir_store::{Approval, ApprovalStatus, Clock, NewApproval, Store, StoreError};

/// How often the store is read while requests wait: the most an approval given elsewhere
/// takes to release its statement, plus the store's read.
const POLL: Duration = Duration::from_millis(100);

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        by: String,
    },
    Denied {
        by: String,
        note: Option<String>,
    },
    Expired,
    Cancelled,
    /// The store could not be read or written: the statement does not run.
    Failed(String),
}

impl Outcome {
    fn of(a: &Approval) -> Option<Outcome> {
        let by = || a.decided_by.clone().unwrap_or_default();
        Some(match a.status {
            ApprovalStatus::Pending => return None,
            ApprovalStatus::Approved => Outcome::Approved { by: by() },
            ApprovalStatus::Denied => Outcome::Denied {
                by: by(),
                note: a.note.clone(),
            },
            ApprovalStatus::Expired => Outcome::Expired,
            ApprovalStatus::Cancelled => Outcome::Cancelled,
        })
    }
}

struct Waiter {
    deadline_ms: u64,
    tx: oneshot::Sender<Outcome>,
}

/// The gateway's approval requests that have a waiting client.
pub struct Approvals {
    store: Arc<dyn Store>,
    clock: Clock,
    waiters: Mutex<HashMap<String, Waiter>>,
    wake: Notify,
}

impl Approvals {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Approvals {
        Approvals {
            store,
            clock,
            waiters: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs `f` against the store on a blocking thread (SQLite may wait for a lock).
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Unsupported(format!("store task failed: {e}")))?
    }

    pub async fn create(&self, new: NewApproval) -> Result<Approval, StoreError> {
        self.with_store(move |s| s.create_approval(&new)).await
    }

    /// Moves a pending request to `to` on behalf of the gateway (timeout, cancel, automatic
    /// approval); returns whether this call made the change and the request as it stands.
    pub async fn settle(
        &self,
        id: &str,
        to: ApprovalStatus,
        by: &str,
    ) -> Result<Option<(bool, Approval)>, StoreError> {
        let (id, by, now) = (id.to_owned(), by.to_owned(), self.clock.now_ms());
        self.with_store(move |s| s.decide_approval(&id, to, &by, None, now))
            .await
    }

    /// Starts watching a recorded request; the receiver gets its outcome.
    pub fn watch(&self, id: &str, deadline_ms: u64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), Waiter { deadline_ms, tx });
        self.wake.notify_one();
        rx
    }

    /// Stops watching (the session settled the request itself).
    pub fn forget(&self, id: &str) {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The watcher: runs for the gateway's life.
    pub async fn run(self: Arc<Self>) {
        loop {
            let idle = self
                .waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty();
            if idle {
                self.wake.notified().await;
                continue;
            }
            tokio::time::sleep(POLL).await;
            self.poll_once().await;
        }
    }

    async fn poll_once(&self) {
        let watched: Vec<(String, u64)> = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, w)| (id.clone(), w.deadline_ms))
            .collect();
        let now = self.clock.now_ms();
        let results = self
            .with_store(move |s| {
                let mut out = Vec::with_capacity(watched.len());
                for (id, deadline) in watched {
                    let a = if now >= deadline {
                        s.decide_approval(&id, ApprovalStatus::Expired, "weir", None, now)?
                            .map(|(_, a)| a)
                    } else {
                        s.approval(&id)?
                    };
                    out.push((id, a));
                }
                Ok(out)
            })
            .await;
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        match results {
            Ok(results) => {
                for (id, a) in results {
                    let outcome = match &a {
                        None => Some(Outcome::Failed(format!(
                            "approval request {id} is gone from the store"
                        ))),
                        Some(a) => Outcome::of(a),
                    };
                    if let Some(outcome) = outcome {
                        if let Some(w) = waiters.remove(&id) {
                            let _ = w.tx.send(outcome);
                        }
                    }
                }
            }
            Err(e) => {
                // The store is unreadable: nobody can be released, and a wait past its
                // deadline ends failed rather than hanging.
                tracing::warn!(cause = %e, "cannot read approval requests");
                let late: Vec<String> = waiters
                    .iter()
                    .filter(|(_, w)| now >= w.deadline_ms)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in late {
                    if let Some(w) = waiters.remove(&id) {
                        let _ = w.tx.send(Outcome::Failed(e.to_string()));
                    }
                }
            }
        }
    }
}

/// A session's cancel signal: a CancelRequest for the session fires it, and a statement
/// waiting for approval (which the upstream cannot cancel: it has not seen it) stops waiting.
#[derive(Default)]
pub struct CancelSignal {
    fired: AtomicU64,
    notify: Notify,
}

impl CancelSignal {
    pub fn fire(&self) {
        self.fired.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// How many times it has fired; a waiter compares against the count when it began.
    pub fn count(&self) -> u64 {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once the signal fires after `since` (a [`CancelSignal::count`]).
    pub async fn fired_since(&self, since: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() != since {
                return;
            }
            notified.await;
        }
    }
}

/// A fresh request id: `r-` and 8 characters that cannot be confused when read aloud or
/// retyped (no 0/o, 1/l/i).
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
    let mut raw = [0u8; 8];
    if getrandom::fill(&mut raw).is_err() {
        // Without randomness, fall back on time: ids need to be unique, not secret (deciding
        // needs the store and policy, not knowledge of the id).
        let t = Clock::system().now_ms().to_le_bytes();
        raw = t;
    }
    let mut id = String::from("r-");
    for b in raw {
        let c = ALPHABET
            .get(usize::from(b) % ALPHABET.len())
            .copied()
            .unwrap_or(b'x');
        id.push(char::from(c));
    }
    id
}
