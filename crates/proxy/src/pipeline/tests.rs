//! The pipeline without sockets: a real store, a real trail and the built-in policy, driven
//! the way an adapter drives them. Time is the gateway's controllable clock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_audit::chain::Signer;
use weir_config::Config;
use weir_policy::{Identity, IdentityKind, Policy, Verdict};
use weir_store::audit::TrailReader;
use weir_store::{Clock, SqliteStore, Store};

use super::approval::{self, Ask};
use super::{admit, overall, Decider, Item, RefusalKind, SessionInfo};
use crate::approvals::Outcome;
use crate::audit::{AuditAck, AuditError, AuditSink, DurableSink};
use crate::grants::SessionEnd;
use crate::Shared;

/// A trail that takes nothing, as a full disk would.
struct FullDisk;

impl AuditSink for FullDisk {
    fn append(&self, _event: weir_audit::Event) -> AuditAck {
        AuditAck::Done(Err(AuditError("No space left on device".into())))
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock_file: PathBuf,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
}

impl Harness {
    /// A gateway's shared state for one production target, `extra` appended to its config;
    /// `full_disk` gives it a trail that refuses every event.
    fn new(extra: &str, full_disk: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[gateway]
postgres_listen = "127.0.0.1:1"
store = "sqlite://weir.db"

[[identity.static]]
name = "alice"
kind = "human"
groups = ["developers"]
token = "a-token-long-enough-to-be-accepted-0123456789"

[[target]]
name = "shop"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:1"
database = "shop"
user = "postgres"
password_file = "upstream-password"

[masking]
enabled = false
{extra}
"#
        );
        std::fs::write(dir.path().join("upstream-password"), "unused").unwrap();
        let config = Config::parse(&dir.path().join("weir.toml"), &text).unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("weir.db")).unwrap());
        let audit: Arc<dyn AuditSink> = if full_disk {
            Arc::new(FullDisk)
        } else {
            let trail = weir_store::audit::AuditStore::open(&dir.path().join("audit.db")).unwrap();
            Arc::new(DurableSink::start(trail, Signer::from_bytes(&[7; 32])).unwrap())
        };
        let policy = Policy::load(
            true,
            &config.policy.admin_group,
            &config.approvals.approvers,
            &[],
        )
        .unwrap();
        let clock_file = dir.path().join("clock");
        std::fs::write(&clock_file, "0").unwrap();
        let clock = Clock::from_file(clock_file.clone());
        let shared =
            Arc::new(Shared::new(config, Arc::clone(&store), policy, audit, clock).unwrap());
        Harness {
            dir,
            clock_file,
            store,
            shared,
        }
    }

    fn session(&self) -> SessionInfo {
        let identity = Identity {
            name: "alice".into(),
            kind: IdentityKind::Human,
            groups: vec!["developers".into()],
            attributes: Default::default(),
            source: "static",
            on_behalf_of: None,
        };
        let target = self.shared.config.targets[0].clone();
        let target_name = target.name.clone();
        let policy = self
            .shared
            .policy
            .session(&identity, &target.policy_info())
            .unwrap();
        let live = self.shared.sessions.register(crate::live::Opened {
            session: 1,
            identity: &identity,
            target: &target_name,
            channel: "wire",
            peer: None,
            since_ms: 0,
            end: &Arc::new(crate::grants::SessionEnd::default()),
        });
        SessionInfo {
            session: 1,
            channel: super::Channel::Wire,
            mask: None,
            identity_name: Arc::from(identity.name.as_str()),
            target_name: Arc::from(target.name.as_str()),
            target,
            identity,
            live,
            policy,
            person: None,
            taint_pending: Default::default(),
            write_ahead: Default::default(),
            full_text: false,
            _active: crate::metrics::ActiveSession::open(crate::metrics::SessionLabels {
                target: target_name.clone(),
                identity_kind: "human",
                channel: "wire",
            }),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Moves the gateway's clock `seconds` ahead of the system's.
    fn advance(&self, seconds: u64) {
        std::fs::write(&self.clock_file, seconds.to_string()).unwrap();
    }

    /// The trail's events, as JSON, in order.
    fn trail(&self) -> Vec<serde_json::Value> {
        let trail = weir_store::audit::AuditStore::open(&self.dir.path().join("audit.db")).unwrap();
        let mut events = Vec::new();
        trail
            .for_each_event(1, &Default::default(), &mut |r| {
                events.push(serde_json::from_str(&r.body).unwrap());
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        events
    }
}

fn decide(d: &mut Decider, s: &SessionInfo, sql: &str) -> Item {
    let end = Arc::new(SessionEnd::default());
    Item::new("query", d.decide(s, &end, sql.as_bytes()))
}

#[test]
fn deny_wins_over_approval_and_allow_in_one_request() {
    let h = Harness::new("", false);
    let s = h.session();
    let mut d = Decider::new(weir_analyze::Scope::new("postgres", None));
    let items = vec![
        decide(&mut d, &s, "select 1"),
        decide(&mut d, &s, "create table t (a int)"),
        decide(&mut d, &s, "drop table customers"),
    ];
    assert_eq!(items[0].decision.overall(), &Verdict::Allow);
    assert_eq!(items[1].decision.overall().label(), "approve");
    assert_eq!(overall(&items).rule(), Some("weir.no-drop-in-production"));
    assert_eq!(overall(&items[..2]).label(), "approve");
}

#[test]
fn a_text_that_does_not_parse_is_denied() {
    let h = Harness::new("", false);
    let s = h.session();
    let mut d = Decider::new(weir_analyze::Scope::default());
    let item = decide(&mut d, &s, "selec 1 frm");
    assert_eq!(item.decision.overall().rule(), Some("weir.parse"));
}

#[tokio::test]
async fn a_trail_that_cannot_record_refuses_the_request() {
    let h = Harness::new("", true);
    let s = h.session();
    let mut d = Decider::new(weir_analyze::Scope::default());
    let items = vec![decide(&mut d, &s, "select 1")];
    let refusal = admit(&s, 1, &items, &overall(&items), None)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Unavailable);
    assert!(
        refusal
            .message
            .contains("could not be recorded in the audit trail")
            && refusal.message.contains("No space left on device"),
        "{refusal}"
    );
    // Asking for approval records the request first: refused the same way.
    let items = vec![decide(&mut d, &s, "create table t (a int)")];
    match approval::ask(
        &s,
        2,
        &items,
        "weir.ddl-needs-approval-in-production",
        "r",
        None,
    )
    .await
    {
        Ask::Refuse(r) => assert_eq!(r.kind, RefusalKind::Unavailable, "{r}"),
        _ => panic!("asked for approval without a trail"),
    }
}

/// Asks for approval of a DDL statement in production and returns the wait.
async fn ask_for_ddl(s: &SessionInfo) -> approval::Waiting {
    let mut d = Decider::new(weir_analyze::Scope::default());
    let items = vec![decide(&mut d, s, "create table t (a int)")];
    assert!(admit(s, 1, &items, &overall(&items), None).await.is_ok());
    let Verdict::RequireApproval { rule, reason } = overall(&items) else {
        panic!("DDL in production should need approval");
    };
    match approval::ask(s, 1, &items, &rule, &reason, None).await {
        Ask::Wait(w) => w,
        _ => panic!("expected to wait for an approver"),
    }
}

#[tokio::test]
async fn an_approval_nobody_decides_expires_on_the_gateways_clock() {
    let h = Harness::new("[approvals]\ntimeout = \"10m\"\n", false);
    tokio::spawn(Arc::clone(&h.shared.approvals).run());
    let s = h.session();
    let waiting = ask_for_ddl(&s).await;
    assert!(waiting.notice().contains(&waiting.id));
    // Nine minutes: still waiting.
    h.advance(9 * 60);
    let early = tokio::time::timeout(
        Duration::from_millis(600),
        approval::wait(&s, &waiting, std::future::pending::<()>()),
    )
    .await;
    assert!(early.is_err(), "the request ended before its deadline");
    // Past ten minutes: expired, recorded, refused.
    h.advance(11 * 60);
    let (outcome, interrupted) = approval::wait(&s, &waiting, std::future::pending::<()>()).await;
    assert!(matches!(outcome, Outcome::Expired), "{outcome:?}");
    assert!(interrupted.is_none());
    let refusal = approval::conclude(&s, &waiting, &outcome)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Denied);
    assert!(refusal.message.contains("timed out"), "{refusal}");
    let decisions: Vec<String> = h
        .trail()
        .iter()
        .filter(|e| e["event"] == "approval")
        .map(|e| e["decision"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(decisions, ["requested", "expired"]);
}

#[tokio::test]
async fn an_approver_releases_the_waiting_request() {
    let h = Harness::new("[approvals]\ntimeout = \"10m\"\n", false);
    tokio::spawn(Arc::clone(&h.shared.approvals).run());
    let s = h.session();
    let waiting = ask_for_ddl(&s).await;
    let approvals = Arc::clone(&h.shared.approvals);
    let id = waiting.id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        approvals
            .settle(&id, weir_store::ApprovalStatus::Approved, "bob")
            .await
            .unwrap();
    });
    let (outcome, _) = approval::wait(&s, &waiting, std::future::pending::<()>()).await;
    assert!(
        matches!(&outcome, Outcome::Approved { by } if by == "bob"),
        "{outcome:?}"
    );
    approval::conclude(&s, &waiting, &outcome).await.unwrap();
    let released = h
        .trail()
        .into_iter()
        .find(|e| e["event"] == "approval" && e["decision"] == "released")
        .expect("the release is on record");
    assert_eq!(released["by"], "bob");
}

#[tokio::test]
async fn a_cancel_withdraws_the_waiting_request() {
    let h = Harness::new("[approvals]\ntimeout = \"10m\"\n", false);
    let s = h.session();
    let waiting = ask_for_ddl(&s).await;
    let (outcome, interrupted) = approval::wait(&s, &waiting, async { "cancel" }).await;
    assert_eq!(interrupted, Some("cancel"));
    assert!(matches!(outcome, Outcome::Cancelled), "{outcome:?}");
    let refusal = approval::conclude(&s, &waiting, &outcome)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Cancelled);
    // Withdrawn in the store: an approver can no longer release it.
    let later = h
        .shared
        .approvals
        .settle(&waiting.id, weir_store::ApprovalStatus::Approved, "bob")
        .await
        .unwrap();
    assert!(matches!(later, Some((false, _))), "{later:?}");
}

#[tokio::test]
async fn a_revoked_grant_ends_the_session_that_relied_on_it() {
    let h = Harness::new("", false);
    let s = h.session();
    let now = h.shared.approvals.clock().now_ms();
    h.store
        .create_approval(&weir_store::NewApproval {
            id: "r1".into(),
            kind: weir_store::ApprovalKind::Access,
            grant_ms: Some(3_600_000),
            created_ms: now,
            deadline_ms: now + 600_000,
            identity: "alice".into(),
            identity_kind: "human".into(),
            target: "shop".into(),
            session: 0,
            fingerprint: "access".into(),
            statement: String::new(),
            rows: None,
            facts: "[]".into(),
            rule: "weir.access".into(),
            reason: "migration".into(),
        })
        .unwrap();
    h.store
        .decide_approval("r1", weir_store::ApprovalStatus::Approved, "bob", None, now)
        .unwrap();
    h.shared.grants.load().unwrap();

    let end = Arc::new(SessionEnd::default());
    let mut d = Decider::new(weir_analyze::Scope::default());
    let ddl = d.decide(&s, &end, b"create table t (a int)");
    assert_eq!(ddl.overall(), &Verdict::Allow, "the grant lets DDL run");

    let grant = h.store.active_grants(now).unwrap().remove(0);
    assert!(h.store.revoke_grant(&grant.id, "bob", now).unwrap());
    tokio::spawn(Arc::clone(&h.shared.grants).run(Arc::clone(&h.shared.audit)));
    let why = tokio::time::timeout(Duration::from_secs(10), end.ended())
        .await
        .expect("the session is ended within the grant watcher's poll");
    assert!(why.contains("revoked by bob"), "{why}");
    // Decided again without the grant, DDL needs approval once more.
    let again = d.decide(
        &s,
        &Arc::new(SessionEnd::default()),
        b"create table t2 (a int)",
    );
    assert_eq!(again.overall().label(), "approve");
}
