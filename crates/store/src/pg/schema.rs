//! The PostgreSQL store's schema, as numbered migrations.
//!
//! [`migrate`] runs at every open, in one transaction that first takes a transaction-scoped
//! advisory lock ([`LOCK_KEY`]): two gateways starting together apply each migration once,
//! the second waiting for the first and then finding nothing left to do. A migration is
//! never edited once released; a change is a new entry at the end of [`MIGRATIONS`].
//!
//! The tables mirror the SQLite store's (same names, same columns), with `BIGINT` for times
//! and counters and `BYTEA` for hashes. The audit trail's tables differ: several gateways
//! append to one trail, each its own chain (see [`super::trail`]).

use super::{err, Pg};
use crate::StoreError;

/// The advisory lock migrations hold ("weir" in ASCII, then 1).
pub const LOCK_KEY: i64 = 0x7765_6972_0000_0001;

/// `(version, SQL)`, in order. Applied once each, recorded in `weir_schema_migrations`.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, V1)];

const V1: &str = "
CREATE TABLE tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    groups       TEXT NOT NULL,
    hash         BYTEA NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    attributes   TEXT NOT NULL DEFAULT '{}',
    on_behalf_of TEXT
);
CREATE INDEX tokens_name ON tokens(name);

CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL DEFAULT 'statement',
    grant_ms      BIGINT,
    created_ms    BIGINT NOT NULL,
    deadline_ms   BIGINT NOT NULL,
    identity      TEXT NOT NULL,
    identity_kind TEXT NOT NULL,
    target        TEXT NOT NULL,
    session       BIGINT NOT NULL,
    fingerprint   TEXT NOT NULL,
    statement     TEXT NOT NULL,
    facts         TEXT NOT NULL DEFAULT '[]',
    rows          BIGINT,
    rule          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    status        TEXT NOT NULL,
    decided_by    TEXT,
    decided_ms    BIGINT,
    note          TEXT
);
CREATE INDEX approvals_pending ON approvals(status) WHERE status = 'pending';
CREATE INDEX approvals_repeat ON approvals(identity, target, fingerprint, decided_ms);
CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    identity    TEXT NOT NULL,
    target      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    approval    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    revoked_ms  BIGINT,
    revoked_by  TEXT
);
CREATE INDEX grants_open ON grants(expires_ms) WHERE revoked_ms IS NULL;
CREATE TABLE approval_messages (
    id      TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    ts      TEXT NOT NULL
);

CREATE TABLE derived_tags (
    id          BIGSERIAL PRIMARY KEY,
    target      TEXT NOT NULL,
    column_name TEXT NOT NULL,
    label       TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    source      TEXT NOT NULL,
    identity    TEXT NOT NULL,
    statement   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    cleared_at  BIGINT,
    cleared_by  TEXT
);
CREATE INDEX derived_tags_target ON derived_tags(target, cleared_at);
-- One tag in force per (target, column, label): two gateways deriving the same tag at once
-- add it once.
CREATE UNIQUE INDEX derived_tags_in_force ON derived_tags(target, column_name, label)
    WHERE cleared_at IS NULL;

CREATE TABLE taints (
    identity TEXT NOT NULL,
    target   TEXT NOT NULL,
    source   TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (identity, target)
);
CREATE TABLE people (
    name       TEXT PRIMARY KEY,
    groups     TEXT NOT NULL,
    attributes TEXT NOT NULL,
    seen_ms    BIGINT NOT NULL
);
CREATE TABLE baselines (
    identity TEXT PRIMARY KEY,
    data     TEXT NOT NULL
);
CREATE TABLE before_images (
    change     TEXT PRIMARY KEY,
    target     TEXT NOT NULL,
    table_name TEXT NOT NULL,
    rows       BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    nonce      BYTEA,
    sealed     BYTEA,
    purged_ms  BIGINT,
    undone_by  TEXT,
    undone_ms  BIGINT
);
CREATE INDEX before_images_created ON before_images(created_ms);

-- The trail: one hash chain per gateway (its id is the hex of the chain's public key), one
-- global order over all of them (gseq).
CREATE TABLE audit_chains (
    chain         TEXT PRIMARY KEY,
    public_key    TEXT NOT NULL,
    registered_ms BIGINT NOT NULL,
    last_seq      BIGINT NOT NULL DEFAULT 0,
    head          BYTEA
);
CREATE TABLE audit_events (
    gseq     BIGSERIAL PRIMARY KEY,
    chain    TEXT NOT NULL REFERENCES audit_chains(chain),
    seq      BIGINT NOT NULL,
    ts_us    BIGINT NOT NULL,
    prev     BYTEA NOT NULL,
    hash     BYTEA NOT NULL,
    body     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    session  BIGINT,
    identity TEXT,
    target   TEXT,
    decision TEXT,
    UNIQUE (chain, seq)
);
CREATE INDEX audit_events_session ON audit_events(session);
CREATE INDEX audit_events_identity ON audit_events(identity);
CREATE INDEX audit_events_ts ON audit_events(ts_us);
CREATE TABLE audit_checkpoints (
    chain     TEXT NOT NULL REFERENCES audit_chains(chain),
    seq       BIGINT NOT NULL,
    head      BYTEA NOT NULL,
    ts_us     BIGINT NOT NULL,
    signature BYTEA NOT NULL,
    PRIMARY KEY (chain, seq)
);

-- Secrets every gateway must share (the masking hash key): the first gateway's wins.
CREATE TABLE weir_secrets (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
);
";

/// Applies every migration the store has not seen, under [`LOCK_KEY`]; returns how many.
pub fn migrate(pg: &Pg) -> Result<usize, StoreError> {
    pg.transaction(|c| async move {
        c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(err)?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS weir_schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(err)?;
        let row = c
            .query_one(
                "SELECT coalesce(max(version), 0) FROM weir_schema_migrations",
                &[],
            )
            .await
            .map_err(err)?;
        let current: i32 = row.try_get(0).map_err(err)?;
        let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if current > newest {
            return Err(StoreError::Unsupported(format!(
                "the store's schema is version {current}, newer than this Weir knows ({newest}): upgrade Weir"
            )));
        }
        let mut applied = 0;
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            c.batch_execute(sql).await.map_err(err)?;
            c.execute(
                "INSERT INTO weir_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(err)?;
            applied += 1;
        }
        Ok(applied)
    })
}
