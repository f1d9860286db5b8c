//! One store test suite, run against both backends: the embedded SQLite store and the
//! PostgreSQL store several gateways share. Every case runs on a fresh file or database, and
//! both backends must show the same semantics, above all the same conditional updates
//! (deciding an approval, revoking a grant, clearing a tag, claiming an undo: once).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Barrier;
use std::time::Duration;

use weir::cluster::{Cluster, Options};
use weir_config::IdentityKind;
use weir_store::approvals::grant_id;
use weir_store::pg::PgStore;
use weir_store::{
    now_secs, Approval, ApprovalKind, ApprovalStatus, Baseline, BeforeImage, Grant, NewApproval,
    NewDerivedTag, NewToken, PersonRecord, SqliteStore, Store,
};

type Case = (&'static str, fn(&dyn Store));

const CASES: &[Case] = &[
    ("tokens", tokens),
    ("approvals", approvals),
    ("approval_race", approval_race),
    ("access_grants", access_grants),
    ("recent_approval", recent_approval),
    ("approval_messages", approval_messages),
    ("derived_tags", derived_tags),
    ("taints", taints),
    ("people", people),
    ("baseline", baseline),
    ("before_images", before_images),
];

/// Runs every case on a store `open` makes for it; reports all failing cases at once.
fn run_all(backend: &str, open: impl Fn(&str) -> Box<dyn Store>) {
    let mut failed = Vec::new();
    for (name, case) in CASES {
        let store = open(name);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| case(store.as_ref())));
        if outcome.is_err() {
            eprintln!("{backend}: case {name} FAILED");
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "{backend}: failed cases: {failed:?}");
}

#[test]
fn sqlite_store() {
    let dir = tempfile::Builder::new()
        .prefix("weir-store-")
        .tempdir()
        .unwrap();
    run_all("sqlite", |name| {
        let path = dir.path().join(name).join("weir.db");
        Box::new(SqliteStore::open(&path).unwrap())
    });
}

fn pg_url(cluster: &Cluster, db: &str) -> String {
    format!(
        "postgres://postgres:{}@127.0.0.1:{}/{db}",
        cluster.password, cluster.port
    )
}

fn fresh_db(cluster: &Cluster, db: &str) -> String {
    cluster
        .psql("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    pg_url(cluster, db)
}

#[test]
fn postgres_store() {
    let cluster = Cluster::start(Options {
        fast: true,
        ..Default::default()
    })
    .unwrap();
    run_all("postgres", |name| {
        let url = fresh_db(&cluster, &format!("case_{name}"));
        Box::new(PgStore::open(&url).unwrap())
    });
    migrations_run_once_under_concurrent_opens(&cluster);
    two_gateways_race_one_decision(&cluster);
}

// ---- PostgreSQL only -----------------------------------------------------------------------

/// Two gateways starting at once on an empty database: both open, each migration once.
fn migrations_run_once_under_concurrent_opens(cluster: &Cluster) {
    let url = fresh_db(cluster, "migrations");
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let opens: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    PgStore::open(&url).map(|_| ())
                })
            })
            .collect();
        for o in opens {
            let r = o.join().unwrap();
            assert!(r.is_ok(), "concurrent open failed: {r:?}");
        }
    });
    let counts = || {
        cluster
            .psql(
                "migrations",
                "SELECT count(*), count(DISTINCT version), max(version) FROM weir_schema_migrations",
            )
            .unwrap()
            .trim()
            .to_owned()
    };
    let first = counts();
    let parts: Vec<i64> = first.split('|').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{first}");
    assert!(parts[0] >= 1, "no migration recorded: {first}");
    assert_eq!(
        parts[0], parts[1],
        "a migration version recorded twice: {first}"
    );
    assert_eq!(parts[0], parts[2], "versions are 1..=n, each once: {first}");
    // A later open finds nothing left to do.
    PgStore::open(&url).unwrap();
    assert_eq!(counts(), first);
}

/// Two gateways (two stores on one database) deciding the same requests at once: exactly one
/// decision wins each time, and an approved access request makes exactly one grant.
fn two_gateways_race_one_decision(cluster: &Cluster) {
    let url = fresh_db(cluster, "two_gateways");
    let a = PgStore::open(&url).unwrap();
    let b = PgStore::open(&url).unwrap();
    let gateways: [&dyn Store; 2] = [&a, &b];
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        let id = format!("r-race{round}");
        a.create_approval(&access(&id, 1_000 + round as u64, Some(60_000)))
            .unwrap();
        let barrier = Barrier::new(2);
        let results: Vec<(ApprovalStatus, &str, bool, Approval)> = std::thread::scope(|s| {
            let handles: Vec<_> = gateways
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let (to, by) = if i == 0 {
                        (ApprovalStatus::Approved, "gw-a")
                    } else {
                        (ApprovalStatus::Denied, "gw-b")
                    };
                    let (barrier, id) = (&barrier, &id);
                    s.spawn(move || {
                        barrier.wait();
                        let (won, now) = g
                            .decide_approval(id, to, by, Some("race"), 50_000)
                            .unwrap()
                            .unwrap();
                        (to, by, won, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<_> = results.iter().filter(|r| r.2).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let (to, by, _, _) = winners[0];
        for (_, _, _, now) in &results {
            assert_eq!(now.status, *to, "round {round}");
            assert_eq!(now.decided_by.as_deref(), Some(*by), "round {round}");
        }
        let stored = b.approval(&id).unwrap().unwrap();
        assert_eq!(stored.status, *to);
        let grant = a.grant(&grant_id(&id)).unwrap();
        assert_eq!(
            grant.is_some(),
            *to == ApprovalStatus::Approved,
            "round {round}: grant {grant:?} after {to:?}"
        );
    }
    let approved = (0..ROUNDS)
        .filter(|r| {
            a.approval(&format!("r-race{r}")).unwrap().unwrap().status == ApprovalStatus::Approved
        })
        .count();
    assert_eq!(b.active_grants(50_000).unwrap().len(), approved);
}

// ---- helpers -------------------------------------------------------------------------------

fn request(id: &str, created_ms: u64) -> NewApproval {
    NewApproval {
        id: id.to_owned(),
        kind: ApprovalKind::Statement,
        grant_ms: None,
        created_ms,
        deadline_ms: created_ms + 60_000,
        identity: "alice".to_owned(),
        identity_kind: "human".to_owned(),
        target: "prod".to_owned(),
        session: 7,
        fingerprint: "ab12cd34".to_owned(),
        statement: "DELETE FROM t WHERE id > $1".to_owned(),
        facts: r#"[{"kind":"delete","tables":["public.t"]}]"#.to_owned(),
        rows: Some(3),
        rule: "big-writes".to_owned(),
        reason: "changes more than 2 rows".to_owned(),
    }
}

fn access(id: &str, created_ms: u64, grant_ms: Option<u64>) -> NewApproval {
    NewApproval {
        kind: ApprovalKind::Access,
        grant_ms,
        fingerprint: String::new(),
        statement: String::new(),
        facts: "[]".to_owned(),
        rows: None,
        rule: "access".to_owned(),
        reason: "incident 42".to_owned(),
        ..request(id, created_ms)
    }
}

/// The request as the store holds it before anyone decides.
fn as_pending(a: &NewApproval) -> Approval {
    Approval {
        id: a.id.clone(),
        kind: a.kind,
        grant_ms: a.grant_ms,
        created_ms: a.created_ms,
        deadline_ms: a.deadline_ms,
        identity: a.identity.clone(),
        identity_kind: a.identity_kind.clone(),
        target: a.target.clone(),
        session: a.session,
        fingerprint: a.fingerprint.clone(),
        statement: a.statement.clone(),
        facts: a.facts.clone(),
        rows: a.rows,
        rule: a.rule.clone(),
        reason: a.reason.clone(),
        status: ApprovalStatus::Pending,
        decided_by: None,
        decided_ms: None,
        note: None,
    }
}

fn ids(list: &[Approval]) -> Vec<&str> {
    list.iter().map(|a| a.id.as_str()).collect()
}

fn decide(
    s: &dyn Store,
    id: &str,
    to: ApprovalStatus,
    by: &str,
    note: Option<&str>,
    now_ms: u64,
) -> (bool, Approval) {
    s.decide_approval(id, to, by, note, now_ms)
        .unwrap()
        .unwrap_or_else(|| panic!("no request {id}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn map(v: &[(&str, &str)]) -> BTreeMap<String, String> {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---- cases ---------------------------------------------------------------------------------

fn tokens(s: &dyn Store) {
    assert!(s.list_tokens().unwrap().is_empty());
    let before = now_secs();
    let bot_groups = strings(&["ci", "etl"]);
    let bot_attrs = map(&[("team", "data"), ("env", "prod")]);
    let bot = s
        .create_token(NewToken {
            name: "bot",
            kind: IdentityKind::Service,
            groups: &bot_groups,
            attributes: &bot_attrs,
            ttl: Some(Duration::from_secs(3600)),
            hash: [1; 32],
            on_behalf_of: None,
        })
        .unwrap();
    let agent = s
        .create_token(NewToken {
            name: "agent",
            kind: IdentityKind::Agent,
            groups: &[],
            attributes: &BTreeMap::new(),
            ttl: None,
            hash: [2; 32],
            on_behalf_of: Some("alice"),
        })
        .unwrap();
    let bot2 = s
        .create_token(NewToken {
            name: "bot",
            kind: IdentityKind::Service,
            groups: &bot_groups,
            attributes: &BTreeMap::new(),
            ttl: None,
            hash: [3; 32],
            on_behalf_of: None,
        })
        .unwrap();
    let after = now_secs();

    assert_eq!(bot.name, "bot");
    assert_eq!(bot.kind, IdentityKind::Service);
    assert_eq!(bot.groups, bot_groups);
    assert_eq!(bot.attributes, bot_attrs);
    assert!((before..=after).contains(&bot.created_at), "{bot:?}");
    assert_eq!(bot.expires_at, Some(bot.created_at + 3600));
    assert_eq!(bot.revoked_at, None);
    assert_eq!(bot.last_used_at, None);
    assert_eq!(bot.on_behalf_of, None);
    assert_eq!(agent.kind, IdentityKind::Agent);
    assert!(agent.groups.is_empty());
    assert!(agent.attributes.is_empty());
    assert_eq!(agent.expires_at, None);
    assert_eq!(agent.on_behalf_of.as_deref(), Some("alice"));
    assert!(bot.id < agent.id && agent.id < bot2.id, "ids grow");

    // What create returned is what the store holds.
    assert_eq!(s.find_token(&[1; 32]).unwrap().as_ref(), Some(&bot));
    assert_eq!(s.find_token(&[2; 32]).unwrap().as_ref(), Some(&agent));
    assert_eq!(s.find_token(&[3; 32]).unwrap().as_ref(), Some(&bot2));
    assert_eq!(s.find_token(&[9; 32]).unwrap(), None);
    assert_eq!(
        s.list_tokens().unwrap(),
        vec![bot.clone(), agent.clone(), bot2.clone()]
    );

    // A hash is unique.
    let dup = s.create_token(NewToken {
        name: "other",
        kind: IdentityKind::Human,
        groups: &[],
        attributes: &BTreeMap::new(),
        ttl: None,
        hash: [1; 32],
        on_behalf_of: None,
    });
    assert!(dup.is_err(), "duplicate hash accepted: {dup:?}");
    assert_eq!(s.list_tokens().unwrap().len(), 3);

    // last_used_at only moves forward.
    s.touch_tokens(&[(bot.id, 100)]).unwrap();
    s.touch_tokens(&[(bot.id, 50)]).unwrap();
    assert_eq!(
        s.find_token(&[1; 32]).unwrap().unwrap().last_used_at,
        Some(100)
    );
    s.touch_tokens(&[(agent.id, 7), (agent.id, 5), (bot2.id, 9)])
        .unwrap();
    assert_eq!(
        s.find_token(&[2; 32]).unwrap().unwrap().last_used_at,
        Some(7)
    );
    assert_eq!(
        s.find_token(&[3; 32]).unwrap().unwrap().last_used_at,
        Some(9)
    );
    s.touch_tokens(&[]).unwrap();
    s.touch_tokens(&[(999_999, 5)]).unwrap();

    // Revoking counts the active tokens of the name, once.
    assert_eq!(s.revoke_tokens("bot").unwrap(), 2);
    assert_eq!(s.revoke_tokens("bot").unwrap(), 0);
    assert_eq!(s.revoke_tokens("nobody").unwrap(), 0);
    let now = now_secs();
    let revoked = s.find_token(&[1; 32]).unwrap().unwrap();
    let at = revoked.revoked_at.expect("revoked");
    assert!(at >= bot.created_at && at <= now, "{revoked:?}");
    assert!(!revoked.is_active(now));
    assert_eq!(revoked.last_used_at, Some(100));
    assert!(s
        .find_token(&[3; 32])
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    let agent_now = s.find_token(&[2; 32]).unwrap().unwrap();
    assert!(agent_now.is_active(now));
    assert_eq!(agent_now.revoked_at, None);
}

fn approvals(s: &dyn Store) {
    assert!(s.pending_approvals().unwrap().is_empty());
    let r2 = request("r-2", 2_000);
    let r1 = request("r-1", 1_000);
    let mut r3 = request("r-3", 1_000);
    r3.rows = None;
    r3.session = u64::from(u32::MAX) + 5;
    for r in [&r2, &r1, &r3] {
        assert_eq!(s.create_approval(r).unwrap(), as_pending(r));
    }
    assert_eq!(s.approval("r-1").unwrap(), Some(as_pending(&r1)));
    assert_eq!(s.approval("r-3").unwrap(), Some(as_pending(&r3)));
    assert_eq!(s.approval("r-none").unwrap(), None);
    // An id is taken once.
    assert!(s.create_approval(&request("r-1", 9_000)).is_err());
    assert_eq!(s.approval("r-1").unwrap(), Some(as_pending(&r1)));

    // Oldest first, then by id.
    assert_eq!(ids(&s.pending_approvals().unwrap()), ["r-1", "r-3", "r-2"]);

    // Decided once: the second decider loses and sees what it lost to.
    let (won, now) = decide(s, "r-1", ApprovalStatus::Approved, "bob", Some("ok"), 5_000);
    assert!(won);
    let approved = Approval {
        status: ApprovalStatus::Approved,
        decided_by: Some("bob".to_owned()),
        decided_ms: Some(5_000),
        note: Some("ok".to_owned()),
        ..as_pending(&r1)
    };
    assert_eq!(now, approved);
    let (won, now) = decide(s, "r-1", ApprovalStatus::Denied, "carol", Some("no"), 6_000);
    assert!(!won);
    assert_eq!(now, approved);
    assert_eq!(s.approval("r-1").unwrap(), Some(approved));
    assert_eq!(
        s.decide_approval("r-none", ApprovalStatus::Approved, "bob", None, 5_000)
            .unwrap(),
        None
    );
    // A statement's approval makes no grant.
    assert_eq!(s.grant(&grant_id("r-1")).unwrap(), None);

    assert_eq!(ids(&s.pending_approvals().unwrap()), ["r-3", "r-2"]);
    let (won, now) = decide(s, "r-3", ApprovalStatus::Expired, "timeout", None, 61_000);
    assert!(won);
    assert_eq!(now.status, ApprovalStatus::Expired);
    assert_eq!(now.note, None);
    assert_eq!(now.decided_ms, Some(61_000));
    let (won, now) = decide(s, "r-3", ApprovalStatus::Cancelled, "client", None, 62_000);
    assert!(!won);
    assert_eq!(now.status, ApprovalStatus::Expired);
    assert_eq!(now.decided_by.as_deref(), Some("timeout"));
    let (won, now) = decide(s, "r-2", ApprovalStatus::Cancelled, "client", None, 3_000);
    assert!(won);
    assert_eq!(now.status, ApprovalStatus::Cancelled);
    assert!(s.pending_approvals().unwrap().is_empty());
}

/// Eight deciders on one pending request at once: exactly one wins, all see its decision.
fn approval_race(s: &dyn Store) {
    for round in 0..3 {
        let id = format!("r-race{round}");
        s.create_approval(&request(&id, 1_000)).unwrap();
        let barrier = Barrier::new(8);
        let results: Vec<(usize, bool, Approval)> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (barrier, id) = (&barrier, &id);
                    sc.spawn(move || {
                        let to = if i % 2 == 0 {
                            ApprovalStatus::Approved
                        } else {
                            ApprovalStatus::Denied
                        };
                        barrier.wait();
                        let (won, now) = decide(s, id, to, &format!("t{i}"), Some("race"), 2_000);
                        (i, won, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<_> = results.iter().filter(|r| r.1).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0].0;
        let final_state = s.approval(&id).unwrap().unwrap();
        assert_eq!(
            final_state.decided_by.as_deref(),
            Some(format!("t{winner}").as_str())
        );
        for (_, _, now) in &results {
            assert_eq!(*now, final_state, "round {round}");
        }
    }
}

fn access_grants(s: &dyn Store) {
    let req = access("r-acc1", 1_000, Some(60_000));
    assert_eq!(s.create_approval(&req).unwrap(), as_pending(&req));
    assert_eq!(grant_id("r-acc1"), "g-acc1");
    assert_eq!(s.grant("g-acc1").unwrap(), None);
    assert!(s.active_grants(0).unwrap().is_empty());

    let (won, _) = decide(s, "r-acc1", ApprovalStatus::Approved, "bob", None, 10_000);
    assert!(won);
    let grant = Grant {
        id: "g-acc1".to_owned(),
        identity: "alice".to_owned(),
        target: "prod".to_owned(),
        created_ms: 10_000,
        expires_ms: 70_000,
        approval: "r-acc1".to_owned(),
        reason: "incident 42".to_owned(),
        approved_by: "bob".to_owned(),
        revoked_ms: None,
        revoked_by: None,
    };
    assert_eq!(s.grant(&grant_id("r-acc1")).unwrap(), Some(grant.clone()));
    // A losing second decision makes no second grant (nor fails on the first).
    let (won, now) = decide(s, "r-acc1", ApprovalStatus::Approved, "carol", None, 11_000);
    assert!(!won);
    assert_eq!(now.decided_by.as_deref(), Some("bob"));
    assert_eq!(s.grant("g-acc1").unwrap(), Some(grant.clone()));

    assert_eq!(s.active_grants(10_000).unwrap(), vec![grant.clone()]);
    assert_eq!(s.active_grants(69_999).unwrap(), vec![grant.clone()]);
    assert!(s.active_grants(70_000).unwrap().is_empty());

    // Active grants, oldest first.
    s.create_approval(&access("r-acc4", 2_000, Some(100_000)))
        .unwrap();
    s.create_approval(&access("r-acc5", 2_000, Some(100_000)))
        .unwrap();
    decide(s, "r-acc4", ApprovalStatus::Approved, "bob", None, 30_000);
    decide(s, "r-acc5", ApprovalStatus::Approved, "bob", None, 25_000);
    let active: Vec<String> = s
        .active_grants(40_000)
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert_eq!(active, ["g-acc1", "g-acc5", "g-acc4"]);

    // Revoked once.
    assert!(s.revoke_grant("g-acc1", "carol", 20_000).unwrap());
    assert!(!s.revoke_grant("g-acc1", "dave", 21_000).unwrap());
    let revoked = Grant {
        revoked_ms: Some(20_000),
        revoked_by: Some("carol".to_owned()),
        ..grant
    };
    assert_eq!(s.grant("g-acc1").unwrap(), Some(revoked.clone()));
    assert!(!revoked.is_active(20_001));
    let active: Vec<String> = s
        .active_grants(40_000)
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert_eq!(active, ["g-acc5", "g-acc4"]);
    assert!(!s.revoke_grant("g-none", "carol", 20_000).unwrap());
    assert_eq!(s.grant("g-none").unwrap(), None);

    // An expired grant cannot be revoked (at or after its end).
    s.create_approval(&access("r-acc2", 3_000, Some(1_000)))
        .unwrap();
    decide(s, "r-acc2", ApprovalStatus::Approved, "bob", None, 100_000);
    assert_eq!(s.grant("g-acc2").unwrap().unwrap().expires_ms, 101_000);
    assert!(!s.revoke_grant("g-acc2", "carol", 101_000).unwrap());
    assert!(!s.revoke_grant("g-acc2", "carol", 200_000).unwrap());
    assert_eq!(s.grant("g-acc2").unwrap().unwrap().revoked_ms, None);

    // A denied request makes no grant; one without a duration ends as it starts.
    s.create_approval(&access("r-acc3", 4_000, Some(60_000)))
        .unwrap();
    decide(
        s,
        "r-acc3",
        ApprovalStatus::Denied,
        "bob",
        Some("no"),
        5_000,
    );
    assert_eq!(s.grant("g-acc3").unwrap(), None);
    s.create_approval(&access("r-acc6", 4_000, None)).unwrap();
    decide(s, "r-acc6", ApprovalStatus::Approved, "bob", None, 6_000);
    let g6 = s.grant("g-acc6").unwrap().unwrap();
    assert_eq!((g6.created_ms, g6.expires_ms), (6_000, 6_000));
    assert!(!s
        .active_grants(6_000)
        .unwrap()
        .iter()
        .any(|g| g.id == "g-acc6"));
}

fn recent_approval(s: &dyn Store) {
    let recent = |identity: &str, target: &str, fp: &str, since: u64, rows: u64| {
        s.recent_approval(identity, target, fp, since, rows)
            .unwrap()
            .map(|a| a.id)
    };
    let mut a1 = request("r-a1", 500);
    a1.fingerprint = "f1".to_owned();
    a1.rows = Some(10);
    s.create_approval(&a1).unwrap();
    assert_eq!(recent("alice", "prod", "f1", 0, 1), None, "pending");
    decide(s, "r-a1", ApprovalStatus::Approved, "bob", None, 1_000);

    let r = |id: &str| Some(id.to_owned());
    assert_eq!(recent("alice", "prod", "f1", 1_000, 10), r("r-a1"));
    assert_eq!(recent("alice", "prod", "f1", 0, 0), r("r-a1"));
    assert_eq!(recent("alice", "prod", "f1", 1_001, 10), None);
    assert_eq!(recent("alice", "prod", "f1", 1_000, 11), None);
    assert_eq!(recent("alice", "prod", "f2", 0, 1), None);
    assert_eq!(recent("bob", "prod", "f1", 0, 1), None);
    assert_eq!(recent("alice", "dev", "f1", 0, 1), None);

    // Without a row count, an approval covers any number of rows.
    let mut a2 = request("r-a2", 1_500);
    a2.fingerprint = "f1".to_owned();
    a2.rows = None;
    s.create_approval(&a2).unwrap();
    decide(s, "r-a2", ApprovalStatus::Approved, "bob", None, 2_000);
    assert_eq!(recent("alice", "prod", "f1", 0, 1_000_000), r("r-a2"));
    assert_eq!(recent("alice", "prod", "f1", 0, 5), r("r-a2"), "newest");
    assert_eq!(
        s.recent_approval("alice", "prod", "f1", 0, u64::MAX)
            .unwrap()
            .map(|a| a.id),
        r("r-a2")
    );

    // The newest that covers the rows wins.
    let mut a3 = request("r-a3", 2_500);
    a3.fingerprint = "f1".to_owned();
    a3.rows = Some(100);
    s.create_approval(&a3).unwrap();
    decide(s, "r-a3", ApprovalStatus::Approved, "bob", None, 3_000);
    assert_eq!(recent("alice", "prod", "f1", 0, 5), r("r-a3"));
    assert_eq!(recent("alice", "prod", "f1", 0, 101), r("r-a2"));
    assert_eq!(recent("alice", "prod", "f1", 2_500, 100), r("r-a3"));
    assert_eq!(recent("alice", "prod", "f1", 2_500, 101), None);

    // Denied and pending requests never count.
    let mut a4 = request("r-a4", 3_500);
    a4.fingerprint = "f1".to_owned();
    a4.rows = None;
    s.create_approval(&a4).unwrap();
    decide(s, "r-a4", ApprovalStatus::Denied, "bob", Some("no"), 4_000);
    let mut a5 = request("r-a5", 4_500);
    a5.fingerprint = "f1".to_owned();
    a5.rows = None;
    s.create_approval(&a5).unwrap();
    assert_eq!(recent("alice", "prod", "f1", 3_500, 1), None);
    assert_eq!(recent("alice", "prod", "f1", 0, 5), r("r-a3"));

    let full = s
        .recent_approval("alice", "prod", "f1", 0, 5)
        .unwrap()
        .unwrap();
    assert_eq!(full, s.approval("r-a3").unwrap().unwrap());
}

fn approval_messages(s: &dyn Store) {
    assert_eq!(s.take_approval_message("r-1").unwrap(), None);
    s.set_approval_message("r-1", "C01", "1700000000.000100")
        .unwrap();
    assert_eq!(
        s.take_approval_message("r-1").unwrap(),
        Some(("C01".to_owned(), "1700000000.000100".to_owned()))
    );
    assert_eq!(s.take_approval_message("r-1").unwrap(), None);

    s.set_approval_message("r-2", "C01", "1").unwrap();
    s.set_approval_message("r-2", "C02", "2").unwrap();
    s.set_approval_message("r-3", "C03", "3").unwrap();
    assert_eq!(
        s.take_approval_message("r-2").unwrap(),
        Some(("C02".to_owned(), "2".to_owned()))
    );
    assert_eq!(s.take_approval_message("r-2").unwrap(), None);
    assert_eq!(
        s.take_approval_message("r-3").unwrap(),
        Some(("C03".to_owned(), "3".to_owned()))
    );
}

fn tag(target: &str, column: &str, label: &str) -> NewDerivedTag {
    NewDerivedTag {
        target: target.to_owned(),
        column: column.to_owned(),
        label: label.to_owned(),
        strategy: "redact".to_owned(),
        source: "public.people.ssn".to_owned(),
        identity: "etl".to_owned(),
        statement: "INSERT INTO copy SELECT ssn FROM people".to_owned(),
    }
}

fn derived_tags(s: &dyn Store) {
    let v0 = s.derived_tags_version().unwrap();
    assert!(s.derived_tags(None, true).unwrap().is_empty());
    let ssn = tag("prod", "public.copy.ssn", "pii");
    let email = tag("prod", "public.copy.email", "pii");
    let dev = tag("dev", "public.x.ssn", "pii");
    assert_eq!(
        s.add_derived_tags(&[ssn.clone(), email.clone(), dev.clone()], 1_000)
            .unwrap(),
        3
    );
    let v1 = s.derived_tags_version().unwrap();
    assert_ne!(v1, v0, "adding changes the version");

    // The same (target, column, label) in force is left out, whatever else differs.
    let mut again = ssn.clone();
    again.strategy = "hash".to_owned();
    again.source = "public.other.ssn".to_owned();
    assert_eq!(s.add_derived_tags(&[again], 2_000).unwrap(), 0);
    assert_eq!(s.add_derived_tags(&[], 2_000).unwrap(), 0);
    assert_eq!(
        s.derived_tags_version().unwrap(),
        v1,
        "adding nothing keeps the version"
    );
    let secret = tag("prod", "public.copy.ssn", "secret");
    let star = tag("prod", "public.copy.*", "pii");
    assert_eq!(
        s.add_derived_tags(
            &[ssn.clone(), secret.clone(), star.clone(), star.clone()],
            2_000
        )
        .unwrap(),
        2,
        "a new label counts; a repeat within one call is added once"
    );
    let v2 = s.derived_tags_version().unwrap();
    assert_ne!(v2, v1);

    let all = s.derived_tags(None, false).unwrap();
    let got: Vec<&NewDerivedTag> = all.iter().map(|r| &r.tag).collect();
    assert_eq!(got, [&ssn, &email, &dev, &secret, &star], "oldest first");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[0].created_at_ms, 1_000);
    assert_eq!(all[3].created_at_ms, 2_000);
    assert!(all
        .iter()
        .all(|r| r.cleared_at_ms.is_none() && r.cleared_by.is_none()));
    let prod = s.derived_tags(Some("prod"), false).unwrap();
    let got: Vec<&NewDerivedTag> = prod.iter().map(|r| &r.tag).collect();
    assert_eq!(got, [&ssn, &email, &secret, &star]);
    assert_eq!(
        s.derived_tags(Some("dev"), true).unwrap(),
        vec![all[2].clone()]
    );
    assert!(s.derived_tags(Some("none"), true).unwrap().is_empty());

    // Cleared once.
    let id = all[0].id;
    let (cleared, rec) = s.clear_derived_tag(id, "op", 3_000).unwrap().unwrap();
    assert!(cleared);
    let expected = weir_store::DerivedTagRecord {
        cleared_at_ms: Some(3_000),
        cleared_by: Some("op".to_owned()),
        ..all[0].clone()
    };
    assert_eq!(rec, expected);
    let v3 = s.derived_tags_version().unwrap();
    assert_ne!(v3, v2, "clearing changes the version");
    let (cleared, rec) = s.clear_derived_tag(id, "other", 4_000).unwrap().unwrap();
    assert!(!cleared);
    assert_eq!(rec, expected);
    assert_eq!(s.derived_tags_version().unwrap(), v3);
    assert_eq!(s.clear_derived_tag(999_999, "op", 4_000).unwrap(), None);

    let prod: Vec<i64> = s
        .derived_tags(Some("prod"), false)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(prod, [all[1].id, all[3].id, all[4].id]);
    let with_cleared = s.derived_tags(Some("prod"), true).unwrap();
    assert_eq!(with_cleared.len(), 4);
    assert_eq!(with_cleared[0], expected);

    // Once cleared, the same tag can be derived again.
    assert_eq!(
        s.add_derived_tags(std::slice::from_ref(&ssn), 5_000)
            .unwrap(),
        1
    );
    assert_ne!(s.derived_tags_version().unwrap(), v3);
    let prod = s.derived_tags(Some("prod"), false).unwrap();
    assert_eq!(prod.len(), 4);
    assert_eq!(prod[3].tag, ssn);
    assert_eq!(prod[3].created_at_ms, 5_000);
    assert!(prod[3].id > all[4].id);
    assert_eq!(s.derived_tags(None, true).unwrap().len(), 6);
}

fn taints(s: &dyn Store) {
    assert_eq!(s.tainted_until("agent", "prod", 0).unwrap(), None);
    s.taint("agent", "prod", "public.web_pages", 5_000).unwrap();
    assert_eq!(
        s.tainted_until("agent", "prod", 1_000).unwrap(),
        Some(5_000)
    );
    // A later taint only extends.
    s.taint("agent", "prod", "public.mail", 3_000).unwrap();
    assert_eq!(
        s.tainted_until("agent", "prod", 1_000).unwrap(),
        Some(5_000)
    );
    s.taint("agent", "prod", "public.tickets", 8_000).unwrap();
    assert_eq!(
        s.tainted_until("agent", "prod", 1_000).unwrap(),
        Some(8_000)
    );
    assert_eq!(
        s.tainted_until("agent", "prod", 7_999).unwrap(),
        Some(8_000)
    );
    // Expired at its end.
    assert_eq!(s.tainted_until("agent", "prod", 8_000).unwrap(), None);
    assert_eq!(s.tainted_until("agent", "prod", 9_000).unwrap(), None);
    // Per identity and target.
    assert_eq!(s.tainted_until("agent", "dev", 1_000).unwrap(), None);
    assert_eq!(s.tainted_until("other", "prod", 1_000).unwrap(), None);
    s.taint("agent", "dev", "public.web_pages", 2_000).unwrap();
    assert_eq!(s.tainted_until("agent", "dev", 1_000).unwrap(), Some(2_000));
    assert_eq!(
        s.tainted_until("agent", "prod", 1_000).unwrap(),
        Some(8_000)
    );
}

fn people(s: &dyn Store) {
    assert_eq!(s.person("alice").unwrap(), None);
    let alice = PersonRecord {
        name: "alice".to_owned(),
        groups: strings(&["ops", "eng"]),
        attributes: map(&[("dept", "eng"), ("level", "3")]),
        seen_ms: 2_000,
    };
    s.record_person(&alice).unwrap();
    assert_eq!(s.person("alice").unwrap(), Some(alice.clone()));

    // An older sign-in still brings its groups and attributes, not its time.
    let older = PersonRecord {
        groups: strings(&["eng"]),
        attributes: map(&[("dept", "sales")]),
        seen_ms: 1_000,
        ..alice.clone()
    };
    s.record_person(&older).unwrap();
    assert_eq!(
        s.person("alice").unwrap(),
        Some(PersonRecord {
            seen_ms: 2_000,
            ..older.clone()
        })
    );
    let newer = PersonRecord {
        groups: vec![],
        attributes: BTreeMap::new(),
        seen_ms: 3_000,
        ..alice.clone()
    };
    s.record_person(&newer).unwrap();
    assert_eq!(s.person("alice").unwrap(), Some(newer));
    assert_eq!(s.person("bob").unwrap(), None);
}

fn baseline(s: &dyn Store) {
    assert_eq!(s.baseline("agent").unwrap(), Baseline::default());
    assert!(s.baseline("agent").unwrap().is_empty());
    let hour = 500_000;
    let mut delta = Baseline {
        statements: 3,
        writes: 1,
        tables: BTreeMap::from([("prod public.t".to_owned(), 3)]),
        ..Default::default()
    };
    delta.hours[5] = 3;
    delta.row_buckets[1] = 2;
    delta.hourly_rows.insert(hour, 10);
    s.merge_baseline("agent", &delta, hour).unwrap();
    assert_eq!(s.baseline("agent").unwrap(), delta);
    s.merge_baseline("agent", &delta, hour).unwrap();

    let mut twice = Baseline {
        statements: 6,
        writes: 2,
        tables: BTreeMap::from([("prod public.t".to_owned(), 6)]),
        ..Default::default()
    };
    twice.hours[5] = 6;
    twice.row_buckets[1] = 4;
    twice.hourly_rows.insert(hour, 20);
    assert_eq!(s.baseline("agent").unwrap(), twice);

    // Hours past what is kept are dropped as they merge.
    let old = Baseline {
        statements: 1,
        tables: BTreeMap::from([("prod public.u".to_owned(), 1)]),
        hourly_rows: BTreeMap::from([(1, 5)]),
        ..Default::default()
    };
    s.merge_baseline("agent", &old, hour).unwrap();
    twice.statements = 7;
    twice.tables.insert("prod public.u".to_owned(), 1);
    assert_eq!(s.baseline("agent").unwrap(), twice);
    assert!(s.baseline("other").unwrap().is_empty());
}

fn image(change: &str, created_ms: u64, sealed: bool) -> BeforeImage {
    BeforeImage {
        change: change.to_owned(),
        target: "prod".to_owned(),
        table: "public.accounts".to_owned(),
        rows: 3,
        created_ms,
        sealed: sealed.then(|| (vec![7; 12], vec![0, 1, 2, 255, 254, 0])),
        purged_ms: None,
        undone_by: None,
    }
}

fn before_images(s: &dyn Store) {
    let old = image("c-old", 1_000, true);
    let old2 = image("c-old2", 1_500, true);
    let none = image("c-none", 1_000, false);
    let new = image("c-new", 5_000, true);
    s.put_before_images(&[old.clone(), old2.clone(), none.clone(), new.clone()])
        .unwrap();
    s.put_before_images(&[]).unwrap();
    for b in [&old, &old2, &none, &new] {
        assert_eq!(s.before_image(&b.change).unwrap().as_ref(), Some(b));
    }
    assert_eq!(s.before_image("c-unknown").unwrap(), None);

    // One transaction: a batch with a change id already kept leaves nothing behind.
    let fresh = image("c-fresh", 6_000, true);
    assert!(s.put_before_images(&[fresh, old.clone()]).is_err());
    assert_eq!(s.before_image("c-fresh").unwrap(), None);
    assert_eq!(s.before_image("c-old").unwrap(), Some(old.clone()));

    // Claimed once; given back only by whoever claimed it.
    assert!(s.claim_undo("c-new", "alice", 6_000).unwrap());
    assert!(!s.claim_undo("c-new", "bob", 6_001).unwrap());
    s.release_undo("c-new", "bob").unwrap();
    assert!(!s.claim_undo("c-new", "carol", 6_002).unwrap());
    assert_eq!(
        s.before_image("c-new")
            .unwrap()
            .unwrap()
            .undone_by
            .as_deref(),
        Some("alice")
    );
    s.release_undo("c-new", "alice").unwrap();
    assert_eq!(s.before_image("c-new").unwrap().unwrap().undone_by, None);
    assert!(s.claim_undo("c-new", "bob", 6_003).unwrap());
    assert_eq!(
        s.before_image("c-new")
            .unwrap()
            .unwrap()
            .undone_by
            .as_deref(),
        Some("bob")
    );
    // Nothing to undo without ciphertext, nor for an unknown change.
    assert!(!s.claim_undo("c-none", "alice", 6_000).unwrap());
    assert!(!s.claim_undo("c-unknown", "alice", 6_000).unwrap());
    s.release_undo("c-unknown", "alice").unwrap();

    // Purging drops the old ciphertext and keeps the rows.
    let mut purged = s.purge_before_images(2_000, 7_000).unwrap();
    purged.sort();
    assert_eq!(purged, ["c-old", "c-old2"]);
    assert_eq!(
        s.before_image("c-old").unwrap(),
        Some(BeforeImage {
            sealed: None,
            purged_ms: Some(7_000),
            ..old
        })
    );
    assert_eq!(s.before_image("c-old2").unwrap().unwrap().sealed, None);
    assert_eq!(s.before_image("c-none").unwrap(), Some(none));
    assert_eq!(s.before_image("c-new").unwrap().unwrap().sealed, new.sealed);
    assert!(!s.claim_undo("c-old", "alice", 8_000).unwrap());
    assert!(!s.claim_undo("c-old2", "alice", 8_000).unwrap());
    assert!(s.purge_before_images(2_000, 8_000).unwrap().is_empty());
    assert_eq!(
        s.before_image("c-old").unwrap().unwrap().purged_ms,
        Some(7_000)
    );
}
