//! The masking catalog of a MySQL target, from `information_schema`, in the rows the
//! PostgreSQL catalog uses ([`weir_mask::CatalogRow`]): each table gets a made-up number
//! (MySQL names tables in its column definitions, it has no OIDs) and its columns their
//! ordinal positions. Views carry the columns their definition reads, from Weir's own
//! analysis of that definition; one it cannot analyze reads every column of the database.

use std::collections::HashMap;

use weir_config::Target;
use weir_mask::{CatalogRow, FunctionRow};

use super::upstream::{self, literal};

/// Loads the rows on a connection of Weir's own, recording its statements first (every
/// statement that reaches the database has its event).
pub(crate) async fn load(
    shared: &crate::Shared,
    target: &Target,
) -> Result<(Vec<CatalogRow>, Vec<FunctionRow>), String> {
    let db = literal(&target.database)
        .ok_or_else(|| "the target's database name cannot be quoted".to_owned())?;
    let columns = format!(
        "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.ORDINAL_POSITION, t.TABLE_TYPE, \
         c.EXTRA FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
         ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE c.TABLE_SCHEMA = {db} ORDER BY 1, 2, 4"
    );
    let views = format!(
        "SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db}"
    );
    let triggers = format!(
        "SELECT DISTINCT EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = {db}"
    );
    let routines = format!(
        "SELECT ROUTINE_SCHEMA, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db}"
    );
    let script = [columns, views, triggers, routines];
    for sql in &script {
        shared
            .audit
            .append(crate::pipeline::own_statement(
                0,
                &target.name,
                "catalog",
                sql,
                "weir.masking-catalog",
            ))
            .wait()
            .await
            .map_err(|e| format!("recording Weir's catalog query: {e}"))?;
    }
    let mut up = upstream::connect(
        target,
        shared.upstreams.tls.get(&target.name).cloned().flatten(),
        upstream::FORWARDED_CAPS,
        45,
        shared.config.gateway.max_message_size,
        shared.config.gateway.connect_timeout,
    )
    .await
    .map_err(|e| format!("connecting for the masking catalog: {e}"))?;
    let mut results = Vec::new();
    for sql in &script {
        results.push(
            upstream::query(&mut up.conn, sql)
                .await
                .map_err(|e| format!("reading the masking catalog: {e}"))?
                .rows,
        );
    }
    let mut quit = vec![weir_wire::mysql::com::QUIT];
    up.conn.seq = 0;
    let _ = up.conn.send(&std::mem::take(&mut quit)).await;
    up.conn.shutdown().await;
    let mut results = results.into_iter();
    let (columns, views, triggers, routines) = (
        results.next().unwrap_or_default(),
        results.next().unwrap_or_default(),
        results.next().unwrap_or_default(),
        results.next().unwrap_or_default(),
    );
    Ok((
        rows(&target.database, &columns, &views, &triggers),
        routines
            .into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                let (Some(Some(schema)), Some(Some(name))) = (r.next(), r.next()) else {
                    return None;
                };
                // Stored functions are opaque to masking: their bodies are not analyzed.
                Some(FunctionRow {
                    schema,
                    name: name.to_lowercase(),
                    language: "sql/psm".into(),
                    body: None,
                })
            })
            .collect(),
    ))
}

fn rows(
    database: &str,
    columns: &[Vec<Option<String>>],
    views: &[Vec<Option<String>>],
    triggers: &[Vec<Option<String>>],
) -> Vec<CatalogRow> {
    let text = |r: &Vec<Option<String>>, i: usize| r.get(i).cloned().flatten();
    let triggered: std::collections::HashSet<String> =
        triggers.iter().filter_map(|r| text(r, 0)).collect();
    let every_column: Vec<String> = columns
        .iter()
        .filter_map(|r| Some(format!("{}.{}.{}", text(r, 0)?, text(r, 1)?, text(r, 2)?)))
        .collect();
    let mode = weir_analyze::mysql::Mode::new(database);
    let view_reads: HashMap<String, Vec<String>> = views
        .iter()
        .filter_map(|r| {
            let name = text(r, 0)?;
            let reads = text(r, 1)
                .and_then(|def| weir_analyze::mysql::analyze_sql(&def, &mode).ok())
                .map(|facts| {
                    facts
                        .iter()
                        .flat_map(|f| f.columns.iter())
                        .filter_map(|c| Some(format!("{}.{}", c.table.as_ref()?, c.name)))
                        .collect::<Vec<_>>()
                })
                .filter(|reads| !reads.is_empty())
                .unwrap_or_else(|| every_column.clone());
            Some((name, reads))
        })
        .collect();
    let mut numbers: HashMap<String, u32> = HashMap::new();
    columns
        .iter()
        .filter_map(|r| {
            let (schema, table, column) = (text(r, 0)?, text(r, 1)?, text(r, 2)?);
            let attnum = text(r, 3)?.parse::<i16>().ok()?;
            let next = u32::try_from(numbers.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            let oid = *numbers.entry(format!("{schema}.{table}")).or_insert(next);
            let is_view = text(r, 4).as_deref() == Some("VIEW");
            let mut row = CatalogRow::column(oid, attnum, &schema, &table, &column);
            row.is_view = is_view;
            if is_view {
                row.view_reads = view_reads.get(&table).cloned().unwrap_or_default();
                row.read_runs_code = true;
            }
            row.side_effects =
                is_view || triggered.contains(&table) || text(r, 5).is_some_and(|e| !e.is_empty());
            Some(row)
        })
        .collect()
}
