//! [`PgStore`]: the [`Store`] on PostgreSQL, the same statements as the SQLite store's with
//! the same semantics. Every change that must happen once (deciding an approval, revoking a
//! grant, clearing a tag, claiming an undo) is one conditional `UPDATE … WHERE <still open>`,
//! so of several gateways racing, exactly one sees its row count be 1.

use std::sync::Arc;

use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

use super::{err, Pg};
use crate::approvals::{self, Approval, Grant, Kind, NewApproval, Status};
use crate::baseline::{self, Baseline};
use crate::before_images::BeforeImage;
use crate::derived::{DerivedTagRecord, NewDerivedTag};
use crate::{now_secs, NewToken, PersonRecord, Store, StoreError, TokenRecord};

/// The shared store of several gateways. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct PgStore {
    pg: Arc<Pg>,
}

fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(err)
}

fn ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn opt_ms(v: Option<i64>) -> Option<u64> {
    v.map(ms)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const TOKEN_COLUMNS: &str = "id, name, kind, groups, created_at, expires_at, revoked_at, \
    last_used_at, attributes, on_behalf_of";

fn token(row: &Row) -> Result<TokenRecord, StoreError> {
    crate::to_record((
        get(row, 0)?,
        get(row, 1)?,
        get(row, 2)?,
        get(row, 3)?,
        get(row, 4)?,
        get(row, 5)?,
        get(row, 6)?,
        get(row, 7)?,
        get(row, 8)?,
        get(row, 9)?,
    ))
}

const APPROVAL_COLUMNS: &str = "id, kind, grant_ms, created_ms, deadline_ms, identity, \
    identity_kind, target, session, fingerprint, statement, rule, reason, status, decided_by, \
    decided_ms, note, facts, rows";

fn approval(r: &Row) -> Result<Approval, StoreError> {
    let status: String = get(r, 13)?;
    let status = Status::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("approval status {status:?}")))?;
    let kind = match get::<&str>(r, 1)? {
        "statement" => Kind::Statement,
        "access" => Kind::Access,
        other => return Err(StoreError::Corrupt(format!("approval kind {other:?}"))),
    };
    Ok(Approval {
        id: get(r, 0)?,
        kind,
        grant_ms: opt_ms(get(r, 2)?),
        created_ms: ms(get(r, 3)?),
        deadline_ms: ms(get(r, 4)?),
        identity: get(r, 5)?,
        identity_kind: get(r, 6)?,
        target: get(r, 7)?,
        session: ms(get(r, 8)?),
        fingerprint: get(r, 9)?,
        statement: get(r, 10)?,
        rule: get(r, 11)?,
        reason: get(r, 12)?,
        status,
        decided_by: get(r, 14)?,
        decided_ms: opt_ms(get(r, 15)?),
        note: get(r, 16)?,
        facts: get(r, 17)?,
        rows: opt_ms(get(r, 18)?),
    })
}

const GRANT_COLUMNS: &str = "id, identity, target, created_ms, expires_ms, approval, reason, \
    approved_by, revoked_ms, revoked_by";

fn grant(r: &Row) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: get(r, 0)?,
        identity: get(r, 1)?,
        target: get(r, 2)?,
        created_ms: ms(get(r, 3)?),
        expires_ms: ms(get(r, 4)?),
        approval: get(r, 5)?,
        reason: get(r, 6)?,
        approved_by: get(r, 7)?,
        revoked_ms: opt_ms(get(r, 8)?),
        revoked_by: get(r, 9)?,
    })
}

const TAG_COLUMNS: &str = "id, target, column_name, label, strategy, source, identity, \
    statement, created_at, cleared_at, cleared_by";

fn tag(r: &Row) -> Result<DerivedTagRecord, StoreError> {
    Ok(DerivedTagRecord {
        id: get(r, 0)?,
        tag: NewDerivedTag {
            target: get(r, 1)?,
            column: get(r, 2)?,
            label: get(r, 3)?,
            strategy: get(r, 4)?,
            source: get(r, 5)?,
            identity: get(r, 6)?,
            statement: get(r, 7)?,
        },
        created_at_ms: ms(get(r, 8)?),
        cleared_at_ms: opt_ms(get(r, 9)?),
        cleared_by: get(r, 10)?,
    })
}

fn image(r: &Row) -> Result<BeforeImage, StoreError> {
    let nonce: Option<Vec<u8>> = get(r, 5)?;
    let sealed: Option<Vec<u8>> = get(r, 6)?;
    Ok(BeforeImage {
        change: get(r, 0)?,
        target: get(r, 1)?,
        table: get(r, 2)?,
        rows: ms(get(r, 3)?),
        created_ms: ms(get(r, 4)?),
        sealed: nonce.zip(sealed),
        purged_ms: opt_ms(get(r, 7)?),
        undone_by: get(r, 8)?,
    })
}

fn json<T: serde::Serialize + ?Sized>(v: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Refused(format!("{what}: {e}")))
}

impl PgStore {
    /// Connects to the store at `url` and brings its schema up to date.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        Ok(PgStore { pg: Pg::open(url)? })
    }

    /// A store over an already open pool (the trail and the store share one).
    pub fn over(pg: Arc<Pg>) -> PgStore {
        PgStore { pg }
    }

    pub fn pool(&self) -> &Arc<Pg> {
        &self.pg
    }

    /// Runs one statement; returns the rows it changed.
    fn exec(
        &self,
        sql: &'static str,
        args: Vec<Box<dyn ToSql + Send + Sync>>,
    ) -> Result<u64, StoreError> {
        self.pg.with(move |c| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
            c.execute(sql, &refs).await.map_err(err)
        })
    }

    /// Runs one query and maps its rows with `f`.
    fn rows<T: Send + 'static>(
        &self,
        sql: String,
        args: Vec<Box<dyn ToSql + Send + Sync>>,
        f: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.pg.with(move |c| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
            let rows = c.query(&sql, &refs).await.map_err(err)?;
            rows.iter().map(f).collect()
        })
    }

    fn row<T: Send + 'static>(
        &self,
        sql: String,
        args: Vec<Box<dyn ToSql + Send + Sync>>,
        f: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(sql, args, f)?.into_iter().next())
    }
}

/// Boxes query arguments (each owned, so the query can run on the store's runtime).
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(Box::new($a) as Box<dyn ToSql + Send + Sync>),*]
    };
}

impl Store for PgStore {
    fn create_token(&self, t: NewToken<'_>) -> Result<TokenRecord, StoreError> {
        let now = now_secs();
        let expires = t.ttl.map(|d| now.saturating_add(d.as_secs()));
        let attributes = json(t.attributes, "attributes")?;
        let id = self.row(
            "INSERT INTO tokens (name, kind, groups, hash, created_at, expires_at, attributes, on_behalf_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id"
                .to_owned(),
            args![
                t.name.to_owned(),
                t.kind.as_str().to_owned(),
                t.groups.join(","),
                t.hash.to_vec(),
                to_i64(now),
                expires.map(to_i64),
                attributes,
                t.on_behalf_of.map(str::to_owned),
            ],
            |r| get::<i64>(r, 0),
        )?;
        let id = id.ok_or_else(|| StoreError::Corrupt("token insert returned no id".into()))?;
        Ok(TokenRecord {
            id,
            name: t.name.to_owned(),
            kind: t.kind,
            groups: t.groups.to_vec(),
            attributes: t.attributes.clone(),
            created_at: now,
            expires_at: expires,
            revoked_at: None,
            last_used_at: None,
            on_behalf_of: t.on_behalf_of.map(str::to_owned),
        })
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.rows(
            format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id"),
            args![],
            token,
        )
    }

    fn revoke_tokens(&self, name: &str) -> Result<usize, StoreError> {
        let n = self.exec(
            "UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
            args![to_i64(now_secs()), name.to_owned()],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn find_token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.row(
            format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
            args![hash.to_vec()],
            token,
        )
    }

    fn touch_tokens(&self, used: &[(i64, u64)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = used.iter().map(|(id, _)| *id).collect();
        let ats: Vec<i64> = used.iter().map(|(_, at)| to_i64(*at)).collect();
        self.exec(
            "UPDATE tokens t SET last_used_at = greatest(coalesce(t.last_used_at, 0), u.at) \
             FROM (SELECT id, max(at) AS at FROM unnest($1::bigint[], $2::bigint[]) AS x(id, at) GROUP BY id) u \
             WHERE t.id = u.id",
            args![ids, ats],
        )?;
        Ok(())
    }

    fn create_approval(&self, a: &NewApproval) -> Result<Approval, StoreError> {
        let a = a.clone();
        let sql = format!(
            "INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13, 'pending', NULL, NULL, NULL, $14, $15) RETURNING {APPROVAL_COLUMNS}"
        );
        let made = self.row(
            sql,
            args![
                a.id.clone(),
                a.kind.as_str().to_owned(),
                a.grant_ms.map(to_i64),
                to_i64(a.created_ms),
                to_i64(a.deadline_ms),
                a.identity,
                a.identity_kind,
                a.target,
                to_i64(a.session),
                a.fingerprint,
                a.statement,
                a.rule,
                a.reason,
                a.facts,
                a.rows.map(to_i64),
            ],
            approval,
        )?;
        made.ok_or_else(|| StoreError::Corrupt(format!("approval {} vanished", a.id)))
    }

    fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        self.row(
            format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"),
            args![id.to_owned()],
            approval,
        )
    }

    fn pending_approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.rows(
            format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE status = 'pending' ORDER BY created_ms, id"
            ),
            args![],
            approval,
        )
    }

    fn decide_approval(
        &self,
        id: &str,
        to: Status,
        by: &str,
        note: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<(bool, Approval)>, StoreError> {
        let (id, by, note) = (id.to_owned(), by.to_owned(), note.map(str::to_owned));
        self.pg.transaction(move |c| async move {
            let changed = c
                .execute(
                    "UPDATE approvals SET status = $2, decided_by = $3, decided_ms = $4, note = $5 \
                     WHERE id = $1 AND status = 'pending'",
                    &[&id, &to.as_str(), &by, &to_i64(now_ms), &note],
                )
                .await
                .map_err(err)?;
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1");
            let Some(row) = c.query_opt(&sql, &[&id]).await.map_err(err)? else {
                return Ok(None);
            };
            let a = approval(&row)?;
            if changed == 1 && to == Status::Approved && a.kind == Kind::Access {
                c.execute(
                    "INSERT INTO grants (id, identity, target, created_ms, expires_ms, approval, reason, approved_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &approvals::grant_id(&a.id),
                        &a.identity,
                        &a.target,
                        &to_i64(now_ms),
                        &to_i64(now_ms.saturating_add(a.grant_ms.unwrap_or(0))),
                        &a.id,
                        &a.reason,
                        &by,
                    ],
                )
                .await
                .map_err(err)?;
            }
            Ok(Some((changed == 1, a)))
        })
    }

    fn recent_approval(
        &self,
        identity: &str,
        target: &str,
        fingerprint: &str,
        since_ms: u64,
        rows: u64,
    ) -> Result<Option<Approval>, StoreError> {
        self.row(
            format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE identity = $1 AND target = $2 \
                 AND fingerprint = $3 AND status = 'approved' AND decided_ms >= $4 \
                 AND (rows IS NULL OR rows >= $5) ORDER BY decided_ms DESC LIMIT 1"
            ),
            args![
                identity.to_owned(),
                target.to_owned(),
                fingerprint.to_owned(),
                to_i64(since_ms),
                to_i64(rows),
            ],
            approval,
        )
    }

    fn active_grants(&self, now_ms: u64) -> Result<Vec<Grant>, StoreError> {
        self.rows(
            format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE revoked_ms IS NULL AND expires_ms > $1 ORDER BY created_ms"
            ),
            args![to_i64(now_ms)],
            grant,
        )
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.row(
            format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"),
            args![id.to_owned()],
            grant,
        )
    }

    fn revoke_grant(&self, id: &str, by: &str, now_ms: u64) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE grants SET revoked_ms = $2, revoked_by = $3 \
             WHERE id = $1 AND revoked_ms IS NULL AND expires_ms > $2",
            args![id.to_owned(), to_i64(now_ms), by.to_owned()],
        )?;
        Ok(n == 1)
    }

    fn set_approval_message(&self, id: &str, channel: &str, ts: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO approval_messages (id, channel, ts) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET channel = excluded.channel, ts = excluded.ts",
            args![id.to_owned(), channel.to_owned(), ts.to_owned()],
        )?;
        Ok(())
    }

    fn take_approval_message(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        self.row(
            "DELETE FROM approval_messages WHERE id = $1 RETURNING channel, ts".to_owned(),
            args![id.to_owned()],
            |r| Ok((get(r, 0)?, get(r, 1)?)),
        )
    }

    fn add_derived_tags(&self, tags: &[NewDerivedTag], now_ms: u64) -> Result<usize, StoreError> {
        let tags = tags.to_vec();
        self.pg.transaction(move |c| async move {
            let mut added = 0;
            for t in &tags {
                // The partial unique index keeps one tag in force per (target, column,
                // label), also against another gateway adding it at the same moment.
                added += c
                    .execute(
                        "INSERT INTO derived_tags (target, column_name, label, strategy, source, \
                         identity, statement, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (target, column_name, label) WHERE cleared_at IS NULL DO NOTHING",
                        &[
                            &t.target,
                            &t.column,
                            &t.label,
                            &t.strategy,
                            &t.source,
                            &t.identity,
                            &t.statement,
                            &to_i64(now_ms),
                        ],
                    )
                    .await
                    .map_err(err)?;
            }
            Ok(usize::try_from(added).unwrap_or(usize::MAX))
        })
    }

    fn derived_tags(
        &self,
        target: Option<&str>,
        include_cleared: bool,
    ) -> Result<Vec<DerivedTagRecord>, StoreError> {
        self.rows(
            format!(
                "SELECT {TAG_COLUMNS} FROM derived_tags WHERE ($1::text IS NULL OR target = $1) \
                 AND ($2 OR cleared_at IS NULL) ORDER BY id"
            ),
            args![target.map(str::to_owned), include_cleared],
            tag,
        )
    }

    fn clear_derived_tag(
        &self,
        id: i64,
        by: &str,
        now_ms: u64,
    ) -> Result<Option<(bool, DerivedTagRecord)>, StoreError> {
        let by = by.to_owned();
        self.pg.transaction(move |c| async move {
            let changed = c
                .execute(
                    "UPDATE derived_tags SET cleared_at = $2, cleared_by = $3 WHERE id = $1 AND cleared_at IS NULL",
                    &[&id, &to_i64(now_ms), &by],
                )
                .await
                .map_err(err)?;
            let sql = format!("SELECT {TAG_COLUMNS} FROM derived_tags WHERE id = $1");
            let now = c.query_opt(&sql, &[&id]).await.map_err(err)?;
            now.map(|r| Ok((changed == 1, tag(&r)?))).transpose()
        })
    }

    fn derived_tags_version(&self) -> Result<(i64, i64), StoreError> {
        let v = self.row(
            "SELECT coalesce(max(id), 0), count(cleared_at) FROM derived_tags".to_owned(),
            args![],
            |r| Ok((get(r, 0)?, get(r, 1)?)),
        )?;
        Ok(v.unwrap_or((0, 0)))
    }

    fn taint(
        &self,
        identity: &str,
        target: &str,
        source: &str,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO taints (identity, target, source, until_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (identity, target) DO UPDATE \
             SET until_ms = greatest(taints.until_ms, excluded.until_ms), source = excluded.source",
            args![
                identity.to_owned(),
                target.to_owned(),
                source.to_owned(),
                to_i64(until_ms)
            ],
        )?;
        Ok(())
    }

    fn baseline(&self, identity: &str) -> Result<Baseline, StoreError> {
        let data = self.row(
            "SELECT data FROM baselines WHERE identity = $1".to_owned(),
            args![identity.to_owned()],
            |r| get::<String>(r, 0),
        )?;
        baseline::parse(identity, data)
    }

    fn merge_baseline(
        &self,
        identity: &str,
        delta: &Baseline,
        now_hour: u64,
    ) -> Result<(), StoreError> {
        let (identity, delta) = (identity.to_owned(), delta.clone());
        self.pg.transaction(move |c| async move {
            // The row lock (or, for a first merge, the insert's conflict) serializes two
            // gateways merging the same identity.
            c.execute(
                "INSERT INTO baselines (identity, data) VALUES ($1, '{}') ON CONFLICT DO NOTHING",
                &[&identity],
            )
            .await
            .map_err(err)?;
            let row = c
                .query_one(
                    "SELECT data FROM baselines WHERE identity = $1 FOR UPDATE",
                    &[&identity],
                )
                .await
                .map_err(err)?;
            let data: String = get(&row, 0)?;
            let mut current = if data == "{}" {
                Baseline::default()
            } else {
                baseline::parse(&identity, Some(data))?
            };
            current.add(&delta, now_hour);
            let data = json(&current, "baseline")?;
            c.execute(
                "UPDATE baselines SET data = $2 WHERE identity = $1",
                &[&identity, &data],
            )
            .await
            .map_err(err)?;
            Ok(())
        })
    }

    fn record_person(&self, p: &PersonRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO people (name, groups, attributes, seen_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET groups = excluded.groups, \
             attributes = excluded.attributes, seen_ms = greatest(people.seen_ms, excluded.seen_ms)",
            args![
                p.name.clone(),
                json(&p.groups, "groups")?,
                json(&p.attributes, "attributes")?,
                to_i64(p.seen_ms)
            ],
        )?;
        Ok(())
    }

    fn person(&self, name: &str) -> Result<Option<PersonRecord>, StoreError> {
        let row = self.row(
            "SELECT name, groups, attributes, seen_ms FROM people WHERE name = $1".to_owned(),
            args![name.to_owned()],
            |r| {
                Ok((
                    get::<String>(r, 0)?,
                    get::<String>(r, 1)?,
                    get::<String>(r, 2)?,
                    get::<i64>(r, 3)?,
                ))
            },
        )?;
        row.map(|(name, groups, attributes, seen)| crate::person(name, &groups, &attributes, seen))
            .transpose()
    }

    fn tainted_until(
        &self,
        identity: &str,
        target: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.row(
            "SELECT until_ms FROM taints WHERE identity = $1 AND target = $2 AND until_ms > $3"
                .to_owned(),
            args![identity.to_owned(), target.to_owned(), to_i64(now_ms)],
            |r| Ok(ms(get(r, 0)?)),
        )
    }

    fn put_before_images(&self, images: &[BeforeImage]) -> Result<(), StoreError> {
        let images = images.to_vec();
        self.pg.transaction(move |c| async move {
            for b in &images {
                let (nonce, sealed) = match &b.sealed {
                    Some((n, s)) => (Some(n.as_slice()), Some(s.as_slice())),
                    None => (None, None),
                };
                c.execute(
                    "INSERT INTO before_images (change, target, table_name, rows, created_ms, nonce, sealed) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &b.change,
                        &b.target,
                        &b.table,
                        &to_i64(b.rows),
                        &to_i64(b.created_ms),
                        &nonce,
                        &sealed,
                    ],
                )
                .await
                .map_err(err)?;
            }
            Ok(())
        })
    }

    fn before_image(&self, change: &str) -> Result<Option<BeforeImage>, StoreError> {
        self.row(
            "SELECT change, target, table_name, rows, created_ms, nonce, sealed, purged_ms, undone_by \
             FROM before_images WHERE change = $1"
                .to_owned(),
            args![change.to_owned()],
            image,
        )
    }

    fn purge_before_images(&self, cutoff_ms: u64, now_ms: u64) -> Result<Vec<String>, StoreError> {
        self.rows(
            "UPDATE before_images SET nonce = NULL, sealed = NULL, purged_ms = $2 \
             WHERE created_ms < $1 AND sealed IS NOT NULL RETURNING change"
                .to_owned(),
            args![to_i64(cutoff_ms), to_i64(now_ms)],
            |r| get::<String>(r, 0),
        )
    }

    fn claim_undo(&self, change: &str, by: &str, now_ms: u64) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE before_images SET undone_by = $2, undone_ms = $3 \
             WHERE change = $1 AND undone_by IS NULL AND sealed IS NOT NULL",
            args![change.to_owned(), by.to_owned(), to_i64(now_ms)],
        )?;
        Ok(n == 1)
    }

    fn shared_secret(&self, name: &str, fresh: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (name, fresh) = (name.to_owned(), fresh.to_vec());
        self.pg.with(move |c| async move {
            c.execute(
                "INSERT INTO weir_secrets (name, value, created_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
                &[
                    &name,
                    &fresh,
                    &to_i64(crate::clock::Clock::system().now_ms()),
                ],
            )
            .await
            .map_err(err)?;
            let row = c
                .query_one("SELECT value FROM weir_secrets WHERE name = $1", &[&name])
                .await
                .map_err(err)?;
            Ok(Some(get::<Vec<u8>>(&row, 0)?))
        })
    }

    fn release_undo(&self, change: &str, by: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE before_images SET undone_by = NULL, undone_ms = NULL WHERE change = $1 AND undone_by = $2",
            args![change.to_owned(), by.to_owned()],
        )?;
        Ok(())
    }
}
