//! Each target's column catalog, for masking: loaded from the upstream on first use, kept
//! until DDL (or a result naming a relation it does not know) makes it stale, then loaded
//! again before the next request is forwarded.
//!
//! The load runs on its own upstream connection (the target's credentials), one query, so a
//! session's connection never carries Weir's own statements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use weir_config::Target;
use weir_mask::{Catalog, CatalogRow, ColumnRule, FunctionRow, Rules, Strategy};
use weir_wire::backend::Message as Backend;
use weir_wire::frontend::Message as Frontend;

use crate::io::read_frame;
use crate::upstream;
use crate::Shared;

/// Every column of every relation a client can name in a result: tables, partitioned
/// tables, views, materialized views, foreign tables, composite types (whose values can be
/// columns of the others), with each relation's row type and its array type, in every schema (system catalogs too:
/// a result from `pg_authid` must be known, not "unknown"). For views, the columns the view's
/// rule reads (from `pg_depend`), joined with ASCII unit separators.
const CATALOG_QUERY: &str = "\
SELECT c.oid::int8, a.attnum::int4, n.nspname, c.relname, a.attname, a.atttypid::int8, \
  CASE WHEN c.relkind IN ('v', 'm') THEN coalesce(( \
    SELECT string_agg(DISTINCT rn.nspname || '.' || rc.relname || '.' || ra.attname, chr(31)) \
    FROM pg_rewrite r \
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
      AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.refobjid <> c.oid \
    JOIN pg_class rc ON rc.oid = d.refobjid \
    JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
    JOIN pg_attribute ra ON ra.attrelid = d.refobjid AND ra.attnum = d.refobjsubid \
    WHERE r.ev_class = c.oid), '') END, \
  c.reltype::int8, coalesce(t.typarray, 0)::int8, \
  (SELECT string_agg(i.indexrelid::text || ':' || i.indnkeyatts::text, ',') FROM pg_index i \
    WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indisvalid \
      AND i.indpred IS NULL AND i.indexprs IS NULL \
      AND NOT (c.relkind = 'r' AND c.relhassubclass) \
      AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])), \
  (c.relkind <> 'r' OR c.relhasrules OR c.relhassubclass OR a.attidentity <> '' \
    OR EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal) \
    OR (a.atthasdef AND EXISTS (SELECT 1 FROM pg_attrdef ad WHERE ad.adrelid = c.oid \
      AND ad.adnum = a.attnum AND pg_get_expr(ad.adbin, ad.adrelid) LIKE '%(%')))::text, \
  (c.relkind IN ('r', 'p', 'm', 'c') AND NOT c.relrowsecurity)::text \
FROM pg_attribute a \
JOIN pg_class c ON c.oid = a.attrelid \
JOIN pg_namespace n ON n.oid = c.relnamespace \
LEFT JOIN pg_type t ON t.oid = c.reltype \
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c') \
  AND n.nspname NOT LIKE 'pg\\_toast%'; \
SELECT n.nspname, p.proname, l.lanname, CASE WHEN l.lanname = 'sql' THEN p.prosrc END \
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
JOIN pg_language l ON l.oid = p.prolang \
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// One target's catalog.
pub struct CatalogCache {
    current: RwLock<Arc<Catalog>>,
    /// How many times the catalog was made stale (DDL, an unknown relation).
    invalidations: AtomicU64,
    /// The value of `invalidations` when the current catalog's load started; `u64::MAX`
    /// before the first load. The catalog is fresh when the two are equal.
    loaded_at: AtomicU64,
    load: tokio::sync::Mutex<()>,
    rules: Rules,
    /// The store's derived-tags version last seen, and when it was last read: tags added or
    /// cleared elsewhere (another gateway, `weir tags clear`) make the catalog stale.
    derived_seen: std::sync::Mutex<DerivedSeen>,
    /// Function OID → `"schema"."name"` for every function of the database (`pg_catalog`
    /// too), loaded at the first fastpath call and again, at most once a second, when a
    /// call names an OID it does not hold (a function made since).
    function_oids: tokio::sync::Mutex<FunctionOids>,
}

#[derive(Default)]
struct FunctionOids {
    by_oid: HashMap<u32, String>,
    loaded_at: Option<std::time::Instant>,
}

/// Every function, by OID, with its schema: what a fastpath FunctionCall names.
const FUNCTION_OID_QUERY: &str = "SELECT p.oid::int8, n.nspname, p.proname \
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace";

#[derive(Default)]
struct DerivedSeen {
    version: Option<(i64, i64)>,
    checked_at: Option<std::time::Instant>,
}

/// How often the store's derived-tags version is read (at most), per target.
const DERIVED_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for CatalogCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogCache")
            .field("fresh", &self.is_fresh())
            .finish_non_exhaustive()
    }
}

impl CatalogCache {
    pub fn new(
        target: &Target,
        default_strategy: Option<Strategy>,
        clean_functions: &[String],
    ) -> CatalogCache {
        let rule = |tag: &Option<String>, mask: &Option<String>| ColumnRule {
            tag: tag.clone(),
            mask: mask.as_deref().map(|m| {
                if m == "none" {
                    None
                } else {
                    Strategy::parse(m)
                }
            }),
        };
        let rules = Rules {
            columns: target
                .columns
                .iter()
                .map(|(k, t)| (k.clone(), rule(&t.sensitivity, &t.mask)))
                .collect(),
            tables: target
                .tables
                .iter()
                .map(|(k, t)| (k.clone(), rule(&t.sensitivity, &t.mask)))
                .collect(),
            default_strategy,
            clean_functions: clean_functions.iter().cloned().collect(),
            derived: Default::default(),
        };
        CatalogCache {
            current: RwLock::new(Arc::new(Catalog::default())),
            invalidations: AtomicU64::new(0),
            loaded_at: AtomicU64::new(u64::MAX),
            load: tokio::sync::Mutex::new(()),
            rules,
            derived_seen: std::sync::Mutex::new(DerivedSeen::default()),
            function_oids: tokio::sync::Mutex::new(FunctionOids::default()),
        }
    }

    /// The catalog as last loaded.
    pub fn snapshot(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The catalog no longer matches the database: the next [`CatalogCache::ensure`] loads.
    pub fn invalidate(&self) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
    }

    fn is_fresh(&self) -> bool {
        self.loaded_at.load(Ordering::Acquire) == self.invalidations.load(Ordering::Acquire)
    }

    /// Loads the catalog if it is stale. Sessions that need it at the same time share one
    /// load. On failure the previous catalog stays (relations it does not know are masked)
    /// and the next request tries again.
    pub async fn ensure(&self, shared: &Shared, target: &Target) -> Result<(), String> {
        self.check_derived(shared).await;
        if self.is_fresh() {
            return Ok(());
        }
        let _loading = self.load.lock().await;
        if self.is_fresh() {
            return Ok(());
        }
        // DDL that completes while the query runs invalidates again: the catalog then stays
        // stale, and the next request loads once more.
        let generation = self.invalidations.load(Ordering::Acquire);
        let rows = match target.engine {
            weir_config::Engine::Postgres => load(shared, target).await?,
            weir_config::Engine::Mysql => crate::my::catalog::load(shared, target).await?,
        };
        let (rows, functions) = rows;
        let mut rules = self.rules.clone();
        rules.derived = load_derived(shared, &target.name).await?;
        let mut catalog = Catalog::build(rows, &rules);
        catalog.add_functions(functions, &rules);
        let catalog = Arc::new(catalog);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = catalog;
        self.loaded_at.store(generation, Ordering::Release);
        Ok(())
    }
}

impl CatalogCache {
    /// Reads the store's derived-tags version (at most every [`DERIVED_CHECK`]); a change
    /// makes the catalog stale. A store that cannot be read leaves the catalog as it is.
    async fn check_derived(&self, shared: &Shared) {
        let now = std::time::Instant::now();
        {
            let mut seen = self.derived_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen
                .checked_at
                .is_some_and(|at| now.duration_since(at) < DERIVED_CHECK)
            {
                return;
            }
            seen.checked_at = Some(now);
        }
        let Ok(version) = shared
            .approvals
            .with_store(|s| s.derived_tags_version())
            .await
        else {
            return;
        };
        let mut seen = self.derived_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.version != Some(version) {
            if seen.version.is_some() {
                self.invalidate();
            }
            seen.version = Some(version);
        }
    }
}

impl CatalogCache {
    /// The function a fastpath call's OID names, as `"schema"."name"`; `None` for an OID the
    /// database does not have (or that Weir could not look up within the last second).
    pub async fn function_by_oid(
        &self,
        shared: &Shared,
        target: &Target,
        oid: u32,
    ) -> Result<Option<String>, String> {
        let mut known = self.function_oids.lock().await;
        if let Some(name) = known.by_oid.get(&oid) {
            return Ok(Some(name.clone()));
        }
        if known
            .loaded_at
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1))
        {
            return Ok(None);
        }
        let rows = query_rows(
            shared,
            target,
            FUNCTION_OID_QUERY,
            "weir.fastpath-functions",
        )
        .await?;
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        known.by_oid = rows
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let oid = r.first()?.as_deref()?.parse::<u32>().ok()?;
                let schema = r.get(1)?.as_deref()?;
                let name = r.get(2)?.as_deref()?;
                Some((oid, format!("{}.{}", quote(schema), quote(name))))
            })
            .collect();
        known.loaded_at = Some(std::time::Instant::now());
        Ok(known.by_oid.get(&oid).cloned())
    }
}

/// One row of a result, as text (`None` for NULL).
type Row = Vec<Option<String>>;

/// Runs one of Weir's own read-only queries (one or more statements) on its own upstream
/// connection, on record first (identity `weir`, `rule`), and returns each result's rows
/// as text, one list per result.
async fn query_rows(
    shared: &Shared,
    target: &Target,
    sql: &'static str,
    rule: &str,
) -> Result<Vec<Vec<Row>>, String> {
    // Weir's own statement is on record like any other, before it is sent: every statement
    // that reaches the database has its event.
    shared
        .audit
        .append(crate::pipeline::own_statement(
            0,
            &target.name,
            "catalog",
            sql,
            rule,
        ))
        .wait()
        .await
        .map_err(|e| format!("recording Weir's query ({rule}): {e}"))?;
    let max = shared.config.gateway.max_message_size;
    let mut up = upstream::connect(upstream::ConnectParams {
        target,
        tls: shared.upstreams.tls.get(&target.name).cloned().flatten(),
        client_params: vec![("application_name".into(), "weir-catalog".into())],
        max_message: max,
        timeout: shared.config.gateway.connect_timeout,
    })
    .await
    .map_err(|e| format!("connecting for Weir's query ({rule}): {e}"))?;
    let mut out = BytesMut::new();
    Frontend::Query(bytes::Bytes::from_static(sql.as_bytes())).encode(&mut out);
    Frontend::Terminate.encode(&mut out);
    up.stream
        .write_all(&out)
        .await
        .map_err(|e| format!("sending Weir's query ({rule}): {e}"))?;
    let mut buf = up.leftover;
    let mut results: Vec<Vec<Row>> = Vec::new();
    let mut failure = None;
    loop {
        let (tag, body) = read_frame(&mut up.stream, &mut buf, max)
            .await
            .map_err(|e| format!("reading Weir's query ({rule}): {e}"))?;
        match Backend::decode(tag, body) {
            Ok(Backend::RowDescription(_)) => results.push(Vec::new()),
            Ok(Backend::DataRow(values)) => {
                if let Some(rows) = results.last_mut() {
                    rows.push(
                        values
                            .iter()
                            .map(|v| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect(),
                    );
                }
            }
            Ok(Backend::ErrorResponse(f)) => {
                failure = Some(
                    f.get(b'M')
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .unwrap_or_default(),
                );
            }
            Ok(Backend::ReadyForQuery(_)) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("decoding Weir's query ({rule}): {e}")),
        }
    }
    match failure {
        Some(m) => Err(format!("Weir's query ({rule}) failed: {m}")),
        None => Ok(results),
    }
}

/// The derived tags in force for a target, as masking rules.
async fn load_derived(
    shared: &Shared,
    target: &str,
) -> Result<std::collections::BTreeMap<String, weir_mask::Sensitive>, String> {
    let target = target.to_owned();
    let tags = shared
        .approvals
        .with_store(move |s| s.derived_tags(Some(&target), false))
        .await
        .map_err(|e| format!("reading derived sensitivity tags: {e}"))?;
    Ok(tags
        .into_iter()
        .map(|t| {
            let strategy = Strategy::parse(&t.tag.strategy).unwrap_or(Strategy::Redact);
            (
                t.tag.column,
                weir_mask::Sensitive {
                    label: std::sync::Arc::from(t.tag.label.as_str()),
                    strategy,
                },
            )
        })
        .collect())
}

async fn load(
    shared: &Shared,
    target: &Target,
) -> Result<(Vec<CatalogRow>, Vec<FunctionRow>), String> {
    let mut results = query_rows(shared, target, CATALOG_QUERY, "weir.masking-catalog")
        .await?
        .into_iter();
    let (columns, functions) = (
        results.next().unwrap_or_default(),
        results.next().unwrap_or_default(),
    );
    let rows = columns.iter().filter_map(|r| catalog_row(r)).collect();
    let functions = functions
        .into_iter()
        .filter_map(|mut r| {
            let body = r.get_mut(3).and_then(Option::take);
            let mut text = r.into_iter();
            let (Some(Some(schema)), Some(Some(name)), Some(Some(language))) =
                (text.next(), text.next(), text.next())
            else {
                return None;
            };
            Some(FunctionRow {
                schema,
                name,
                language,
                body,
            })
        })
        .collect();
    Ok((rows, functions))
}

/// One row of the catalog query's first result; `None` for a row it cannot read.
fn catalog_row(r: &[Option<String>]) -> Option<CatalogRow> {
    let text = |i: usize| r.get(i).cloned().flatten();
    let table_oid = text(0)?.parse::<u32>().ok()?;
    let attnum = text(1)?.parse::<i16>().ok()?;
    let (schema, table, column) = (text(2)?, text(3)?, text(4)?);
    let type_oid = text(5)?.parse::<u32>().ok()?;
    // NULL for tables; for views the columns read (possibly none).
    let reads = text(6);
    Some(CatalogRow {
        table_oid,
        attnum,
        schema,
        table,
        column,
        type_oid,
        is_view: reads.is_some(),
        view_reads: reads
            .iter()
            .flat_map(|r| r.split('\u{1f}'))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        row_types: [7, 8].map(|i| text(i).and_then(|t| t.parse().ok()).unwrap_or(0)),
        unique_keys: text(9)
            .iter()
            .flat_map(|k| k.split(','))
            .filter_map(|k| {
                let (index, n) = k.split_once(':')?;
                Some((index.parse().ok()?, n.parse().ok()?))
            })
            .collect(),
        // Unreadable counts as having effects: the write then waits for its event.
        side_effects: text(10).as_deref() != Some("false"),
        // Unreadable counts as running code: the read then waits for its event.
        read_runs_code: text(11).as_deref() != Some("true"),
    })
}
