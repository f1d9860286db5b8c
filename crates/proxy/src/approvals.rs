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
    /// Shows outcomes in the chat messages that announced the requests.
    notifier: Arc<crate::notify::Notifier>,
    waiters: Mutex<HashMap<String, Waiter>>,
    wake: Notify,
}

impl Approvals {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Clock,
        notifier: Arc<crate::notify::Notifier>,
    ) -> Approvals {
        Approvals {
            store,
            clock,
            notifier,
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
        let settled = self
            .with_store(move |s| s.decide_approval(&id, to, &by, None, now))
            .await;
        if let Ok(Some((true, a))) = &settled {
            self.show_outcome(a);
        }
        settled
    }

    /// Updates the announcement of a settled request (in the background; once per request).
    pub(crate) fn show_outcome(&self, a: &Approval) {
        if self.notifier.enabled() {
            let (notifier, store, a) = (
                Arc::clone(&self.notifier),
                Arc::clone(&self.store),
                a.clone(),
            );
            tokio::spawn(async move { notifier.resolved(a, store).await });
        }
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
                        if let Some(a) = &a {
                            // Settled here (expired) or elsewhere (a channel without the
                            // message, another gateway): the announcement says so.
                            self.show_outcome(a);
                        }
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

/// How long an access request stays open for approvers.
pub const ACCESS_REQUEST_OPEN: Duration = Duration::from_secs(24 * 3600);

/// An access request for `grant` on `target` (`weir request`, MCP's `request_access`): the
/// event that records it (to be durable before the request is stored) and the request.
pub fn access_request(
    identity: &weir_policy::Identity,
    target: &str,
    grant: Duration,
    reason: &str,
    now_ms: u64,
) -> (weir_audit::Event, NewApproval) {
    let id = new_id();
    let statement = format!("ACCESS {target} FOR {}", humantime::format_duration(grant));
    let event = weir_audit::Event::Approval {
        id: id.clone(),
        decision: "requested".into(),
        identity: identity.name.clone(),
        target: target.to_owned(),
        session: None,
        by: None,
        rule: Some(ACCESS_RULE.into()),
        note: Some(reason.to_owned()),
        sql: Some(statement.clone()),
        fingerprint: None,
        rode_on: None,
    };
    let open = u64::try_from(ACCESS_REQUEST_OPEN.as_millis()).unwrap_or(u64::MAX);
    let request = NewApproval {
        id,
        kind: weir_store::ApprovalKind::Access,
        grant_ms: Some(u64::try_from(grant.as_millis()).unwrap_or(u64::MAX)),
        created_ms: now_ms,
        deadline_ms: now_ms.saturating_add(open),
        identity: identity.name.clone(),
        identity_kind: identity.kind.as_str().to_owned(),
        target: target.to_owned(),
        session: 0,
        fingerprint: "access".into(),
        statement,
        facts: "[]".into(),
        rows: None,
        rule: ACCESS_RULE.into(),
        reason: reason.to_owned(),
    };
    (event, request)
}

/// The rule an access request is filed under.
pub const ACCESS_RULE: &str = "weir.access-request";

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

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no approval request {0}")]
    NotFound(String),
    /// Already decided, withdrawn or timed out; the text says which.
    #[error("{0}")]
    Closed(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("a reason is required to deny: the waiting client is told why")]
    ReasonRequired,
    #[error("{0}")]
    Failed(String),
}

/// What deciding a request needs: the configuration (targets), policy, the store, the trail
/// and the clock.
pub struct Decider<'a> {
    pub config: &'a weir_config::Config,
    pub policy: &'a weir_policy::Policy,
    pub store: &'a dyn Store,
    pub audit: &'a dyn crate::audit::AuditSink,
    pub clock: &'a Clock,
}

/// Who decides: an identity policy judges, or the operator at the CLI without `--as`
/// (who holds the store itself, and may only refuse).
pub enum Approver {
    Identity(weir_policy::Identity),
    Operator(String),
}

impl Decider<'_> {
    /// Approves (`approve`) or denies request `id` on behalf of `by`, through `channel`
    /// (`cli`, `http`, `webhook`, `slack`). Approving needs policy's `approve` permit for
    /// `by`; denying is open to whoever may approve, to the requester (withdrawing), and to
    /// the operator. The decision is recorded in the trail before it takes effect; blocking.
    pub fn decide(
        &self,
        id: &str,
        by: &Approver,
        approve: bool,
        reason: Option<&str>,
        channel: &str,
    ) -> Result<Approval, DecideError> {
        let failed = |e: &dyn std::fmt::Display| DecideError::Failed(e.to_string());
        let request = self
            .store
            .approval(id)
            .map_err(|e| failed(&e))?
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        ensure_open(&request, self.clock.now_ms())?;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if !approve && reason.is_none() {
            return Err(DecideError::ReasonRequired);
        }
        let name = match by {
            Approver::Identity(who) => {
                let may = self.may_approve(&request, who)?;
                if approve && !may {
                    return Err(DecideError::NotAllowed(if who.name == request.identity {
                        format!(
                            "{0} may not approve {1}: it is {0}'s own request, and no policy lets {0} approve their own",
                            who.name, request.id
                        )
                    } else {
                        format!(
                            "{} may not approve {}: no policy permits it (the built-in rule lets human members of [approvals] approvers approve others' requests)",
                            who.name, request.id
                        )
                    }));
                }
                if !approve && !may && who.name != request.identity {
                    return Err(DecideError::NotAllowed(format!(
                        "{} may not deny {}: only those who may approve it, and its requester, may",
                        who.name, request.id
                    )));
                }
                who.name.clone()
            }
            Approver::Operator(_) if approve => {
                return Err(DecideError::NotAllowed(format!(
                    "approving needs an identity (--as NAME): whether it may approve {id} is decided by policy"
                )))
            }
            Approver::Operator(login) => login.clone(),
        };
        let decision = if approve { "approved" } else { "denied" };
        let event = weir_audit::Event::Approval {
            id: request.id.clone(),
            decision: decision.into(),
            identity: request.identity.clone(),
            target: request.target.clone(),
            session: Some(request.session),
            by: Some(name.clone()),
            rule: Some(request.rule.clone()),
            note: reason
                .map(|r| format!("{r} (via {channel})"))
                .or_else(|| Some(format!("via {channel}"))),
            sql: None,
            fingerprint: None,
            rode_on: None,
        };
        self.audit.append(event).wait_blocking().map_err(|e| {
            DecideError::Failed(format!(
                "the decision could not be recorded, so it was not taken: {e}"
            ))
        })?;
        let to = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        match self
            .store
            .decide_approval(id, to, &name, reason, self.clock.now_ms())
            .map_err(|e| failed(&e))?
        {
            Some((true, a)) => {
                if approve && a.kind == weir_store::ApprovalKind::Access {
                    let id = weir_store::approvals::grant_id(&a.id);
                    let grant = self.store.grant(&id).map_err(|e| failed(&e))?;
                    let _ = self
                        .audit
                        .append(weir_audit::Event::Grant {
                            id,
                            decision: "created".into(),
                            identity: a.identity.clone(),
                            target: a.target.clone(),
                            by: Some(name),
                            expires_ms: grant.map(|g| g.expires_ms),
                            session: None,
                        })
                        .wait_blocking();
                }
                Ok(a)
            }
            Some((false, now)) => Err(DecideError::Closed(format!(
                "request {id} was {} before this decision took effect{}",
                now.status.as_str(),
                now.decided_by
                    .map(|b| format!(" (by {b})"))
                    .unwrap_or_default()
            ))),
            None => Err(DecideError::NotFound(id.to_owned())),
        }
    }

    /// Policy's answer to "may `who` approve `request`?".
    fn may_approve(
        &self,
        request: &Approval,
        who: &weir_policy::Identity,
    ) -> Result<bool, DecideError> {
        let target = self
            .config
            .target(&request.target)
            .ok_or_else(|| {
                DecideError::Failed(format!(
                    "request {}: no target named {:?} in the configuration",
                    request.id, request.target
                ))
            })?
            .policy_info();
        let session = self
            .policy
            .session(who, &target)
            .map_err(|e| DecideError::Failed(e.to_string()))?;
        // The statement as recorded (normalized statements parse: constants are `$n`).
        let facts = weir_analyze::Analyzer::new()
            .analyze(request.statement.as_bytes())
            .ok()
            .and_then(|a| a.statements.first().cloned())
            .unwrap_or_else(|| {
                weir_analyze::StatementFacts::new(weir_analyze::StatementKind::Unknown)
            });
        Ok(self.policy.may_approve(
            &session,
            &weir_policy::ApprovalFacts {
                facts: &facts,
                sensitivity: &[],
                requester: &request.identity,
                requester_kind: &request.identity_kind,
                rule: &request.rule,
                self_approval: who.name == request.identity,
            },
            false,
        ))
    }
}

fn ensure_open(a: &Approval, now_ms: u64) -> Result<(), DecideError> {
    let closed = |why: String| Err(DecideError::Closed(why));
    match a.status {
        ApprovalStatus::Pending if now_ms >= a.deadline_ms => closed(format!(
            "request {} timed out (expired): its client no longer waits",
            a.id
        )),
        ApprovalStatus::Pending => Ok(()),
        ApprovalStatus::Cancelled => closed(format!(
            "request {} was cancelled: its client stopped waiting",
            a.id
        )),
        other => closed(format!(
            "request {} is already {}{}",
            a.id,
            other.as_str(),
            a.decided_by
                .as_ref()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default()
        )),
    }
}
